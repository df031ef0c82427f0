"""Byte ranges of files and where two of them first differ, skipping the holes both have.

A `Span` is a window of an open file (a whole artifact, or one partition of a disk image). Two
spans are compared by reading both in large chunks into reused buffers (one `memcmp` per chunk),
only over the ranges where either file holds data (``SEEK_DATA``/``SEEK_HOLE``): holes read as
zeros on both sides, so a range that is a hole in both files is equal without being read.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path

CHUNK = 1 << 20
_ZEROS = bytes(CHUNK)


class FormatError(Exception):
    """What a file's format says could not be read; the message says why, in a few words."""


class MissingToolError(FormatError):
    """A tool that would read the format is not installed."""

    def __init__(self, tool: str, package: str) -> None:
        self.tool = tool
        self.package = package
        super().__init__(f"{tool} is not installed (package {package})")


@dataclass(frozen=True)
class Span:
    """``length`` bytes of the open file ``fd`` (named ``path``) from ``offset``."""

    path: Path
    fd: int
    offset: int
    length: int

    def read(self, offset: int, size: int) -> bytes:
        """``size`` bytes from ``offset`` of the span; a read past its end is a `FormatError`."""
        if offset < 0 or size < 0 or offset + size > self.length:
            raise FormatError(f"a read of {size} bytes at {offset} leaves the {self.length}-byte image")
        data = os.pread(self.fd, size, self.offset + offset)
        if len(data) != size:
            raise FormatError(f"{self.path} ends before its recorded size")
        return data

    def sub(self, offset: int, length: int) -> Span:
        """The part of this span from ``offset``, at most ``length`` bytes long."""
        offset = min(max(offset, 0), self.length)
        return Span(self.path, self.fd, self.offset + offset, max(0, min(length, self.length - offset)))


def data_ranges(span: Span, length: int) -> list[tuple[int, int]]:
    """The ranges of the first ``length`` bytes of ``span`` that hold data, relative to it."""
    start, end = span.offset, span.offset + length
    ranges: list[tuple[int, int]] = []
    pos = start
    while pos < end:
        try:
            data = os.lseek(span.fd, pos, os.SEEK_DATA)
        except OSError as err:
            if err.errno == errno.ENXIO:  # a hole up to the end of the file
                break
            return [(pos - span.offset, length)]  # no SEEK_DATA on this file system: read it all
        if data >= end:
            break
        hole = min(os.lseek(span.fd, data, os.SEEK_HOLE), end)
        ranges.append((data - span.offset, hole - span.offset))
        pos = hole
    return ranges


def _merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def _fill(fd: int, view: memoryview, offset: int) -> None:
    got = 0
    while got < len(view):
        n = os.preadv(fd, [view[got:]], offset + got)
        if n == 0:
            raise FormatError("a file got shorter while it was compared")
        got += n


def _first_mismatch(a: bytearray, b: bytearray, n: int) -> int:
    lo, hi = 0, n  # the first mismatch is in [lo, hi)
    while hi - lo > 64:
        mid = (lo + hi) // 2
        if a[lo:mid] != b[lo:mid]:
            hi = mid
        else:
            lo = mid
    return next(i for i in range(lo, hi) if a[i] != b[i])


def first_difference(a: Span, b: Span) -> int | None:
    """The offset of the first byte where the spans differ (the shorter one's length when one
    is a prefix of the other); None when they are the same bytes."""
    common = min(a.length, b.length)
    ranges = _merged(data_ranges(a, common) + data_ranges(b, common))
    for fd in (a.fd, b.fd):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
    buf_a, buf_b = bytearray(CHUNK), bytearray(CHUNK)
    view_a, view_b = memoryview(buf_a), memoryview(buf_b)
    for start, end in ranges:
        pos = start
        while pos < end:
            n = min(CHUNK, end - pos)
            _fill(a.fd, view_a[:n], a.offset + pos)
            _fill(b.fd, view_b[:n], b.offset + pos)
            same = buf_a == buf_b if n == CHUNK else buf_a[:n] == buf_b[:n]
            if not same:
                return pos + _first_mismatch(buf_a, buf_b, n)
            pos += n
    return None if a.length == b.length else common


def is_zero(chunk: bytes) -> bool:
    return chunk == _ZEROS if len(chunk) == CHUNK else chunk == _ZEROS[: len(chunk)]

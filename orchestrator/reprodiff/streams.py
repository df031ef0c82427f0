"""Compressed streams: which compression a file uses, its decompressed bytes as a stream
(gzip, xz, bzip2 in Python; zstd and lz4 through their tools), and a reader to parse them."""

from __future__ import annotations

import bz2
import contextlib
import gzip
import lzma
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Protocol

from .spans import CHUNK, FormatError, MissingToolError, is_zero

# name: (magics, the tool that decompresses it to stdout, its Debian package); no tool: Python
COMPRESSIONS: dict[str, tuple[tuple[bytes, ...], list[str], str]] = {
    "gz": ((b"\x1f\x8b",), [], ""),
    "xz": ((b"\xfd7zXZ\x00",), [], ""),
    "bz2": ((b"BZh",), [], ""),
    "zst": ((b"\x28\xb5\x2f\xfd",), ["zstd", "-dcq"], "zstd"),
    "lz4": ((b"\x04\x22\x4d\x18", b"\x02\x21\x4c\x18"), ["lz4", "-dcq"], "lz4"),
}


def compression_of(head: bytes) -> str:
    """The compression whose magic ``head`` starts with; "" for none."""
    for name, (magics, _, _) in COMPRESSIONS.items():
        if head.startswith(magics):
            return name
    return ""


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _Tool:
    """A decompressing tool's stdout as a file; the tool is stopped when the file is closed."""

    def __init__(self, argv: list[str], source: IO[bytes]) -> None:
        self._proc = subprocess.Popen(argv, stdin=source, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert self._proc.stdout is not None
        self.stdout: IO[bytes] = self._proc.stdout
        self._name = argv[0]

    def read(self, size: int = -1) -> bytes:
        data = self.stdout.read(size)
        if (not data and size != 0) and self._proc.wait() != 0:
            raise FormatError(f"{self._name} could not decompress it (exit {self._proc.returncode})")
        return data

    def close(self) -> None:
        self.stdout.close()
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()


@contextlib.contextmanager
def decompressed(path: Path, offset: int, compression: str) -> Iterator[IO[bytes]]:
    """The bytes of ``path`` from ``offset``, decompressed with ``compression`` ("" for none)."""
    with path.open("rb") as raw:
        raw.seek(offset)
        if compression == "":
            yield raw
            return
        if compression == "gz":
            with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                yield stream  # type: ignore[misc]
            return
        if compression == "xz":
            with lzma.LZMAFile(raw) as xz_stream:
                yield xz_stream
            return
        if compression == "bz2":
            with bz2.BZ2File(raw) as bz2_stream:
                yield bz2_stream
            return
        argv, package = COMPRESSIONS[compression][1:]
        tool = shutil.which(argv[0])
        if tool is None:
            raise MissingToolError(argv[0], package)
        os.lseek(raw.fileno(), offset, os.SEEK_SET)  # the tool reads the shared descriptor from here
        proc = _Tool([tool, *argv[1:]], raw)
        try:
            yield proc  # type: ignore[misc]
        finally:
            proc.close()


def head_of(path: Path, compression: str, size: int) -> bytes:
    """The first ``size`` bytes of the decompressed content (fewer if it is shorter)."""
    with decompressed(path, 0, compression) as stream:
        return _full(stream, size)


def gzip_header(path: Path) -> dict[str, str]:
    """The fields of a gzip file's first header that vary between runs: its time, the name of
    the file it was made from, the OS and the compression level's flag."""
    with path.open("rb") as f:
        head = f.read(4096)
    if len(head) < 10 or head[:2] != b"\x1f\x8b":
        return {}
    flags = head[3]
    facts = {"mtime": str(int.from_bytes(head[4:8], "little")), "xfl": str(head[8]), "os": str(head[9])}
    at = 10
    if flags & 0x04:  # FEXTRA
        at += 2 + int.from_bytes(head[at : at + 2], "little")
    if flags & 0x08:  # FNAME
        end = head.find(b"\0", at)
        facts["name"] = head[at : end if end >= 0 else len(head)].decode("latin-1")
    return facts


def _full(stream: IO[bytes], size: int) -> bytes:
    out = bytearray()
    while len(out) < size:
        piece = stream.read(size - len(out))
        if not piece:
            break
        out += piece
    return bytes(out)


def stream_difference(first: Path, second: Path, compression: str) -> int | None:
    """Where the decompressed contents of two files first differ; None if they are the same."""
    with decompressed(first, 0, compression) as a, decompressed(second, 0, compression) as b:
        pos = 0
        while True:
            x, y = _full(a, CHUNK), _full(b, CHUNK)
            if x != y:
                return pos + next(
                    (i for i, (p, q) in enumerate(zip(x, y, strict=False)) if p != q), min(len(x), len(y))
                )
            if not x:
                return None
            pos += len(x)


def decompress_to(path: Path, compression: str, dest: Path) -> None:
    """Decompress ``path`` into ``dest``, leaving holes where the content is zeros."""
    with decompressed(path, 0, compression) as stream, dest.open("wb") as out:
        while chunk := stream.read(CHUNK):
            if is_zero(chunk):
                out.seek(len(chunk), os.SEEK_CUR)
            else:
                out.write(chunk)
        out.truncate()


class Reader:
    """Exact reads from a stream, with ``pos`` the number of bytes taken so far."""

    def __init__(self, stream: Readable) -> None:
        self._stream = stream
        self._buf = b""
        self._at = 0
        self.pos = 0

    def _fill(self, size: int) -> bool:
        while len(self._buf) - self._at < size:
            chunk = self._stream.read(max(CHUNK, size))
            if not chunk:
                return False
            self._buf = self._buf[self._at :] + chunk
            self._at = 0
        return True

    def peek(self, size: int) -> bytes:
        self._fill(size)
        return self._buf[self._at : self._at + size]

    def read(self, size: int) -> bytes:
        """Exactly ``size`` bytes; a shorter stream is a `FormatError`."""
        if not self._fill(size):
            raise FormatError(f"the stream ends inside a record (at byte {self.pos})")
        data = self._buf[self._at : self._at + size]
        self._at += size
        self.pos += size
        return data

    def pieces(self, size: int) -> Iterator[bytes]:
        """The next ``size`` bytes, a chunk at a time."""
        while size > 0:
            piece = self.read(min(size, CHUNK))
            size -= len(piece)
            yield piece

    def skip_zeros(self) -> None:
        """Past the zero bytes that pad archives to a block size."""
        while self._fill(1):
            rest = self._buf[self._at :]
            stripped = len(rest) - len(rest.lstrip(b"\0"))
            self._at += stripped
            self.pos += stripped
            if stripped < len(rest):
                return

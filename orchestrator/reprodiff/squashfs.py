"""squashfs images as listings, through ``unsquashfs -pf``: its pseudo-file definitions give
each name's type, mode, owner and mtime, then the files' data, streamed through a named pipe in
a private folder and hashed here (nothing is extracted, nothing written but the pipe). The
superblock's fields are read here."""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from .entries import Entry, Listing
from .spans import CHUNK, FormatError, MissingToolError, Span
from .streams import Reader

SQUASHFS_MAGIC = b"hsqs"
_DATA_MARK = b"# START OF DATA - DO NOT MODIFY\n"
_TYPES = {"D": "dir", "R": "file", "S": "symlink", "L": "hardlink", "C": "char", "B": "block"}
_COMPRESSORS = {1: "gzip", 2: "lzma", 3: "lzo", 4: "xz", 5: "lz4", 6: "zstd"}


def _split_name(line: str) -> tuple[str, list[str]]:
    """A pseudo-file line's name (spaces and backslashes escaped with a backslash) and the rest."""
    name: list[str] = []
    i = 0
    while i < len(line) and line[i] != " ":
        if line[i] == "\\" and i + 1 < len(line):
            i += 1
        name.append(line[i])
        i += 1
    return "".join(name), line[i + 1 :].split(" ")


def _metadata(span: Span) -> dict[str, str]:
    head = span.read(0, 96)
    inodes, mkfs_time, block_size, fragments, compressor, _, flags, ids, major, minor = struct.unpack_from(
        "<IIIIHHHHHH", head, 4
    )
    return {
        "version": f"{major}.{minor}",
        "compressor": _COMPRESSORS.get(compressor, str(compressor)),
        "block_size": str(block_size),
        "flags": f"{flags:#06x}",
        "inodes": str(inodes),
        "fragments": str(fragments),
        "ids": str(ids),
        "mkfs_time": str(mkfs_time),
    }


class _Fifo:
    """The reading end of a named pipe a child process writes to: end of file only once the
    child has exited (a read before the child opens its end also finds no writer)."""

    def __init__(self, path: Path, proc_start: Callable[[], subprocess.Popen[bytes]]) -> None:
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # so that the child's open does not wait
        self.proc = proc_start()
        os.set_blocking(self.fd, True)

    def read(self, size: int = -1) -> bytes:
        while True:
            data = os.read(self.fd, size if size > 0 else CHUNK)
            if data or self.proc.poll() is not None:
                return data
            time.sleep(0.005)  # the child has not opened its end yet, or is closing it

    def close(self) -> None:
        os.close(self.fd)
        if self.proc.poll() is None:
            self.proc.kill()


def squashfs_listing(span: Span) -> Listing:
    tool = shutil.which("unsquashfs")
    if tool is None:
        raise MissingToolError("unsquashfs", "squashfs-tools")
    metadata = _metadata(span)
    with tempfile.TemporaryDirectory(prefix="reprodiff-") as tmp:
        fifo = Path(tmp) / "pseudo"
        os.mkfifo(fifo, 0o600)
        argv = [tool, "-n", "-o", str(span.offset), "-pf", str(fifo), str(span.path)]
        stream = _Fifo(fifo, lambda: subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        problem: FormatError | None = None
        try:
            reader = Reader(stream)
            entries = _read_definitions(reader)
            _hash_data(reader, entries)
        except FormatError as err:
            problem = err
        finally:
            stream.close()
            _, err_text = stream.proc.communicate()
    said = err_text.decode(errors="replace").strip()
    if problem is not None or stream.proc.returncode:
        code = stream.proc.returncode
        raise FormatError(f"unsquashfs: {said[-200:]}" if said else str(problem or f"unsquashfs exit {code}"))
    return Listing([entry for entry, _ in entries], metadata=metadata, per_directory_order=True)


def _line(reader: Reader) -> bytes:
    out = bytearray()
    while True:
        piece = reader.peek(4096)
        if not piece:
            raise FormatError("unsquashfs -pf ended before its data")
        end = piece.find(b"\n")
        if end >= 0:
            out += reader.read(end + 1)
            return bytes(out)
        out += reader.read(len(piece))


def _read_definitions(reader: Reader) -> list[tuple[Entry, tuple[int, int] | None]]:
    """Each name with (offset, size) of its data for a regular file."""
    out: list[tuple[Entry, tuple[int, int] | None]] = []
    while True:
        raw = _line(reader)
        if raw == b"#\n" and reader.peek(len(_DATA_MARK)) == _DATA_MARK:
            reader.read(len(_DATA_MARK))
            if _line(reader) != b"#\n":
                raise FormatError("unsquashfs -pf wrote an unexpected data header")
            return out
        name, fields = _split_name(raw[:-1].decode("utf-8", "surrogateescape"))
        if len(fields) < 2 or not name:
            continue  # a name with a newline in it: its first part, not a definition
        path = name if name.startswith("/") else "/" + name
        kind = fields[0]
        if kind == "L":
            target = " ".join(fields[1:])
            out.append((Entry(path, "hardlink", target="/" + target.lstrip("/")), None))
            continue
        if len(fields) < 5:
            continue
        try:
            mtime, mode, uid, gid = int(fields[1]), int(fields[2], 8), int(fields[3]), int(fields[4])
            rest = fields[5:]
            data = (int(rest[1]), int(rest[0])) if kind == "R" else None
            target = ""
            if kind == "S":
                target = " ".join(rest)
            elif kind in ("C", "B"):
                target = f"{int(rest[0])},{int(rest[1])}"
            type_ = _TYPES.get(kind) or {"f": "fifo", "s": "socket"}.get(rest[0] if rest else "", kind)
        except (ValueError, IndexError) as err:
            raise FormatError(f"unsquashfs -pf wrote a line that is not understood: {raw[:80]!r}") from err
        entry = Entry(path, type_, mode=mode, uid=uid, gid=gid, mtime_ns=mtime * 1_000_000_000, target=target)
        out.append((entry, data))


def _hash_data(reader: Reader, entries: list[tuple[Entry, tuple[int, int] | None]]) -> None:
    """Put each regular file's size and sha256 on its entry, reading the data section once
    (two files with the same data, deduplicated by mksquashfs, share one range)."""
    base = reader.pos
    digests: dict[tuple[int, int], str] = {}
    for offset, size in sorted({data for _, data in entries if data is not None}):
        at = reader.pos - base
        if offset < at:
            raise FormatError("unsquashfs -pf gave overlapping file data")
        for _ in reader.pieces(offset - at):
            pass
        digest = hashlib.sha256()
        for piece in reader.pieces(size):
            digest.update(piece)
        digests[(offset, size)] = digest.hexdigest()
    for i, (entry, data) in enumerate(entries):
        if data is not None:
            entries[i] = (replace(entry, size=data[1], digest=digests[data]), data)
    while chunk := reader.peek(CHUNK):  # to the end, so that unsquashfs finishes
        reader.read(len(chunk))


def is_squashfs(head: bytes) -> bool:
    return head[:4] == SQUASHFS_MAGIC

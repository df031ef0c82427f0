"""tar and cpio (newc) archives as listings, read as streams: every member's metadata and the
sha256 of its content, nothing extracted (member names are hostile and never become paths)."""

from __future__ import annotations

import hashlib
import stat
import tarfile
from collections.abc import Iterable
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import IO

from .entries import FILE_TYPES, Entry, Listing
from .spans import FormatError
from .streams import Reader, compression_of, decompressed

CPIO_MAGICS = (b"070701", b"070702")
_CPIO_HEADER = 110
_NAME_MAX = 1 << 16
_TAR_TYPES = {
    tarfile.REGTYPE: "file",
    tarfile.AREGTYPE: "file",
    tarfile.CONTTYPE: "file",
    tarfile.GNUTYPE_SPARSE: "file",
    tarfile.DIRTYPE: "dir",
    tarfile.SYMTYPE: "symlink",
    tarfile.LNKTYPE: "hardlink",
    tarfile.CHRTYPE: "char",
    tarfile.BLKTYPE: "block",
    tarfile.FIFOTYPE: "fifo",
}
_XATTR_PREFIXES = ("SCHILY.xattr.", "LIBARCHIVE.xattr.", "SCHILY.acl.")


def _sha256(pieces: Iterable[bytes]) -> str:
    digest = hashlib.sha256()
    for piece in pieces:
        digest.update(piece)
    return digest.hexdigest()


def _file_pieces(stream: IO[bytes]) -> Iterable[bytes]:
    while piece := stream.read(1 << 20):
        yield piece


def _pax_ns(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(Decimal(value) * 1_000_000_000)
    except InvalidOperation:
        return None


def _short(value: str) -> str:
    raw = value.encode("utf-8", "surrogateescape")
    return raw.hex() if len(raw) <= 32 else "sha256:" + hashlib.sha256(raw).hexdigest()[:16]


def tar_listing(stream: IO[bytes]) -> Listing:
    """The members of the tar archive read from ``stream``, in archive order."""
    entries: list[Entry] = []
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                pax = member.pax_headers
                kind = _TAR_TYPES.get(member.type, f"tar type {member.type!r}")
                digest = target = ""
                if member.isreg():
                    content = tar.extractfile(member)
                    if content is not None:
                        digest = _sha256(_file_pieces(content))
                elif member.issym() or member.islnk():
                    target = member.linkname
                elif member.ischr() or member.isblk():
                    target = f"{member.devmajor},{member.devminor}"
                mtime = _pax_ns(pax.get("mtime"))
                times = tuple((name, ns) for name in ("atime", "ctime") if (ns := _pax_ns(pax.get(name))) is not None)
                xattrs = tuple(sorted((k, _short(v)) for k, v in pax.items() if k.startswith(_XATTR_PREFIXES)))
                entries.append(
                    Entry(
                        path=member.name,
                        type=kind,
                        mode=member.mode & 0o7777,
                        uid=member.uid,
                        gid=member.gid,
                        owner_names=f"{member.uname}:{member.gname}",
                        mtime_ns=mtime if mtime is not None else int(member.mtime) * 1_000_000_000,
                        size=member.size,
                        digest=digest,
                        target=target,
                        xattrs=xattrs,
                        times=times,
                    )
                )
    except tarfile.TarError as err:
        raise FormatError(f"not a readable tar archive: {err}") from err
    return Listing(entries, metadata_path="(archive)")


def _cpio_type(mode: int) -> str:
    return FILE_TYPES.get(stat.S_IFMT(mode), f"mode {mode:o}")


def _pad(reader: Reader, length: int) -> None:
    if length % 4:
        reader.read(4 - length % 4)


def _cpio_archive(reader: Reader, entries: list[Entry]) -> None:
    """One newc archive, up to and with its trailer."""
    while True:
        head = reader.read(_CPIO_HEADER)
        if head[:6] not in CPIO_MAGICS:
            raise FormatError(f"no cpio (newc) header at byte {reader.pos - _CPIO_HEADER}")
        try:
            fields = [int(head[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        except ValueError as err:
            raise FormatError(
                f"a cpio header with a field that is not hex at byte {reader.pos - _CPIO_HEADER}"
            ) from err
        ino, mode, uid, gid, nlink, mtime, size, _, _, rmajor, rminor, namesize, _ = fields
        if not 0 < namesize <= _NAME_MAX:
            raise FormatError(f"a cpio name of {namesize} bytes at byte {reader.pos - _CPIO_HEADER}")
        raw_name = reader.read(namesize)
        _pad(reader, _CPIO_HEADER + namesize)
        name = raw_name.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        if name == "TRAILER!!!":
            for _ in reader.pieces(size):
                pass
            _pad(reader, size)
            return
        kind = _cpio_type(mode)
        digest = target = ""
        if kind == "symlink":
            target = b"".join(reader.pieces(size)).decode("utf-8", "surrogateescape")
        elif kind == "file":
            digest = _sha256(reader.pieces(size))
        else:
            for _ in reader.pieces(size):
                pass
            if kind in ("char", "block"):
                target = f"{rmajor},{rminor}"
        _pad(reader, size)
        entries.append(
            Entry(
                path=name,
                type=kind,
                mode=mode & 0o7777,
                uid=uid,
                gid=gid,
                mtime_ns=mtime * 1_000_000_000,
                size=size,
                digest=digest,
                target=target,
                inode=(("ino", ino), ("nlink", nlink)),
            )
        )


def _cpio_archives(reader: Reader, entries: list[Entry]) -> None:
    """Archives one after the other (the zero padding between them skipped) while there are."""
    while True:
        _cpio_archive(reader, entries)
        reader.skip_zeros()
        if reader.peek(6) not in CPIO_MAGICS:
            return


def cpio_listing(path: Path) -> tuple[Listing, str]:
    """The members of the newc cpio archive(s) in ``path`` and the format's name.

    An initramfs is often several archives end to end: an uncompressed one (CPU microcode)
    then a compressed one; each part is read in turn and the format names them all
    ("cpio+cpio.zst")."""
    entries: list[Entry] = []
    parts: list[str] = []
    offset = 0
    while True:
        with path.open("rb") as f:
            f.seek(offset)
            compression = compression_of(f.read(8))
        with decompressed(path, offset, compression) as stream:
            reader = Reader(stream)
            _cpio_archives(reader, entries)
            parts.append("cpio" + (f".{compression}" if compression else ""))
            rest = reader.peek(8)
            if not rest:
                break
            if compression or not compression_of(rest):
                raise FormatError(f"data that is not a cpio archive after byte {offset + reader.pos}")
            offset += reader.pos
    return Listing(entries, metadata_path="(archive)"), "+".join(parts)

"""A folder as a store: the embedded default (``./publish``), for laptops and workshops.

Each object is written to a partial file beside its key, checked, synced and renamed into place,
so a reader sees the old object or the new one, never half of one. Its sha256 rides along in the
``user.cipbuild.sha256`` extended attribute with the size and mtime it was taken at; a file
changed since (or a filesystem without user xattrs) is hashed again when asked (reading only).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from ..errors import InfrastructureError, InterruptError, UserError
from .base import HashingReader, ObjectInfo, Progress, check_key

XATTR = "user.cipbuild.sha256"
PARTIAL = ".cipbuild-partial-"
CHUNK = 8 << 20


class LocalStore:
    def __init__(self, root: Path):
        self.root = root.absolute()
        self.url = self.root.as_uri()
        self.cancelled = False

    def close(self) -> None:
        pass

    def cancel(self) -> None:
        self.cancelled = True

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create the store folder: {exc.strerror or exc}", where=str(self.root)) from None
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise UserError("the store folder is not writable", where=str(self.root))

    def path(self, key: str) -> Path:
        """Where ``key`` lives; refused when a symlink on the way leads out of the store."""
        check_key(key)
        target = self.root / key
        real_root = os.path.realpath(self.root)
        parent = os.path.realpath(target.parent)
        if parent != real_root and not parent.startswith(real_root + os.sep):
            raise UserError(f"{key!r} leads out of the store through a symlink", where=str(self.root))
        return target

    def head(self, key: str) -> ObjectInfo | None:
        target = self.path(key)
        try:
            info = os.stat(target, follow_symlinks=False)
        except FileNotFoundError:
            return None
        if not os.path.isfile(target) or os.path.islink(target):
            return None
        return ObjectInfo(key, info.st_size, _sha256_of(target), datetime.fromtimestamp(info.st_mtime, UTC))

    def put_file(self, key: str, path: str, *, size: int, sha256: str, progress: Progress) -> None:
        target = self.path(key)
        with open(path, "rb") as source:
            reader = HashingReader(source, size, sha256, path)
            self._write(target, sha256, lambda out: self._copy(reader, out, progress))

    def put_bytes(self, key: str, data: bytes, *, content_type: str) -> None:
        self._write(self.path(key), hashlib.sha256(data).hexdigest(), lambda out: out.write(data))

    def _write(self, target: Path, sha256: str, fill: object) -> None:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.parent / f".{target.name}{PARTIAL}{secrets.token_hex(4)}"
            try:
                with open(partial, "xb") as out:
                    fill(out)  # type: ignore[operator]
                    out.flush()
                    os.fsync(out.fileno())
                    _set_sha256(out.fileno(), sha256)  # on the file itself: a rename by another writer cannot swap it
                os.replace(partial, target)
            finally:
                partial.unlink(missing_ok=True)
            dir_fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise InfrastructureError(f"cannot write {target}: {exc.strerror or exc}") from None

    def _copy(self, reader: HashingReader, out: BinaryIO, progress: Progress) -> None:
        while data := reader.read(CHUNK):
            if self.cancelled:
                raise InterruptError("interrupted")
            out.write(data)
            progress(len(data))
        reader.finish()  # before the rename: a file that changed since it was signed never lands

    def open(self, key: str) -> BinaryIO:
        try:
            return open(self.path(key), "rb")
        except FileNotFoundError:
            raise KeyError(key) from None

    def objects(self, prefix: str) -> Iterator[ObjectInfo]:
        base = self.root / prefix if prefix else self.root
        for folder, dirs, files in os.walk(base):
            dirs.sort()
            for name in sorted(files):
                full = Path(folder, name)
                if PARTIAL in name or full.is_symlink():
                    continue
                info = full.stat()
                key = full.relative_to(self.root).as_posix()
                yield ObjectInfo(key, info.st_size, _xattr(full), datetime.fromtimestamp(info.st_mtime, UTC))

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            target = self.path(key)
            target.unlink(missing_ok=True)
            folder = target.parent
            while folder != self.root and not any(folder.iterdir()):
                folder.rmdir()
                folder = folder.parent

    def public_url(self, key: str) -> str:
        return self.path(key).as_uri()

    def abort_incomplete(self, prefix: str) -> int:
        count = 0
        base = self.root / prefix if prefix else self.root
        for folder, _dirs, files in os.walk(base):
            for name in files:
                if PARTIAL in name:
                    Path(folder, name).unlink(missing_ok=True)
                    count += 1
        return count


def _stamp(info: os.stat_result) -> str:
    return f"{info.st_size}:{info.st_mtime_ns}"


def _set_sha256(fd: int, sha256: str) -> None:
    with contextlib.suppress(OSError):  # no user xattrs here: head() hashes instead
        os.setxattr(fd, XATTR, f"{sha256} {_stamp(os.fstat(fd))}".encode())


def _xattr(path: Path) -> str | None:
    """The recorded sha256, when the file has not changed since it was recorded."""
    try:
        sha256, _, stamp = os.getxattr(path, XATTR, follow_symlinks=False).decode().partition(" ")
        return sha256 if stamp == _stamp(os.stat(path)) else None
    except (OSError, UnicodeDecodeError):
        return None


def _sha256_of(path: Path) -> str:
    found = _xattr(path)
    if found is not None:
        return found
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while data := handle.read(CHUNK):
            digest.update(data)
    return digest.hexdigest()

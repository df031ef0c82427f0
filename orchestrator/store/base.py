"""What every store offers: objects named by relative keys under the store's own prefix, each
carrying the sha256 of its content, written whole or not at all."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO, Protocol

from ..errors import UserError, VerificationError

Progress = Callable[[int], None]  # called with the number of bytes just sent


@dataclass(frozen=True)
class ObjectInfo:
    key: str  # relative to the store's prefix
    size: int
    sha256: str | None  # None when the object carries none (not written by cipbuild)
    modified: datetime


class Store(Protocol):
    """A place releases go. Keys are relative POSIX names checked by ``check_key``."""

    url: str  # where it is, without credentials: s3://bucket/prefix or file:///path

    def check(self) -> None:
        """Raise UserError/InfrastructureError when the store cannot be written (before any write)."""

    def close(self) -> None: ...

    def head(self, key: str) -> ObjectInfo | None: ...

    def put_file(self, key: str, path: str, *, size: int, sha256: str, progress: Progress) -> None:
        """Store the file at ``path``, read once; VerificationError (and nothing stored) when what was
        read does not have ``size`` and ``sha256``."""

    def put_bytes(self, key: str, data: bytes, *, content_type: str) -> None: ...

    def open(self, key: str) -> BinaryIO:
        """The object's content; KeyError when there is none."""

    def objects(self, prefix: str) -> Iterator[ObjectInfo]: ...

    def delete(self, keys: list[str]) -> None: ...

    def public_url(self, key: str) -> str: ...

    def cancel(self) -> None:
        """Stop the uploads under way (they fail and leave nothing); safe from a signal handler."""

    def abort_incomplete(self, prefix: str) -> int:
        """Remove what killed writers left under ``prefix`` (multipart uploads, partial files); how many."""


def check_key(key: str, *, where: str = "key") -> str:
    """``key`` when it is a plain relative name that stays inside the store's prefix."""
    bad = (
        not key
        or key.startswith("/")
        or key.endswith("/")
        or "//" in key
        or any(part in ("..", ".") for part in key.split("/"))
        or any(not c.isprintable() or c == "\\" for c in key)
    )
    if bad:
        raise UserError(
            f"{key!r} is not a key inside the store's prefix",
            where=where,
            hint="keys are relative names without '..', '.', '//' or a leading '/'",
        )
    return key


class HashingReader:
    """A file read front to back for an upload: hashes each byte once, in order, however often
    a retry seeks back, and refuses to hand over the last byte unless size and sha256 match."""

    def __init__(self, handle: BinaryIO, size: int, sha256: str, name: str):
        self.handle = handle
        self.size = size
        self.want = sha256
        self.name = name
        self.digest = hashlib.sha256()
        self.hashed = 0  # bytes hashed so far: the high-water mark
        self.position = 0

    def read(self, amount: int = -1) -> bytes:
        if self.position > self.hashed:
            raise ValueError(f"{self.name}: read skipped bytes {self.hashed}..{self.position}")
        data = self.handle.read(amount)
        end = self.position + len(data)
        if end > self.hashed:
            self.digest.update(memoryview(data)[self.hashed - self.position :])
            self.hashed = end
        self.position = end
        if end > self.size or (self.hashed == self.size and data and self.digest.hexdigest() != self.want):
            self.mismatch()
        return data

    def mismatch(self) -> None:
        raise VerificationError(
            f"{self.name} changed since it was signed: its content is not the sha256 of SHA256SUMS "
            "(rebuild and sign again)"
        )

    def finish(self) -> None:
        """After the upload: everything was read and matched (an empty file reads nothing)."""
        if self.hashed != self.size or self.digest.hexdigest() != self.want:
            self.mismatch()

    def seek(self, offset: int, whence: int = 0) -> int:
        self.position = self.handle.seek(offset, whence)
        return self.position

    def tell(self) -> int:
        return self.position

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

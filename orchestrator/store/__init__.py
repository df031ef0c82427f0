"""Where releases go: a local folder or an S3 bucket, behind one protocol (``base.Store``)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from ..errors import UserError
from .base import HashingReader, ObjectInfo, Progress, Store, check_key
from .local import LocalStore
from .s3 import S3Store, Transfer

DEFAULT_STORE = "publish"  # a folder next to where cipbuild runs: no account needed

__all__ = [
    "DEFAULT_STORE",
    "HashingReader",
    "LocalStore",
    "ObjectInfo",
    "Progress",
    "S3Store",
    "Store",
    "Transfer",
    "check_key",
    "open_store",
]


def open_store(
    location: str, *, endpoint_url: str | None = None, acl: str | None = None, transfer: Transfer | None = None
) -> LocalStore | S3Store:
    """The store at ``location``: ``s3://bucket/prefix``, ``file:///path`` or a folder path."""
    parts = urlsplit(location)
    if parts.scheme == "s3":
        bucket, prefix = parts.netloc, unquote(parts.path).strip("/")
        if not bucket or parts.query or parts.fragment:
            raise UserError("is not an s3://bucket/prefix URL", where=location)
        if prefix:
            check_key(prefix, where=location)
        return S3Store(bucket, prefix, endpoint_url=endpoint_url, acl=acl, transfer=transfer)
    if endpoint_url:
        raise UserError("--endpoint-url only applies to s3:// stores", where=location)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise UserError("a file:// URL names a local path (file:///path)", where=location)
        return LocalStore(Path(unquote(parts.path)))
    if parts.scheme and len(parts.scheme) > 1:
        raise UserError(
            f"unknown store scheme {parts.scheme}://", where=location, hint="use s3://bucket/prefix or a folder"
        )
    return LocalStore(Path(location))

"""An S3 bucket as a store, through boto3 and s3transfer.

Endpoint, region and credentials come the usual AWS way (environment, config and credentials
files, instance roles); ``endpoint_url`` points at an S3-compatible server. Each object carries
its sha256 as user metadata (multipart ETags are not content digests). Big files go up as
multipart uploads from one sequential read that hashes as it goes; a mismatch fails the read
before the upload is completed, so s3transfer aborts it and nothing appears.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, BinaryIO
from urllib.parse import quote

from ..errors import CipbuildError, InfrastructureError, UserError
from .base import HashingReader, ObjectInfo, Progress, check_key

META = "sha256"  # x-amz-meta-sha256


@dataclass(frozen=True)
class Transfer:
    """The s3transfer knobs, chosen by bench/publish.py (bench/RESULTS.md): memory is about 80 MB
    plus (in_memory_chunks + 1) x chunk, since s3transfer reads a stream's next part before it
    waits; more requests than parts in memory buy nothing."""

    chunk: int = 16 << 20
    concurrency: int = 4
    in_memory_chunks: int = 4
    threshold: int = 16 << 20  # smaller files are read whole (at most one per publish worker) and put at once


class S3Store:
    def __init__(
        self,
        bucket: str,
        prefix: str,
        *,
        endpoint_url: str | None = None,
        acl: str | None = None,
        transfer: Transfer | None = None,
        attempts: int = 10,
    ):
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.acl = acl
        self.transfer = transfer or Transfer()
        self.attempts = attempts
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self._client: Any = None
        self._manager: Any = None
        self._uploads: set[Any] = set()  # s3transfer futures under way

    # --- plumbing ---------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            config = Config(
                retries={"max_attempts": self.attempts, "mode": "standard"},
                connect_timeout=5,
                read_timeout=30,
                max_pool_connections=self.transfer.concurrency + 4,
                s3={"addressing_style": "path"} if self.endpoint_url else {},
                user_agent_extra="cipbuild",
                signature_version="s3v4",
            )
            try:
                self._client = boto3.session.Session().client("s3", endpoint_url=self.endpoint_url, config=config)
            except Exception as exc:  # botocore's config errors share no base class worth naming
                raise UserError(f"cannot set up the S3 client: {exc}", where=self.url) from None
        return self._client

    @property
    def manager(self) -> Any:
        if self._manager is None:
            from s3transfer.manager import TransferConfig, TransferManager

            config = TransferConfig(
                multipart_threshold=self.transfer.threshold,
                multipart_chunksize=self.transfer.chunk,
                max_request_concurrency=self.transfer.concurrency,
                max_in_memory_upload_chunks=self.transfer.in_memory_chunks,
            )
            self._manager = TransferManager(self.client, config)
        return self._manager

    def cancel(self) -> None:
        for future in list(self._uploads):
            future.cancel()  # does not wait: the upload fails, s3transfer aborts it

    def close(self) -> None:
        if self._manager is not None:
            self._manager.shutdown()
            self._manager = None

    def key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def error(self, exc: BaseException, what: str) -> Exception:
        """The cipbuild error for a botocore failure while doing ``what``."""
        return s3_error(exc, what, self.url)

    # --- the store protocol -----------------------------------------------------------------

    def check(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            raise self.error(exc, f"bucket {self.bucket}") from None

    def head(self, key: str) -> ObjectInfo | None:
        try:
            found = self.client.head_object(Bucket=self.bucket, Key=self.key(key))
        except Exception as exc:
            if _code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self.error(exc, f"reading {key}") from None
        return ObjectInfo(
            key, int(found["ContentLength"]), found.get("Metadata", {}).get(META), _utc(found["LastModified"])
        )

    def extra_args(self, sha256: str, content_type: str) -> dict[str, Any]:
        extra: dict[str, Any] = {"Metadata": {META: sha256}, "ContentType": content_type}
        if self.acl:
            extra["ACL"] = self.acl
        return extra

    def put_file(self, key: str, path: str, *, size: int, sha256: str, progress: Progress) -> None:
        content_type = "application/octet-stream"
        with open(path, "rb") as handle:
            if size < self.transfer.threshold:
                data = handle.read(size + 1)
                reader = HashingReader(io.BytesIO(data), size, sha256, path)
                reader.read()
                reader.finish()
                self._put(key, data, sha256, content_type)
                progress(len(data))
                return
            reader = HashingReader(handle, size, sha256, path)
            from s3transfer.subscribers import BaseSubscriber

            class Sent(BaseSubscriber):  # type: ignore[misc]
                def on_progress(self, future: Any, bytes_transferred: int, **kwargs: Any) -> None:
                    progress(bytes_transferred)

            try:
                future = self.manager.upload(
                    reader, self.bucket, self.key(key), self.extra_args(sha256, content_type), [Sent()]
                )
                self._uploads.add(future)
                try:
                    future.result()
                finally:
                    self._uploads.discard(future)
            except Exception as exc:
                raise self.error(exc, f"uploading {key}") from None
            reader.finish()

    def put_bytes(self, key: str, data: bytes, *, content_type: str) -> None:
        self._put(key, data, hashlib.sha256(data).hexdigest(), content_type)

    def _put(self, key: str, data: bytes, sha256: str, content_type: str) -> None:
        try:
            self.client.put_object(
                Bucket=self.bucket, Key=self.key(key), Body=data, **self.extra_args(sha256, content_type)
            )
        except Exception as exc:
            raise self.error(exc, f"uploading {key}") from None

    def open(self, key: str) -> BinaryIO:
        return io.BufferedReader(_ResumingBody(self, self.key(key), key), buffer_size=1 << 20)

    def objects(self, prefix: str) -> Iterator[ObjectInfo]:
        full = self.key(prefix.rstrip("/")) + "/" if prefix else (f"{self.prefix}/" if self.prefix else "")
        strip = len(f"{self.prefix}/") if self.prefix else 0
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
                for item in page.get("Contents", []):
                    yield ObjectInfo(item["Key"][strip:], int(item["Size"]), None, _utc(item["LastModified"]))
        except Exception as exc:
            raise self.error(exc, f"listing {prefix or '/'}") from None

    def delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):
            batch = [{"Key": self.key(k)} for k in keys[start : start + 1000]]
            try:
                answer = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            except Exception as exc:
                raise self.error(exc, "deleting") from None
            if answer.get("Errors"):
                first = answer["Errors"][0]
                raise InfrastructureError(f"{self.url}: cannot delete {first.get('Key')}: {first.get('Message')}")

    def public_url(self, key: str) -> str:
        endpoint = str(self.client.meta.endpoint_url).rstrip("/")
        return f"{endpoint}/{self.bucket}/{quote(self.key(key))}"

    def presigned_url(self, key: str, seconds: int) -> str:
        return str(
            self.client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": self.key(key)}, ExpiresIn=seconds
            )
        )

    def abort_incomplete(self, prefix: str) -> int:
        count = 0
        try:
            pages = self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=self.key(prefix) + "/"
            )
            for page in pages:
                for upload in page.get("Uploads", []):
                    try:
                        self.client.abort_multipart_upload(
                            Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                        )
                    except Exception as exc:
                        if _code(exc) not in ("404", "NoSuchUpload"):
                            raise
                    count += 1
        except Exception as exc:
            raise self.error(exc, "aborting unfinished uploads") from None
        return count


class _ResumingBody(io.RawIOBase):
    """An object's content that picks up where it broke off (ranged GET) when a read fails."""

    def __init__(self, store: S3Store, full_key: str, key: str):
        self.store = store
        self.full_key = full_key
        self.key = key
        self.offset = 0
        self.size: int | None = None
        self.body: Any = None
        self.failures = 0

    def readable(self) -> bool:
        return True

    def _open(self) -> None:
        args: dict[str, Any] = {"Bucket": self.store.bucket, "Key": self.full_key}
        if self.offset:
            args["Range"] = f"bytes={self.offset}-"
        try:
            answer = self.store.client.get_object(**args)
        except Exception as exc:
            if _code(exc) in ("404", "NoSuchKey", "NotFound"):
                raise KeyError(self.key) from None
            raise self.store.error(exc, f"reading {self.key}") from None
        if self.size is None:
            self.size = int(answer["ContentLength"])
        self.body = answer["Body"]

    def readinto(self, buffer: Any) -> int:
        if self.size is not None and self.offset >= self.size:
            return 0
        while True:
            if self.body is None:
                self._open()
            try:
                data = self.body.read(len(buffer))
            except Exception as exc:
                self.body = None
                self.failures += 1
                if self.failures > self.store.attempts:
                    raise self.store.error(exc, f"reading {self.key}") from None
                continue
            if not data and self.size is not None and self.offset < self.size:
                self.body = None  # the connection ended early: ask for the rest
                self.failures += 1
                if self.failures > self.store.attempts:
                    raise InfrastructureError(f"{self.store.url}/{self.key}: the server keeps ending the body early")
                continue
            buffer[: len(data)] = data
            self.offset += len(data)
            return len(data)

    def close(self) -> None:
        if self.body is not None:
            self.body.close()
            self.body = None
        super().close()


def _utc(value: Any) -> datetime:
    return value.astimezone(UTC) if isinstance(value, datetime) else datetime.now(UTC)


def _code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def s3_error(exc: BaseException, what: str, where: str) -> Exception:
    """One line for a botocore/s3transfer failure: bad input or credentials are exit 2, the
    server or the network failing is exit 4."""
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    if isinstance(exc, CipbuildError):
        return exc
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return UserError(
            "no S3 credentials",
            where=where,
            hint="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE; they are read the usual AWS way",
        )
    if isinstance(exc, EndpointConnectionError):
        return InfrastructureError(f"{where}: cannot reach the S3 endpoint: {exc}")
    if isinstance(exc, ClientError):
        code = _code(exc)
        message = str(exc.response.get("Error", {}).get("Message") or code)
        if code in ("NoSuchBucket", "404") and what.startswith("bucket"):
            return UserError(f"{what} does not exist", where=where, hint="create it, or check the s3:// URL")
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled"):
            return UserError(
                f"{what}: access denied ({code})",
                where=where,
                hint="the credentials in use cannot do this: check them and the bucket's policy",
            )
        return InfrastructureError(f"{where}: {what}: {code}: {message}")
    return InfrastructureError(f"{where}: {what}: {type(exc).__name__}: {exc}".splitlines()[0])

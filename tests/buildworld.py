"""A place to run real `cipbuild build`s: fixture upstreams, the test catalogue, out/ and cache/."""

from __future__ import annotations

import fcntl
import json
import os
import pwd
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

BUILDER_IMAGE = os.environ.get("CIPBUILD_TEST_IMAGE", "cipbuild-builder:minimal")


@dataclass
class World:
    catalog: Path
    mirror: Path
    out: Path
    cache: Path

    def args(self, *args: str, runtime: str = "docker") -> list[str]:
        return [
            sys.executable,
            "-m",
            "orchestrator",
            "--catalog",
            str(self.catalog),
            "build",
            *args,
            "--runtime",
            runtime,
            "--image",
            BUILDER_IMAGE,
            "--out",
            str(self.out),
            "--cache",
            str(self.cache),
            "--mirror",
            str(self.mirror),
        ]

    def build(
        self, *args: str, runtime: str = "docker", env: dict[str, str] | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.args(*args, runtime=runtime),
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
            env={**os.environ, **(env or {})},
        )

    def start(self, *args: str, runtime: str = "docker", env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.args(*args, runtime=runtime),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )

    def metadata(self, job_id: str) -> dict[str, Any]:
        data = json.loads((self.out / job_id / "metadata.json").read_text())
        assert isinstance(data, dict)
        return data

    def wait_for(self, job_id: str, status: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        path = self.out / job_id / "metadata.json"
        while time.monotonic() < deadline:
            if path.exists():
                try:
                    if json.loads(path.read_text()).get("status") == status:
                        return
                except ValueError:
                    pass
            time.sleep(0.2)
        raise AssertionError(f"{job_id} never reached {status}")


def unavailable(reason: str) -> None:
    """In CI a missing engine or image is a failure (.ci/run provides them); elsewhere a skip."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def results(proc: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    data = json.loads(proc.stdout)
    return {r["id"]: r for r in data["results"]}


def open_to_builder(path: Path) -> Path:
    """Builds started by root run as an unprivileged builder uid (isar cannot build as root): it
    must be able to reach the test's folders, which pytest makes private (0700)."""
    for folder in (path, *path.parents):
        if folder.stat().st_uid == os.getuid() and folder.stat().st_mode & 0o005 != 0o005:
            folder.chmod(folder.stat().st_mode | 0o755)
        if folder == Path(tempfile.gettempdir()):
            break
    return path


@dataclass(frozen=True)
class RootlessUser:
    """The unprivileged account .ci/run gives rootless podman, with its own Python and cipbuild."""

    name: str
    python: str

    def run(
        self, *argv: str, timeout: float = 300, groups: tuple[str, ...] = (), env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``argv`` as the user, in a clean environment (plus ``env``), with supplementary ``groups``."""
        pw = pwd.getpwnam(self.name)
        variables = [
            f"HOME={pw.pw_dir}",
            f"USER={self.name}",
            f"LOGNAME={self.name}",
            "PATH=/usr/local/bin:/usr/bin:/bin",
            f"XDG_RUNTIME_DIR=/tmp/cipbuild-rootless-run-{pw.pw_uid}",
            *(f"{k}={v}" for k, v in (env or {}).items()),
        ]
        extra = [word for group in groups for word in ("-G", group)]
        return subprocess.run(
            ["runuser", "-u", self.name, *extra, "--", "env", "-i", *variables, *argv],
            cwd=pw.pw_dir,  # the checkout may lie in a folder only root can enter
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )

    def cipbuild(
        self, *args: str, timeout: float = 300, groups: tuple[str, ...] = (), env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return self.run(self.python, "-m", "orchestrator", *args, timeout=timeout, groups=groups, env=env)

    def build(self, world: World, work: Path, *args: str) -> subprocess.CompletedProcess[str]:
        """`cipbuild build ARGS` through rootless podman, with out/ and cache/ in ``work``."""
        pw = pwd.getpwnam(self.name)
        open_to_builder(world.catalog)
        open_to_builder(work.parent)
        work.mkdir()
        os.chown(work, pw.pw_uid, pw.pw_gid)
        return self.cipbuild(
            "--catalog",
            str(world.catalog),
            "build",
            *args,
            "--runtime",
            "podman",
            "--image",
            BUILDER_IMAGE,
            "--mirror",
            str(world.mirror),
            "--out",
            str(work / "out"),
            "--cache",
            str(work / "cache"),
            "--json",
        )


def rootless_user() -> RootlessUser:
    """The rootless user .ci/run provides; a skip elsewhere, a failure in CI."""
    user, python = os.environ.get("CIPBUILD_ROOTLESS_USER"), os.environ.get("CIPBUILD_ROOTLESS_PYTHON")
    if os.getuid() != 0 or not user or not python:
        if os.environ.get("CI"):
            pytest.fail(".ci/run sets CIPBUILD_ROOTLESS_USER and CIPBUILD_ROOTLESS_PYTHON")
        pytest.skip("needs root and a rootless podman user (CIPBUILD_ROOTLESS_USER, CIPBUILD_ROOTLESS_PYTHON)")
    return RootlessUser(user, python)


TUN = Path("/dev/net/tun")


@contextmanager
def tun_device(*, exclusive: bool) -> Iterator[None]:
    """A test that takes /dev/net/tun away from users holds this exclusively; rootless builds hold
    it shared, so that none runs meanwhile, in this pytest or another on the same machine."""
    with open(Path(tempfile.gettempdir()) / "cipbuild-tests-tun.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)

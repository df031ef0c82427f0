"""A place to run real `cipbuild build`s: fixture upstreams, the test catalogue, out/ and cache/."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

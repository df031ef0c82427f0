"""The native runtime: kas runs on this host (CI jobs that already run inside a kas image)."""

from __future__ import annotations

import os
import platform
import signal
import subprocess
from collections.abc import Iterator

from ..errors import InfrastructureError
from . import RunSpec, output_lines, spawn

# Only what a shell needs comes from cipbuild's own environment (never credentials).
HOST_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TERM", "USER", "LOGNAME")


class NativeHandle:
    def __init__(self, proc: subprocess.Popen[str]):
        self.proc = proc
        self.killed = False

    def lines(self) -> Iterator[str]:
        return output_lines(self.proc)

    def wait(self) -> int:
        code = self.proc.wait()
        return 130 if self.killed else code

    def kill(self) -> None:
        self.killed = True
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)  # kas and the bitbake it started
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass


class NativeRuntime:
    name = "native"

    def check(self) -> dict[str, str]:
        return {"engine": "native", "version": platform.release()}

    def image_digest(self, image: str, *, pull: bool = True) -> str:
        """The host is the builder: its kas and distribution stand for the image."""
        import importlib.metadata

        return f"native:kas-{importlib.metadata.version('kas')}:{platform.freedesktop_os_release().get('ID', '?')}"

    def start(self, spec: RunSpec) -> NativeHandle:
        env = {k: v for k, v in os.environ.items() if k in HOST_ENV}
        env.update(spec.env)
        try:
            proc = spawn(spec.argv, env, spec.workdir)
        except OSError as exc:
            raise InfrastructureError(f"cannot start {spec.argv[0]}: {exc}") from None
        return NativeHandle(proc)

    def leftovers(self, session: str) -> list[str]:
        return []

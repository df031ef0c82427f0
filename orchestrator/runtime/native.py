"""The native runtime: kas runs on this host (CI jobs that already run inside a kas image)."""

from __future__ import annotations

import os
import platform

from ..errors import InfrastructureError
from .base import ProcessHandle, RunSpec, spawn

# Only what a shell needs comes from cipbuild's own environment (never credentials).
HOST_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TERM", "USER", "LOGNAME")


class NativeRuntime:
    name = "native"

    def check(self) -> dict[str, str]:
        return {"engine": "native", "version": platform.release()}

    def image_digest(self, image: str, *, pull: bool = True) -> str:
        """The host is the builder: its kas and distribution stand for the image."""
        import importlib.metadata

        return f"native:kas-{importlib.metadata.version('kas')}:{platform.freedesktop_os_release().get('ID', '?')}"

    def command(self, spec: RunSpec) -> list[str]:
        """`env -C` into the working folder (paths in it said relative to it) with the spec's
        variables; the caller's own environment stands for the host part and the inherited ones."""
        fixed = [f"{k}={v}" for k, v in sorted(spec.env.items()) if k not in spec.inherit]
        argv = [_relative(arg, spec) for arg in spec.argv]
        return ["env", "-C", str(spec.workdir), *fixed, *argv]

    def start(self, spec: RunSpec) -> ProcessHandle:
        env = {k: v for k, v in os.environ.items() if k in HOST_ENV}
        env.update(spec.env)
        try:
            proc = spawn(spec.argv, env, spec.workdir)
        except OSError as exc:
            raise InfrastructureError(f"cannot start {spec.argv[0]}: {exc}") from None
        return ProcessHandle(proc)

    def leftovers(self, session: str) -> list[str]:
        return []


def _relative(arg: str, spec: RunSpec) -> str:
    path = os.path.relpath(arg, spec.workdir) if os.path.isabs(arg) else arg
    return arg if path.startswith("..") else path

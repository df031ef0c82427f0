"""Where a kas command runs: a container engine or the host. One protocol (``base``), each
runtime a small class picked by name from ``RUNTIMES``."""

from __future__ import annotations

import os

from ..errors import InfrastructureError, UserError
from .base import LABEL, Handle, ProcessHandle, RunSpec, Runtime, run_flags, run_target, spawn
from .docker import DockerRuntime
from .native import NativeRuntime
from .podman import PodmanRuntime

RUNTIMES: dict[str, type[DockerRuntime] | type[PodmanRuntime] | type[NativeRuntime]] = {
    "docker": DockerRuntime,
    "podman": PodmanRuntime,
    "native": NativeRuntime,
}
AUTO = ("docker", "podman")  # what `auto` tries, in this order


def pick_runtime(name: str) -> Runtime:
    """The runtime called ``name``; ``auto`` takes the first engine of AUTO that answers and
    otherwise says what is missing."""
    if name in RUNTIMES:
        return RUNTIMES[name]()
    if name != "auto":
        from ..catalog import suggest

        choices = ("auto", *RUNTIMES)
        raise UserError(f"unknown runtime '{name}'", where="--runtime", hint=suggest(name, choices))
    problems = []
    for engine in AUTO:
        runtime = RUNTIMES[engine]()
        try:
            runtime.check()
            return runtime
        except InfrastructureError as exc:
            problems.append(f"{engine}: {exc}")
    raise InfrastructureError(
        "no container engine answers (" + "; ".join(problems) + "); start dockerd or install podman, "
        "set DOCKER_HOST, or use --runtime native inside a kas image"
    )


# Isar cannot build as root (apt drops privileges inside bitbake's user namespaces and fails), so
# when cipbuild itself runs as root, container builds run as the kas images' builder uid/gid: a
# system-range id no login account on the host is likely to have (1000 usually is one).
ROOT_CALLER_BUILDER = (30000, 30000)


def build_user(runtime: str) -> tuple[int, int]:
    """The uid/gid a build runs as: the caller's, or the builder's when the caller is root."""
    uid, gid = os.getuid(), os.getgid()
    if uid == 0 and runtime != "native":
        override = os.environ.get("CIPBUILD_BUILDER_ID", "")
        if override:
            user, _, group = override.partition(":")
            return int(user), int(group or user)
        return ROOT_CALLER_BUILDER
    return uid, gid


__all__ = [
    "LABEL",
    "RUNTIMES",
    "Handle",
    "ProcessHandle",
    "RunSpec",
    "Runtime",
    "build_user",
    "pick_runtime",
    "run_flags",
    "run_target",
    "spawn",
]

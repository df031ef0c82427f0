"""Where a kas command runs: a container engine or the host. One small protocol, picked by name."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ..errors import InfrastructureError, UserError

LABEL = "org.cip-project.cipbuild"
RUNTIMES = ("auto", "docker", "podman", "native")


@dataclass(frozen=True)
class RunSpec:
    """One command to run: in ``image`` for container runtimes, on the host for native."""

    argv: Sequence[str]
    workdir: Path
    env: dict[str, str]
    mounts: Sequence[Path] = ()
    readonly_mounts: Sequence[Path] = ()
    image: str | None = None
    entrypoint: Sequence[str] = ()
    privileged: bool = False
    name: str = ""
    labels: dict[str, str] = field(default_factory=dict)


class Handle(Protocol):
    """A started command."""

    def lines(self) -> Iterator[str]:
        """An iterable of output lines (stdout and stderr merged) until the command ends."""

    def wait(self) -> int:
        """Its exit code."""

    def kill(self) -> None:
        """Stop it now and remove what it left (container)."""


class Runtime(Protocol):
    name: str

    def check(self) -> dict[str, str]:
        """Facts about the engine (version...); InfrastructureError when it does not answer."""

    def image_digest(self, image: str, *, pull: bool = True) -> str:
        """The image's content digest, pulled first if missing and ``pull``; InfrastructureError
        when it cannot be had."""

    def start(self, spec: RunSpec) -> Handle: ...

    def leftovers(self, session: str) -> list[str]:
        """Containers of a cipbuild session still known to the engine (should be none)."""


def spawn(argv: Sequence[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.Popen[str]:
    """A child in a session of its own (so its whole group can be killed), stderr into stdout."""
    return subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
    )


def output_lines(proc: subprocess.Popen[str]) -> Iterator[str]:
    assert proc.stdout is not None
    for line in proc.stdout:
        yield line.rstrip("\n")


def pick_runtime(name: str) -> Runtime:
    """The runtime called ``name``; ``auto`` takes docker, then podman, and says what is missing."""
    if name not in RUNTIMES:
        from ..catalog import suggest

        raise UserError(f"unknown runtime '{name}'", where="--runtime", hint=suggest(name, RUNTIMES))
    if name == "native":
        from .native import NativeRuntime

        return NativeRuntime()
    if name == "podman":
        from .podman import PodmanRuntime

        return PodmanRuntime()
    from .docker import DockerRuntime

    if name == "docker":
        return DockerRuntime()
    problems = []
    try:
        runtime = DockerRuntime()
        runtime.check()
        return runtime
    except InfrastructureError as exc:
        problems.append(f"docker: {exc}")
    if shutil.which("podman"):
        from .podman import PodmanRuntime

        podman = PodmanRuntime()
        try:
            podman.check()
            return podman
        except InfrastructureError as exc:
            problems.append(f"podman: {exc}")
    else:
        problems.append("podman: not installed")
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

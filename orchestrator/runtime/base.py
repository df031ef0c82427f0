"""What every runtime shares: the run spec, the protocol a runtime and its handles keep, a child
process handle, and the `run` flags both container engines' command lines take."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

LABEL = "org.cip-project.cipbuild"


@dataclass(frozen=True)
class RunSpec:
    """One command to run: in ``image`` for container runtimes, on the host for native. A runtime
    starts it and renders the command line that reruns it by hand from this same record."""

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
    # variables of ``env`` whose values a command line never shows (they may carry credentials):
    # whoever reruns it sets them again
    inherit: frozenset[str] = frozenset()


class Handle(Protocol):
    """A started command."""

    @property
    def killed(self) -> bool:
        """True once ``kill`` was called: the command did not end on its own."""

    @property
    def engine_failed(self) -> bool:
        """After ``wait``: the engine could not run the command (its exit code is the engine's)."""

    def lines(self) -> Iterator[str]:
        """An iterable of output lines (stdout and stderr merged) until the command ends."""

    def wait(self) -> int:
        """Its exit code (130 when killed); InfrastructureError when the engine failed us."""

    def kill(self) -> None:
        """Stop it now and remove what it left (container)."""


class Runtime(Protocol):
    name: str

    def check(self) -> dict[str, str]:
        """Facts about the engine (version...); InfrastructureError when it does not answer."""

    def image_digest(self, image: str, *, pull: bool = True) -> str:
        """The image's content digest, pulled first if missing and ``pull``; InfrastructureError
        when it cannot be had."""

    def command(self, spec: RunSpec) -> list[str]:
        """The command line (its words) that runs ``spec`` by hand as ``start`` runs it, with the
        same privileges; the values of ``spec.inherit`` left to the caller's environment."""

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


class ProcessHandle:
    """A command cipbuild runs as its child (native, or `podman run`)."""

    # exit codes that are the engine's own failure, not the command's
    engine_exit_codes: tuple[int, ...] = ()

    def __init__(self, proc: subprocess.Popen[str]):
        self.proc = proc
        self._killed = False
        self._engine_failed = False

    @property
    def killed(self) -> bool:
        return self._killed

    @property
    def engine_failed(self) -> bool:
        return self._engine_failed

    def lines(self) -> Iterator[str]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            yield line.rstrip("\n")

    def wait(self) -> int:
        code = self.proc.wait()
        if self._killed:
            return 130
        self._engine_failed = code in self.engine_exit_codes
        return code

    def kill(self) -> None:
        self._killed = True
        self._stop()

    def _stop(self) -> None:
        """The process group: politely (kas stops the bitbake it started), then for good."""
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._kill_group()
        except ProcessLookupError:
            pass

    def _kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def run_flags(spec: RunSpec, *, env_values: bool) -> list[str]:
    """The flags of `docker run` and `podman run` for ``spec``'s folders, environment and user.
    Without ``env_values`` only the names go on the command line (anyone can read it): the
    values then travel in the engine's own environment."""
    flags = ["--workdir", str(spec.workdir)]
    for path in spec.mounts:
        flags += ["--volume", f"{path}:{path}:rw"]
    for path in spec.readonly_mounts:
        flags += ["--volume", f"{path}:{path}:ro"]
    for key, value in sorted(spec.env.items()):
        flags += ["--env", f"{key}={value}" if env_values and key not in spec.inherit else key]
    # root first, whatever the image's USER: the entrypoint switches to the build user
    return [*flags, "--user", "root"]


def run_target(spec: RunSpec) -> list[str]:
    """The end of a `run` command line: entrypoint, image and command."""
    entry = ["--entrypoint", spec.entrypoint[0]] if spec.entrypoint else []
    return [*entry, str(spec.image), *spec.entrypoint[1:], *spec.argv]


def pinned_digest(image: str) -> str:
    """The digest a ``name[:tag]@sha256:...`` reference pins (empty when it pins none)."""
    _, at, digest = image.partition("@")
    return digest if at and digest.startswith("sha256:") else ""

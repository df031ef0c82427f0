"""The podman runtime, through the podman command line (rootful or rootless)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from typing import IO

from ..errors import InfrastructureError
from . import LABEL, RunSpec

# crun cannot set up cgroups on some hosts (hybrid mode); runc can. CIPBUILD_PODMAN_RUNTIME overrides.
DEFAULT_OCI_RUNTIME = "runc"


class PodmanHandle:
    def __init__(self, podman: list[str], name: str, proc: subprocess.Popen[str]):
        self.podman = podman
        self.name = name
        self.proc = proc
        self.killed = False

    def lines(self) -> Iterator[str]:
        stream: IO[str] | None = self.proc.stdout
        assert stream is not None
        for line in stream:
            yield line.rstrip("\n")

    def wait(self) -> int:
        code = self.proc.wait()
        return 130 if self.killed else code

    def kill(self) -> None:
        self.killed = True
        subprocess.run([*self.podman, "rm", "-f", "-t", "0", self.name], capture_output=True, check=False)
        self.proc.wait()


class PodmanRuntime:
    name = "podman"

    def __init__(self) -> None:
        exe = shutil.which("podman")
        oci = os.environ.get("CIPBUILD_PODMAN_RUNTIME", DEFAULT_OCI_RUNTIME)
        self.podman = [exe or "podman"] + (["--runtime", oci] if oci and shutil.which(oci) else [])
        self.rootless = os.getuid() != 0

    def _run(self, *args: str) -> str:
        try:
            proc = subprocess.run([*self.podman, *args], capture_output=True, text=True, check=False, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise InfrastructureError(f"podman: {exc}") from None
        if proc.returncode != 0:
            raise InfrastructureError(f"podman {args[0]}: {proc.stderr.strip().splitlines()[-1:] or proc.returncode}")
        return proc.stdout

    def check(self) -> dict[str, str]:
        if not shutil.which("podman"):
            raise InfrastructureError("podman is not installed")
        info = json.loads(self._run("version", "--format", "json"))
        client = info.get("Client", info)
        return {"engine": "podman", "version": str(client.get("Version", "?")), "rootless": str(self.rootless).lower()}

    def image_digest(self, image: str) -> str:
        """The image's digest, pulling it first when podman's store does not have it."""
        try:
            out = self._run("image", "inspect", "--format", "{{.Digest}}", image)
        except InfrastructureError:
            try:
                self._run("pull", "--quiet", image)
            except InfrastructureError as exc:
                raise InfrastructureError(
                    f"image '{image}' is not in podman's store and could not be pulled ({exc}); "
                    "make one offline with `cipbuild image build --engine podman`"
                ) from None
            out = self._run("image", "inspect", "--format", "{{.Digest}}", image)
        return out.strip()

    def start(self, spec: RunSpec) -> PodmanHandle:
        name = spec.name or f"cipbuild-{os.getpid()}"
        args = [
            *self.podman,
            "run",
            "--rm",
            "--name",
            name,
            "--workdir",
            str(spec.workdir),
            "--label",
            f"{LABEL}=1",
        ]
        for key, value in spec.labels.items():
            args += ["--label", f"{key}={value}"]
        for key, value in spec.env.items():
            args += ["--env", f"{key}={value}"]
        for path in spec.mounts:
            args += ["--volume", f"{path}:{path}:rw"]
        if self.rootless:
            args += ["--userns", "keep-id"]  # already the caller inside; the entrypoint just runs
        if spec.privileged:
            args += ["--privileged"]
        if spec.entrypoint:
            args += ["--entrypoint", json.dumps(list(spec.entrypoint))]
        args += [str(spec.image), *spec.argv]
        try:
            proc = subprocess.Popen(
                args,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                start_new_session=True,
            )
        except OSError as exc:
            raise InfrastructureError(f"podman: {exc}") from None
        return PodmanHandle(self.podman, name, proc)

    def leftovers(self, session: str) -> list[str]:
        out = self._run("ps", "-a", "--filter", f"label={LABEL}.session={session}", "--format", "{{.Names}}")
        return [line for line in out.splitlines() if line]

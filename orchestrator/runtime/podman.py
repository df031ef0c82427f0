"""The podman runtime, through the podman command line (rootful or rootless)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator

from ..errors import InfrastructureError
from . import LABEL, RunSpec, output_lines, spawn

# crun cannot set up cgroups on some hosts (hybrid mode); runc can. CIPBUILD_PODMAN_RUNTIME overrides.
DEFAULT_OCI_RUNTIME = "runc"


# podman run's own failures (cannot create, OCI runtime missing, command not runnable)
ENGINE_EXIT_CODES = (125, 126, 127)


class PodmanHandle:
    def __init__(self, podman: list[str], name: str, proc: subprocess.Popen[str]):
        self.podman = podman
        self.name = name
        self.proc = proc
        self.killed = False
        self.engine_failed = False

    def lines(self) -> Iterator[str]:
        return output_lines(self.proc)

    def wait(self) -> int:
        code = self.proc.wait()
        if self.killed:
            return 130
        self.engine_failed = code in ENGINE_EXIT_CODES
        return code

    def kill(self) -> None:
        """Remove the container; `podman run` may not have created it yet, so keep at it."""
        self.killed = True
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            subprocess.run([*self.podman, "rm", "-f", "-t", "0", self.name], capture_output=True, check=False)
            exists = (
                subprocess.run(
                    [*self.podman, "container", "exists", self.name], capture_output=True, check=False
                ).returncode
                == 0
            )
            if not exists and self.proc.poll() is not None:
                return
            time.sleep(0.3)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


class PodmanRuntime:
    name = "podman"

    def __init__(self) -> None:
        exe = shutil.which("podman")
        oci = os.environ.get("CIPBUILD_PODMAN_RUNTIME", DEFAULT_OCI_RUNTIME)
        self.podman = [exe or "podman"] + (["--runtime", oci] if oci and shutil.which(oci) else [])
        self.rootless = os.getuid() != 0

    def _run(self, *args: str, timeout: float | None = 120) -> str:
        try:
            proc = subprocess.run([*self.podman, *args], capture_output=True, text=True, check=False, timeout=timeout)
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

    def image_digest(self, image: str, *, pull: bool = True) -> str:
        """The image's digest, pulling it first when podman's store does not have it."""
        try:
            out = self._run("image", "inspect", "--format", "{{.Digest}}", image)
        except InfrastructureError:
            if not pull:
                raise InfrastructureError(f"image '{image}' is not in podman's store") from None
            try:
                self._run("pull", "--quiet", image, timeout=None)  # a builder image is GBs
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
        # values travel in podman's environment, not on its command line (which anyone can read)
        for key in spec.env:
            args += ["--env", key]
        for path in spec.mounts:
            args += ["--volume", f"{path}:{path}:rw"]
        for path in spec.readonly_mounts:
            args += ["--volume", f"{path}:{path}:ro"]
        # root first (in rootless podman that is the caller); the entrypoint switches user
        args += ["--user", "root"]
        if self.rootless:
            # keep-id maps the caller's uid to itself; --passwd=false stops podman adding a passwd
            # entry for it with HOME=/ (the entrypoint then makes 'builder' with /home/builder)
            args += ["--userns", "keep-id", "--passwd=false"]
        if spec.privileged:
            args += ["--privileged"]
        if spec.entrypoint:
            args += ["--entrypoint", json.dumps(list(spec.entrypoint))]
        args += [str(spec.image), *spec.argv]
        try:
            proc = spawn(args, {**os.environ, **spec.env})
        except OSError as exc:
            raise InfrastructureError(f"podman: {exc}") from None
        return PodmanHandle(self.podman, name, proc)

    @property
    def reproducer_flags(self) -> list[str]:
        """What `podman run` needs here besides the build's own flags (for reproducer.sh)."""
        flags = [f"--runtime {self.podman[2]}"] if len(self.podman) > 2 else []
        return flags + (["--userns keep-id", "--passwd=false"] if self.rootless else [])

    def leftovers(self, session: str) -> list[str]:
        out = self._run("ps", "-a", "--filter", f"label={LABEL}.session={session}", "--format", "{{.Names}}")
        return [line for line in out.splitlines() if line]

"""The podman runtime, through the podman command line (rootful or rootless)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

from ..errors import InfrastructureError
from .base import LABEL, ProcessHandle, RunSpec, pinned_digest, run_flags, run_target, spawn

# crun cannot set up cgroups on some hosts (hybrid mode); runc can. CIPBUILD_PODMAN_RUNTIME overrides.
DEFAULT_OCI_RUNTIME = "runc"


# podman run's own failures (cannot create, OCI runtime missing, command not runnable)
ENGINE_EXIT_CODES = (125, 126, 127)


class PodmanHandle(ProcessHandle):
    engine_exit_codes = ENGINE_EXIT_CODES

    def __init__(self, podman: list[str], name: str, proc: subprocess.Popen[str]):
        super().__init__(proc)
        self.podman = podman
        self.name = name

    def _stop(self) -> None:
        """Remove the container; `podman run` may not have created it yet, so keep at it."""
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
        self._kill_group()


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
        # a reference pinned by digest is that digest (podman's own .Digest is of the manifest it
        # stored, which differs from the registry's once layers are compressed on push)
        return pinned_digest(image) or out.strip()

    def _run_args(self, spec: RunSpec, *, by_hand: bool) -> list[str]:
        """`podman run` for ``spec``: as cipbuild starts it (named, labelled, the variables' values
        in podman's environment), or as a person reruns it (values on the line, inherited ones not)."""
        args = [*self.podman, "run", "--rm"]
        if not by_hand:
            args += ["--name", spec.name or f"cipbuild-{os.getpid()}", "--label", f"{LABEL}=1"]
            for key, value in spec.labels.items():
                args += ["--label", f"{key}={value}"]
        args += run_flags(spec, env_values=by_hand)
        if self.rootless:
            # keep-id maps the caller's uid to itself; --passwd=false stops podman adding a passwd
            # entry for it with HOME=/ (the entrypoint then makes 'builder' with /home/builder)
            args += ["--userns", "keep-id", "--passwd=false"]
        if spec.privileged:
            args += ["--privileged"]
        return args + run_target(spec)

    def command(self, spec: RunSpec) -> list[str]:
        return ["podman", *self._run_args(spec, by_hand=True)[1:]]

    def start(self, spec: RunSpec) -> PodmanHandle:
        args = self._run_args(spec, by_hand=False)
        try:
            proc = spawn(args, {**os.environ, **spec.env})
        except OSError as exc:
            raise InfrastructureError(f"podman: {exc}") from None
        return PodmanHandle(self.podman, args[args.index("--name") + 1], proc)

    def leftovers(self, session: str) -> list[str]:
        out = self._run("ps", "-a", "--filter", f"label={LABEL}.session={session}", "--format", "{{.Names}}")
        return [line for line in out.splitlines() if line]

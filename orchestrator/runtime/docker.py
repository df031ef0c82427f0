"""The docker runtime: containers through the Docker engine's API (the docker Python SDK)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import InfrastructureError
from .base import LABEL, RunSpec, pinned_digest, run_flags, run_target

# --privileged is refused in some sandboxes ("unable to apply caps"); this is the same power
# less the one capability they withhold, which is enough for Isar's mounts and loop devices.
PRIVILEGED_SUBSTITUTE: dict[str, Any] = {
    "cap_add": ["ALL"],
    "cap_drop": ["SYS_RESOURCE"],
    "security_opt": ["seccomp=unconfined", "apparmor=unconfined"],
    "device_cgroup_rules": ["a *:* rwm"],
}
# the same on `docker run`'s command line
CLI_FLAG = {
    "cap_add": "--cap-add",
    "cap_drop": "--cap-drop",
    "security_opt": "--security-opt",
    "device_cgroup_rules": "--device-cgroup-rule",
}
# --privileged would also give the host's /dev (loop devices for disk images)
HOST_DEV = Path("/dev")
FULL, SUBSTITUTE = "full", "substitute"
ENGINES = "engines.json"  # in the cache folder: what each engine (by id and version) refused


def _refused(exc: Exception) -> bool:
    """Whether the engine refused --privileged itself (a sandbox that withholds a capability)."""
    return "apply caps" in str(exc) or "operation not permitted" in str(exc).lower()


def _engine_error(exc: Exception) -> InfrastructureError:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return InfrastructureError(f"docker engine: {text}")


class DockerHandle:
    def __init__(self, container: Any):
        self.container = container
        self._killed = threading.Event()

    @property
    def killed(self) -> bool:
        return self._killed.is_set()

    @property
    def engine_failed(self) -> bool:
        return False  # the engine's own failures are InfrastructureError from lines() and wait()

    def lines(self) -> Iterator[str]:
        buffer = b""
        try:
            for chunk in self.container.logs(stream=True, follow=True):
                buffer += chunk
                *complete, buffer = buffer.split(b"\n")
                for raw in complete:
                    yield raw.decode("utf-8", "replace").rstrip("\r")
        except Exception as exc:  # killed: the output simply ends; otherwise the engine failed us
            if not self.killed:
                self._remove()
                raise _engine_error(exc) from None
        if buffer:
            yield buffer.decode("utf-8", "replace")

    def wait(self) -> int:
        try:
            code = int(self.container.wait()["StatusCode"])
        except Exception as exc:
            self._remove()
            if self.killed:
                return 130
            raise _engine_error(exc) from None
        self._remove()
        return 130 if self.killed else code

    def kill(self) -> None:
        self._killed.set()
        with contextlib.suppress(Exception):  # already stopped
            self.container.kill()
        self._remove()

    def _remove(self) -> None:
        with contextlib.suppress(Exception):  # already removed
            self.container.remove(force=True)


class DockerRuntime:
    name = "docker"

    def __init__(self) -> None:
        self._client: Any = None
        self._privileged_mode: str | None = None
        self._probe = threading.Lock()
        self._memory: Path | None = None

    def remember_in(self, folder: Path) -> None:
        """Keep what the engine refuses in ``folder`` (the cache), so later runs do not probe again."""
        self._memory = folder / ENGINES

    def _engine_key(self) -> str:
        info = self.client.info()
        return f"docker {info.get('ID', '?')} {info.get('ServerVersion', '?')}"

    def _recall(self) -> str | None:
        if self._memory is None:
            return None
        try:
            known = json.loads(self._memory.read_text(encoding="utf-8"))
            mode = known[self._engine_key()]["privileged"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return mode if mode in (FULL, SUBSTITUTE) else None

    def _memorise(self, mode: str | None) -> None:
        """Record (or, with None, forget) this engine's privileged mode; best effort."""
        if self._memory is None:
            return
        with contextlib.suppress(OSError, ValueError, TypeError):
            try:
                known = json.loads(self._memory.read_text(encoding="utf-8"))
            except FileNotFoundError:
                known = {}
            key = self._engine_key()
            if mode is None:
                known.pop(key, None)
            else:
                known[key] = {"privileged": mode}
            self._memory.parent.mkdir(parents=True, exist_ok=True)
            partial = self._memory.with_name(f".{ENGINES}.{os.getpid()}.partial")
            partial.write_text(json.dumps(known, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            os.replace(partial, self._memory)

    @property
    def client(self) -> Any:
        if self._client is None:
            import docker

            try:
                self._client = docker.from_env(timeout=60)
            except Exception as exc:
                raise _engine_error(exc) from None
        return self._client

    def check(self) -> dict[str, str]:
        try:
            version = self.client.version()
        except InfrastructureError:
            raise
        except Exception as exc:
            raise _engine_error(exc) from None
        return {
            "engine": "docker",
            "version": str(version.get("Version", "?")),
            "api": str(version.get("ApiVersion", "?")),
        }

    def image_digest(self, image: str, *, pull: bool = True) -> str:
        """The image's digest, pulling it first when the engine does not have it."""
        import docker.errors

        try:
            try:
                found = self.client.images.get(image)
            except docker.errors.ImageNotFound:
                if not pull:
                    raise InfrastructureError(f"image '{image}' is not on this engine") from None
                found = self._pull(image)
        except InfrastructureError:
            raise
        except Exception as exc:
            raise _engine_error(exc) from None
        pinned = pinned_digest(image)
        if pinned:
            return pinned
        digests = [str(d) for d in found.attrs.get("RepoDigests") or []]
        repository = image.rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image
        ours = [d for d in digests if d.split("@", 1)[0] == repository]  # pushed to several registries
        return (ours or digests)[0].split("@", 1)[1] if digests else str(found.id)

    def registry_problem(self, image: str) -> str:
        """Why ``image``'s registry cannot give it (empty when it can), asked without pulling."""
        try:
            self.client.api.inspect_distribution(image)
        except Exception as exc:
            explanation = getattr(exc, "explanation", None) or str(exc)
            return str(explanation).splitlines()[0][:200]
        return ""

    def _pull(self, image: str) -> Any:
        import docker.errors

        try:
            return self.client.images.pull(image)
        except docker.errors.APIError as exc:
            reason = str(exc.explanation or exc).splitlines()[0]
            raise InfrastructureError(
                f"image '{image}' is not on this engine and could not be pulled ({reason}); "
                "make one offline with `cipbuild image build`"
            ) from None

    def privileged_mode(self, image: str | None) -> str:
        """How this engine runs privileged containers: FULL (--privileged), or SUBSTITUTE where a
        sandbox refuses that. Found out once per engine, with a container that does nothing, and
        remembered across runs where ``remember_in`` says."""
        import docker.errors

        with self._probe:
            if self._privileged_mode is None:
                self._privileged_mode = self._recall()
            if self._privileged_mode is None:
                name = f"cipbuild-probe-{os.getpid()}-{threading.get_ident()}"
                try:
                    self.client.containers.run(  # as builds start: root, whatever the image's USER
                        image, entrypoint=["true"], user="root", privileged=True, name=name, labels={LABEL: "1"}
                    )
                    self._remove_named(name)
                    self._privileged_mode = FULL
                except docker.errors.APIError as exc:
                    self._remove_named(name)
                    if not _refused(exc):
                        raise _engine_error(exc) from None
                    self._privileged_mode = SUBSTITUTE
                except Exception as exc:
                    self._remove_named(name)
                    raise _engine_error(exc) from None
                self._memorise(self._privileged_mode)
            return self._privileged_mode

    def _as_run_here(self, spec: RunSpec) -> tuple[RunSpec, dict[str, Any]]:
        """``spec`` as this engine runs it, and its privileges as keyword arguments of the SDK's
        ``containers.run``."""
        if not spec.privileged:
            return spec, {}
        if self.privileged_mode(spec.image) == FULL:
            return spec, {"privileged": True}
        return dataclasses.replace(spec, mounts=(*spec.mounts, HOST_DEV)), PRIVILEGED_SUBSTITUTE

    def command(self, spec: RunSpec) -> list[str]:
        spec, privileges = self._as_run_here(spec)
        flags = ["docker", "run", "--rm", *run_flags(spec, env_values=True)]
        for key, value in privileges.items():
            flags += ["--privileged"] if value is True else [w for item in value for w in (CLI_FLAG[key], item)]
        return flags + run_target(spec)

    def start(self, spec: RunSpec) -> DockerHandle:
        return self._start(spec, again=True)

    def _start(self, spec: RunSpec, *, again: bool) -> DockerHandle:
        original = spec
        spec, privileges = self._as_run_here(spec)
        kwargs: dict[str, Any] = {
            "command": list(spec.argv),
            "environment": dict(spec.env),
            "volumes": {
                **{str(p): {"bind": str(p), "mode": "rw"} for p in spec.mounts},
                **{str(p): {"bind": str(p), "mode": "ro"} for p in spec.readonly_mounts},
            },
            # root first, whatever the image's USER: the entrypoint switches to the build user
            "user": "root",
            "working_dir": str(spec.workdir),
            "labels": {LABEL: "1", **spec.labels},
            "name": spec.name or None,
            "detach": True,
            "tty": False,
            **privileges,
        }
        if spec.entrypoint:
            kwargs["entrypoint"] = list(spec.entrypoint)
        try:
            return DockerHandle(self.client.containers.run(spec.image, **kwargs))
        except Exception as exc:
            # a container created but not started would block the retry's name
            self._remove_named(kwargs.get("name"))
            if isinstance(exc, InfrastructureError):
                raise
            if again and privileges.get("privileged") and _refused(exc):  # what was remembered no longer holds
                with self._probe:
                    self._privileged_mode = None
                    self._memorise(None)
                return self._start(original, again=False)
            raise _engine_error(exc) from None

    def _remove_named(self, name: str | None) -> None:
        if not name:
            return
        with contextlib.suppress(Exception):  # never created
            self.client.containers.get(name).remove(force=True)

    def leftovers(self, session: str) -> list[str]:
        try:
            found = self.client.containers.list(all=True, filters={"label": f"{LABEL}.session={session}"})
        except Exception as exc:
            raise _engine_error(exc) from None
        return [c.name for c in found]

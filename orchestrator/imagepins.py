"""Builder images pinned by registry digest: <catalogue>/images.lock.yml (written by
`cipbuild image pin` and `cipbuild image build --push`), applied to every builder reference a
build or a pipeline uses, and checked against the engine's local images before a build starts.

The lock maps a reference as the catalogue names it (``name:tag``) to the registry's manifest
digest of that tag (for a multi-architecture image, its index digest). A pinned reference runs as
``name:tag@sha256:...``: Docker and podman both resolve that by the digest alone (the tag only
documents it), pulling by digest when the image is not there yet.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import InfrastructureError, UserError

if TYPE_CHECKING:
    from .catalog import Catalog

PINS_FILE = "images.lock.yml"
ENGINES = ("docker", "podman")
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
# an image reference without a digest: [host[:port]/]path[:tag], as the engines spell it
REFERENCE = re.compile(rf"(?:[A-Za-z0-9.-]+(?::[0-9]+)?/)?{_COMPONENT}(?:/{_COMPONENT})*(?::[\w][\w.-]{{0,127}})?")

HEADER = """\
# Builder images of this catalogue pinned by registry digest: image reference -> manifest digest.
# Written by `cipbuild image pin` (and `cipbuild image build --push`); do not edit the digests.
# Regenerate it with `cipbuild image pin` when a distro names another builder or its tag was
# pushed again; `cipbuild image pin --check` exits 3 when it is stale. Builds run each pinned
# builder as reference@digest and refuse a local image of that tag with another digest.
"""


# ---------------------------------------------------------------- references


def split_reference(reference: str) -> tuple[str, str | None, str | None]:
    """``reference`` as (repository, tag or None, digest or None)."""
    name, _, digest = reference.partition("@")
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        repository, _, tag = name.rpartition(":")
        return repository, tag, digest or None
    return name, None, digest or None


def catalogue_references(catalog: Catalog, distros: Iterable[str] | None = None) -> list[str]:
    """The builder references ``distros`` (all by default) name, without those that already
    carry a digest; sorted, each once."""
    names = list(distros) if distros is not None else list(catalog.distros)
    picked = [catalog.distro(n).builder for n in names]
    return sorted({ref for ref in picked if "@" not in ref})


def pinned(reference: str, pins: dict[str, str]) -> str:
    """``reference`` as ``name:tag@sha256:...`` when ``pins`` has it; as it is otherwise."""
    if "@" in reference or reference not in pins:
        return reference
    return f"{reference}@{pins[reference]}"


# ---------------------------------------------------------------- the lock file


def pins_path(catalog_root: Path) -> Path:
    return catalog_root / PINS_FILE


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def read_pins(catalog_root: Path) -> dict[str, str]:
    """The catalogue's pins (reference -> digest); none when it has no images.lock.yml. A
    malformed file is a ConfigError naming its line."""
    from .yamlfile import load_yaml

    path = pins_path(catalog_root)
    if not path.exists():
        return {}
    doc = load_yaml(path, display=_shown(path))
    if doc.data is None:
        return {}
    regenerate = "regenerate it with `cipbuild image pin`"
    if not isinstance(doc.data, dict):
        raise doc.error((), "must be a mapping of image reference -> sha256 digest", regenerate)
    pins: dict[str, str] = {}
    for reference, digest in doc.data.items():
        if "@" in reference or not REFERENCE.fullmatch(reference):
            raise doc.error(
                (reference,), f"'{reference}' is not an image reference (name:tag, without a digest)", regenerate
            )
        if not isinstance(digest, str) or not DIGEST.fullmatch(digest):
            raise doc.error((reference,), f"the digest of {reference} is not sha256:<64 hex digits>", regenerate)
        pins[reference] = digest
    return pins


def render_pins(pins: dict[str, str]) -> str:
    """The text of images.lock.yml: the header, then the pins sorted by reference."""
    import yaml

    body = yaml.safe_dump(dict(sorted(pins.items())), default_flow_style=False, sort_keys=True, width=1000)
    return HEADER + body


def write_pins(catalog_root: Path, pins: dict[str, str]) -> Path:
    """Replace images.lock.yml at once (a reader sees the old file or the new one, never half)."""
    path = pins_path(catalog_root)
    try:
        fd, partial = tempfile.mkstemp(prefix=f".{PINS_FILE}.", suffix=".partial", dir=catalog_root)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise UserError(
                f"cannot write {_shown(path)}: {exc.strerror}",
                hint="pin a catalogue of your own: cipbuild --catalog DIR image pin",
            ) from None
        raise InfrastructureError(f"cannot write {_shown(path)}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(render_pins(pins))
            out.flush()
            os.fsync(out.fileno())
        with contextlib.suppress(OSError):  # keep the mode a checkout gave the old file
            os.chmod(partial, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        os.replace(partial, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise InfrastructureError(f"cannot write {_shown(path)}: {exc.strerror or exc}") from None
    return path


def record_pin(catalog_root: Path, reference: str, digest: str) -> Path:
    """Set one pin in images.lock.yml, keeping the others."""
    pins = read_pins(catalog_root)
    pins[reference] = digest
    return write_pins(catalog_root, pins)


def apply_pins(catalog_root: Path, images: dict[str, str]) -> dict[str, str]:
    """``images`` (build system -> reference) with each pinned reference as ``name:tag@sha256:...``."""
    pins = read_pins(catalog_root)
    return {key: pinned(reference, pins) for key, reference in images.items()}


# ---------------------------------------------------------------- the registry, through the engine


@dataclass(frozen=True)
class Unresolved:
    """A reference whose digest could not be read, and why; ``unreachable`` when the registry
    (or the network to it) failed, rather than answering that it has no such image."""

    reference: str
    reason: str
    unreachable: bool


def _first_line(text: object) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0] if lines else "no reason given"


@contextlib.contextmanager
def _docker(timeout: int = 120) -> Iterator[Any]:
    """A client of the Docker engine DOCKER_HOST names; InfrastructureError when it does not answer."""
    import docker

    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except Exception as exc:
        raise InfrastructureError(f"docker engine: {_first_line(exc)}") from None
    try:
        yield client
    finally:
        client.close()


def _podman() -> list[str]:
    exe = shutil.which("podman")
    if exe is None:
        raise InfrastructureError("podman is not installed")
    return [exe]


def _run(argv: list[str], timeout: float | None = 120) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InfrastructureError(f"{Path(argv[0]).name}: {exc}") from None


def _refused(reason: str) -> bool:
    """Whether a registry answered no (no such image, access denied) rather than not at all."""
    lowered = reason.lower()
    return any(
        word in lowered
        for word in ("manifest unknown", "name unknown", "not found", "unauthorized", "denied", "authentication")
    )


def registry_digests(engine: str, references: Iterable[str]) -> tuple[dict[str, str], list[Unresolved]]:
    """The registry's manifest digest of each reference, read without pulling: through the
    Docker engine (its distribution API), or for podman with skopeo (podman itself cannot read
    a digest without pulling the image). Also the references that could not be read."""
    refs = list(references)
    found: dict[str, str] = {}
    failed: list[Unresolved] = []
    if not refs:
        return found, failed
    if engine == "docker":
        import docker.errors

        with _docker() as client:
            for ref in refs:
                try:
                    digest = str(client.api.inspect_distribution(ref)["Descriptor"]["digest"])
                except docker.errors.APIError as exc:
                    reason = _first_line(exc.explanation or exc)
                    refused = exc.status_code in (401, 403, 404) or _refused(reason)
                    failed.append(Unresolved(ref, reason, unreachable=not refused))
                    continue
                except Exception as exc:  # the engine itself gave up (timeout, closed socket)
                    failed.append(Unresolved(ref, f"docker engine: {_first_line(exc)}", unreachable=True))
                    continue
                found[ref] = digest
        return found, failed
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        raise InfrastructureError(
            "skopeo is not installed (apt-get install skopeo): podman reads a registry digest only "
            "by pulling the whole image; or pin with --engine docker"
        )
    for ref in refs:
        try:
            proc = subprocess.run(
                [skopeo, "inspect", "--raw", f"docker://{ref}"], capture_output=True, check=False, timeout=120
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            failed.append(Unresolved(ref, f"skopeo: {exc}", unreachable=True))
            continue
        if proc.returncode != 0:
            reason = _skopeo_reason(proc.stderr.decode("utf-8", "replace"))
            failed.append(Unresolved(ref, reason, unreachable=not _refused(reason)))
            continue
        # skopeo prints the manifest's bytes as the registry serves them: their sha256 is its digest
        found[ref] = "sha256:" + hashlib.sha256(proc.stdout).hexdigest()
    return found, failed


def _skopeo_reason(stderr: str) -> str:
    """The message of skopeo's last log line (``time=... level=fatal msg="..."``)."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else "failed"
    found = re.search(r'msg="((?:[^"\\]|\\.)*)"', last)
    return _first_line(found.group(1).replace('\\"', '"') if found else last)


def unresolved_error(failed: list[Unresolved], total: int, kept: str) -> UserError | InfrastructureError:
    """The error a failed resolution ends with: exit 4 when any registry was unreachable, 2 when
    every registry answered that it has no such image (or refused access)."""
    text = f"{len(failed)} of {total} builder image(s) could not be resolved; {kept}"
    if any(f.unreachable for f in failed):
        return InfrastructureError(text)
    return UserError(text, hint="push the image, `docker login` to its registry, or fix the distro's builder")


def unresolved_line(failed: Unresolved) -> str:
    what = "registry unreachable" if failed.unreachable else "registry refused"
    return f"{failed.reference}: {what}: {failed.reason}"


# ---------------------------------------------------------------- local images


@dataclass(frozen=True)
class LocalImage:
    """What the engine has under a name:tag: the digests it was pushed or pulled as, and its id."""

    digests: tuple[str, ...]
    image_id: str

    def shown(self, repository: str) -> str:
        """The digests to name in a message: those of ``repository`` if known (podman keeps its
        own manifest's beside the pushed one), else any, else the id."""
        mine = [d.partition("@")[2] for d in self.digests if _same_repository(d.partition("@")[0], repository)]
        known = list(dict.fromkeys(mine or [d.partition("@")[2] for d in self.digests]))
        if not known:
            return f"{self.image_id} (image id: never pushed or pulled)"
        return known[0] + (f" (also {', '.join(known[1:])})" if known[1:] else "")

    def has(self, digest: str) -> bool:
        return any(entry.partition("@")[2] == digest for entry in self.digests)


def _same_repository(a: str, b: str) -> bool:
    """Whether two repository names are the same once the engines' defaults are spelt out."""

    def full(name: str) -> str:
        first = name.split("/", 1)[0]
        if "/" in name and ("." in first or ":" in first or first == "localhost"):
            return name
        return f"docker.io/{name}" if "/" in name else f"docker.io/library/{name}"

    return full(a) == full(b) or (a.startswith("localhost/") and a.removeprefix("localhost/") == b)


def _local_docker(client: Any, reference: str) -> LocalImage | None:
    import docker.errors

    try:
        image = client.images.get(reference)
    except docker.errors.ImageNotFound:
        return None
    except Exception as exc:
        raise InfrastructureError(f"docker engine: {_first_line(exc)}") from None
    return LocalImage(tuple(str(d) for d in image.attrs.get("RepoDigests") or ()), str(image.id))


def _local_podman(podman: list[str], reference: str) -> LocalImage | None:
    import json

    proc = _run([*podman, "image", "inspect", reference])
    if proc.returncode != 0:
        if "image not known" in proc.stderr or "no such image" in proc.stderr.lower():
            return None
        raise InfrastructureError(f"podman image inspect: {_first_line(proc.stderr)}")
    try:
        info = json.loads(proc.stdout)[0]
    except (ValueError, IndexError, KeyError, TypeError):
        raise InfrastructureError(f"podman image inspect {reference}: unreadable answer") from None
    return LocalImage(tuple(str(d) for d in info.get("RepoDigests") or ()), f"sha256:{info.get('Id', '?')}")


def verify_pins(engine: str, images: dict[str, str]) -> None:
    """Refuse (UserError) a pinned builder whose local image has another digest than its pin.

    A pinned reference is fine when the engine has the pinned digest (under any tag) or has no
    image of that name:tag at all (the first build pulls it by digest). It is refused when the
    engine's name:tag is another image and the pinned one is not there: offline, the build
    could not get it, and the person most likely meant to use the local one."""
    wanted = sorted({ref for ref in images.values() if "@sha256:" in ref})
    if not wanted or engine not in ENGINES:
        return  # native: the host is the builder; nothing to compare
    problems = []
    if engine == "docker":
        with _docker(timeout=60) as client:
            for ref in wanted:
                problems += _mismatch(ref, functools.partial(_local_docker, client), "docker")
    else:
        podman = _podman()
        for ref in wanted:
            problems += _mismatch(ref, functools.partial(_local_podman, podman), "podman")
    if problems:
        raise UserError("; ".join(problems))


def _mismatch(ref: str, local: Callable[[str], LocalImage | None], tool: str) -> list[str]:
    name, _, digest = ref.partition("@")
    repository, _, _ = split_reference(name)
    if local(f"{repository}@{digest}") is not None:
        return []  # the pinned image is here: the build runs exactly it
    here = local(name)
    if here is None or here.has(digest):
        return []
    return [
        f"builder image {name} is {here.shown(repository)} here, {PINS_FILE} pins {digest}: pull it "
        f"({tool} pull {name}@{digest}) or re-pin with `cipbuild image pin`"
    ]


# ---------------------------------------------------------------- pushing


def push_image(engine: str, reference: str, say: Callable[[str], None] = print) -> str:
    """Push ``reference`` (name:tag) to its registry; the manifest digest the registry now has."""
    repository, tag, digest = split_reference(reference)
    if digest is not None:
        raise UserError(f"'{reference}' carries a digest: push a tag", where="--tag")
    tag = tag or "latest"
    if engine == "docker":
        return _docker_push(repository, tag, say)
    with tempfile.TemporaryDirectory(prefix="cipbuild-push-") as tmp:
        digest_file = Path(tmp) / "digest"
        say(f"podman push {repository}:{tag}")
        proc = _run([*_podman(), "push", "--digestfile", str(digest_file), f"{repository}:{tag}"], timeout=None)
        if proc.returncode != 0:
            raise InfrastructureError(f"podman push {repository}:{tag} failed: {_first_line(proc.stderr)}")
        pushed = digest_file.read_text(encoding="utf-8").strip() if digest_file.exists() else ""
    if not DIGEST.fullmatch(pushed):
        raise InfrastructureError(f"podman push {repository}:{tag} reported no digest")
    # Unlike docker, podman does not note the digest the registry got (its own manifest differs:
    # layers are compressed on the way): pulling that digest back (every blob is here already)
    # lets `verify_pins` and `image_digest` know the local image as the pinned one.
    back = _run([*_podman(), "pull", "--quiet", f"{repository}@{pushed}"], timeout=None)
    if back.returncode != 0:
        say(f"warning: pushed, but podman could not pull {repository}@{pushed} back: {_first_line(back.stderr)}")
    return pushed


def _docker_push(repository: str, tag: str, say: Callable[[str], None]) -> str:
    import docker.errors

    pushed = None
    say(f"docker push {repository}:{tag}")
    with _docker(timeout=600) as client:
        try:
            for event in client.images.push(repository, tag=tag, stream=True, decode=True):
                if not isinstance(event, dict):
                    continue
                if event.get("error") or event.get("errorDetail"):
                    detail = event.get("errorDetail") or {}
                    reason = event.get("error") or (detail.get("message") if isinstance(detail, dict) else detail)
                    raise InfrastructureError(f"docker push {repository}:{tag} failed: {_first_line(reason)}")
                aux = event.get("aux")
                if isinstance(aux, dict) and aux.get("Digest"):
                    pushed = str(aux["Digest"])
        except docker.errors.APIError as exc:
            raise InfrastructureError(
                f"docker push {repository}:{tag} failed: {_first_line(exc.explanation or exc)}"
            ) from None
        except InfrastructureError:
            raise
        except Exception as exc:
            raise InfrastructureError(f"docker engine: {_first_line(exc)}") from None
    if pushed is None or not DIGEST.fullmatch(pushed):
        raise InfrastructureError(f"docker push {repository}:{tag} reported no digest")
    return pushed


def check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise UserError(f"unknown engine '{engine}'", where="--engine", hint="docker or podman")


def bad_reference(reference: str) -> str | None:
    """Why ``reference`` cannot be pinned, or None."""
    if "@" in reference:
        return "carries a digest already"
    if not REFERENCE.fullmatch(reference):
        return "is not an image reference (name:tag)"
    return None


__all__ = [
    "PINS_FILE",
    "LocalImage",
    "Unresolved",
    "apply_pins",
    "catalogue_references",
    "pinned",
    "push_image",
    "read_pins",
    "record_pin",
    "registry_digests",
    "render_pins",
    "verify_pins",
    "write_pins",
]

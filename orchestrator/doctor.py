"""Check the host for what builds need, naming each missing prerequisite and how to fix it."""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from .catalog import Catalog
from .diskuse import TRASH, Need, free_bytes, trash_state
from .errors import CipbuildError, InfrastructureError
from .progress import size_text
from .runtime import RunSpec, Runtime, pick_runtime

OK, WARN, FAIL = "ok", "warn", "fail"
# rootless podman's network (slirp4netns, pasta) opens it as the caller
TUN = Path("/dev/net/tun")
QEMU_FOR_ARCH = {"arm64": "qemu-aarch64", "armhf": "qemu-arm", "riscv64": "qemu-riscv64", "i386": "qemu-i386"}


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""


def check_host(
    catalog: Catalog,
    runtime_name: str,
    cache_dir: Path,
    images: dict[str, str],
    binfmt_dir: Path = Path("/proc/sys/fs/binfmt_misc"),
    archs: Iterable[str] | None = None,
) -> list[Check]:
    """What this host has for builds; binfmt for ``archs`` (default: every board's)."""
    checks: list[Check] = []
    runtime: Runtime | None = None
    try:
        runtime = pick_runtime(runtime_name)
        facts = runtime.check()
        checks.append(Check("container engine", OK, f"{facts.get('engine')} {facts.get('version')}"))
    except CipbuildError as exc:
        checks.append(
            Check(
                "container engine",
                FAIL,
                str(exc),
                "start dockerd (or install podman) and set DOCKER_HOST if it listens elsewhere",
            )
        )
    if runtime is not None and runtime.name == "podman" and os.getuid() != 0:
        checks.append(_rootless_network())
    try:
        checks.append(Check("kas on this host", OK, importlib.metadata.version("kas")))
    except importlib.metadata.PackageNotFoundError:
        checks.append(Check("kas on this host", FAIL, "not installed", "pip install kas"))
    if runtime is not None:
        checks.extend(_image_checks(runtime, images))
    wanted = {b.arch for b in catalog.boards.values()} if archs is None else set(archs)
    for arch in sorted(wanted & set(QEMU_FOR_ARCH)):
        entry = binfmt_dir / QEMU_FOR_ARCH[arch]
        if entry.exists():
            checks.append(Check(f"binfmt {arch}", OK, str(entry)))
        else:
            checks.append(
                Check(
                    f"binfmt {arch}",
                    WARN,
                    f"{entry} missing: isar images for {arch} cannot be built",
                    "apt-get install qemu-user-static binfmt-support",
                )
            )
    return checks


def disk_checks(need: Need, out_dir: Path, cache_dir: Path, what: str) -> list[Check]:
    """Free space under --out and --cache against what ``what`` (the selected jobs) should need;
    where both are on one filesystem, against their sum. Build folders in --out's trash count as
    free: a build starts their remover if none is at work."""
    (out_free, out_at), (cache_free, cache_at) = free_bytes(out_dir), free_bytes(cache_dir)
    trash = trash_state(out_dir)
    coming = trash.bytes if trash else 0
    same = os.stat(out_at).st_dev == os.stat(cache_at).st_dev
    places = (
        [("--out and --cache", out_at, out_free, need.out + need.cache)]
        if same
        else [
            ("--out", out_at, out_free, need.out),
            ("--cache", cache_at, cache_free, need.cache),
        ]
    )
    basis = f"{need.measured} from their last build here, the rest estimated" if need.measured else "estimated"
    checks = []
    for flag, at, free, wanted in places:
        freed = coming if at == out_at else 0
        extra = f" (+{size_text(freed)} in --out's trash)" if freed else ""
        detail = f"{size_text(free)} free at {at}{extra}; {what} should need about {size_text(wanted)} ({basis})"
        if free + freed >= wanted:
            checks.append(Check(f"disk space {flag}", OK, detail))
        else:
            fix = f"free some space, or point {flag} at a larger disk"
            checks.append(Check(f"disk space {flag}", WARN, detail, fix))
    if trash:
        held = f"{size_text(trash.bytes)} in {trash.trees} build folder(s) at {out_dir / TRASH}"
        if trash.removing:
            checks.append(Check("trash under --out", OK, f"{held}, being removed in the background"))
        else:
            checks.append(
                Check(
                    "trash under --out",
                    WARN,
                    f"{held}; no remover is at work (one was stopped)",
                    "the next build under this --out removes it in the background",
                )
            )
    return checks


def _rootless_network(tun: Path = TUN) -> Check:
    """Rootless podman gives a container its network through the tun device; a fresh VM may
    have it at mode 0600 (a usual distribution has 0666), and every build would then fail."""
    try:
        os.close(os.open(tun, os.O_RDWR))
    except OSError as exc:
        fix = f"as root: chmod 0666 {tun}"
        if not tun.exists():
            fix = f"as root: mkdir -p {tun.parent} && mknod -m 0666 {tun} c 10 200"
        return Check(
            "rootless podman network",
            FAIL,
            f"cannot open {tun} ({exc.strerror}): rootless containers get no network (slirp4netns)",
            fix,
        )
    return Check("rootless podman network", OK, f"{tun} opens")


def _image_checks(runtime: Runtime, images: dict[str, str]) -> list[Check]:
    out = []
    for system, image in sorted(images.items()):
        try:
            digest = runtime.image_digest(image, pull=False)
        except CipbuildError as exc:
            out.append(_missing_image(runtime, system, image, str(exc)))
            continue
        out.append(Check(f"builder image ({system})", OK, f"{image} {digest[:19]}"))
        if system == "isar" and runtime.name != "native":
            out.append(_privileged(runtime, image))
    return out


def _missing_image(runtime: Runtime, system: str, image: str, why: str) -> Check:
    """An image not pulled yet is fine where its registry answers; else say how to do without it."""
    name = f"builder image ({system})"
    make = f"cipbuild image build --profile {system}, then build with --image cipbuild-builder:{system}"
    asker = getattr(runtime, "registry_problem", None)
    if asker is None:
        return Check(name, WARN, f"{image} is not here: pulled on first build if its registry answers", make)
    problem = asker(image)
    if not problem:
        return Check(name, OK, f"{image} is not here yet: its registry answers, pulled on first build")
    return Check(name, FAIL, f"{image} is not here and its registry does not answer ({problem})", make)


def _privileged(runtime: Runtime, image: str) -> Check:
    """Isar needs a privileged container: try one."""
    spec = RunSpec(
        argv=["sh", "-c", "mount -t tmpfs none /mnt && echo mounted"],
        workdir=Path("/"),
        env={},
        image=image,
        privileged=True,
        name=f"cipbuild-doctor-{os.getpid()}",
    )
    try:
        handle = runtime.start(spec)
        output = list(handle.lines())
        code = handle.wait()
    except CipbuildError as exc:
        return Check("privileged containers", FAIL, str(exc), "isar builds need privileged containers")
    if code == 0 and "mounted" in output:
        return Check("privileged containers", OK, "mount works inside")
    return Check(
        "privileged containers",
        FAIL,
        f"mount failed: {' '.join(output)[-200:]}",
        "allow privileged containers (rootful engine)",
    )


def require_healthy(checks: list[Check]) -> None:
    """InfrastructureError (exit 4) naming the checks that failed; warnings pass."""
    failed = [c.name for c in checks if c.status == FAIL]
    if failed:
        raise InfrastructureError(f"this host cannot build yet: {', '.join(failed)} failed (each check names its fix)")


def to_json(checks: list[Check]) -> list[dict[str, str]]:
    return [asdict(c) for c in checks]

"""LAVA job definitions from a published release: one per (job, plan), with the URLs and sha256
of the objects publish wrote (published.json is the only source of URLs), the board's device
type and boot method, the plan's login, timeouts and test definitions, and metadata that traces
each result back to the job, its input digest and its manifest."""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ..catalog import Catalog, suggest
from ..errors import UserError
from ..models import UpdateStage
from ..publish import PUBLISHED, Published, PublishedJob, PublishedObject

COMPRESSION = {".zst": "zstd", ".xz": "xz", ".gz": "gz", ".bz2": "bz2"}
# per Debian arch: LAVA's qemu context arch, the disk device and kernel arguments start-qemu.sh uses
QEMU = {
    "amd64": ("amd64", "-device ide-hd,drive=disk", "console=ttyS0,115200", "root=/dev/sda rw"),
    "arm64": ("arm64", "-device virtio-blk-device,drive=disk", "console=ttyAMA0", "root=/dev/vda rw"),
    "armhf": ("arm", "-device virtio-blk-device,drive=disk", "console=ttyAMA0", "root=/dev/vda rw"),
    "riscv64": ("riscv64", "-device virtio-blk-device,drive=disk", "console=ttyS0", "root=/dev/vda rw"),
}
UBOOT_KERNEL = {"armhf": "zimage", "arm64": "image"}
ROOTFS_TYPES = ("ext4",)
DISK_TYPES = ("wic",)
NFS_TYPES = ("tar.gz", "tar.bz2")


@dataclass(frozen=True)
class Artifact:
    type: str
    url: str
    sha256: str
    name: str
    compression: str | None


@dataclass
class RenderedJob:
    job: PublishedJob
    plan: str
    text: str
    definition: dict[str, Any]
    urls: list[str] = field(default_factory=list)  # every artifact the job makes LAVA download

    @property
    def file_name(self) -> str:
        return f"{self.job.id}.{self.plan}.yaml"


@dataclass(frozen=True)
class ReleaseView:
    """What the test stage reads of a published release, or of the parts runners published."""

    url: str
    jobs: list[PublishedJob]


def read_published(location: str) -> ReleaseView:
    """The published record at ``location``: a JSON file (`publish --json` or published.json,
    or `publish --part --json` of a fan-out's runner), or a published release (a folder,
    file://, s3://bucket/prefix/REF, https://.../REF)."""
    path = Path(location)
    if path.is_file():
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise UserError(f"cannot read it: {exc.strerror or exc}", where=location) from None
    else:
        from ..store.source import raw_source
        from ..verify import SMALL_LIMIT, SourceError

        # a record by its URL (a runner's part: <store>/<ref>/parts/<job>.json), or a release's published.json
        folder, name = location.rsplit("/", 1) if location.endswith(".json") else (location, PUBLISHED)
        try:
            with raw_source(folder).open(name) as handle:
                data = handle.read(SMALL_LIMIT)
        except SourceError:
            raise UserError(f"holds no {name}: publish the release first", where=location) from None
    try:
        raw = json.loads(data)
        if isinstance(raw, dict):
            raw.pop("summary", None)  # `publish --json` adds what was sent
            raw.pop("urls_expire", None)
            from ..fanout import PART_SCHEMA, PublishedPart

            if raw.get("schema") == PART_SCHEMA:
                raw = {"parts": [raw]}
            if isinstance(raw.get("parts"), list) and raw["parts"]:
                parts = [PublishedPart.model_validate(part) for part in raw["parts"]]
                return ReleaseView(parts[0].url, [part.job for part in parts])
        record = Published.model_validate(raw)
        return ReleaseView(record.url, record.jobs)
    except ValueError as exc:
        first = str(exc).splitlines()[0]
        raise UserError(f"is not a cipbuild published record ({first})", where=location) from None


def plans_for(catalog: Catalog, job: PublishedJob, release: Collection[str]) -> list[str]:
    """The board's plans whose option conditions the job meets (its options and what they imply),
    in the board's order; an update plan only where ``release`` (the record's job ids) holds the
    second build whose update it installs."""
    board = catalog.boards.get(job.board)
    if board is None:
        return []
    options = catalog.with_implied(job.distro, job.options)
    chosen = []
    for name in board.test.plans:
        plan = catalog.testplans[name]
        if not plan.applies(options):
            continue
        if plan.update is not None and _second_id(job, plan.update) not in release:
            continue
        chosen.append(name)
    return chosen


def installs(catalog: Catalog, job: PublishedJob, plan_name: str) -> str | None:
    """The id of the second build whose update ``plan_name`` installs on ``job``, if it is an update plan."""
    update = catalog.testplans[plan_name].update
    return None if update is None else _second_id(job, update)


def _second_id(job: PublishedJob, update: UpdateStage) -> str:
    from ..matrix import FOLLOW_UP_MARK

    return f"{job.id}{FOLLOW_UP_MARK}{update.follow_up}"


def artifacts_of(job: PublishedJob) -> dict[str, Artifact]:
    """The job's published artifacts by type (the first of each type)."""
    found: dict[str, Artifact] = {}
    for obj in job.objects:
        if not obj.name.startswith(f"{job.id}/artifacts/"):
            continue
        found.setdefault(obj.type, _artifact(obj))
    return found


def _artifact(obj: PublishedObject) -> Artifact:
    suffix = PurePosixPath(obj.path).suffix
    return Artifact(obj.type, obj.url, obj.sha256, obj.name, COMPRESSION.get(suffix))


def render(catalog: Catalog, record: ReleaseView | Published, job: PublishedJob, plan_name: str) -> RenderedJob:
    """The LAVA job definition that runs ``plan_name`` on ``job``; UserError when the board is
    not tested in LAVA, the plan does not apply, or the job lacks an artifact the plan needs."""
    import yaml

    board = catalog.boards.get(job.board)
    if board is None:
        hint = suggest(job.board, catalog.boards)
        raise UserError(f"job {job.id}: board {job.board} is not in the catalogue", hint=hint)
    if board.test.device_type is None or board.test.boot_method == "none":
        raise UserError(f"job {job.id}: board {job.board} is not tested in LAVA (no test.device_type)")
    if plan_name not in catalog.testplans:
        raise UserError(f"unknown test plan '{plan_name}'", where="--plan", hint=suggest(plan_name, catalog.testplans))
    plan = catalog.testplans[plan_name]
    release = {j.id for j in record.jobs}
    if plan_name not in board.test.plans or not plan.applies(catalog.with_implied(job.distro, job.options)):
        raise UserError(
            f"job {job.id}: plan {plan_name} does not apply (board {job.board} runs "
            f"{', '.join(plans_for(catalog, job, release)) or 'none'} on it)",
            where="--plan",
        )
    update = plan.update
    if update is not None and _second_id(job, update) not in release:
        raise UserError(
            f"job {job.id}: plan {plan_name} installs the {update.artifact} of its second build "
            f"{update.follow_up}, and the release has no {_second_id(job, update)}",
            hint="in a fan-out, add its part with --with; else build and publish both (a recipe's follow_ups)",
        )
    found = artifacts_of(job)
    missing = [t for t in plan.needs if t not in found]
    if missing:
        raise UserError(
            f"job {job.id}: plan {plan_name} needs a {missing[0]} artifact, and the release has none",
            hint="build the job with the options that deploy it",
        )
    arch = catalog.boards[job.board].arch
    lava_arch, disk_device, console, root = QEMU.get(arch, QEMU["amd64"])
    rootfs = next((found[t] for t in ROOTFS_TYPES if t in found), None)
    disk = next((found[t] for t in DISK_TYPES if t in found), None)
    boot_from_disk = board.test.boot_method == "qemu" and rootfs is None and disk is not None
    context: dict[str, Any] = {
        "job": job,
        "plan": {
            "name": plan_name,
            "summary": plan.summary,
            "login": plan.login,
            "timeouts": {"job": 30, "deploy": 10, "boot": 10, "test": 15, **plan.timeouts},
            "definitions": plan.definitions,
        },
        "board": board.test,
        "release_url": record.url,
        "lava_arch": lava_arch,
        "kernel": found.get("kernel"),
        "initrd": found.get("initrd"),
        "rootfs": rootfs,
        "disk": disk if boot_from_disk or board.test.boot_method == "minimal" else None,
        "firmware": found.get("firmware") if boot_from_disk and arch != "amd64" else None,
        "dtb": found.get("dtb"),
        "nfsrootfs": next((found[t] for t in NFS_TYPES if t in found), None),
        "uboot": {"kernel_type": UBOOT_KERNEL.get(arch, "zimage")},
        "qemu": {
            "disk_device": disk_device + (" -bios /usr/share/ovmf/OVMF.fd" if _ovmf(board.test.qemu, arch) else ""),
            "append": f"{console} {root}" if rootfs else console,
        },
    }
    context["update"] = None if plan.update is None else _update(record, job, plan_name, plan.update)
    if board.test.boot_method in ("qemu", "u-boot") and context["kernel"] is None and not boot_from_disk:
        raise UserError(f"job {job.id}: plan {plan_name} needs a kernel artifact, and the release has none")
    if board.test.boot_method == "minimal" and disk is None:
        raise UserError(f"job {job.id}: board {job.board} boots a wic image, and the release has none")
    text = _template().render(**context)
    definition = yaml.safe_load(text)
    urls = [a.url for a in _downloads(context)]
    if context["update"] is not None:  # the device fetches it: checked before submission all the same
        urls.append(context["update"]["artifact"].url)
    return RenderedJob(job, plan_name, text, definition, urls)


def _update(record: ReleaseView | Published, job: PublishedJob, plan_name: str, update: UpdateStage) -> dict[str, Any]:
    """What the template's update stage needs: the second build's artifact, and the install steps
    with its URL and sha256 in place of {url} and {sha256} (a plain replace: shell braces stay)."""
    second_id = _second_id(job, update)
    second = next(j for j in record.jobs if j.id == second_id)
    artifact = artifacts_of(second).get(update.artifact)
    if artifact is None:
        raise UserError(
            f"job {second_id}: plan {plan_name} installs its {update.artifact} artifact, and the release has none",
            hint="its distro's artifact rules must collect it",
        )
    steps = [step.replace("{url}", artifact.url).replace("{sha256}", artifact.sha256) for step in update.install]
    return {
        "job": second_id,
        "second": second,
        "artifact": artifact,
        "install": steps,
        "boots": update.boots,
    }


def _ovmf(qemu: dict[str, str], arch: str) -> bool:
    """x86 UEFI disk images boot with the worker's OVMF (the firmware upstream's jobs use)."""
    return arch == "amd64" and qemu.get("firmware") == "OVMF"


def _downloads(context: dict[str, Any]) -> list[Artifact]:
    keys = ("kernel", "initrd", "rootfs", "disk", "firmware", "dtb", "nfsrootfs")
    method = context["board"].boot_method
    used = {
        "qemu": ("disk", "firmware") if context["disk"] else ("kernel", "initrd", "rootfs"),
        "u-boot": ("kernel", "dtb", "nfsrootfs"),
        "minimal": ("disk",),
    }.get(method, keys)
    return [context[k] for k in used if context.get(k) is not None]


def _template() -> Any:
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    env = Environment(
        loader=FileSystemLoader(Path(__file__).parent / "templates"),
        undefined=StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
    )
    env.filters["q"] = lambda value: json.dumps(value, ensure_ascii=False)
    return env.get_template("job.yaml.j2")

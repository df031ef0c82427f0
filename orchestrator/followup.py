"""A job's second build (a distro's ``follow_ups``, upstream CI's ``build_swu_v2``): what it takes
from its first build, and where in its own build folder that goes.

The first build's artifacts are read from its job folder (``out/<first-id>/``), never from its
bitbake tmp folder (which a good build removes): only what the first build recorded and hashed,
checked again while it is copied. Lines a follow-up appends to recipes become ``.bbappend`` files
that the kas file's last local.conf section adds to BBFILES, and the kas file names them in a
comment, so the input digest and ``plan --why`` see them.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .catalog import Catalog
from .errors import InfrastructureError, UserError
from .matrix import Job
from .models import FollowUp
from .status import Status

if TYPE_CHECKING:
    from .artifacts import Artifact

APPENDS = "cipbuild-appends"  # in the build folder (bitbake's TOPDIR)
SECTION = "zz-cipbuild-follow-up"  # kas writes sections sorted by name: after every fragment's


def follow_up_of(catalog: Catalog, job: Job) -> FollowUp:
    return catalog.distros[job.distro].follow_ups[job.follow_up]


def local_conf_section(catalog: Catalog, job: Job) -> str | None:
    """The local.conf lines that make the build read the follow-up's appends, or None."""
    follow_up = follow_up_of(catalog, job)
    if not follow_up.appends:
        return None
    lines = [
        f"# follow-up {job.follow_up} of {job.first.id}: lines appended to recipes, as {APPENDS}/<recipe>.bbappend"
    ]
    for recipe, text in sorted(follow_up.appends.items()):
        lines.append(f"# {recipe}:")
        lines.extend(f"#   {line}" for line in text.strip().splitlines())
    lines.append(f'BBFILES += "${{TOPDIR}}/{APPENDS}/*.bbappend"')
    return "\n".join(lines) + "\n"


def previous_artifacts(catalog: Catalog, job: Job, first_dir: Path) -> list[Artifact]:
    """The first build's artifacts the follow-up reads: its recorded ones of the follow-up's
    ``previous`` types. UserError when the first build is not a good one in ``first_dir``."""
    from .buildjob import read_json, up_to_date

    follow_up = follow_up_of(catalog, job)
    meta = read_json(first_dir / "metadata.json")
    if not meta or meta.get("status") != Status.SUCCESS:
        state = meta.get("status") if meta else "not built"
        raise UserError(
            f"{job.id} builds after {job.first.id}, which is {state} in {first_dir.parent}",
            where="JOB_ID",
            hint=f"build {job.first.id} first (or both: `cipbuild build {job.id}` builds its first build too)",
        )
    recorded = up_to_date(first_dir, str(meta.get("inputs_digest")))
    if recorded is None:
        raise UserError(
            f"an artifact of {job.first.id} in {first_dir.parent} changed or went since it was built",
            where="JOB_ID",
            hint=f"build {job.first.id} again (--force)",
        )
    found = [art for art in recorded if art.type in follow_up.previous]
    if follow_up.previous and not found:
        raise UserError(
            f"{job.first.id} deployed none of {', '.join(follow_up.previous)}, which {job.id} needs",
            where=f"follow-up {job.follow_up}",
        )
    return found


def inputs_of(catalog: Catalog, job: Job, first_dir: Path) -> dict[str, Any]:
    """What the second build reads besides its kas file: the first build's artifacts, by digest."""
    return {
        "name": job.follow_up,
        "of": job.first.id,
        "previous": [
            {"type": a.type, "path": a.path, "sha256": a.sha256} for a in previous_artifacts(catalog, job, first_dir)
        ],
    }


def place(catalog: Catalog, job: Job, first_dir: Path, build_dir: Path, recorded: dict[str, Any]) -> None:
    """Fill the build folder for the second build: the first build's artifacts in the follow-up's
    ``previous_folder`` (each checked against the sha256 ``recorded`` in the inputs), its appends
    in ``cipbuild-appends/``. InfrastructureError when a copy is not what was recorded."""
    from .artifacts import OPEN_DIR, copy_hashing, fresh_dir

    follow_up = follow_up_of(catalog, job)
    folder = build_dir / follow_up.previous_folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    out_fd = fresh_dir(folder.parent, folder.name)
    src_fd = os.open(first_dir, OPEN_DIR)
    try:
        for previous in recorded["previous"]:
            path, name = previous["path"], Path(previous["path"]).name
            try:
                _, digest = copy_hashing(src_fd, path, out_fd, name)
            except OSError as exc:
                raise InfrastructureError(f"cannot copy {first_dir / path}: {exc.strerror or exc}") from None
            if digest != previous["sha256"]:
                with contextlib.suppress(OSError):
                    os.unlink(name, dir_fd=out_fd)
                raise InfrastructureError(f"{first_dir / path} is no longer the file {job.first.id} recorded")
    finally:
        os.close(src_fd)
        os.close(out_fd)
    appends_fd = fresh_dir(build_dir, APPENDS)
    try:
        for recipe, text in follow_up.appends.items():
            fd = os.open(f"{recipe}.bbappend", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=appends_fd)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text if text.endswith("\n") else text + "\n")
    finally:
        os.close(appends_fd)

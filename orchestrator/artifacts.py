"""What a build deployed -> Artifact records (type, size, sha256), by the board's artifact rules.

The deploy folder is written by the build, so it is untrusted: every file is reached without
following a symlink out of it, copied (never hard-linked: the build folder may change later) and
hashed in the same pass.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .catalog import Catalog
from .kasfile import job_facts
from .matrix import Expander, Job
from .models import ArtifactRule

CHUNK = 1 << 20
OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


@dataclass(frozen=True)
class Artifact:
    type: str
    path: str  # relative to the job folder
    size: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def rules_for(catalog: Catalog, job: Job) -> list[ArtifactRule]:
    """The artifact rules that apply to ``job``: distro-wide, then the board's, filtered by options."""
    have = set(Expander(catalog).closure_names(job))
    rules = [*catalog.distros[job.distro].artifacts, *catalog.boards[job.board].distros[job.distro].artifacts]
    return [r for r in rules if set(r.when) <= have and not set(r.unless) & have]


def deploy_dir_of(job_dir: Path, machine: str) -> Path:
    return job_dir / "build" / "tmp" / "deploy" / "images" / machine


def collect(catalog: Catalog, job: Job, job_dir: Path) -> tuple[list[Artifact], list[str]]:
    """Copy what the rules name from the job's deploy folder into ``job_dir/artifacts``.

    Returns the artifacts and the problems (missing required files, refused files). A name that
    leads outside the deploy folder (a symlinked file or folder on the way) is refused; a symlink
    to another file of the deploy folder (Yocto's stable names) is followed.
    """
    facts = job_facts(catalog, job)
    trusted = Path(os.path.realpath(job_dir))
    deploy = deploy_dir_of(trusted, facts.machine)
    found: list[Artifact] = []
    problems: list[str] = []
    out_fd = _fresh_dir(trusted, "artifacts")
    if os.path.lexists(deploy) and not _plain_dir(trusted, deploy):
        problems.append("the deploy folder is a symlink: refused")
    try:
        seen: set[str] = set()
        for rule in rules_for(catalog, job):
            pattern = rule.glob.format(image=facts.image, rootfs=facts.rootfs, machine=facts.machine)
            if pattern.startswith("/") or ".." in Path(pattern).parts:
                problems.append(f"artifact rule '{rule.glob}' leaves the deploy folder: refused")
                continue
            names = []
            for match in sorted(deploy.glob(pattern)) if _plain_dir(trusted, deploy) else []:
                rel = match.relative_to(deploy)
                if match.is_dir() and not match.is_symlink():
                    continue  # a folder is never an artifact
                names.append(str(rel))
            if not names and rule.required:
                problems.append(f"missing {rule.type} artifact {pattern}")
            for name in names:
                if name in seen:
                    continue
                seen.add(name)
                source = _inside(deploy, name)
                if source is None:
                    problems.append(f"{name} leads outside the deploy folder (symlink): refused")
                    continue
                try:
                    size, digest = _copy_hashing(source, out_fd, name.replace("/", "_"))
                except OSError as exc:
                    problems.append(f"{name}: {exc.strerror}: refused")
                    continue
                found.append(Artifact(rule.type, f"artifacts/{name.replace('/', '_')}", size, digest))
    finally:
        os.close(out_fd)
    return found, problems


def _plain_dir(base: Path, folder: Path) -> bool:
    """``folder`` exists below ``base`` with no symlink on the way."""
    return os.path.realpath(folder) == str(folder) and folder.is_dir() and folder.is_relative_to(base)


def _inside(deploy: Path, name: str) -> str | None:
    """The real path of deploy/name when it is a regular file inside the deploy folder."""
    real = os.path.realpath(deploy / name)
    if not real.startswith(str(deploy) + os.sep):
        return None
    return real if os.path.isfile(real) else None


def _fresh_dir(parent: Path, name: str) -> int:
    """An empty ``parent/name`` made by us (whatever a build left there is removed), as an fd."""
    parent_fd = os.open(parent, OPEN_DIR)
    try:
        try:
            st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(parent / name)
            else:
                os.unlink(name, dir_fd=parent_fd)
        except FileNotFoundError:
            pass
        os.mkdir(name, 0o755, dir_fd=parent_fd)
        return os.open(name, OPEN_DIR, dir_fd=parent_fd)
    finally:
        os.close(parent_fd)


def _copy_hashing(source: str, out_fd: int, name: str) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    src = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        if not stat.S_ISREG(os.fstat(src).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        dst = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=out_fd)
        try:
            while chunk := os.read(src, CHUNK):
                digest.update(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(dst, view) :]
                size += len(chunk)
        finally:
            os.close(dst)
    finally:
        os.close(src)
    return size, digest.hexdigest()

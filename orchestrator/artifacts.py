"""What a build deployed -> Artifact records (type, size, sha256), by the board's artifact rules."""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .catalog import Catalog
from .errors import BuildError
from .kasfile import job_facts
from .matrix import Expander, Job
from .models import ArtifactRule

CHUNK = 1 << 20


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


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def collect(catalog: Catalog, job: Job, deploy_dir: Path, job_dir: Path) -> tuple[list[Artifact], list[str]]:
    """Hard-link what the rules name from ``deploy_dir`` into ``job_dir/artifacts``, hashing each once.

    Returns the artifacts and the problems (missing required files, refused files). A symlink, or
    a name that resolves outside the deploy folder, is refused: a build must not make cipbuild
    publish the host's files.
    """
    facts = job_facts(catalog, job)
    root = deploy_dir.resolve()
    out_dir = job_dir / "artifacts"
    found: list[Artifact] = []
    problems: list[str] = []
    seen: set[Path] = set()
    for rule in rules_for(catalog, job):
        pattern = rule.glob.format(image=facts.image, rootfs=facts.rootfs, machine=facts.machine)
        if pattern.startswith("/") or ".." in Path(pattern).parts:
            problems.append(f"artifact rule '{rule.glob}' leaves the deploy folder: refused")
            continue
        matches = sorted(deploy_dir.glob(pattern)) if deploy_dir.is_dir() else []
        if not matches and rule.required:
            problems.append(f"missing {rule.type} artifact {pattern}")
        for path in matches:
            if path in seen:
                continue
            seen.add(path)
            if path.is_symlink():
                problems.append(f"{path.name} is a symlink: refused")
                continue
            real = path.resolve()
            if not real.is_relative_to(root) or not real.is_file():
                problems.append(f"{path.name} is not a regular file inside the deploy folder: refused")
                continue
            rel = path.relative_to(deploy_dir)
            dest = out_dir / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.exists():
                dest.unlink()
            try:
                os.link(real, dest)
            except OSError:
                import shutil

                shutil.copy2(real, dest)
            found.append(Artifact(rule.type, str(dest.relative_to(job_dir)), dest.stat().st_size, sha256_of(dest)))
    return found, problems


def require(artifacts: list[Artifact], problems: list[str]) -> list[Artifact]:
    if problems:
        raise BuildError("; ".join(problems))
    return artifacts

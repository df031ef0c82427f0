"""`build --check-reproducible`: build a job a second time, in a fresh build folder at another path
with a sstate cache of its own (nothing of the first build is reused, as the Yocto Project's
reproducibility test does), compare every artifact bit for bit, explain each difference down to
the file inside, and write ``reproducibility.json`` into the first build's folder.

The second build lives in ``<out>/.reproducibility/<job-id>/``; its private sstate goes when the
check ends, its artifacts stay only when they differ (for diffoscope or a second look).
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .buildjob import BuildContext, BuildResult, now, read_json, write_json
from .diskuse import remove_tree
from .reprodiff import ArtifactComparison, compare_sets, summary_lines
from .status import Status

REPORT = "reproducibility.json"
REPORT_SCHEMA = "cipbuild-reproducibility/1"
SECOND = ".reproducibility"


@dataclass
class Check:
    """One job's check: its two builds and how their artifacts compare."""

    first: BuildResult
    second: BuildResult | None = None
    results: list[ArtifactComparison] = dataclasses.field(default_factory=list)
    compare_s: float = 0.0
    error: str = ""

    @property
    def identical(self) -> bool:
        return not self.error and all(r.identical for r in self.results)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": REPORT_SCHEMA,
            "job": self.first.job.id,
            "inputs_digest": self.first.inputs_digest,
            "checked": now(),
            "identical": self.identical,
            "error": self.error or None,
            "first_build": str(self.first.job_dir),
            "second_build": str(self.second.job_dir) if self.second else None,
            "second_build_s": round(self.second.duration, 3) if self.second else None,
            "compare_s": round(self.compare_s, 3),
            "artifacts": [r.to_json() for r in self.results],
        }

    def summary(self) -> list[str]:
        if self.error:
            return [f"{self.first.job.id}: not checked: {self.error}"]
        lines = summary_lines(self.results)
        return [f"{self.first.job.id}: {lines[0]}", *lines[1:]]


def second_context(ctx: BuildContext, job_id: str) -> BuildContext:
    """The first build's context, moved: another --out, a sstate cache of its own, --force."""
    place = ctx.out_dir / SECOND / job_id
    return dataclasses.replace(
        ctx,
        out_dir=place / "out",
        sstate_dir=place / "sstate",
        force=True,
        keep_build=False,
        published={},
        first_builds=ctx.first_builds or ctx.out_dir,  # a second build reads the same first build
        tidy_later=False,  # the whole place goes when the check is done
    )


def compare_builds(check: Check) -> None:
    """Fill ``check.results`` from the two builds' artifacts (their recorded sha256s settle what
    is identical without a read)."""
    assert check.second is not None
    first_meta = read_json(check.first.job_dir / "metadata.json") or {}
    second_meta = read_json(check.second.job_dir / "metadata.json") or {}
    sums = [{a["path"]: a["sha256"] for a in meta.get("artifacts", [])} for meta in (first_meta, second_meta)]
    names = sorted(set(sums[0]) | set(sums[1]))
    digests = {n: (sums[0][n], sums[1][n]) for n in names if n in sums[0] and n in sums[1]}
    started = time.monotonic()
    scratch = check.second.job_dir.parent.parent / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        check.results = compare_sets(check.first.job_dir, check.second.job_dir, names, digests=digests, scratch=scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    check.compare_s = time.monotonic() - started


def settle(check: Check, ctx2: BuildContext) -> None:
    """Write the report into the first build's folder; drop what the second build no longer needs."""
    write_json(check.first.job_dir / REPORT, check.to_json())
    if ctx2.sstate_dir is not None:
        remove_tree(ctx2.sstate_dir)
    if check.second is not None and check.identical:
        remove_tree(check.second.job_dir.parent.parent)


def checkable(result: BuildResult) -> bool:
    return result.status in (Status.SUCCESS, Status.UP_TO_DATE)


def recorded(job_dir: Path, inputs_digest: str) -> dict[str, Any] | None:
    """The job's reproducibility report when it is about these inputs (a stale one says nothing)."""
    report = read_json(job_dir / REPORT)
    if report is None or report.get("inputs_digest") != inputs_digest or report.get("schema") != REPORT_SCHEMA:
        return None
    return report

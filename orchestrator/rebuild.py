"""Why a job is built again: its inputs now against those of its last successful build in the same
folder (``last-success.json``, written when a build succeeds), as one line for the progress output
and in full for metadata.json and `cipbuild plan --why`."""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .buildjob import BuildContext
    from .matrix import Job

LAST_SUCCESS = "last-success.json"
KAS_LINES_SHOWN = 40


@dataclass(frozen=True)
class Why:
    """``summary`` is one line; ``changes`` maps each input that changed to what changed in it."""

    summary: str
    changes: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"summary": self.summary, "changes": self.changes}


def record_success(job_dir: Path, inputs: dict[str, object], digest: str, kas_text: str, finished: str) -> None:
    """Keep what the successful build was made of, so the next one can say what changed."""
    from .buildjob import write_json

    write_json(
        job_dir / LAST_SUCCESS,
        {"inputs_digest": digest, "finished": finished, "inputs": inputs, "kas_file": kas_text},
    )


def why_rebuilt(job_dir: Path, inputs: dict[str, object], digest: str, kas_text: str, *, forced: bool) -> Why:
    """What changed since the last successful build in ``job_dir``; an empty summary when nothing
    did (the job is up to date, or only --force asks for the build)."""
    last = _read(job_dir / LAST_SUCCESS)
    if last is None:
        return Why("--force" if forced else "no successful build in this folder yet")
    if last.get("inputs_digest") == digest:
        return Why("--force, nothing changed" if forced else "")
    before = last.get("inputs") if isinstance(last.get("inputs"), dict) else {}
    assert isinstance(before, dict)
    changes = compare(before, inputs, str(last.get("kas_file", "")), kas_text)
    shown = {k: v for k, v in changes.items() if not (k == "kas_file" and _only_pins(v, changes.get("upstream", {})))}
    summary = "; ".join(_short(key, change) for key, change in shown.items()) or "the input digest is made differently"
    return Why(("--force; " if forced else "") + summary, changes)


def would_build(ctx: BuildContext, job: Job, firsts: dict[str, bool] | None = None) -> tuple[bool, Why]:
    """Whether `cipbuild build` would build ``job`` now, and why: `plan --why`, without building.
    A second build is judged after its first (``firsts``: job id -> would build): its inputs are
    the first's artifacts, which a build of the first replaces."""
    from .buildjob import digest_of, inputs_of, paths, up_to_date
    from .errors import UserError
    from .kasfile import render

    if job.follow_up and (firsts or {}).get(job.first.id):
        return True, Why(f"after its first build {job.first.id}, which would be built")
    kas_text = render(ctx.catalog, job)
    try:
        inputs = inputs_of(ctx, job, kas_text)
    except UserError as exc:
        if not job.follow_up:
            raise
        return True, Why(f"after its first build: {exc.message}")  # which is not here (yet)
    digest = digest_of(inputs)
    job_dir = paths(ctx, job)["job_dir"]
    if not ctx.force and up_to_date(job_dir, digest) is not None:
        return False, Why("")
    why = why_rebuilt(job_dir, inputs, digest, kas_text, forced=ctx.force)
    if not why.summary:  # same inputs as its last success, but an artifact is gone or was touched
        why = Why("an artifact of its last good build is missing or changed")
    return True, why


def compare(before: dict[str, Any], now: dict[str, Any], kas_before: str, kas_now: str) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    if before.get("kas_file_sha256") != now.get("kas_file_sha256"):
        from .kasfile import kas_body

        lines = kas_body(kas_before).splitlines(), kas_body(kas_now).splitlines()
        diff = list(difflib.unified_diff(*lines, "job.yml (last success)", "job.yml", n=0, lineterm=""))
        if diff:  # no line differs when only the way it is hashed changed
            changes["kas_file"] = [line for line in diff if not line.startswith("@@")][:KAS_LINES_SHOWN]
    upstream_before, upstream_now = before.get("upstream") or {}, now.get("upstream") or {}
    moved = {}
    for name in sorted(set(upstream_before) | set(upstream_now)):
        old, new = upstream_before.get(name), upstream_now.get(name)
        if old != new:
            moved[name] = {"before": old, "now": new}
    if moved:
        changes["upstream"] = moved
    for key in ("builder_image", "builder_image_digest", "cipbuild_version"):
        if before.get(key) != now.get(key):
            changes[key] = {"before": before.get(key), "now": now.get(key)}
    if before.get("env_sha256") != now.get("env_sha256"):
        env_before, env_now = before.get("env") or {}, now.get("env") or {}
        names = sorted(k for k in set(env_before) | set(env_now) if env_before.get(k) != env_now.get(k))
        # a value's hidden part (credentials in a URL) changes the digest but is never shown
        changes["env"] = {n: {"before": env_before.get(n), "now": env_now.get(n)} for n in names} or {
            "hidden": "a build-affecting variable changed in a part that is never written down"
        }
    known = {"kas_file_sha256", "upstream", "env", "env_sha256"} | set(changes)
    for key in sorted(set(before) | set(now)):  # artifact rules, facts, and whatever comes later
        if key not in known and before.get(key) != now.get(key):
            changes[key] = {"before": before.get(key), "now": now.get(key)}
    return changes


def _only_pins(kas_lines: list[str], upstream: dict[str, Any]) -> bool:
    """The kas file changed only where it pins the upstream commits that moved (said once, there)."""
    commits = {str((m.get(side) or {}).get("commit")) for m in upstream.values() for side in ("before", "now")}
    edits = [line for line in kas_lines if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    return bool(commits) and all(any(c in line for c in commits) for line in edits)


def _short(key: str, change: Any) -> str:
    if key == "kas_file":
        edits = [line for line in change if line[:1] in "+-" and not line.startswith(("+++", "---"))]
        shown = edits[0][1:].strip() if edits else ""
        return f"kas file: {len(edits)} line(s) changed" + (f" ({shown[:60]})" if shown else "")
    if key == "upstream":
        parts = []
        for name, moved in change.items():
            old, new = moved["before"] or {}, moved["now"] or {}
            if old.get("url") != new.get("url"):
                parts.append(f"upstream {name} URL {old.get('url')} -> {new.get('url')}")
            else:
                parts.append(f"upstream {name} {str(old.get('commit'))[:12]} -> {str(new.get('commit'))[:12]}")
        return "; ".join(parts)
    if key == "env":
        return "environment: " + ", ".join(change) if "hidden" not in change else "environment (hidden part)"
    if key == "builder_image_digest":
        return f"builder image digest {str(change['before'])[:19]} -> {str(change['now'])[:19]}"
    if key in ("builder_image", "cipbuild_version"):
        return f"{key.replace('_', ' ')} {change['before']} -> {change['now']}"
    return key.replace("_", " ")


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None

"""Run rendered LAVA jobs: check every artifact URL first, submit, wait on state and health,
resubmit what the infrastructure broke (never a failing test), bring back JUnit and results, and
write the handoff file a results consumer (SQUAD, KernelCI) reads."""

from __future__ import annotations

import contextlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from xml.etree import ElementTree

from pydantic import BaseModel, ConfigDict, Field

from ..cancel import CancelToken
from ..errors import InfrastructureError, UserError
from ..status import Status
from .lava import Lava
from .render import RenderedJob

HANDOFF = "handoff.json"
HANDOFF_SCHEMA = "cipbuild-test-handoff/1"
WAITING = {"Submitted": Status.QUEUED, "Scheduling": Status.QUEUED, "Scheduled": Status.QUEUED}
JUNIT_LIMIT = 32 << 20

Event = Callable[[str, Status, str], None]


@dataclass
class TestRun:
    """One (job, plan) through the lab."""

    rendered: RenderedJob
    status: Status = Status.PENDING
    lava_ids: list[int] = field(default_factory=list)
    health: str = ""
    error: str = ""
    failed: list[str] = field(default_factory=list)
    cases: list[dict[str, str]] = field(default_factory=list)
    junit: Path | None = None
    submitted: float = 0.0
    seconds: float = 0.0

    @property
    def key(self) -> str:
        return f"{self.rendered.job.id}:{self.rendered.plan}"


@dataclass(frozen=True)
class Options:
    retries: int = 2  # resubmissions of a job the infrastructure broke
    timeout: float = 3600.0  # per LAVA job, from submission
    server_grace: float = 600.0  # how long LAVA may not answer before its jobs count as lost
    poll: float = 3.0
    backoff: float = 10.0


def unreachable(url: str) -> str | None:
    """Why LAVA could not download ``url`` (HEAD, then a one-byte ranged GET), or None."""
    if not url.startswith(("http://", "https://")):
        return "LAVA downloads over HTTP(S) only: publish to S3 or serve the store over HTTP"
    for method, headers in (("HEAD", {}), ("GET", {"Range": "bytes=0-0"})):
        request = urllib.request.Request(url, method=method, headers={"User-Agent": "cipbuild", **headers})
        try:
            with urllib.request.urlopen(request, timeout=30):
                return None
        except urllib.error.HTTPError as exc:
            if exc.code in (403, 404, 410):
                return f"HTTP {exc.code}"
            if method == "GET":
                return f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            return f"cannot be fetched: {getattr(exc, 'reason', exc)}"
    return None


def preflight(runs: list[TestRun], on_event: Event) -> None:
    """Refuse, before anything is submitted, each run one of whose artifacts LAVA cannot fetch."""
    checked: dict[str, str | None] = {}
    for run in runs:
        for url in run.rendered.urls:
            if url not in checked:
                checked[url] = unreachable(url)
            if checked[url] is not None:
                run.status, run.error = Status.INFRA_ERROR, f"artifact {url}: {checked[url]} (not submitted)"
                on_event(run.key, run.status, run.error)
                break


def run_all(lava: Lava, runs: list[TestRun], results: Path, token: CancelToken, on_event: Event, opts: Options) -> None:
    """Submit every run still pending and wait until each is final; results under ``results``."""
    pending = [r for r in runs if r.status == Status.PENDING]
    for run in pending:
        _submit(lava, run, on_event)
    lost_since: float | None = None
    while any(not r.status.final for r in runs):
        if token.sleep(opts.poll):
            _cancel(lava, runs, on_event)
            token.check()
        for run in [r for r in runs if not r.status.final]:
            try:
                job = _get(lava, f"jobs/{run.lava_ids[-1]}/")
            except InfrastructureError as exc:
                lost_since = lost_since or time.monotonic()
                if time.monotonic() - lost_since > opts.server_grace:
                    for lost in [r for r in runs if not r.status.final]:
                        lost.status, lost.error = Status.INFRA_ERROR, f"LAVA stopped answering: {exc}"
                        on_event(lost.key, lost.status, lost.error)
                    return
                break
            lost_since = None
            state = str(job.get("state"))
            if state != "Finished":
                status = WAITING.get(state, Status.RUNNING)
                if status != run.status:
                    run.status = status
                    on_event(run.key, status, f"LAVA job {run.lava_ids[-1]} {state.lower()}")
                if time.monotonic() - run.submitted > opts.timeout:
                    run.status, run.error = (
                        Status.INFRA_ERROR,
                        f"LAVA job {run.lava_ids[-1]} still {state} after the timeout",
                    )
                    on_event(run.key, run.status, run.error)
                continue
            _finished(lava, run, str(job.get("health")), results, token, on_event, opts)


def _submit(lava: Lava, run: TestRun, on_event: Event) -> None:
    status, answer = lava.request("POST", "jobs/", {"definition": run.rendered.text})
    if status in (401, 403):
        detail = answer.get("detail") if isinstance(answer, dict) else answer
        raise InfrastructureError(
            f"LAVA at {lava.url} refused the submission ({status}: {detail}): check CIPBUILD_LAVA_TOKEN"
        )
    if status != 201 or not isinstance(answer, dict) or not answer.get("job_ids"):
        raise UserError(f"{run.rendered.file_name}: LAVA refused it ({status}: {str(answer)[:300]})")
    run.lava_ids.append(int(answer["job_ids"][0]))
    run.submitted = time.monotonic()
    run.status = Status.QUEUED
    on_event(run.key, run.status, f"LAVA job {run.lava_ids[-1]} submitted: {lava.url}scheduler/job/{run.lava_ids[-1]}")


def _get(lava: Lava, path: str) -> Any:
    status, answer = lava.request("GET", path)
    if status >= 500 or status in (401, 403):
        raise InfrastructureError(f"LAVA answered {status} for {path}")
    if status != 200:
        raise InfrastructureError(f"LAVA answered {status} for {path}: {str(answer)[:200]}")
    return answer


def _finished(
    lava: Lava, run: TestRun, health: str, results: Path, token: CancelToken, on_event: Event, opts: Options
) -> None:
    run.health = health
    run.seconds = time.monotonic() - run.submitted
    lava_id = run.lava_ids[-1]
    if health == "Incomplete":
        error_type, message = _why_incomplete(lava, lava_id)
        if error_type == "Infrastructure" and len(run.lava_ids) <= opts.retries:
            on_event(run.key, Status.QUEUED, f"LAVA job {lava_id} broke ({message}): resubmitting")
            if token.sleep(opts.backoff * len(run.lava_ids)):
                token.check()
            _submit(lava, run, on_event)
            return
        run.status = Status.INFRA_ERROR if error_type == "Infrastructure" else Status.FAILED
        run.error = f"LAVA job {lava_id} Incomplete ({error_type}): {message}"
    elif health == "Canceled":
        run.status, run.error = Status.INTERRUPTED, f"LAVA job {lava_id} was canceled"
    else:
        run.junit = _save_junit(lava, run, results)
        run.cases = _cases(run.junit)
        run.failed = [f"{c['suite']}/{c['name']}" for c in run.cases if c["result"] == "fail"]
        run.status = Status.FAILED if run.failed else Status.SUCCESS
        run.error = f"failed: {', '.join(run.failed)}" if run.failed else ""
    on_event(run.key, run.status, run.error or f"{len(run.cases)} case(s) passed in {run.seconds:.0f} s")


def _why_incomplete(lava: Lava, lava_id: int) -> tuple[str, str]:
    """LAVA's error_type and message for an Incomplete job (test `job` of suite `lava`)."""
    try:
        answer = _get(lava, f"jobs/{lava_id}/tests/?suite__name=lava&name=job")
    except InfrastructureError:
        return "Infrastructure", "its results cannot be read"
    for item in answer.get("results", []) if isinstance(answer, dict) else []:
        metadata = item.get("metadata")
        if isinstance(metadata, str):
            try:
                import yaml

                metadata = yaml.safe_load(metadata)
            except ValueError:
                metadata = {}
        if isinstance(metadata, dict):
            return str(metadata.get("error_type", "Unknown")), str(metadata.get("error_msg", ""))[:300]
    return "Unknown", "no reason recorded"


def _save_junit(lava: Lava, run: TestRun, results: Path) -> Path:
    status, answer = lava.request("GET", f"jobs/{run.lava_ids[-1]}/junit/")
    if status != 200:
        raise InfrastructureError(f"LAVA answered {status} for the JUnit of job {run.lava_ids[-1]}")
    text = answer if isinstance(answer, str) else json.dumps(answer)
    folder = results / run.rendered.job.id
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{run.rendered.plan}.xml"
    path.write_text(text[:JUNIT_LIMIT], encoding="utf-8")
    return path


def _cases(junit: Path) -> list[dict[str, str]]:
    try:
        root = ElementTree.fromstring(junit.read_bytes())
    except ElementTree.ParseError as exc:
        raise InfrastructureError(f"{junit}: LAVA's JUnit is not XML: {exc}") from None
    cases = []
    for case in root.iter("testcase"):
        failed = case.find("failure") is not None or case.find("error") is not None
        skipped = case.find("skipped") is not None
        cases.append(
            {
                "suite": str(case.get("classname", "")),
                "name": str(case.get("name", "")),
                "result": "fail" if failed else "skip" if skipped else "pass",
            }
        )
    return cases


def _cancel(lava: Lava, runs: list[TestRun], on_event: Event) -> None:
    """Ctrl-C: cancel the LAVA jobs under way, so the lab is not left busy."""
    for run in runs:
        if run.lava_ids and not run.status.final:
            with contextlib.suppress(InfrastructureError):
                lava.request("GET", f"jobs/{run.lava_ids[-1]}/cancel/")
            run.status, run.error = Status.INTERRUPTED, f"LAVA job {run.lava_ids[-1]} canceled"
            on_event(run.key, run.status, run.error)


# --- the handoff: what a results consumer reads -------------------------------------------------


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class HandoffCase(_Record):
    suite: str
    name: str
    result: Literal["pass", "fail", "skip"]


class HandoffRun(_Record):
    job: str
    board: str
    plan: str
    inputs_digest: str
    manifest: str
    artifacts: list[str] = Field(description="every URL the LAVA job downloads")
    lava: str = Field(description="the LAVA server")
    lava_jobs: list[int] = Field(description="every submission, the last one decides")
    status: str
    health: str
    error: str
    junit: str | None
    cases: list[HandoffCase]


class Handoff(_Record):
    """handoff.json: per (job, plan), the artifacts, LAVA job ids, health and results."""

    schema_: Literal["cipbuild-test-handoff/1"] = Field(alias="schema")
    release: str
    runs: list[HandoffRun]


def handoff(lava: Lava, release: str, runs: list[TestRun]) -> Handoff:
    return Handoff.model_validate(
        {
            "schema": HANDOFF_SCHEMA,
            "release": release,
            "runs": [
                {
                    "job": r.rendered.job.id,
                    "board": r.rendered.job.board,
                    "plan": r.rendered.plan,
                    "inputs_digest": r.rendered.job.inputs_digest,
                    "manifest": r.rendered.job.manifest,
                    "artifacts": r.rendered.urls,
                    "lava": lava.url,
                    "lava_jobs": r.lava_ids,
                    "status": str(r.status),
                    "health": r.health,
                    "error": r.error,
                    "junit": str(r.junit) if r.junit else None,
                    "cases": r.cases,
                }
                for r in runs
            ],
        }
    )


def handoff_schema() -> dict[str, Any]:
    schema = Handoff.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://cipbuild.invalid/schemas/handoff.schema.json"
    return schema


def write_handoff_schema(folder: Path) -> Path:
    path = folder / "handoff.schema.json"
    path.write_text(json.dumps(handoff_schema(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path

"""Verbs of the test stage: test render (LAVA job definitions from a published release), test run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..errors import UserError, VerificationError
from ..output import print_json, print_line, print_table
from .app import JsonOpt, app, context

if TYPE_CHECKING:
    from ..catalog import Catalog
    from ..publish import PublishedJob
    from ..teststage.lava import Lava
    from ..teststage.render import ReleaseView, RenderedJob
    from ..teststage.run import Options, TestRun

test_app = typer.Typer(help="The test stage: LAVA jobs from a published release.", no_args_is_help=True)
app.add_typer(test_app, name="test")

ReleaseArg = Annotated[
    str,
    typer.Argument(
        help="The published release: published.json (or `publish --json` output), its folder, "
        "s3://bucket/prefix/REF or https://.../REF.",
        show_default=False,
    ),
]

ReleaseJobsArg = Annotated[list[str] | None, typer.Argument(help="Jobs of the release (default: all).")]
PlanOpt = Annotated[
    list[str] | None,
    typer.Option("--plan", "-p", metavar="PLAN", help="Only these plans (default: every plan that applies)."),
]
WithOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--with",
        metavar="RECORD",
        help="Another published record whose jobs join the release's, as RELEASE is given. In a fan-out, "
        "the part of a job's second build (parts/<job>--swu-v2.json), which the job's update plan installs.",
    ),
]
RecipeOpt = Annotated[
    str | None, typer.Option("--recipe", "-r", metavar="RECIPE", help="Only the release's jobs of this recipe.")
]


def _read_records(release: str, also: list[str]) -> ReleaseView:
    """RELEASE's record with the jobs of every --with record added (a job in both: RELEASE's)."""
    from ..teststage.render import ReleaseView, read_published

    record = read_published(release)
    jobs = {job.id: job for job in record.jobs}
    for location in also:
        for job in read_published(location).jobs:
            jobs.setdefault(job.id, job)
    return ReleaseView(record.url, list(jobs.values()))


def _render_all(
    cat: Catalog,
    record: ReleaseView,
    release: str,
    job_ids: list[str] | None,
    plan: list[str] | None,
    recipe: str | None = None,
) -> list[RenderedJob]:
    """Every (job, plan) of the release the arguments select, rendered."""
    from ..catalog import suggest
    from ..matrix import FOLLOW_UP_MARK
    from ..teststage.render import installs, plans_for, render

    jobs = {job.id: job for job in record.jobs}
    if recipe is not None:
        from ..matrix import Selection, make_plan

        wanted = {job.id for job in make_plan(cat, recipe=recipe, everything=False, sel=Selection()).jobs}
        jobs = {job_id: job for job_id, job in jobs.items() if job_id in wanted}
        if not jobs:
            raise UserError(f"the release holds no job of recipe {recipe}", where=release)
    for job_id in job_ids or []:
        if job_id not in jobs:
            raise UserError(f"job {job_id} is not in the release", where=release, hint=suggest(job_id, jobs))
    for name in plan or []:
        if name not in cat.testplans:
            raise UserError(f"unknown test plan '{name}'", where="--plan", hint=suggest(name, cat.testplans))
    ids = {job.id for job in record.jobs}

    def pairs(chosen: list[PublishedJob]) -> list[tuple[PublishedJob, str]]:
        return [(job, name) for job in chosen for name in plans_for(cat, job, ids) if not plan or name in plan]

    if job_ids:
        chosen = pairs([jobs[j] for j in job_ids])
    else:  # a second build an update plan installs is tested through it, not on its own
        chosen = pairs([j for j in jobs.values() if FOLLOW_UP_MARK not in j.id])
        installed = {installs(cat, job, name) for job, name in chosen}
        chosen += pairs([j for j in jobs.values() if FOLLOW_UP_MARK in j.id and j.id not in installed])
    rendered = [render(cat, record, job, name) for job, name in chosen]
    if not rendered and plan and job_ids:  # the plan asked for by name says itself why it cannot run
        for job_id in job_ids:
            render(cat, record, jobs[job_id], plan[0])
    if not rendered:
        raise UserError("no test plan applies to the chosen jobs", where=release, hint="`cipbuild boards` shows plans")
    return rendered


@test_app.command("render")
def test_render(
    ctx: typer.Context,
    release: ReleaseArg,
    job_ids: ReleaseJobsArg = None,
    plan: PlanOpt = None,
    recipe: RecipeOpt = None,
    also: WithOpt = None,
    out: Annotated[Path, typer.Option("--out", metavar="DIR", help="Where the job files go.")] = Path("lava-jobs"),
    validate: Annotated[
        str | None,
        typer.Option(
            "--validate", metavar="LAVA_URL", help="Check each job with that LAVA server's /api/v0.2/jobs/validate/."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Write one LAVA job definition per (job, plan) of a published release into --out, named
    <job-id>.<plan>.yaml: the published URLs and sha256 of each artifact, the board's device type
    and boot method, the plan's login, timeouts and tests (testplans/*.yml), and metadata naming
    the job, its input digest and manifest. Exit codes: 0 written, 2 bad input, 5 LAVA called
    one invalid.
    """
    from ..teststage.lava import Lava

    cat = context(ctx).catalog()
    record = _read_records(release, also or [])
    rendered = _render_all(cat, record, release, job_ids, plan, recipe)
    lava = Lava.from_env(validate) if validate else None
    invalid = []
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for item in rendered:
        (out / item.file_name).write_text(item.text, encoding="utf-8")
        why = lava.validate(item.text) if lava is not None else None
        if why is not None:
            invalid.append((item.file_name, why))
        rows.append([item.job.id, item.plan, str(out / item.file_name), "invalid: " + why if why else "ok"])
    if as_json:
        print_json(
            [
                {"job": item.job.id, "plan": item.plan, "file": str(out / item.file_name), "urls": item.urls}
                for item in rendered
            ]
        )
    else:
        print_table(None, ["job", "plan", "file", "check"], rows)
        print_line(f"wrote {len(rendered)} LAVA job(s) to {out}" + (f", validated by {validate}" if validate else ""))
    if invalid:
        raise VerificationError(f"{invalid[0][0]}: LAVA says {invalid[0][1]}")


@test_app.command("run")
def test_run(
    ctx: typer.Context,
    release: ReleaseArg,
    job_ids: ReleaseJobsArg = None,
    lava_url: Annotated[
        str,
        typer.Option(
            "--lava",
            envvar="CIPBUILD_LAVA_URL",
            metavar="URL",
            help="The LAVA server (its token: CIPBUILD_LAVA_TOKEN) [env var: CIPBUILD_LAVA_URL].",
        ),
    ] = "",
    plan: PlanOpt = None,
    recipe: RecipeOpt = None,
    also: WithOpt = None,
    results: Annotated[
        Path, typer.Option("--results", metavar="DIR", help="Where JUnit files and handoff.json go.")
    ] = Path("results"),
    retries: Annotated[
        int, typer.Option("--retries", min=0, help="Resubmissions of a job the lab's infrastructure broke.")
    ] = 2,
    timeout: Annotated[
        str, typer.Option("--timeout", metavar="DURATION", help="Longest wait for one LAVA job (e.g. 90m).")
    ] = "60m",
    as_json: JsonOpt = False,
) -> None:
    """Render the LAVA jobs of a published release, check that LAVA can fetch every artifact
    (a 403 or 404 stops that job before anything is submitted), submit them, wait on their
    state and health, resubmit what the lab's infrastructure broke (never a failing test), and
    write results/<job>/<plan>.xml and results/handoff.json.

    Exit codes: 0 every test passed, 2 bad input, 3 a test failed, 4 infrastructure (an
    artifact LAVA cannot fetch, a refused token, the lab gone), 130 interrupted.
    """
    from ..publish import parse_duration
    from ..status import raise_for
    from ..teststage.lava import Lava
    from ..teststage.run import HANDOFF, Options

    if not lava_url:
        raise UserError("say which LAVA server", where="--lava", hint="--lava https://lava.example.org/")
    lava = Lava.from_env(lava_url)
    opts = Options(retries=retries, timeout=float(parse_duration(timeout, "--timeout")))
    cat = context(ctx).catalog()
    record = _read_records(release, also or [])
    rendered = _render_all(cat, record, release, job_ids, plan, recipe)
    runs, data = run_lab(lava, record.url, rendered, results, opts)
    if as_json:
        print_json(data)
    else:
        rows = [
            [r.rendered.job.id, r.rendered.plan, str(r.status), ",".join(map(str, r.lava_ids)), r.error or r.health]
            for r in runs
        ]
        print_table(None, ["job", "plan", "status", "LAVA jobs", "detail"], rows)
        print_line(f"results in {results}, handoff in {results / HANDOFF}")
    raise_for([(f"{r.key} ({r.error})" if r.error else r.key, r.status) for r in runs], "test run")


def run_lab(
    lava: Lava, release_url: str, rendered: list[RenderedJob], results: Path, opts: Options
) -> tuple[list[TestRun], dict[str, Any]]:
    """Preflight, submit and wait on ``rendered`` with live progress; the runs and the handoff
    (also written to results/handoff.json, whatever happened)."""
    from ..cancel import CancelToken, signals_cancel
    from ..progress import BuildProgress
    from ..teststage.run import HANDOFF, TestRun, handoff, preflight, run_all

    runs = [TestRun(item) for item in rendered]
    token = CancelToken()
    results.mkdir(parents=True, exist_ok=True)
    with BuildProgress([r.key for r in runs], labels={}) as progress:
        preflight(runs, progress.event)
        try:
            with signals_cancel(token):
                run_all(lava, runs, results, token, progress.event, opts)
        finally:
            data = handoff(lava, release_url, runs).model_dump(mode="json", by_alias=True)
            (results / HANDOFF).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return runs, data

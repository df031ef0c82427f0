"""Verbs of the test stage: test render (LAVA job definitions from a published release)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import UserError, VerificationError
from ..output import print_json, print_line, print_table
from .app import JsonOpt, app, context

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


@test_app.command("render")
def test_render(
    ctx: typer.Context,
    release: ReleaseArg,
    job_ids: Annotated[list[str] | None, typer.Argument(help="Jobs of the release (default: all).")] = None,
    plan: Annotated[
        list[str] | None, typer.Option("--plan", "-p", help="Only these plans (default: every plan that applies).")
    ] = None,
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
    from ..teststage.render import plans_for, read_published, render

    cat = context(ctx).catalog()
    record = read_published(release)
    jobs = {job.id: job for job in record.jobs}
    for job_id in job_ids or []:
        if job_id not in jobs:
            from ..catalog import suggest

            raise UserError(f"job {job_id} is not in the release", where=release, hint=suggest(job_id, jobs))
    chosen = [jobs[j] for j in job_ids] if job_ids else list(jobs.values())
    for name in plan or []:
        if name not in cat.testplans:
            from ..catalog import suggest

            raise UserError(f"unknown test plan '{name}'", where="--plan", hint=suggest(name, cat.testplans))
    rendered = []
    for job in chosen:
        for name in plans_for(cat, job):
            if not plan or name in plan:
                rendered.append(render(cat, record, job, name))
    if not rendered:
        raise UserError("no test plan applies to the chosen jobs", where=release, hint="`cipbuild boards` shows plans")
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

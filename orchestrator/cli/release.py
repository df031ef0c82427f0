"""The one-machine release: plan, build, sign, publish, assemble and test in one command."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..errors import CipbuildError, UserError
from ..output import print_json, print_line, print_table
from ..status import Status
from .app import CacheOpt, ImageOpt, JsonOpt, Request, RuntimeOpt, SnapshotOpt, app, context, selects_jobs
from .build import BuildSettings, KeepBuildOpt, MirrorOpt, OutOpt, run_builds
from .publish import EndpointOpt, RefOpt, StoreOpt

if TYPE_CHECKING:
    from ..buildjob import BuildResult
    from ..cancel import CancelToken
    from ..catalog import Catalog
    from ..matrix import Job
    from ..publish import Published, Tally
    from ..signing import Signer
    from ..store import Store
    from ..teststage.run import TestRun


@dataclass
class JobLine:
    """One job through the release: what each step did."""

    id: str
    build: str = ""
    publish: str = ""
    test: list[str] = field(default_factory=list)
    sent_bytes: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "build": self.build, "publish": self.publish, "test": self.test}


@app.command()
@selects_jobs
def release(
    ctx: typer.Context,
    request: Request,
    to: StoreOpt = "publish",
    ref: RefOpt = None,
    endpoint_url: EndpointOpt = None,
    lava_url: Annotated[
        str | None,
        typer.Option(
            "--lava",
            envvar="CIPBUILD_LAVA_URL",
            metavar="URL",
            help="Test the release in this LAVA lab at the end (token: CIPBUILD_LAVA_TOKEN); without it, no tests.",
        ),
    ] = None,
    runtime: RuntimeOpt = "auto",
    image: ImageOpt = None,
    out: OutOpt = Path("out"),
    cache: CacheOpt = Path("cache"),
    mirror: MirrorOpt = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, help="Jobs to build at once.")] = 1,
    keep_build: KeepBuildOpt = False,
    snapshot: SnapshotOpt = None,
    key_id: Annotated[
        str | None,
        typer.Option("--key-id", metavar="ID", help="A secret key of your keyring (else CIPBUILD_SIGNING_KEY)."),
    ] = None,
    latest: Annotated[
        str | None,
        typer.Option("--latest", metavar="CHANNEL", help="Point <prefix>/latest/CHANNEL.json at the release."),
    ] = None,
    results: Annotated[Path, typer.Option("--results", metavar="DIR", help="Where test results go.")] = Path("results"),
    as_json: JsonOpt = False,
) -> None:
    """Make a release on this machine in one command: build the selected jobs, sign each as it
    finishes and publish it at once (as a part of the release), then assemble, sign and commit
    the release's index, and test it in LAVA with --lava. One summary at the end.

    Resumable: a job already published under the ref with the same input digest is not built
    again, so a rerun after a failure or Ctrl-C continues where it stopped, and a rerun with
    nothing changed builds and sends nothing. The release appears (index.json) only when every
    selected job is in it.

    Exit codes: the worst step's: 0 all done, 2 bad input, 3 a build or test failed, 4
    infrastructure, 5 a published file did not verify, 130 interrupted.
    """
    from ..cancel import CancelToken
    from ..fanout import plan_jobs, publish_parts
    from ..kasfile import check_snapshot
    from ..matrix import make_plan
    from ..publish import check_channel, check_ref, default_ref, published_digests
    from ..signing import KeySource, Signer
    from ..store import open_store

    cat = context(ctx).catalog()
    if request.recipe is None and request.sel.is_empty():
        raise UserError("say what to release", where="release", hint="a recipe (-r release) or selector flags")
    name = check_ref(ref if ref is not None else default_ref())
    if latest is not None:
        check_channel(latest)
    if lava_url is not None and not lava_url:
        raise UserError("an empty URL", where="--lava")
    chosen = make_plan(cat, recipe=request.recipe, everything=False, sel=request.sel).jobs
    check_snapshot(cat, chosen, snapshot)
    store = open_store(to, endpoint_url=endpoint_url)
    lines = {job.id: JobLine(job.id) for job in chosen}
    token = CancelToken()
    try:
        store.check()
        location = f"{to.rstrip('/')}/{name}"
        published = published_digests(location, endpoint_url=endpoint_url)

        def publish_job(result: BuildResult) -> None:  # as soon as it is signed
            line = lines[result.job.id]
            try:
                plan = plan_jobs(result.job_dir.parent, name, [result.job.id])
                _, tally = publish_parts(store, plan, token)
            except CipbuildError as exc:
                line.publish = f"failed: {exc}"
                return
            line.sent_bytes = tally.sent_bytes
            line.publish = f"sent {tally.sent_objects} object(s)" if tally.sent_objects else "already there"

        settings = BuildSettings(runtime, image, out, cache, tuple(mirror or ()), jobs, keep_build=keep_build)
        with Signer(KeySource.from_env(key_id)) as signer:
            run = run_builds(cat, chosen, settings, published=published, signer=signer, after_signed=publish_job)
            for result in run.results:
                line = lines[result.job.id]
                failed = result.error and not result.status.ok
                line.build = str(result.status) + (f": {result.error}" if failed else "")
                if result.status == Status.PUBLISHED or result.in_store:
                    line.publish = "already there"
            record, summary = _assemble_if_complete(store, name, signer, token, chosen, run.results, lines, latest)
    finally:
        store.close()
    tests = _test(cat, lava_url, record, results, lines) if record is not None and lava_url else []
    outcome = _outcomes(run.results, lines, summary, tests)
    _report(name, store.url, lines, record, summary, outcome, as_json)
    from ..status import raise_for

    raise_for(outcome, "release step")


def _assemble_if_complete(
    store: Store,
    ref: str,
    signer: Signer,
    token: CancelToken,
    chosen: list[Job],
    results: list[BuildResult],
    lines: dict[str, JobLine],
    latest: str | None,
) -> tuple[Published | None, Tally | str]:
    """The release's index once every chosen job is published; else why not."""
    from ..fanout import assemble

    missing = [r.job.id for r in results if not r.status.ok or lines[r.job.id].publish.startswith("failed")]
    if missing:
        return None, f"not assembled: {len(missing)} job(s) not published ({', '.join(missing[:3])})"
    try:
        return assemble(store, ref, signer, token, expected=[job.id for job in chosen], latest=latest)
    except CipbuildError as exc:
        return None, f"not assembled: {exc}"


def _test(cat: Catalog, lava_url: str, record: Published, results: Path, lines: dict[str, JobLine]) -> list[TestRun]:
    from ..teststage.lava import Lava
    from ..teststage.render import ReleaseView
    from ..teststage.run import Options
    from .test import _render_all, run_lab

    view = ReleaseView(record.url, record.jobs)
    rendered = _render_all(cat, view, record.url, None, None)
    runs, _ = run_lab(Lava.from_env(lava_url), record.url, rendered, results, Options())
    for run in runs:
        lines[run.rendered.job.id].test.append(f"{run.rendered.plan}: {run.status}")
    return runs


def _outcomes(
    results: list[BuildResult], lines: dict[str, JobLine], summary: Tally | str, tests: list[TestRun]
) -> list[tuple[str, Status]]:
    """Every step's outcome, for the exit code of the worst."""
    outcome = [(f"build {r.job.id}", r.status) for r in results]
    outcome += [
        (f"publish {line.id}", Status.INFRA_ERROR) for line in lines.values() if line.publish.startswith("failed")
    ]
    if isinstance(summary, str) and all(r.status.ok for r in results):
        outcome.append(("assemble", Status.INFRA_ERROR))
    outcome += [(f"test {run.key}", run.status) for run in tests]
    return outcome


def _report(
    ref: str,
    store: str,
    lines: dict[str, JobLine],
    record: Published | None,
    summary: Tally | str,
    outcome: list[tuple[str, Status]],
    as_json: bool,
) -> None:
    index = summary if isinstance(summary, str) else ("written" if summary.sent_objects else "unchanged")
    sent = sum(line.sent_bytes for line in lines.values()) + (0 if isinstance(summary, str) else summary.sent_bytes)
    built = sum(line.build == Status.SUCCESS for line in lines.values())
    if as_json:
        print_json(
            {
                "ref": ref,
                "store": store,
                "url": record.url if record is not None else None,
                "jobs": [line.to_json() for line in lines.values()],
                "built": built,
                "sent_bytes": sent,
                "index": index,
                "steps": [{"step": step, "status": str(status)} for step, status in outcome],
            }
        )
        return
    from ..progress import size_text

    rows = [[line.id, line.build, line.publish, ", ".join(line.test) or "-"] for line in lines.values()]
    print_table(None, ["job", "build", "publish", "test"], rows)
    where = record.url if record is not None else f"{store}/{ref}/"
    print_line(f"release {ref}: {built} built, {size_text(sent)} sent, index {index}; {where}", bold=where)

"""Verbs that build: build, doctor."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..errors import UserError
from ..output import print_json, print_line, print_table
from .app import (
    CacheOpt,
    CompressOpt,
    ImageOpt,
    JsonOpt,
    Request,
    RuntimeOpt,
    SnapshotOpt,
    app,
    builder_images,
    context,
    selects_jobs,
)
from .trust import print_signed, signed_json

if TYPE_CHECKING:
    from ..buildjob import BuildContext, BuildResult
    from ..catalog import Catalog
    from ..matrix import Job
    from ..reprocheck import Check
    from ..runtime.base import Runtime
    from ..signing import Signer


KeepBuildOpt = Annotated[
    bool,
    typer.Option(
        "--keep-build",
        help="Keep bitbake's build/tmp after a good build, to debug it (look at its work folders, or "
        "`kas shell job.yml -c 'bitbake -c devshell <recipe>'` in the builder). By default it is removed "
        "once the artifacts are collected (moved to <out>/.cipbuild-trash and freed in the background): the "
        "shared sstate cache keeps the next build warm. A failed build always keeps it.",
    ),
]
OutOpt = Annotated[
    Path, typer.Option("--out", envvar="CIPBUILD_OUT", metavar="DIR", help="Where each job's folder goes.")
]
MirrorOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--mirror",
        envvar="CIPBUILD_MIRROR",
        metavar="DIR",
        help="Folder of local git mirrors (repeatable; the env var takes several, separated by spaces). An "
        "upstream URL goes to the entry named like its last component, `.git` stripped (isar-cip-core.git "
        "-> DIR/isar-cip-core or DIR/isar-cip-core.git), the first folder that has one winning; mounted "
        "read-only into the build.",
    ),
]


@app.command()
@selects_jobs
def build(
    ctx: typer.Context,
    request: Request,
    runtime: RuntimeOpt = "auto",
    image: ImageOpt = None,
    jobs: Annotated[
        int, typer.Option("--jobs", "-j", min=1, help="Jobs to build at once; bitbake threads are split between them.")
    ] = 1,
    keep_going: Annotated[
        bool | None,
        typer.Option(
            "--keep-going/--no-keep-going",
            help="Let other jobs finish when one fails (default: on in CI, off elsewhere).",
            show_default=False,
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Rebuild even when a job's inputs are unchanged, in a fresh build folder (from the shared caches).",
        ),
    ] = False,
    keep_build: KeepBuildOpt = False,
    snapshot: SnapshotOpt = None,
    check_reproducible: Annotated[
        bool,
        typer.Option(
            "--check-reproducible",
            help="Then build each job a second time (a fresh folder under <out>/.reproducibility/, its own "
            "sstate cache, nothing of the first build reused), compare every artifact bit for bit and explain "
            "each difference down to the file inside (tar, cpio, ext4, FAT, squashfs, disk images). Writes "
            "reproducibility.json into the job folder; exit 3 when an artifact differs. With --sign, jobs are "
            "signed after the check and their manifest records it.",
        ),
    ] = False,
    out: OutOpt = Path("out"),
    cache: CacheOpt = Path("cache"),
    mirror: MirrorOpt = None,
    sign: Annotated[
        bool,
        typer.Option(
            "--sign",
            help="Write and sign each job's manifest, SBOM, provenance and SHA256SUMS as it finishes, then "
            "the index.json of the jobs built, as `cipbuild sign` does (key: CIPBUILD_SIGNING_KEY or --key-id; "
            "checked before anything is built).",
        ),
    ] = False,
    key_id: Annotated[
        str | None, typer.Option("--key-id", metavar="ID", help="With --sign: a secret key of your own keyring.")
    ] = None,
    compress: CompressOpt = "none",
    skip_published: Annotated[
        str | None,
        typer.Option(
            "--skip-published",
            metavar="RELEASE",
            help="A published release (s3://bucket/prefix/REF, or its folder): skip each job whose manifest "
            "there has the same input digest (build avoidance across machines; an S3-compatible server's "
            "endpoint comes from AWS_ENDPOINT_URL).",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Build the jobs `plan` selects with the same flags, as kas builds inside containers.

    Each job leaves out/<job-id>/ with build.log, job.yml, kas.lock.yml, metadata.json,
    reproducer.sh and artifacts/. A job whose inputs did not change since its last successful
    build is not rebuilt. Exit codes: 0 built, 2 bad input or signing key, 3 a build failed (or
    is not reproducible, with --check-reproducible), 4 infrastructure, 130 interrupted.
    """
    from ..scheduler import check_results
    from ..signing import KeySource, SignedRelease, Signer, sign_index, sign_job
    from ..status import Status

    checks: list[Check] = []

    cat = context(ctx).catalog()
    if request.recipe is None and request.sel.is_empty():
        raise UserError(
            "say what to build",
            where="build",
            hint=f"{what_to_build(cat)}; `cipbuild plan` lists them",
        )
    from ..compress import check_method
    from ..kasfile import check_snapshot
    from ..matrix import make_plan
    from ..publish import published_digests

    chosen = make_plan(cat, recipe=request.recipe, everything=False, sel=request.sel).jobs
    check_snapshot(cat, chosen, snapshot)
    check_method(compress)
    if compress != "none" and not sign:
        raise UserError("--compress goes with --sign (or use `cipbuild sign --compress`)", where="--compress")
    published = published_digests(skip_published) if skip_published else {}
    signed: SignedRelease | None = None
    with contextlib.ExitStack() as stack:
        signer = stack.enter_context(Signer(KeySource.from_env(key_id))) if sign else None
        run = run_builds(
            cat,
            chosen,
            BuildSettings(
                runtime, image, out, cache, tuple(mirror or ()), jobs, keep_going, force, compress, keep_build
            ),
            published=published,
            signer=None if check_reproducible else signer,
        )
        if check_reproducible:
            checks = check_reproducibility(run)
            if signer is not None:  # now, so that the manifest records the check
                for result in run.results:
                    if result.status in (Status.SUCCESS, Status.UP_TO_DATE) and not result.in_store:
                        run.signatures[result.job.id] = sign_job(signer, result.job_dir, compress)
        if signer is not None and run.signatures:
            skipped = [
                (r.job.id, str(Status.PUBLISHED if r.in_store else r.status))
                for r in run.results
                if r.job.id not in run.signatures
            ]
            signed = sign_index(signer, run.out_dir, run.signatures, skipped)
    results = run.results
    if as_json:
        data = {"out": str(run.out_dir), "runtime": run.engine.name, "results": [r.to_json() for r in results]}
        if check_reproducible:
            data["reproducibility"] = [check.to_json() for check in checks]
        print_json({**data, "signed": signed_json(signed)} if sign else data)
    else:
        rows = [
            [r.job.id, r.status, f"{r.duration:.1f}s", str(len(r.artifacts)), disk_text(r), r.error or str(r.job_dir)]
            for r in results
        ]
        print_table(None, ["job", "status", "time", "artifacts", "disk", "folder / error"], rows)
        if signed is not None:
            print_signed(signed, False)
        for check in checks:
            for line in check.summary():
                print_line(line)
    check_results(results)
    unreproducible = [check.first.job.id for check in checks if not check.identical]
    if unreproducible:
        from ..errors import BuildError

        raise BuildError(f"not reproducible: {', '.join(unreproducible)}; see reproducibility.json in each job folder")


def what_to_build(cat: Catalog) -> str:
    """How to say what to build, with names from the loaded catalogue."""
    board = next(iter(sorted(cat.boards)), None)
    recipe = next(iter(sorted(cat.recipe_files)), None)
    ways = ([f"a board (-b {board})"] if board else []) + ([f"a recipe (-r {recipe})"] if recipe else [])
    return ", ".join(ways) + (" or job ids" if ways else "job ids")


def disk_text(result: BuildResult) -> str:
    """What the job folder takes now, and what removing build/tmp gave back."""
    from ..progress import size_text

    if not result.disk:
        return ""
    text = size_text(result.disk.get("job_folder_bytes", 0))
    if result.disk.get("build_tmp") == "removed":
        return f"{text} (-{size_text(result.disk.get('build_tmp_bytes', 0))} tmp)"
    return text


@dataclass(frozen=True)
class BuildSettings:
    """How `build` (and `release`) run the jobs: the flags they share."""

    runtime: str = "auto"
    image: str | None = None
    out: Path = Path("out")
    cache: Path = Path("cache")
    mirrors: tuple[Path, ...] = ()
    jobs: int = 1
    keep_going: bool | None = None
    force: bool = False
    compress: str = "none"
    keep_build: bool = False


@dataclass
class BuildRun:
    engine: Runtime
    out_dir: Path
    results: list[BuildResult]
    signatures: dict[str, list[Path]] = field(default_factory=dict)
    context: BuildContext | None = None


def check_reproducibility(run: BuildRun) -> list[Check]:
    """Build each good job of ``run`` again apart and compare (see orchestrator/reprocheck.py)."""
    from ..progress import BuildProgress
    from ..reprocheck import Check, checkable, compare_builds, second_context, settle
    from ..scheduler import Options, Scheduler
    from ..status import Status

    assert run.context is not None
    checks = []
    for first in run.results:
        if not checkable(first):
            continue
        check = Check(first)
        ctx2 = second_context(run.context, first.job.id)
        with BuildProgress([first.job.id], labels={Status.RUNNING: "second build"}) as progress:
            scheduler = Scheduler(ctx2, Options(jobs=1), progress.event, progress.task, on_said=progress.said)
            (check.second,) = scheduler.run([first.job])
        if check.second.status == Status.SUCCESS:
            compare_builds(check)
        else:
            check.error = f"the second build ended {check.second.status}: {check.second.error}"
        settle(check, ctx2)
        checks.append(check)
    return checks


def run_builds(
    cat: Catalog,
    chosen: list[Job],
    settings: BuildSettings,
    *,
    published: dict[str, str],
    signer: Signer | None = None,
    after_signed: Callable[[BuildResult], None] | None = None,
) -> BuildRun:
    """Build ``chosen`` with live progress; with ``signer`` each job that built is signed as it
    finishes (then ``after_signed`` sees it). Jobs ``published`` holds (id -> input digest) with
    the same input digest are skipped as published."""
    import uuid

    from ..buildjob import BuildContext, sstate_mirror
    from ..imagepins import verify_pins
    from ..progress import BuildProgress
    from ..runtime import pick_runtime
    from ..runtime.docker import DockerRuntime
    from ..scheduler import Options, Scheduler
    from ..signing import sign_job
    from ..status import Status

    for folder in settings.mirrors:
        if not folder.is_dir():
            raise UserError(f"mirror folder {folder} does not exist", where="--mirror")
    sstate_mirror(os.environ)  # a bad CIPBUILD_SSTATE_MIRROR is said before anything starts
    engine = pick_runtime(settings.runtime)
    images = builder_images(cat, settings.image)
    verify_pins(engine.name, images)  # a builder whose digest is not its pin is refused before any job
    if isinstance(engine, DockerRuntime):
        engine.remember_in(settings.cache.resolve())  # what it refuses, probed once across runs
    threads = max(1, len(os.sched_getaffinity(0)) // settings.jobs)  # the CPUs this process may use
    build_ctx = BuildContext(
        cat,
        engine,
        settings.out.resolve(),
        settings.cache.resolve(),
        images,
        uuid.uuid4().hex[:8],
        threads=threads,
        mirrors=tuple(m.resolve() for m in settings.mirrors),
        force=settings.force,
        keep_build=settings.keep_build,
        published=published,
    )
    in_ci = bool(os.environ.get("CI"))
    opts = Options(jobs=settings.jobs, keep_going=in_ci if settings.keep_going is None else settings.keep_going)
    run = BuildRun(engine, build_ctx.out_dir, [], context=build_ctx)

    def sign_built(result: BuildResult) -> None:  # each job as it finishes
        if signer is not None and result.status in (Status.SUCCESS, Status.UP_TO_DATE) and not result.in_store:
            run.signatures[result.job.id] = sign_job(signer, result.job_dir, settings.compress)
            if after_signed is not None:
                after_signed(result)

    with BuildProgress([j.id for j in chosen]) as progress:
        run.results = Scheduler(
            build_ctx, opts, progress.event, progress.task, after_job=sign_built, on_said=progress.said
        ).run(chosen)
    return run


@app.command()
@selects_jobs
def doctor(
    ctx: typer.Context,
    request: Request,
    runtime: RuntimeOpt = "auto",
    image: ImageOpt = None,
    out: OutOpt = Path("out"),
    cache: CacheOpt = Path("cache"),
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, help="Jobs you will build at once.")] = 1,
    keep_build: KeepBuildOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Check this host for builds: container engine, the builder images the selected jobs need
    (pulled on first build where their registry answers), privileged containers, binfmt for
    foreign architectures, kas, and free disk under --out and --cache against what the selected
    jobs are expected to need (their last build here, else an estimate per build system). Select
    jobs as `build` does; without, one job of the default distro. Exit 4 when something is
    missing; warnings pass."""
    from ..diskuse import expected_need
    from ..doctor import check_host, disk_checks, require_healthy, to_json
    from ..matrix import make_plan

    cat = context(ctx).catalog()
    if request.recipe is None and request.sel.is_empty():
        default = next((name for name, d in cat.distros.items() if d.default), next(iter(cat.distros)))
        systems: list[str] = [cat.distros[default].build_system]
        wanted: list[tuple[str, str]] = [(f"one {default} job", systems[0])]
        what = f"one {default} job"
        archs = None  # the catalogue at large: every board's
    else:
        chosen = make_plan(cat, recipe=request.recipe, everything=False, sel=request.sel).jobs
        wanted = [(job.id, cat.distros[job.distro].build_system) for job in chosen]
        systems = sorted({str(system) for _, system in wanted})
        what = f"{len(chosen)} job(s)"
        archs = {cat.boards[job.board].arch for job in chosen}
    images = {str(system): ref for system, ref in builder_images(cat, image).items() if system in systems}
    need = expected_need(wanted, out.resolve(), cache.resolve(), parallel=jobs, keep_build=keep_build)
    checks = check_host(cat, runtime, cache.resolve(), images, archs=archs)
    checks += disk_checks(need, out.resolve(), cache.resolve(), what)
    if as_json:
        print_json(to_json(checks))
    else:
        print_table(None, ["check", "status", "detail", "fix"], [[c.name, c.status, c.detail, c.fix] for c in checks])
    require_healthy(checks)

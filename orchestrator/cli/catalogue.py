"""Verbs that read the catalogue: boards, options, recipes, plan, kas, schema; and `catalog new`,
which starts a catalogue of your own."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from pydantic import BaseModel

from ..errors import UserError
from ..output import print_json, print_line, print_table
from .app import ImageOpt, JsonOpt, Request, RuntimeOpt, SnapshotOpt, app, context, selects_jobs

if TYPE_CHECKING:
    from ..catalog import Catalog
    from ..matrix import Job


def _print_listing(
    title: str, items: Mapping[str, BaseModel], columns: list[str], rows: list[list[str]], as_json: bool
) -> None:
    """A catalogue folder as a table, or with --json every file's full content by name."""
    if as_json:
        print_json({name: item.model_dump(mode="json") for name, item in items.items()})
    else:
        print_table(title, columns, rows)


@app.command()
def boards(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List the boards: architecture, MACHINE per distro, and how the test stage boots them."""
    cat = context(ctx).catalog()
    rows = [
        [
            name,
            b.arch,
            ", ".join(f"{d}:{bd.machine}" for d, bd in b.distros.items()),
            b.test.device_type or "-",
            b.description,
        ]
        for name, b in cat.boards.items()
    ]
    columns = ["board", "arch", "distro:MACHINE", "LAVA device", "description"]
    _print_listing("Boards", cat.boards, columns, rows, as_json)


@app.command()
def options(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List the options a job may switch on, per distro, with what they imply, need and exclude."""
    cat = context(ctx).catalog()
    rows = []
    for name, opt in cat.options.items():
        for dname, spec in opt.distros.items():
            rel = [
                f"implies {', '.join(spec.implies)}" if spec.implies else "",
                f"needs {', '.join(spec.requires)}" if spec.requires else "",
                f"not with {', '.join(spec.conflicts)}" if spec.conflicts else "",
            ]
            rows.append([name, dname, " ".join(str(k) for k in spec.kas), "; ".join(r for r in rel if r), opt.summary])
    _print_listing("Options", cat.options, ["option", "distro", "kas files", "rules", "summary"], rows, as_json)


@app.command()
def recipes(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List the named matrices (recipes/*.yml) and how many jobs each expands to."""
    from ..matrix import Expander

    cat = context(ctx).catalog()
    expander = Expander(cat)
    rows = [(name, cat.recipe(name).description, len(expander.expand_recipe(name).jobs)) for name in cat.recipe_files]
    if as_json:
        print_json([{"name": n, "description": d, "jobs": j} for n, d, j in rows])
        return
    print_table("Recipes", ["recipe", "jobs", "description"], [[n, str(j), d] for n, d, j in rows])


@app.command()
@selects_jobs
def plan(
    ctx: typer.Context,
    request: Request,
    everything: Annotated[
        bool,
        typer.Option(
            "--all", help="Expand the whole catalogue: every board x distro x release x kernel x option subset."
        ),
    ] = False,
    explain: Annotated[
        bool,
        typer.Option(
            "--explain",
            help="Also show the combinations left out and the rules that exclude each (with --all: those that "
            "rule it out first, deciding options in the distro's order), and the waivers applied.",
        ),
    ] = False,
    why: Annotated[
        bool,
        typer.Option(
            "--why",
            help="For each job, whether `build` would build it now and why: the inputs that changed since "
            "its last good build in --out (kas file lines, an upstream commit, the builder image digest, an "
            "environment variable, cipbuild's version, artifact rules), as `build` says when it rebuilds.",
        ),
    ] = False,
    out: Annotated[
        Path, typer.Option("--out", envvar="CIPBUILD_OUT", metavar="DIR", help="With --why: where the job folders are.")
    ] = Path("out"),
    runtime: RuntimeOpt = "auto",
    image: ImageOpt = None,
    snapshot: SnapshotOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show the jobs a recipe, the whole catalogue or the flags select, without building anything.

    Without -r or --all the flags name jobs directly; what is not given takes the catalogue's
    defaults (distro isar, its default release and the release's default kernel).

    Examples: `cipbuild plan -b qemu-amd64 -o security`, `cipbuild plan -r cip-core-ci --explain`,
    `cipbuild plan --all -b qemu-riscv64`.
    """
    from ..matrix import make_plan
    from ..planview import print_plan, print_plan_json

    if request.recipe is not None and everything:
        raise UserError("--all expands the whole catalogue, --recipe one recipe: give one of them", where="--recipe")
    cat = context(ctx).catalog()
    result = make_plan(cat, recipe=request.recipe, everything=everything, sel=request.sel)
    if why:
        if everything:
            raise UserError("--why compares each job with its folder: select jobs, not --all", where="--why")
        print_why(cat, result.jobs, out, runtime, image, snapshot, as_json)
        return
    (print_plan_json if as_json else print_plan)(cat, result, explain)


def print_why(
    cat: Catalog, jobs: list[Job], out: Path, runtime: str, image: str | None, snapshot: str | None, as_json: bool
) -> None:
    """`plan --why`: each job's inputs now against its last good build (the builder image's digest
    is asked of the container engine, as `build` asks it)."""
    from ..buildjob import BuildContext
    from ..kasfile import check_snapshot
    from ..rebuild import would_build
    from ..runtime import pick_runtime
    from .app import builder_images

    check_snapshot(cat, jobs, snapshot)
    build_ctx = BuildContext(cat, pick_runtime(runtime), out.resolve(), Path("cache"), builder_images(cat, image), "")
    rows = []
    firsts: dict[str, bool] = {}
    for job in jobs:  # a first build before its second (the plan's order)
        build, reason = would_build(build_ctx, job, firsts)
        firsts[job.id] = build
        rows.append((job, build, reason))
    if as_json:
        print_json([{"id": job.id, "would_build": build, **reason.to_json()} for job, build, reason in rows])
        return
    table = [[job.id, "would build" if build else "up to date", reason.summary] for job, build, reason in rows]
    print_table(None, ["job", "now", "why"], table)


@app.command("kas")
def kas_cmd(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(help="A job id as `cipbuild plan` prints it.")],
    output: Annotated[Path | None, typer.Option("--output", "-O", help="Write to this file instead of stdout.")] = None,
    snapshot: SnapshotOpt = None,
) -> None:
    """Print the complete, pinned kas file that builds one job."""
    from ..kasfile import check_snapshot, render
    from ..matrix import resolve_job

    cat = context(ctx).catalog()
    job = resolve_job(cat, job_id)
    check_snapshot(cat, [job], snapshot)
    text = render(cat, job)
    if output is None:
        sys.stdout.write(text)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot write {output}: {exc.strerror}", where="--output") from None


@app.command()
def schema(
    out: Annotated[Path, typer.Option("--out", help="Folder to write <kind>.schema.json files to.")] = Path("schemas"),
) -> None:
    """Write the JSON Schema of each catalogue file kind, for editor completion and validation."""
    from ..schemas import write_schemas

    try:
        written = write_schemas(out)
    except OSError as exc:
        raise UserError(f"cannot write schemas to {out}: {exc.strerror}", where="--out") from None
    for path in written:
        typer.echo(str(path))


catalog_app = typer.Typer(
    help="Your own catalogue, used with `cipbuild --catalog DIR` instead of the built-in one (see docs/catalogue.md).",
    no_args_is_help=True,
)
app.add_typer(catalog_app, name="catalog")


@catalog_app.command("new")
def catalog_new(
    folder: Annotated[Path, typer.Argument(metavar="DIR", help="The new catalogue folder (created if missing).")],
    force: Annotated[
        bool, typer.Option("--force", help="Write into a folder that is not empty, over files of the same name.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Start a catalogue: plain Isar's isar-image-base for QEMU x86-64 with Debian's kernel, and
    the JSON Schemas its files name for editors. Refuses a folder that is not empty."""
    from ..starter import JOB_ID, write_starter

    written = write_starter(folder, force=force)
    if as_json:
        print_json({"folder": str(folder), "files": [str(p) for p in written], "job": JOB_ID})
        return
    for path in written:
        print_line(str(path))
    shown = shlex.quote(str(folder))
    print_line(f"next: cipbuild --catalog {shown} plan; cipbuild --catalog {shown} build {JOB_ID}")

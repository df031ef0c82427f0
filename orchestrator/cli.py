"""The cipbuild command line: one thin command per verb; the rooms do the work."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from . import __version__
from .errors import CipbuildError
from .output import print_json, print_line, print_table

if TYPE_CHECKING:
    from .catalog import Catalog
    from .matrix import Plan

app = typer.Typer(
    name="cipbuild",
    help="Build CIP Core reference images: expand a board x distro x release x option matrix into "
    "pinned kas builds.\n\nStart with `cipbuild boards`, `cipbuild plan -b qemu-amd64` and "
    "`cipbuild kas <job-id>`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


class State:
    catalog_dir: Path | None = None


STATE = State()

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cipbuild {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    catalog: Annotated[
        Path | None,
        typer.Option(
            "--catalog",
            envvar="CIPBUILD_CATALOG",
            metavar="DIR",
            help="Catalogue folder (boards/ options/ distros/ recipes/ kas/) to use instead of the built-in one.",
        ),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    STATE.catalog_dir = catalog


def _catalog() -> Catalog:
    from .catalog import catalog_dir, load_catalog

    return load_catalog(catalog_dir(STATE.catalog_dir))


@app.command()
def boards(as_json: JsonOpt = False) -> None:
    """List the boards: architecture, MACHINE per distro, and how the test stage boots them."""
    cat = _catalog()
    if as_json:
        print_json({name: b.model_dump(mode="json") for name, b in cat.boards.items()})
        return
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
    print_table("Boards", ["board", "arch", "distro:MACHINE", "LAVA device", "description"], rows)


@app.command()
def options(as_json: JsonOpt = False) -> None:
    """List the options a job may switch on, per distro, with what they imply, need and exclude."""
    cat = _catalog()
    if as_json:
        print_json({name: o.model_dump(mode="json") for name, o in cat.options.items()})
        return
    rows = []
    for name, opt in cat.options.items():
        for dname, spec in opt.distros.items():
            rel = [
                f"implies {', '.join(spec.implies)}" if spec.implies else "",
                f"needs {', '.join(spec.requires)}" if spec.requires else "",
                f"not with {', '.join(spec.conflicts)}" if spec.conflicts else "",
            ]
            rows.append([name, dname, " ".join(str(k) for k in spec.kas), "; ".join(r for r in rel if r), opt.summary])
    print_table("Options", ["option", "distro", "kas files", "rules", "summary"], rows)


@app.command()
def recipes(as_json: JsonOpt = False) -> None:
    """List the named matrices (recipes/*.yml) and how many jobs each expands to."""
    from .matrix import Expander

    cat = _catalog()
    expander = Expander(cat)
    rows = [(name, cat.recipe(name).description, len(expander.expand_recipe(name).jobs)) for name in cat.recipe_files]
    if as_json:
        print_json([{"name": n, "description": d, "jobs": j} for n, d, j in rows])
        return
    print_table("Recipes", ["recipe", "jobs", "description"], [[n, str(j), d] for n, d, j in rows])


def _selection(
    boards: list[str] | None,
    distros: list[str] | None,
    releases: list[str] | None,
    kernels: list[str] | None,
    opts: list[str] | None,
    job_ids: list[str] | None,
) -> Any:
    from .matrix import Selection

    return Selection(
        tuple(distros or ()),
        tuple(boards or ()),
        tuple(releases or ()),
        tuple(kernels or ()),
        tuple(opts or ()),
        tuple(job_ids or ()),
    )


RecipeOpt = Annotated[
    str | None, typer.Option("--recipe", "-r", help="Named matrix from recipes/ (see `cipbuild recipes`).")
]
BoardOpt = Annotated[list[str] | None, typer.Option("--board", "-b", help="Board (repeatable).")]
DistroOpt = Annotated[list[str] | None, typer.Option("--distro", "-d", help="isar or deby (repeatable).")]
ReleaseOpt = Annotated[list[str] | None, typer.Option("--release", "-R", help="Debian release (repeatable).")]
KernelOpt = Annotated[
    list[str] | None, typer.Option("--kernel", "-k", help="CIP kernel version, e.g. 6.1 (repeatable).")
]
OptionOpt = Annotated[list[str] | None, typer.Option("--option", "-o", help="Option every job must have (repeatable).")]


@app.command()
def plan(
    job_ids: Annotated[list[str] | None, typer.Argument(help="Job ids to keep (optional).", show_default=False)] = None,
    recipe: RecipeOpt = None,
    board: BoardOpt = None,
    distro: DistroOpt = None,
    release: ReleaseOpt = None,
    kernel: KernelOpt = None,
    option: OptionOpt = None,
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
            help="Also show the combinations left out and the rule that excluded each, and the waivers applied.",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Show the jobs a recipe, the whole catalogue or the flags select, without building anything.

    Without -r or --all the flags name jobs directly; what is not given takes the catalogue's
    defaults (distro isar, its default release and the release's default kernel).

    Examples: `cipbuild plan -b qemu-amd64 -o security`, `cipbuild plan -r cip-core-ci --explain`,
    `cipbuild plan --all -b qemu-riscv64`.
    """
    from .matrix import make_plan

    cat = _catalog()
    sel = _selection(board, distro, release, kernel, option, job_ids)
    result = make_plan(cat, recipe=recipe, everything=everything, sel=sel)
    if as_json:
        print_json(_plan_json(cat, result, explain))
        return
    _print_plan(cat, result, explain)


def _job_json(cat: Catalog, job: Any) -> dict[str, Any]:
    from .kasfile import job_facts

    facts = job_facts(cat, job)
    return {
        "id": job.id,
        "distro": job.distro,
        "release": job.release,
        "board": job.board,
        "kernel": job.kernel,
        "options": list(job.options),
        "machine": facts.machine,
        "bitbake_distro": facts.distro,
        "target": facts.target,
        "image": facts.image,
        "waived": [{"rule": r, "reason": why} for r, why in job.waived],
    }


def _plan_json(cat: Catalog, result: Plan, explain: bool) -> dict[str, Any]:
    data: dict[str, Any] = {
        "source": result.source,
        "candidates": result.candidates,
        "jobs": [_job_json(cat, j) for j in result.jobs],
    }
    if explain:
        from .matrix import rule_summaries, summary_of

        summaries = rule_summaries(cat)
        data["excluded"] = [{"id": e.job.id, "rules": list(e.rules)} for e in result.excluded]
        data["rules"] = {r: summaries.get(r) or summary_of(cat, r) for r in result.rule_counts()}
    return data


def _print_plan(cat: Catalog, result: Plan, explain: bool) -> None:
    from .kasfile import job_facts
    from .matrix import summary_of

    rows = []
    for job in result.jobs:
        facts = job_facts(cat, job)
        note = "waives " + ", ".join(r for r, _ in job.waived) if job.waived else ""
        rows.append([job.id, job.kernel, facts.target, note])
    shown_jobs = rows[:200]
    caption = (
        f"{_count(len(result.jobs), 'job')} from {result.source}; {result.excluded_count()} of "
        f"{result.candidates} candidates excluded"
    )
    if len(shown_jobs) < len(rows):
        caption += " (first 200 shown; --json lists all)"
    print_table(None, ["job", "kernel", "target", "note"], shown_jobs, caption)
    if not explain:
        return
    for job in result.jobs:
        for rule, reason in job.waived:
            print_line(f"{job.id} builds although rule {rule} excludes it: {reason}", bold=job.id)
    counts = result.rule_counts()
    if not counts:
        print_line("Nothing was excluded.")
        return
    if result.excluded_count() <= 60:
        print_table(
            "Excluded",
            ["combination", "rule", "why"],
            [[e.job.id, ", ".join(e.rules), summary_of(cat, e.rules[0])] for e in result.excluded],
        )
    else:
        examples = result.examples()
        print_table(
            "Excluded, by rule (--json lists every combination)",
            ["rule", "excluded", "example", "why"],
            [
                [r, str(n), examples.get(r, ""), summary_of(cat, r)]
                for r, n in sorted(counts.items(), key=lambda kv: -kv[1])
            ],
        )


@app.command("kas")
def kas_cmd(
    job_id: Annotated[str, typer.Argument(help="A job id as `cipbuild plan` prints it.")],
    output: Annotated[Path | None, typer.Option("--output", "-O", help="Write to this file instead of stdout.")] = None,
) -> None:
    """Print the complete, pinned kas file that builds one job."""
    from .kasfile import render
    from .matrix import resolve_job

    cat = _catalog()
    text = render(cat, resolve_job(cat, job_id))
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text, encoding="utf-8")


@app.command()
def schema(
    out: Annotated[Path, typer.Option("--out", help="Folder to write <kind>.schema.json files to.")] = Path("schemas"),
) -> None:
    """Write the JSON Schema of each catalogue file kind, for editor completion and validation."""
    from .schemas import write_schemas

    for path in write_schemas(out):
        typer.echo(str(path))


def main() -> None:
    try:
        app()
    except CipbuildError as exc:
        if exc.exit_code == 1:
            raise
        sys.stderr.write(f"cipbuild: error: {exc}\n")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("cipbuild: interrupted\n")
        sys.exit(130)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"

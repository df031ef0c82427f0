"""The cipbuild command line: one thin command per verb; the rooms do the work."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from . import __version__
from .errors import CipbuildError, InfrastructureError, UserError
from .output import print_json, print_line, print_table

if TYPE_CHECKING:
    from .catalog import Catalog

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
    catalog_dir: str | None = None


STATE = State()

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cipbuild {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    catalog: Annotated[
        str | None,
        typer.Option(
            "--catalog",
            metavar="DIR",
            help="Catalogue folder (boards/ options/ distros/ recipes/ kas/) to use instead of the built-in one "
            "[env var: CIPBUILD_CATALOG].",
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

    for flag, values in (
        ("--board", boards),
        ("--distro", distros),
        ("--release", releases),
        ("--kernel", kernels),
        ("--option", opts),
        ("JOB_ID", job_ids),
    ):
        if any(not v.strip() for v in values or ()):
            raise UserError("an empty value selects nothing", where=flag, hint="give a name, or leave the flag out")
    return Selection(
        tuple(distros or ()),
        tuple(boards or ()),
        tuple(releases or ()),
        tuple(kernels or ()),
        tuple(opts or ()),
        tuple(job_ids or ()),
    )


def _check_recipe_flag(recipe: str | None, everything: bool) -> None:
    if recipe is not None and not recipe.strip():
        raise UserError("an empty recipe name", where="--recipe", hint="`cipbuild recipes` lists them")
    if recipe is not None and everything:
        raise UserError("--all expands the whole catalogue, --recipe one recipe: give one of them", where="--recipe")


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
            help="Also show the combinations left out and the rules that exclude each (with --all: those that "
            "rule it out first, deciding options in the distro's order), and the waivers applied.",
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
    from .planview import print_plan, print_plan_json

    _check_recipe_flag(recipe, everything)
    cat = _catalog()
    sel = _selection(board, distro, release, kernel, option, job_ids)
    result = make_plan(cat, recipe=recipe, everything=everything, sel=sel)
    if as_json:
        print_plan_json(cat, result, explain)
        return
    print_plan(cat, result, explain)


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
    from .schemas import write_schemas

    try:
        written = write_schemas(out)
    except OSError as exc:
        raise UserError(f"cannot write schemas to {out}: {exc.strerror}", where="--out") from None
    for path in written:
        typer.echo(str(path))


RuntimeOpt = Annotated[
    str,
    typer.Option("--runtime", envvar="CIPBUILD_RUNTIME", help="auto (docker, then podman), docker, podman or native."),
]
CacheOpt = Annotated[
    Path,
    typer.Option(
        "--cache",
        envvar="CIPBUILD_CACHE",
        metavar="DIR",
        help="Shared DL_DIR, SSTATE_DIR and KAS_REPO_REF_DIR of all jobs.",
    ),
]
ImageOpt = Annotated[
    str | None,
    typer.Option(
        "--image", envvar="CIPBUILD_IMAGE", help="Builder image for every job (default: each distro's builder)."
    ),
]


def _images(cat: Catalog, image: str | None) -> dict[str, str]:
    images: dict[str, str] = {d.build_system: image or d.builder for d in cat.distros.values()}
    return images


def _in_ci() -> bool:
    return bool(os.environ.get("CI"))


@app.command()
def build(
    job_ids: Annotated[
        list[str] | None, typer.Argument(help="Job ids to build (optional).", show_default=False)
    ] = None,
    recipe: RecipeOpt = None,
    board: BoardOpt = None,
    distro: DistroOpt = None,
    release: ReleaseOpt = None,
    kernel: KernelOpt = None,
    option: OptionOpt = None,
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
    force: Annotated[bool, typer.Option("--force", help="Rebuild even when a job's inputs are unchanged.")] = False,
    out: Annotated[
        Path, typer.Option("--out", envvar="CIPBUILD_OUT", metavar="DIR", help="Where each job's folder goes.")
    ] = Path("out"),
    cache: CacheOpt = Path("cache"),
    mirror: Annotated[
        list[Path] | None,
        typer.Option(
            "--mirror", metavar="DIR", help="Folder of local git mirrors named like the upstream repos (repeatable)."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Build the jobs `plan` selects with the same flags, as kas builds inside containers.

    Each job leaves out/<job-id>/ with build.log, job.yml, kas.lock.yml, metadata.json,
    reproducer.sh and artifacts/. A job whose inputs did not change since its last successful
    build is not rebuilt. Exit codes: 0 built, 3 a build failed, 4 infrastructure, 130 interrupted.
    """
    import uuid

    from .buildjob import BuildContext
    from .matrix import make_plan
    from .progress import BuildProgress
    from .runtime import pick_runtime
    from .scheduler import Options, Scheduler, exit_code

    _check_recipe_flag(recipe, False)
    cat = _catalog()
    sel = _selection(board, distro, release, kernel, option, job_ids)
    if recipe is None and sel.is_empty():
        raise UserError(
            "say what to build",
            where="build",
            hint="a board (-b qemu-amd64), a recipe (-r hands-on) or job ids; `cipbuild plan` lists them",
        )
    chosen = make_plan(cat, recipe=recipe, everything=False, sel=sel).jobs
    for folder in mirror or []:
        if not folder.is_dir():
            raise UserError(f"mirror folder {folder} does not exist", where="--mirror")
    engine = pick_runtime(runtime)
    threads = max(1, len(os.sched_getaffinity(0)) // jobs)  # the CPUs this process may use
    ctx = BuildContext(
        cat,
        engine,
        out.resolve(),
        cache.resolve(),
        _images(cat, image),
        uuid.uuid4().hex[:8],
        threads=threads,
        mirrors=tuple(m.resolve() for m in mirror or []),
        force=force,
    )
    opts = Options(jobs=jobs, keep_going=_in_ci() if keep_going is None else keep_going)
    with BuildProgress([j.id for j in chosen]) as progress:
        results = Scheduler(ctx, opts, progress.event, progress.task).run(chosen)
    if as_json:
        print_json({"out": str(ctx.out_dir), "runtime": engine.name, "results": [r.to_json() for r in results]})
    else:
        rows = [
            [r.job.id, r.status, f"{r.duration:.1f}s", str(len(r.artifacts)), r.error or str(r.job_dir)]
            for r in results
        ]
        print_table(None, ["job", "status", "time", "artifacts", "folder / error"], rows)
    raise typer.Exit(exit_code(results))


@app.command()
def doctor(
    runtime: RuntimeOpt = "auto",
    image: ImageOpt = None,
    cache: CacheOpt = Path("cache"),
    as_json: JsonOpt = False,
) -> None:
    """Check this host for builds: container engine, builder images, privileged containers,
    binfmt for foreign architectures, cache disk space, kas. Exit 4 when something is missing."""
    from .doctor import FAIL, check_host, to_json

    cat = _catalog()
    checks = check_host(cat, runtime, cache.resolve(), _images(cat, image))
    if as_json:
        print_json(to_json(checks))
    else:
        print_table(None, ["check", "status", "detail", "fix"], [[c.name, c.status, c.detail, c.fix] for c in checks])
    raise typer.Exit(4 if any(c.status == FAIL for c in checks) else 0)


image_app = typer.Typer(help="Builder images (kas in a container).", no_args_is_help=True)
app.add_typer(image_app, name="image")


@image_app.command("build")
def image_build(
    profile: Annotated[
        str,
        typer.Option(
            "--profile", help="minimal (kas + git), isar or openembedded (each build system's host packages)."
        ),
    ] = "isar",
    tag: Annotated[str | None, typer.Option("--tag", help="Image name (default cipbuild-builder:<profile>).")] = None,
    suite: Annotated[str, typer.Option("--suite", help="Debian suite of the image.")] = "bookworm",
    mirror: Annotated[str | None, typer.Option("--mirror", metavar="URL", help="Debian mirror for mmdebstrap.")] = None,
    engine: Annotated[str, typer.Option("--engine", help="docker or podman.")] = "docker",
    as_json: JsonOpt = False,
) -> None:
    """Make a kas builder image offline from Debian packages (mmdebstrap) and kas from PyPI, for
    air-gapped hosts and CI without a registry. Use it with `cipbuild build --image TAG`."""
    from .builder import build_image, default_tag

    if engine not in ("docker", "podman"):
        raise UserError(f"unknown engine '{engine}'", where="--engine", hint="docker or podman")
    name = tag or default_tag(profile, suite)
    say = (lambda text: None) if as_json else (lambda text: print_line(f"image build: {text}"))
    image_id = build_image(engine, name, profile, suite=suite, mirror=mirror, say=say)
    if as_json:
        print_json({"tag": name, "id": image_id, "profile": profile, "suite": suite})
    else:
        print_line(f"{name} {image_id}")


def main() -> None:
    guard = _GuardedStdout(sys.stdout)
    sys.stdout = guard
    try:
        code = _run()
        guard.flush()
    except OutputError as exc:
        code = _output_failed(exc)
    finally:
        sys.stdout = guard.inner
    sys.exit(code)


def _run() -> int:
    try:
        app()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except OutputError:
        raise
    except CipbuildError as exc:
        if exc.exit_code == 1:
            raise
        sys.stderr.write(f"cipbuild: error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("cipbuild: interrupted\n")
        return 130
    return 0


class OutputError(InfrastructureError):
    """Standard output cannot be written (a full disk, a closed pipe)."""

    def __init__(self, cause: OSError):
        self.errno = cause.errno
        super().__init__(f"cannot write to standard output: {cause.strerror or cause}")


class _GuardedStdout:
    """Standard output whose write errors become one OutputError instead of a traceback (or
    Python's "Exception ignored" at exit)."""

    def __init__(self, inner: Any):
        self.inner = inner

    def write(self, text: str) -> int:
        try:
            return int(self.inner.write(text))
        except OSError as exc:
            raise OutputError(exc) from None

    def flush(self) -> None:
        try:
            self.inner.flush()
        except OSError as exc:
            raise OutputError(exc) from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _output_failed(exc: OutputError) -> int:
    # Nothing more can reach the reader; keep the interpreter's final flush from failing again.
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    if exc.errno == errno.EPIPE:
        return 128 + signal.SIGPIPE  # the reader stopped reading, as `| head` does: no message
    sys.stderr.write(f"cipbuild: error: {exc}\n")
    return exc.exit_code

"""The typer application, its root options, the context every command gets, and the options
several verb groups share."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .. import __version__
from ..errors import UserError

if TYPE_CHECKING:
    from ..catalog import Catalog
    from ..matrix import Selection

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


@dataclass
class CliContext:
    """What the root options say, handed to every command as ``ctx.obj``."""

    catalog_dir: str | None = None
    _catalog: Catalog | None = field(default=None, repr=False)

    def catalog(self) -> Catalog:
        if self._catalog is None:
            from ..catalog import catalog_dir, load_catalog

            self._catalog = load_catalog(catalog_dir(self.catalog_dir))
        return self._catalog


def context(ctx: typer.Context) -> CliContext:
    found = ctx.find_object(CliContext)
    return found if found is not None else CliContext()


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cipbuild {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
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
    ctx.obj = CliContext(catalog)


CompressOpt = Annotated[
    str,
    typer.Option(
        "--compress",
        metavar="zstd|xz|none",
        help="Compress each job's disk images (.wic) before signing, replacing the raw file: zstd or xz on "
        "every core, streaming. The manifest records both digests; publish sends the compressed file.",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")]
JobIdsArg = Annotated[list[str] | None, typer.Argument(help="Job ids (optional).", show_default=False)]
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
SnapshotOpt = Annotated[
    str | None,
    typer.Option(
        "--snapshot",
        envvar="CIPBUILD_SNAPSHOT",
        metavar="YYYYMMDDTHHMMSSZ",
        help="Take isar jobs' Debian packages from the Debian snapshot archive at this time (isar's "
        "ISAR_USE_APT_SNAPSHOT and ISAR_APT_SNAPSHOT_DATE, in the kas file), so a rebuild gets the same "
        "package versions. Part of each job's inputs.",
    ),
]
ImageOpt = Annotated[
    str | None,
    typer.Option(
        "--image", envvar="CIPBUILD_IMAGE", help="Builder image for every job (default: each distro's builder)."
    ),
]


# The flags that say which jobs: `plan` and `build` take the same ones.
SELECTORS: dict[str, Any] = {
    "job_ids": JobIdsArg,
    "recipe": RecipeOpt,
    "board": BoardOpt,
    "distro": DistroOpt,
    "release": ReleaseOpt,
    "kernel": KernelOpt,
    "option": OptionOpt,
}
SELECTOR_FLAGS = {
    "job_ids": "JOB_ID",
    "board": "--board",
    "distro": "--distro",
    "release": "--release",
    "kernel": "--kernel",
    "option": "--option",
}


@dataclass(frozen=True)
class Request:
    """Which jobs the selector flags ask for: a recipe (or none) and what narrows it."""

    recipe: str | None
    sel: Selection


def selects_jobs(command: Callable[..., None]) -> Callable[..., None]:
    """Give a command the selector flags (SELECTORS); it receives them as ``request: Request``.
    Empty values are refused, naming their flag."""
    own = inspect.signature(command, eval_str=True)
    ctx, *rest = (p for p in own.parameters.values() if p.name != "request")
    flags = [
        inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=a) for n, a in SELECTORS.items()
    ]

    @functools.wraps(command)
    def with_selectors(*args: Any, **kwargs: Any) -> None:
        given = {name: kwargs.pop(name, None) for name in SELECTORS}
        command(*args, request=_request(given), **kwargs)

    keyword_rest = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in rest]
    signature = own.replace(parameters=[ctx, *flags, *keyword_rest])
    with_selectors.__signature__ = signature  # type: ignore[attr-defined]
    with_selectors.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
    return with_selectors


def _request(given: dict[str, Any]) -> Request:
    from ..matrix import Selection

    for name, flag in SELECTOR_FLAGS.items():
        if any(not v.strip() for v in given[name] or ()):
            raise UserError("an empty value selects nothing", where=flag, hint="give a name, or leave the flag out")
    recipe = given["recipe"]
    if recipe is not None and not recipe.strip():
        raise UserError("an empty recipe name", where="--recipe", hint="`cipbuild recipes` lists them")
    picked = {name: tuple(given[name] or ()) for name in SELECTOR_FLAGS}
    sel = Selection(
        picked["distro"], picked["board"], picked["release"], picked["kernel"], picked["option"], picked["job_ids"]
    )
    return Request(recipe, sel)


def builder_images(cat: Catalog, image: str | None) -> dict[str, str]:
    """Build system -> builder image: --image for all, else each distro's own, pinned by digest
    where the catalogue's images.lock.yml pins it."""
    from ..imagepins import apply_pins

    return apply_pins(cat.root, {d.build_system: image or d.builder for d in cat.distros.values()})

"""The typer application, its root options, the context every command gets, and the options
several verb groups share."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

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
ImageOpt = Annotated[
    str | None,
    typer.Option(
        "--image", envvar="CIPBUILD_IMAGE", help="Builder image for every job (default: each distro's builder)."
    ),
]


def selection(
    boards: list[str] | None,
    distros: list[str] | None,
    releases: list[str] | None,
    kernels: list[str] | None,
    opts: list[str] | None,
    job_ids: list[str] | None,
) -> Selection:
    """What the selector flags name; an empty value is refused, naming its flag."""
    from ..matrix import Selection

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


def check_recipe_flag(recipe: str | None, everything: bool) -> None:
    if recipe is not None and not recipe.strip():
        raise UserError("an empty recipe name", where="--recipe", hint="`cipbuild recipes` lists them")
    if recipe is not None and everything:
        raise UserError("--all expands the whole catalogue, --recipe one recipe: give one of them", where="--recipe")


def builder_images(cat: Catalog, image: str | None) -> dict[str, str]:
    """Build system -> builder image: --image for all, else each distro's own."""
    return {d.build_system: image or d.builder for d in cat.distros.values()}

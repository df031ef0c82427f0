"""Builder images: image build (and, to come, pinning by digest)."""

from __future__ import annotations

from typing import Annotated

import typer

from ..errors import UserError
from ..output import print_json, print_line
from .app import JsonOpt, app

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
    from ..builder import build_image, default_tag

    if engine not in ("docker", "podman"):
        raise UserError(f"unknown engine '{engine}'", where="--engine", hint="docker or podman")
    name = tag or default_tag(profile, suite)
    say = (lambda text: None) if as_json else (lambda text: print_line(f"image build: {text}"))
    image_id = build_image(engine, name, profile, suite=suite, mirror=mirror, say=say)
    if as_json:
        print_json({"tag": name, "id": image_id, "profile": profile, "suite": suite})
    else:
        print_line(f"{name} {image_id}")

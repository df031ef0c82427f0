"""Builder images: image build (and push), image pin (digests in the catalogue's images.lock.yml)."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from ..errors import BuildError, UserError
from ..output import print_json, print_line, print_table
from .app import DistroOpt, JsonOpt, app, context

image_app = typer.Typer(help="Builder images (kas in a container).", no_args_is_help=True)
app.add_typer(image_app, name="image")

EngineOpt = Annotated[str, typer.Option("--engine", help="docker or podman.")]


@image_app.command("build")
def image_build(
    ctx: typer.Context,
    profile: Annotated[
        str,
        typer.Option(
            "--profile", help="minimal (kas + git), isar, openembedded or deby (each build system's host packages)."
        ),
    ] = "isar",
    tag: Annotated[str | None, typer.Option("--tag", help="Image name (default cipbuild-builder:<profile>).")] = None,
    suite: Annotated[
        str | None,
        typer.Option("--suite", help="Debian suite of the image [default: the profile's own, bookworm but for deby]."),
    ] = None,
    mirror: Annotated[str | None, typer.Option("--mirror", metavar="URL", help="Debian mirror for mmdebstrap.")] = None,
    engine: EngineOpt = "docker",
    push: Annotated[
        bool,
        typer.Option(
            "--push",
            help="Push TAG to its registry once built, and record the pushed digest in the catalogue's "
            "images.lock.yml when a distro names TAG as its builder.",
        ),
    ] = False,
    pin: Annotated[
        bool,
        typer.Option("--pin", help="With --push: record the digest in images.lock.yml even if no distro names TAG."),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Make a kas builder image offline from Debian packages (mmdebstrap) and kas from PyPI (the
    kas version cipbuild itself has), for air-gapped hosts and CI without a registry. Use it with
    `cipbuild build --image TAG`, or push it and name it as a distro's builder."""
    from ..builder import PROFILES, build_image, default_tag, suite_of
    from ..imagepins import PINS_FILE, bad_reference, catalogue_references, check_engine, push_image, record_pin

    check_engine(engine)
    if pin and not push:
        raise UserError("--pin records the digest of a push", where="--pin", hint="add --push")
    if profile in PROFILES:  # an unknown one is said by build_image
        suite = suite_of(profile, suite)
    name = tag or default_tag(profile, suite)
    problem = bad_reference(name)
    if problem is not None:
        raise UserError(f"'{name}' {problem}", where="--tag", hint="e.g. registry.example.org/kas-isar:4.8.1")
    cat = context(ctx).catalog() if push else None  # a broken catalogue is said before an hour of work

    def say(text: str) -> None:
        if not as_json:
            print_line(f"image build: {text}")

    image_id = build_image(engine, name, profile, suite=suite, mirror=mirror, say=say)
    result: dict[str, Any] = {"tag": name, "id": image_id, "profile": profile, "suite": suite}
    if cat is not None:
        digest = push_image(engine, name, say)
        named = name in catalogue_references(cat)
        lock = record_pin(cat.root, name, digest) if named or pin else None
        result.update(pushed=f"{name}@{digest}", digest=digest, pinned=lock is not None, lock=str(lock or ""))
        if lock is not None:
            say(f"{PINS_FILE}: {name} pinned to {digest}")
        else:
            say(f"not pinned: no distro of {cat.root} names {name} (--pin pins it anyway)")
    if as_json:
        print_json(result)
    else:
        print_line(f"{name} {image_id}" + (f" pushed as {result['pushed']}" if push else ""))


@image_app.command("pin")
def image_pin(
    ctx: typer.Context,
    distro: DistroOpt = None,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Write nothing; exit 3 when images.lock.yml is stale (a tag now has another digest, or a "
            "builder is not pinned).",
        ),
    ] = False,
    engine: Annotated[
        str,
        typer.Option(
            "--engine",
            help="Read digests through the Docker engine (DOCKER_HOST), or for podman with skopeo "
            "(its registries.conf and credentials).",
        ),
    ] = "docker",
    as_json: JsonOpt = False,
) -> None:
    """Pin every builder image of the catalogue by its registry digest, in <catalogue>/images.lock.yml.

    Each distro's builder (name:tag) is resolved to the manifest digest its registry has now,
    without pulling; the entries the lock already has are resolved again, so it stays current.
    Builds then run each builder as name:tag@sha256:..., and refuse to start when the engine's
    local name:tag is another image and the pinned one is not there. With --distro only those
    distros' builders are resolved; the lock's other entries stay as they are. Unreachable
    registries exit 4 and leave the lock unchanged; a registry without the image exits 2."""
    from ..imagepins import (
        catalogue_references,
        check_engine,
        pins_path,
        read_pins,
        registry_digests,
        unresolved_error,
        unresolved_line,
        write_pins,
    )

    check_engine(engine)
    cat = context(ctx).catalog()
    chosen = list(dict.fromkeys(distro or []))
    pins = read_pins(cat.root)
    wanted = set(catalogue_references(cat, chosen or None))
    targets = sorted(wanted if chosen else wanted | set(pins))
    found, failed = registry_digests(engine, targets)
    path = pins_path(cat.root)
    if failed:
        for item in failed:
            sys.stderr.write(f"cipbuild: image pin: {unresolved_line(item)}\n")
        raise unresolved_error(failed, len(targets), f"{path.name} is unchanged")
    status = {ref: _status(pins.get(ref), found[ref]) for ref in targets}
    updated = {**pins, **found}
    stale = updated != pins
    written = not check and bool(targets) and (stale or not path.exists())
    if written:
        write_pins(cat.root, updated)
    if as_json:
        images = [
            {"reference": ref, "digest": found[ref], "previous": pins.get(ref), "status": status[ref]}
            for ref in targets
        ]
        print_json({"lock": str(path), "check": check, "stale": stale, "written": written, "images": images})
    else:
        print_table(
            None, ["reference", "digest", "status"], [[r, found[r], _shown(status[r], pins.get(r))] for r in targets]
        )
        if written:
            print_line(f"{path}: {len(updated)} image(s) pinned")
        elif not targets:
            print_line("no builder image to pin (each carries its digest already)")
        elif not stale:
            print_line(f"{path}: up to date")
    if check and stale:
        changed = ", ".join(ref for ref in targets if status[ref] != "unchanged")
        raise BuildError(f"{path.name} is stale for {changed}: re-pin with `cipbuild image pin`")


def _status(before: str | None, now: str) -> str:
    if before is None:
        return "new"
    return "unchanged" if before == now else "changed"


def _shown(status: str, before: str | None) -> str:
    return f"changed (was {before})" if status == "changed" else status

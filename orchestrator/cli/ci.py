"""Verbs of CI at scale: ci gitlab (child pipelines generated from the matrix)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from ..errors import UserError
from ..output import print_json, print_line, print_table
from .app import ImageOpt, JsonOpt, Request, app, context, selects_jobs
from .publish import RefOpt

ci_app = typer.Typer(help="CI at scale: pipelines generated from the matrix.", no_args_is_help=True)
app.add_typer(ci_app, name="ci")


@ci_app.command("gitlab")
@selects_jobs
def ci_gitlab(
    ctx: typer.Context,
    request: Request,
    everything: Annotated[bool, typer.Option("--all", help="Every job of the catalogue.")] = False,
    out: Annotated[
        Path, typer.Option("--out", metavar="DIR", help="Where the pipeline files go (keep them as artifacts).")
    ] = Path(".cipbuild-ci"),
    store: Annotated[
        str,
        typer.Option(
            "--store",
            metavar="STORE",
            help="Where the jobs publish and the release is assembled; by default the CI variable CIPBUILD_STORE.",
        ),
    ] = "$CIPBUILD_STORE",
    ref: RefOpt = None,
    max_jobs: Annotated[
        int,
        typer.Option(
            "--max-jobs",
            min=3,
            metavar="N",
            help="Most jobs in one pipeline (GitLab.com's free tier allows 500; self-managed: ci_pipeline_size). "
            "A bigger matrix is split into child pipelines.",
        ),
    ] = 500,
    install: Annotated[
        str,
        typer.Option("--install", metavar="CMD", help="How each job installs cipbuild first; empty: it is there."),
    ] = "",
    build_runtime: Annotated[
        str,
        typer.Option(
            "--build-runtime",
            metavar="RUNTIME",
            help="The runtime the build jobs use: native (the job already runs in the builder image), docker, podman.",
        ),
    ] = "native",
    tag: Annotated[
        list[str] | None,
        typer.Option("--tag", metavar="TAG", help="A runner tag every job needs, besides the distro's (repeatable)."),
    ] = None,
    expire: Annotated[
        str, typer.Option("--expire", metavar="DURATION", help="How long GitLab keeps each job's artifacts.")
    ] = "1 week",
    image: ImageOpt = None,
    pin: Annotated[
        bool,
        typer.Option(
            "--pin/--no-pin",
            help="Pin each builder image by the digest the local container engine knows (an image the "
            "catalogue pins already keeps its digest).",
        ),
    ] = True,
    generate_job: Annotated[
        str,
        typer.Option(
            "--generate-job", metavar="NAME", help="The name of the CI job that runs this command (split pipelines)."
        ),
    ] = "cipbuild:generate",
    as_json: JsonOpt = False,
) -> None:
    """Write a GitLab pipeline for the selected jobs: one build job per job id (its builder
    image, runner tags from the catalogue, `cipbuild build --sign` and `publish --part`), a
    LAVA test job after each tested build (when CIPBUILD_LAVA_URL is set), and a release job
    that assembles, signs and verifies the release from the store. Past --max-jobs the matrix
    is split into child pipelines and cipbuild-pipeline.yml triggers each.

    Run it in a job named --generate-job, keep --out as artifacts, and trigger the result:

      trigger: {include: [{artifact: .cipbuild-ci/cipbuild-pipeline.yml, job: cipbuild:generate}],
      strategy: depend} with variables PARENT_PIPELINE_ID: $CI_PIPELINE_ID.

    Secrets stay CI/CD variables, named here and never written: AWS_ACCESS_KEY_ID and
    AWS_SECRET_ACCESS_KEY (the store), CIPBUILD_SIGNING_KEY (a file variable), CIPBUILD_KEYRING
    (the public keyring verify uses), CIPBUILD_LAVA_TOKEN; CIPBUILD_CACHE_STORE shares the
    build caches between runners (`cipbuild cache`).
    """
    from ..gitlabci import PIPELINE, Settings, check_name, generate
    from ..matrix import make_plan
    from ..publish import check_ref, default_ref

    cat = context(ctx).catalog()
    if request.recipe is not None and everything:
        raise UserError("--all and --recipe: pick one", where="ci gitlab")
    if request.recipe is None and request.sel.is_empty() and not everything:
        raise UserError("say which jobs", where="ci gitlab", hint="a recipe (-r ci), --all, or selector flags")
    check_name(generate_job)
    jobs = make_plan(cat, recipe=request.recipe, everything=everything, sel=request.sel).jobs
    distros = sorted({job.distro for job in jobs})
    images, unpinned = _builder_images(cat, distros, image, pin)
    for distro, name in unpinned:
        sys.stderr.write(
            f"cipbuild: warning: builder image {name} ({distro}) is not pinned by a digest: pin it in "
            f"distros/{distro}.yml (name:tag@sha256:...) or pull it here so --pin can\n"
        )
    settings = Settings(
        recipe=request.recipe,
        command=shlex.join(["cipbuild", *sys.argv[1:]]),
        ref=check_ref(ref if ref is not None else default_ref()),
        store=store,
        max_jobs=max_jobs,
        install=install,
        runtime=build_runtime,
        tags=tuple(tag or ()),
        expire=expire,
        images=images,
        generate_job=generate_job,
        folder=str(out),
    )
    generated = generate(cat, jobs, settings)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in generated.files.items():
        (out / name).write_text(text, encoding="utf-8")
    if as_json:
        print_json(
            {
                "pipeline": str(out / PIPELINE),
                "files": {str(out / name): count for name, count in generated.jobs.items()},
                "builds": generated.builds,
                "tests": generated.tests,
                "ref": settings.ref,
                "images": images,
                "unpinned": [name for _, name in unpinned],
            }
        )
        return
    print_table(None, ["file", "jobs"], [[str(out / name), str(count)] for name, count in generated.jobs.items()])
    children = len(generated.files) - 1
    shape = f"{children} child pipelines triggered by {PIPELINE}" if children else "one pipeline"
    print_line(f"{generated.builds} build(s), {generated.tests} LAVA test job(s) in {shape}; ref {settings.ref}")


def _builder_images(
    cat: object, distros: list[str], image: str | None, pin: bool
) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Distro -> the builder image its jobs run in, pinned by digest where the engine knows it;
    and the (distro, image) left unpinned."""
    from ..catalog import Catalog
    from ..imagepins import apply_pins

    assert isinstance(cat, Catalog)
    images: dict[str, str] = {}
    unpinned: list[tuple[str, str]] = []
    known: dict[str, str | None] = {}
    locked = apply_pins(cat.root, {distro: image or cat.distros[distro].builder for distro in distros})
    for distro in distros:
        name = locked[distro]
        if "@sha256:" not in name and pin:
            if name not in known:
                known[name] = _repo_digest(name)
            if known[name]:
                name = f"{name}@{known[name]}"
        if "@sha256:" not in name:
            unpinned.append((distro, name))
        images[distro] = name
    return images, unpinned


def _repo_digest(image: str) -> str | None:
    """The registry digest the local Docker engine records for ``image`` (RepoDigests; no pull):
    a local image id would name nothing a runner can pull."""
    try:
        import docker

        client = docker.from_env(timeout=5)
        try:
            digests = client.images.get(image).attrs.get("RepoDigests") or []
        finally:
            client.close()
    except Exception:  # no engine, no such image: not pinnable here
        return None
    repository = image.rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image
    for entry in digests:
        name, _, digest = str(entry).partition("@")
        if name == repository and digest.startswith("sha256:"):
            return digest
    return None

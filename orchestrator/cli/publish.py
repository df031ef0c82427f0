"""Verbs of publishing: publish, prune."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..output import print_json, print_line
from .app import JsonOpt, app, context

if TYPE_CHECKING:
    from ..publish import Plan

StoreOpt = Annotated[
    str,
    typer.Option(
        "--to",
        envvar="CIPBUILD_STORE",
        metavar="STORE",
        help="Where releases go: s3://bucket/prefix, file:///path or a folder [env var: CIPBUILD_STORE].",
    ),
]
RefOpt = Annotated[
    str | None,
    typer.Option(
        "--ref",
        metavar="REF",
        help="The release's name in the store: <prefix>/<REF>/ [default: CI_COMMIT_TAG, CI_COMMIT_REF_SLUG, "
        "the git branch, else local].",
        show_default=False,
    ),
]
EndpointOpt = Annotated[
    str | None,
    typer.Option(
        "--endpoint-url",
        metavar="URL",
        help="An S3-compatible server (SeaweedFS, MinIO, Ceph); AWS_ENDPOINT_URL works too. Credentials and "
        "region come the usual AWS way: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws.",
    ),
]


@app.command()
def publish(
    ctx: typer.Context,
    out: Annotated[Path, typer.Argument(help="The signed release: the folder `build` and `sign` wrote.")] = Path("out"),
    to: StoreOpt = "publish",
    ref: RefOpt = None,
    layout: Annotated[
        str,
        typer.Option(
            "--layout",
            metavar="TEMPLATE",
            help="Key of each file below <prefix>/<REF>/, from {board} {job} {distro} {release} {file} {path}. "
            "The default is CIP's bucket layout; a job's trust files are named <job>.<file> beside its "
            "artifacts. '{job}/{path}' mirrors the local folders.",
        ),
    ] = "{board}/{file}",
    endpoint_url: EndpointOpt = None,
    acl: Annotated[
        str | None,
        typer.Option(
            "--acl", metavar="ACL", help="Canned ACL of each object, e.g. public-read (labs that fetch anonymously)."
        ),
    ] = None,
    presign: Annotated[
        str | None,
        typer.Option(
            "--presign",
            metavar="DURATION",
            help="Print presigned URLs valid this long (e.g. 12h, at most 7d) instead of plain ones: for "
            "a private bucket the test stage reads.",
        ),
    ] = None,
    latest: Annotated[
        str | None,
        typer.Option(
            "--latest",
            metavar="CHANNEL",
            help="When the release is complete, point <prefix>/latest/CHANNEL.json at it (prune never removes "
            "a release a pointer names).",
        ),
    ] = None,
    part: Annotated[
        bool,
        typer.Option(
            "--part",
            help="Fan-out: publish these jobs as parts of the release (artifacts, trust files, "
            "<ref>/parts/<job>.json) and no index; one final job runs --assemble.",
        ),
    ] = False,
    assemble: Annotated[
        bool,
        typer.Option(
            "--assemble",
            help="Fan-out: make the release from the parts in the store: check each job's manifest, write and "
            "sign index.json (key: CIPBUILD_SIGNING_KEY or --key-id), commit it. OUT is not read.",
        ),
    ] = False,
    recipe: Annotated[
        str | None,
        typer.Option(
            "--recipe", "-r", metavar="RECIPE", help="With --assemble: every job of this recipe must have its part."
        ),
    ] = None,
    key_id: Annotated[
        str | None, typer.Option("--key-id", metavar="ID", help="With --assemble: a secret key of your keyring.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Publish a signed release: artifacts first, then each job's checksums, SBOMs, provenance,
    manifest and signatures, then published.json and index.json last, so a reader never sees
    an index naming a missing object. An object already in the store with the same sha256 is
    not sent again: rerunning an interrupted or unchanged publish sends only what is missing.

    The store defaults to ./publish, a folder: no account needed. --json prints published.json,
    every object with its URL and sha256, as the test stage reads it, plus what was sent.

    Where many CI runners build one release, each runs `publish OUT --part` and one final job
    `publish --assemble`: the store is where they meet, and the release appears only when that
    last job commits its index.

    Exit codes: 0 published, 2 bad input (unsigned release, unknown bucket, no credentials,
    access denied, a key leaving the prefix, a job without its part), 4 the store failed, 5 a
    part's manifest is not what it recorded, 130 interrupted.
    """
    from ..cancel import CancelToken, signals_cancel
    from ..errors import UserError
    from ..progress import TransferProgress
    from ..publish import check_channel, default_ref, parse_duration, plan_publish
    from ..publish import presign as sign_urls
    from ..publish import publish as run_publish
    from ..store import open_store

    seconds = parse_duration(presign, "--presign") if presign is not None else None
    if latest is not None:
        check_channel(latest)
    if part and assemble:
        raise UserError("--part and --assemble are two ends of a fan-out: pass one", where="publish")
    if recipe is not None and not assemble:
        raise UserError("--recipe only applies to --assemble", where="publish")
    if part and (latest is not None or presign is not None):
        raise UserError("a part is not a release: --latest and --presign go with --assemble", where="publish")
    if assemble:
        _assemble(ctx, to, ref if ref is not None else default_ref(), endpoint_url, acl, recipe, key_id, latest,
                  seconds, as_json)  # fmt: skip
        return
    plan = plan_publish(out, ref if ref is not None else default_ref(), layout)
    if part:
        _publish_parts(plan, to, endpoint_url, acl, as_json)
        return
    store = open_store(to, endpoint_url=endpoint_url, acl=acl)
    token = CancelToken()
    try:
        with signals_cancel(token), TransferProgress() as progress:
            record, tally = run_publish(store, plan, token, latest=latest, watcher=progress)
        if seconds is not None:
            record = sign_urls(store, record, seconds)
    finally:
        store.close()
    data: dict[str, Any] = record.model_dump(mode="json", by_alias=True)
    if seconds is not None:
        from datetime import UTC, datetime, timedelta

        expires = (datetime.now(UTC) + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")
        data["urls_expire"] = expires
    if as_json:
        print_json({**data, "summary": tally.to_json()})
        return
    from ..progress import size_text

    print_line(
        f"published {plan.ref}: {len(plan.jobs)} job(s), {len(plan.items) + 1} object(s) at {record.url}",
        bold=record.url,
    )
    print_line(
        f"sent {tally.sent_objects} object(s), {size_text(tally.sent_bytes)}; "
        f"{tally.skipped_objects} already there, {size_text(tally.skipped_bytes)}; {tally.seconds:.1f} s"
        + (f"; aborted {tally.aborted_uploads} unfinished upload(s)" if tally.aborted_uploads else "")
    )


def _publish_parts(plan: Plan, to: str, endpoint_url: str | None, acl: str | None, as_json: bool) -> None:
    from ..cancel import CancelToken, signals_cancel
    from ..fanout import part_json, publish_parts
    from ..progress import TransferProgress, size_text
    from ..store import open_store

    store = open_store(to, endpoint_url=endpoint_url, acl=acl)
    token = CancelToken()
    try:
        with signals_cancel(token), TransferProgress() as progress:
            parts, tally = publish_parts(store, plan, token, watcher=progress)
    finally:
        store.close()
    if as_json:
        print_json({"parts": part_json(parts), "summary": tally.to_json()})
        return
    url = parts[0].url if parts else store.url
    print_line(f"published {len(parts)} job(s) as parts of {plan.ref} at {url} (no index until --assemble)")
    print_line(
        f"sent {tally.sent_objects} object(s), {size_text(tally.sent_bytes)}; "
        f"{tally.skipped_objects} already there, {size_text(tally.skipped_bytes)}; {tally.seconds:.1f} s"
    )


def _assemble(
    ctx: typer.Context,
    to: str,
    ref: str,
    endpoint_url: str | None,
    acl: str | None,
    recipe: str | None,
    key_id: str | None,
    latest: str | None,
    seconds: int | None,
    as_json: bool,
) -> None:
    from ..cancel import CancelToken, signals_cancel
    from ..fanout import assemble
    from ..publish import check_ref
    from ..publish import presign as sign_urls
    from ..signing import KeySource, Signer
    from ..store import open_store

    check_ref(ref)
    expected = None
    if recipe is not None:
        from ..matrix import Selection, make_plan

        expected = [job.id for job in make_plan(context(ctx).catalog(), recipe=recipe, everything=False,
                                               sel=Selection()).jobs]  # fmt: skip
    source = KeySource.from_env(key_id)
    store = open_store(to, endpoint_url=endpoint_url, acl=acl)
    token = CancelToken()
    try:
        with signals_cancel(token), Signer(source) as signer:
            record, tally = assemble(store, ref, signer, token, expected=expected, latest=latest)
        if seconds is not None:
            record = sign_urls(store, record, seconds)
    finally:
        store.close()
    data: dict[str, Any] = record.model_dump(mode="json", by_alias=True)
    if as_json:
        print_json({**data, "summary": tally.to_json()})
        return
    print_line(f"assembled {ref}: {len(record.jobs)} job(s) at {record.url}", bold=record.url)


@app.command()
def prune(
    ref_pattern: Annotated[
        list[str],
        typer.Option(
            "--ref-pattern", metavar="GLOB", help="Releases (refs) to consider, e.g. 'feature-*'; repeatable."
        ),
    ],
    older_than: Annotated[
        str, typer.Option("--older-than", metavar="DURATION", help="Remove only releases older than this (e.g. 30d).")
    ],
    keep: Annotated[int, typer.Option("--keep", min=0, help="Always keep this many of the newest matching.")] = 3,
    to: StoreOpt = "publish",
    endpoint_url: EndpointOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be removed; remove nothing.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Remove old per-branch releases from a store: those matching --ref-pattern, older than
    --older-than, beyond the --keep newest. A release a latest/<channel>.json pointer names is
    never removed. Each goes index first, so no reader finds an index naming a removed object.

    Exit codes: 0 done, 2 bad arguments or store, 4 the store failed.
    """
    from ..progress import size_text
    from ..publish import choose_prunable, parse_duration, prune_release, releases
    from ..store import open_store

    seconds = parse_duration(older_than, "--older-than", zero=True)
    store = open_store(to, endpoint_url=endpoint_url)
    try:
        store.check()
        matching = choose_prunable(releases(store), ref_pattern, seconds, keep)
        doomed = [r for r in matching if r.action == "remove"]
        if not dry_run:
            for release in doomed:
                prune_release(store, release)
    finally:
        store.close()
    verb = "would remove" if dry_run else "removed"
    if as_json:
        print_json({"store": store.url, "dry_run": dry_run, "releases": [r.to_json() for r in matching]})
        return
    from ..output import print_table

    rows = [
        [r.ref, r.published.strftime("%Y-%m-%d %H:%M"), size_text(r.size), verb if r.action == "remove" else r.action]
        for r in matching
    ]
    print_table(None, ["ref", "published", "size", "action"], rows)
    print_line(f"{verb} {len(doomed)} of {len(matching)} matching release(s), {size_text(sum(r.size for r in doomed))}")

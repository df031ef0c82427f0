"""Verbs of publishing: publish, prune."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..output import print_json, print_line
from .app import JsonOpt, app

StoreOpt = Annotated[
    str,
    typer.Option(
        "--to",
        envvar="CIPBUILD_STORE",
        metavar="STORE",
        help="Where releases go: s3://bucket/prefix, file:///path or a folder [env var: CIPBUILD_STORE].",
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
    out: Annotated[Path, typer.Argument(help="The signed release: the folder `build` and `sign` wrote.")] = Path("out"),
    to: StoreOpt = "publish",
    ref: Annotated[
        str | None,
        typer.Option(
            "--ref",
            metavar="REF",
            help="The release's name in the store: <prefix>/<REF>/ [default: CI_COMMIT_TAG, CI_COMMIT_REF_SLUG, "
            "the git branch, else local].",
            show_default=False,
        ),
    ] = None,
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
    as_json: JsonOpt = False,
) -> None:
    """Publish a signed release: artifacts first, then each job's checksums, SBOMs, provenance,
    manifest and signatures, then published.json and index.json last, so a reader never sees
    an index naming a missing object. An object already in the store with the same sha256 is
    not sent again: rerunning an interrupted or unchanged publish sends only what is missing.

    The store defaults to ./publish, a folder: no account needed. --json prints published.json,
    every object with its URL and sha256, as the test stage reads it, plus what was sent.

    Exit codes: 0 published, 2 bad input (unsigned release, unknown bucket, no credentials,
    access denied, a key leaving the prefix), 4 the store failed, 130 interrupted.
    """
    from ..cancel import CancelToken, signals_cancel
    from ..progress import TransferProgress
    from ..publish import check_channel, default_ref, parse_duration, plan_publish
    from ..publish import presign as sign_urls
    from ..publish import publish as run_publish
    from ..store import open_store

    seconds = parse_duration(presign, "--presign") if presign is not None else None
    if latest is not None:
        check_channel(latest)
    plan = plan_publish(out, ref if ref is not None else default_ref(), layout)
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

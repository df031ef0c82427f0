"""Verbs of the shared build cache: cache push, cache pull."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..output import print_json, print_line
from ..progress import TransferProgress, size_text
from .app import CacheOpt, JsonOpt, app

if TYPE_CHECKING:
    from ..cachesync import Direction, Entry, Tally

cache_app = typer.Typer(
    help="Share the build cache (downloads/ and sstate/) between runners through a store.", no_args_is_help=True
)
app.add_typer(cache_app, name="cache")

ToOpt = Annotated[
    str,
    typer.Option(
        "--to",
        envvar="CIPBUILD_STORE",
        metavar="STORE",
        help="The store: s3://bucket/prefix, file:///path or a folder; the cache goes below <prefix>/_cache/.",
        show_default=False,
    ),
]
EndpointOpt = Annotated[
    str | None,
    typer.Option(
        "--endpoint-url",
        metavar="URL",
        help="An S3-compatible server (SeaweedFS, MinIO, Ceph); AWS_ENDPOINT_URL works too. Credentials come "
        "the usual AWS way.",
    ),
]
JobsOpt = Annotated[int, typer.Option("--jobs", "-j", metavar="N", min=1, max=64, help="Files moved at once.")]


class _Progress(TransferProgress):
    """TransferProgress for thousands of small files: in CI a line per tenth of the bytes, not one
    per object."""

    def __init__(self) -> None:
        super().__init__()
        self.verb = "sent"

    def start(self, direction: Direction, objects: int, size: int) -> None:  # type: ignore[override]
        self.verb = "sent" if direction == "push" else "received"
        self.total = size
        if self._bars is not None:
            self._overall = self._bars.add_task("total", total=size)
        elif objects:
            self._line(f"{'pushing' if direction == 'push' else 'pulling'} {objects} object(s), {size_text(size)}")

    def advance(self, item: Any, sent: int) -> None:
        if self._bars is not None:
            super().advance(item, sent)
            return
        with self.lock:
            before = self.sent
            self.sent += sent
        if self.total and self.sent * 10 // self.total > before * 10 // self.total:
            self._line(f"{self.verb} {size_text(self.sent)} of {size_text(self.total)}")

    def done(self, item: Entry, skipped: bool = False) -> None:
        if self._bars is not None:
            super().done(item, skipped)


def _run(direction: Direction, cache: Path, to: str, endpoint_url: str | None, acl: str | None, jobs: int) -> Tally:
    from ..cachesync import pull, push
    from ..cancel import CancelToken, signals_cancel
    from ..store import Transfer, open_store

    store = open_store(to, endpoint_url=endpoint_url, acl=acl, transfer=Transfer(concurrency=max(4, jobs)))
    token = CancelToken()
    progress = _Progress()
    try:
        with signals_cancel(token), progress:
            sync = push if direction == "push" else pull
            return sync(store, cache, token, watcher=progress, workers=jobs)
    finally:
        store.close()


def _report(tally: Tally, as_json: bool) -> None:
    from ..cachesync import describe

    if as_json:
        print_json(tally.to_json())
        return
    lines = list(describe(tally))
    print_line(f"{tally.direction} {tally.cache} {'->' if tally.direction == 'push' else '<-'} {tally.store}")
    for line in lines:
        print_line(line)


@cache_app.command("push")
def cache_push(
    to: ToOpt,
    cache: CacheOpt = Path("cache"),
    endpoint_url: EndpointOpt = None,
    acl: Annotated[
        str | None,
        typer.Option(
            "--acl",
            metavar="ACL",
            help="Canned ACL of each object, e.g. public-read, for builds that read the sstate over HTTP "
            "(SSTATE_MIRRORS).",
        ),
    ] = None,
    jobs: JobsOpt = 8,
    as_json: JsonOpt = False,
) -> None:
    """Send the files of the cache's downloads/ and sstate/ that the store lacks. One listing
    decides: a name the store has is not sent again, so an unchanged cache sends nothing.

    sstate files keep their names (they carry bitbake's task hash; the first copy stored stays).
    Downloads are stored by content (<name>/<sha256>): two runners with different bytes under one
    name each store theirs, nothing is overwritten, and a pull picks the oldest. Symlinks, locks,
    temporary and partial files, and files changing while read are skipped; .done stamps go last.
    Several runners may push at once.

    Exit codes: 0 done, 2 bad arguments, store or credentials, 4 the store or the disk failed,
    130 interrupted.
    """
    _report(_run("push", cache, to, endpoint_url, acl, jobs), as_json)


@cache_app.command("pull")
def cache_pull(
    to: Annotated[
        str,
        typer.Option(
            "--from",
            "--to",
            envvar="CIPBUILD_STORE",
            metavar="STORE",
            help="The store `cache push` sent to: s3://bucket/prefix, file:///path or a folder.",
            show_default=False,
        ),
    ],
    cache: CacheOpt = Path("cache"),
    endpoint_url: EndpointOpt = None,
    jobs: JobsOpt = 8,
    as_json: JsonOpt = False,
) -> None:
    """Fetch the files of the store's cache that the local downloads/ and sstate/ lack; a file the
    cache has is never replaced, so a complete cache receives nothing.

    Every file is checked against its sha256, written to a temporary name and linked into place
    only when it matches; .done stamps come after their downloads. A key that would leave the
    cache, or content that does not match, is refused: the rest is installed, then exit 5.

    Exit codes: 0 done, 2 bad arguments, store or credentials, 4 the store or the disk failed,
    5 refused objects, 130 interrupted.
    """
    _report(_run("pull", cache, to, endpoint_url, None, jobs), as_json)

"""Publish a signed release to a store: the commit protocol.

Order: every artifact, then each job's trust files (checksums, SBOMs, provenance, manifest,
signatures), then ``published.json`` (where each file went), then the index's signature and
``index.json`` itself, and last the ``latest/<channel>.json`` pointer. A reader that finds an
index finds every object it names. Each object carries its sha256; one already there with the
same sha256 and size is not sent again, so a rerun after a crash sends only what is missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import string
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from .cancel import CancelToken
from .errors import InfrastructureError, UserError
from .manifest import CHECKSUMS, INDEX, JOB_ID, MANIFEST, SHA256_HEX, SIGNED, SUM_LINE, dumps
from .models import is_name
from .signing import SIGNATURE_SUFFIX
from .store import LocalStore, S3Store, Store, check_key
from .verify import safe_name

PUBLISHED = "published.json"
PUBLISHED_SCHEMA = "cipbuild-published/1"
POINTER_SCHEMA = "cipbuild-latest/1"
LATEST = "latest"  # <prefix>/latest/<channel>.json
LAYOUT = "{board}/{file}"  # CIP's bucket layout: <prefix>/<ref>/<board>/<file>
LAYOUT_FIELDS = ("board", "job", "distro", "release", "file", "path")
SMALL = 64 << 20  # trust files are read whole (what was checked is what is sent)
ATTEMPTS = 4  # per object, on top of botocore's own retries of each request
_REF = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")

Stage = Literal["artifact", "trust", "record", "index", "pointer"]


# --- the published record: what the test stage reads -------------------------------------------


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class PublishedObject(_Record):
    name: str = Field(description="the file's name in the signed release: <job>/<path> or index.json")
    path: str = Field(description="where it is, relative to the release (<prefix>/<ref>/)")
    url: str
    sha256: str = Field(pattern=SHA256_HEX)
    size: int = Field(ge=0)
    type: str = Field(description="the artifact type (wic, kernel, initrd, ...) or the trust file's role")


class PublishedJob(_Record):
    id: str
    board: str
    distro: str
    release: str
    options: list[str] = Field(default_factory=list)
    image: str = ""
    inputs_digest: str = ""
    manifest: str = Field(description="URL of the job's manifest.json")
    objects: list[PublishedObject]


class Published(_Record):
    """published.json: where every file of a release went (stored beside index.json)."""

    schema_: Literal["cipbuild-published/1"] = Field(alias="schema")
    store: str
    ref: str
    layout: str
    url: str = Field(description="the release's URL: <store>/<ref>/")
    index: PublishedObject
    index_signature: PublishedObject
    jobs: list[PublishedJob]


# --- what to publish ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    name: str  # in the signed release: "<job>/<path in the job folder>" or "index.json"
    key: str  # relative to the store: "<ref>/<path>"
    source: Path
    size: int
    sha256: str
    stage: Stage
    type: str
    job: str | None = None
    data: bytes | None = None  # small files, read and checked once


@dataclass(frozen=True)
class JobFacts:
    id: str
    board: str
    distro: str
    release: str
    options: tuple[str, ...] = ()
    image: str = ""
    inputs_digest: str = ""


@dataclass
class Plan:
    release_dir: Path
    ref: str
    layout: str
    jobs: list[JobFacts]
    items: list[Item]  # in commit order; one per key
    by_job: dict[str, list[Item]]  # each job's files, by the name it has there (a shared key is one item)

    def stage(self, stage: Stage) -> list[Item]:
        return [item for item in self.items if item.stage == stage]

    @property
    def bytes(self) -> int:
        return sum(item.size for item in self.items)


def default_ref(cwd: Path | None = None) -> str:
    """The ref a CI pipeline or the checkout names: CI_COMMIT_TAG, CI_COMMIT_REF_SLUG, the git
    branch of the working folder, else ``local``."""
    for name in ("CI_COMMIT_TAG", "CI_COMMIT_REF_SLUG"):
        if os.environ.get(name):
            return slug(os.environ[name])
    try:
        branch = subprocess.run(
            ["git", "rev-parse", "--abbrev-ref", "HEAD"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        branch = ""
    return slug(branch) if branch and branch != "HEAD" else "local"


def slug(text: str) -> str:
    """GitLab's CI_COMMIT_REF_SLUG rules, keeping dots (tags like v1.2): lower case, other
    characters to '-', at most 63, no '-' at either end."""
    return re.sub(r"[^a-z0-9.]+", "-", text.lower())[:63].strip("-.") or "local"


def check_ref(ref: str) -> str:
    if not _REF.fullmatch(ref) or ".." in ref or ref == LATEST:
        raise UserError(
            f"{ref!r} is not a ref name",
            where="--ref",
            hint=f"lower-case letters, digits, '.', '_' and '-', at most 63, not {LATEST!r} (e.g. master, v1.2)",
        )
    return ref


def check_layout(layout: str) -> str:
    try:
        parsed = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(layout) if f is not None]
    except ValueError as exc:
        raise UserError(f"{layout!r} is not a template: {exc}", where="--layout") from None
    fields = [f for f, _, _ in parsed]
    unknown = [f for f in fields if f not in LAYOUT_FIELDS]
    if unknown:
        raise UserError(
            f"unknown field {{{unknown[0]}}} in {layout!r}",
            where="--layout",
            hint="use " + ", ".join(f"{{{f}}}" for f in LAYOUT_FIELDS),
        )
    if any(spec or conv for _, spec, conv in parsed):
        raise UserError(f"{layout!r} uses a conversion or a format spec", where="--layout", hint="plain {field}s only")
    if "file" not in fields and "path" not in fields:
        raise UserError(f"{layout!r} names no file", where="--layout", hint="end it with {file} or {path}")
    return layout


def plan_publish(release_dir: Path, ref: str, layout: str = LAYOUT) -> Plan:
    """Every file of the signed release at ``release_dir`` with the key it goes to; UserError
    (before anything is sent) for an unsigned release, a file that changed since it was signed,
    or a layout that makes two different files share a key or leave the prefix."""
    check_ref(ref)
    check_layout(layout)
    reader = _ReleaseReader(release_dir)
    index_data = reader.small(INDEX, hint="sign it first: `cipbuild sign`")
    index_sig = reader.small(INDEX + SIGNATURE_SUFFIX, hint="sign it first: `cipbuild sign`")
    try:
        entries = json.loads(index_data)["jobs"]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{release_dir / INDEX} is not a cipbuild index") from None
    by_key: dict[str, Item] = {}
    jobs: list[JobFacts] = []

    def add(item: Item) -> None:
        check_key(item.key, where=f"--layout {layout!r} for {item.name}")
        if item.key in (f"{ref}/{INDEX}", f"{ref}/{INDEX}{SIGNATURE_SUFFIX}", f"{ref}/{PUBLISHED}") and (
            item.stage != "index"
        ):
            raise UserError(f"--layout {layout!r} puts {item.name} on the release's own {item.key}")
        claim_key(by_key, item, layout)

    names: dict[str, list[Item]] = {}
    for entry in entries:
        facts, items = reader.job(entry, ref, layout)
        jobs.append(facts)
        names[facts.id] = items
        for item in items:
            add(item)
    for name, data in ((INDEX + SIGNATURE_SUFFIX, index_sig), (INDEX, index_data)):
        add(_small_item(name, f"{ref}/{name}", release_dir / name, data, "index", "index"))
    order: dict[Stage, int] = {"artifact": 0, "trust": 1, "index": 3}
    items = sorted(by_key.values(), key=lambda i: (order[i.stage], i.name != INDEX + SIGNATURE_SUFFIX, i.key))
    return Plan(release_dir, ref, layout, jobs, items, names)


def claim_key(by_key: dict[str, Item], item: Item, layout: str) -> None:
    """Put ``item`` on its key; UserError when the layout put a different file there already."""
    other = by_key.setdefault(item.key, item)
    if other.sha256 != item.sha256:
        raise UserError(
            f"--layout {layout!r} puts {other.name} and {item.name} (different files) on the same key {item.key}",
            hint="add {job} to the layout",
        )


def _small_item(
    name: str, key: str, source: Path, data: bytes, stage: Stage, kind: str, job: str | None = None
) -> Item:
    return Item(name, key, source, len(data), hashlib.sha256(data).hexdigest(), stage, kind, job, data)


class _ReleaseReader:
    """Reads the local signed release, never through a symlink, checking as it goes."""

    def __init__(self, root: Path):
        if not root.is_dir():
            raise UserError("is not a folder", where=str(root))
        self.root = root

    def lstat(self, rel: str, hint: str | None = None) -> os.stat_result:
        path = self.root / rel
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            raise UserError("is missing", where=str(path), hint=hint) from None
        if stat.S_ISLNK(info.st_mode) or not stat.S_ISREG(info.st_mode):
            raise UserError("is not a regular file (a symlink is never published)", where=str(path))
        for parent in PurePosixPath(rel).parents:
            if str(parent) != "." and os.path.islink(self.root / str(parent)):
                raise UserError("is a symlink: refused", where=str(self.root / str(parent)))
        return info

    def small(self, rel: str, hint: str | None = None) -> bytes:
        info = self.lstat(rel, hint)
        if info.st_size > SMALL:
            raise UserError(f"is larger than {SMALL >> 20} MiB", where=str(self.root / rel))
        fd = os.open(self.root / rel, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as handle:
            return handle.read(SMALL + 1)

    def job(self, entry: Any, ref: str, layout: str) -> tuple[JobFacts, list[Item]]:
        job_id = entry.get("id") if isinstance(entry, dict) else None
        if not isinstance(job_id, str) or not JOB_ID.fullmatch(job_id):
            raise UserError(f"{self.root / INDEX} names a job {str(job_id)[:80]!r} that is not a job id")
        unsigned = f"{job_id} was never signed: run `cipbuild sign {self.root}`"
        for name in SIGNED:
            self.lstat(f"{job_id}/{name}{SIGNATURE_SUFFIX}", hint=unsigned)
        manifest_data = self.small(f"{job_id}/{MANIFEST}", hint=unsigned)
        if hashlib.sha256(manifest_data).hexdigest() != entry.get("sha256"):
            raise UserError(
                f"{self.root / job_id / MANIFEST} changed since {INDEX} was signed", hint="sign the release again"
            )
        manifest = json.loads(manifest_data)
        job = manifest.get("job", {})
        options = job.get("options") if isinstance(job.get("options"), list) else []
        facts = JobFacts(
            job_id,
            str(job.get("board")),
            str(job.get("distro")),
            str(job.get("release")),
            tuple(str(o) for o in options),
            str(job.get("image") or ""),
            str(manifest.get("inputs_digest") or ""),
        )
        sums = self.checksums(job_id)
        types = {a["path"]: a["type"] for a in manifest.get("artifacts", [])}
        # a second build's files have its first's names: under <board>/<follow-up>/ they keep them
        follow_up = job.get("follow_up")
        second = follow_up.get("name") if isinstance(follow_up, dict) else None
        board = f"{facts.board}/{second}" if isinstance(second, str) and is_name(second) else facts.board
        fields = {"board": board, "job": job_id, "distro": facts.distro, "release": facts.release}
        items: list[Item] = []
        in_job = [*sums, CHECKSUMS, *(name + SIGNATURE_SUFFIX for name in SIGNED)]
        for rel in in_job:
            artifact = rel.startswith("artifacts/")
            file = PurePosixPath(rel).name if artifact else f"{job_id}.{rel}"
            key = f"{ref}/" + layout.format(**fields, file=file, path=rel)
            name = f"{job_id}/{rel}"
            if artifact:
                info = self.lstat(name)
                if info.st_size == 0 and sums[rel] != hashlib.sha256(b"").hexdigest():
                    raise UserError(f"{self.root / name} is empty: it changed since it was signed")
                items.append(
                    Item(
                        name, key, self.root / name, info.st_size, sums[rel], "artifact", types.get(rel, "file"), job_id
                    )
                )
                continue
            data = manifest_data if rel == MANIFEST else self.small(name)
            item = _small_item(name, key, self.root / name, data, "trust", _role(rel), job_id)
            if rel in sums and sums[rel] != item.sha256:
                raise UserError(f"{self.root / name} changed since it was signed (sha256 differs from {CHECKSUMS})")
            items.append(item)
        return facts, items

    def checksums(self, job_id: str) -> dict[str, str]:
        path = f"{job_id}/{CHECKSUMS}"
        sums: dict[str, str] = {}
        for number, line in enumerate(self.small(path).decode("utf-8", "replace").splitlines(), 1):
            match = SUM_LINE.fullmatch(line)
            if match is None or safe_name(match.group(2)) is not None:
                raise UserError("is not a `<sha256>  <relative path>` line", where=f"{self.root / path}:{number}")
            sums[str(PurePosixPath(match.group(2)))] = match.group(1)
        return sums


def _role(rel: str) -> str:
    if rel.endswith(SIGNATURE_SUFFIX):
        return "signature"
    return {CHECKSUMS: "checksums", MANIFEST: "manifest"}.get(rel, rel.split(".", 1)[0])


# --- sending ------------------------------------------------------------------------------------


@dataclass
class Tally:
    sent_objects: int = 0
    sent_bytes: int = 0
    skipped_objects: int = 0
    skipped_bytes: int = 0
    retried: int = 0
    aborted_uploads: int = 0
    seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "lock"}


class Watcher(Protocol):
    """What publishing reports as it goes (progress.TransferProgress draws it)."""

    def start(self, plan: Plan) -> None: ...

    def begin(self, item: Item) -> None: ...

    def advance(self, item: Item, sent: int) -> None: ...

    def done(self, item: Item, skipped: bool) -> None: ...


class Silent:
    def start(self, plan: Plan) -> None:
        pass

    def begin(self, item: Item) -> None:
        pass

    def advance(self, item: Item, sent: int) -> None:
        pass

    def done(self, item: Item, skipped: bool) -> None:
        pass


def publish(
    store: Store,
    plan: Plan,
    token: CancelToken,
    *,
    latest: str | None = None,
    watcher: Watcher | None = None,
    workers: int = 4,
) -> tuple[Published, Tally]:
    """Send ``plan`` to ``store`` in commit order; the published record and what was sent."""
    if latest is not None:
        check_channel(latest)
    watcher = watcher or Silent()
    tally = Tally()
    started = time.monotonic()
    store.check()
    tally.aborted_uploads = store.abort_incomplete(plan.ref)
    watcher.start(plan)
    with token.on_cancel(store.cancel):  # a cancel aborts the uploads under way
        return _send_all(store, plan, token, latest, watcher, workers, tally, started)


def _send_all(
    store: Store,
    plan: Plan,
    token: CancelToken,
    latest: str | None,
    watcher: Watcher,
    workers: int,
    tally: Tally,
    started: float,
) -> tuple[Published, Tally]:
    record = published_record(store, plan)
    record_item = _small_item(
        PUBLISHED, f"{plan.ref}/{PUBLISHED}", plan.release_dir, _record_bytes(record), "record", "published"
    )
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="publish") as pool:
        for stage in ("artifact", "trust"):
            _run_all(pool, [partial(send, store, item, token, tally, watcher) for item in plan.stage(stage)])
    send(store, record_item, token, tally, watcher)
    for item in plan.stage("index"):  # the signature, then index.json: the commit point
        send(store, item, token, tally, watcher)
    if latest is not None:
        index = next(i for i in plan.items if i.name == INDEX)
        pointer = {"schema": POINTER_SCHEMA, "ref": plan.ref, "index": index.key, "sha256": index.sha256}
        data = dumps(pointer).encode()
        send(
            store,
            _small_item(
                f"{LATEST}/{latest}.json",
                f"{LATEST}/{check_channel(latest)}.json",
                plan.release_dir,
                data,
                "pointer",
                "pointer",
            ),
            token,
            tally,
            watcher,
        )
    tally.seconds = round(time.monotonic() - started, 3)
    return record, tally


def check_channel(name: str) -> str:
    if not _REF.fullmatch(name):
        raise UserError(f"{name!r} is not a channel name", where="--latest", hint="like a ref: master, v1.2")
    return name


def _run_all(pool: ThreadPoolExecutor, calls: list[Callable[[], None]]) -> None:
    """Run ``calls`` on ``pool``; the first error is raised once every call has ended."""
    futures = [pool.submit(call) for call in calls]
    errors = [f.exception() for f in futures]
    first = next((e for e in errors if e is not None), None)
    if first is not None:
        raise first


def send(store: Store, item: Item, token: CancelToken, tally: Tally, watcher: Watcher) -> None:
    """Put ``item`` unless the store already holds it (same sha256 and size); retried a few times
    on infrastructure errors, checking before each retry whether the last try landed after all."""
    watcher.begin(item)
    for attempt in range(1, ATTEMPTS + 1):
        token.check()
        found = store.head(item.key)
        if found is not None and found.sha256 == item.sha256 and found.size == item.size:
            with tally.lock:
                if attempt == 1:
                    tally.skipped_objects += 1
                    tally.skipped_bytes += item.size
                else:
                    tally.sent_objects += 1
            watcher.done(item, skipped=attempt == 1)
            return
        sent = 0

        def progress(count: int) -> None:
            nonlocal sent
            sent += count
            with tally.lock:
                tally.sent_bytes += count
            watcher.advance(item, count)

        try:
            if item.data is not None:
                store.put_bytes(item.key, item.data, content_type=_content_type(item.key))
                progress(len(item.data))
            else:
                store.put_file(item.key, str(item.source), size=item.size, sha256=item.sha256, progress=progress)
        except InfrastructureError:
            if attempt == ATTEMPTS:
                raise
            with tally.lock:
                tally.retried += 1
                tally.sent_bytes -= sent
            watcher.advance(item, -sent)
            if token.sleep(min(2.0**attempt / 4, 4.0)):
                token.check()
            continue
        with tally.lock:
            tally.sent_objects += 1
        watcher.done(item, skipped=False)
        return


def _content_type(key: str) -> str:
    if key.endswith(".json"):
        return "application/json"
    if key.endswith(SIGNATURE_SUFFIX):
        return "application/pgp-signature"
    if key.endswith(CHECKSUMS):
        return "text/plain; charset=utf-8"
    return "application/octet-stream"


def _object(store: Store, plan: Plan, item: Item) -> dict[str, Any]:
    return {
        "name": item.name,
        "path": item.key[len(plan.ref) + 1 :],
        "url": store.public_url(item.key),
        "sha256": item.sha256,
        "size": item.size,
        "type": item.type,
    }


def job_records(store: Store, plan: Plan) -> list[PublishedJob]:
    """Each job of ``plan`` as published.json lists it: its facts and every object with its URL."""
    keyed = {item.key: item for item in plan.items}
    jobs = []
    for facts in plan.jobs:
        objects = []
        for item in plan.by_job[facts.id]:  # a file two jobs share is sent once, named by both
            objects.append({**_object(store, plan, keyed[item.key]), "name": item.name, "type": item.type})
        jobs.append(
            PublishedJob.model_validate(
                {
                    "id": facts.id,
                    "board": facts.board,
                    "distro": facts.distro,
                    "release": facts.release,
                    "options": list(facts.options),
                    "image": facts.image,
                    "inputs_digest": facts.inputs_digest,
                    "manifest": next(o["url"] for o in objects if o["name"] == f"{facts.id}/{MANIFEST}"),
                    "objects": objects,
                }
            )
        )
    return jobs


def published_record(store: Store, plan: Plan) -> Published:
    by_name = {item.name: item for item in plan.items}
    return Published.model_validate(
        {
            "schema": PUBLISHED_SCHEMA,
            "store": store.url,
            "ref": plan.ref,
            "layout": plan.layout,
            "url": store.public_url(f"{plan.ref}/{INDEX}")[: -len(INDEX)],
            "index": _object(store, plan, by_name[INDEX]),
            "index_signature": _object(store, plan, by_name[INDEX + SIGNATURE_SUFFIX]),
            "jobs": job_records(store, plan),
        }
    )


def _record_bytes(record: Published) -> bytes:
    return dumps(record.model_dump(mode="json", by_alias=True)).encode()


_DURATION = re.compile(r"(\d+)([smhdw]?)")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str, where: str, *, zero: bool = False) -> int:
    """Seconds in ``30d``, ``12h``, ``45m``, ``90s`` or ``3600`` (0 only when ``zero``)."""
    match = _DURATION.fullmatch(text.strip())
    if match is None or (int(match.group(1)) == 0 and not zero):
        raise UserError(f"{text!r} is not a duration", where=where, hint="like 30d, 12h, 45m or 3600 (seconds)")
    return int(match.group(1)) * _UNIT[match.group(2)]


def presign(store: Store, record: Published, seconds: int) -> Published:
    """``record`` with every URL replaced by one presigned for ``seconds`` (S3 stores only)."""
    if not isinstance(store, S3Store):
        raise UserError("only an s3:// store can presign URLs", where="--presign")
    if seconds > 7 * 86400:
        raise UserError("S3 presigned URLs last at most 7 days", where="--presign")
    prefix = f"{record.ref}/"
    data = record.model_dump(mode="json", by_alias=True)
    for obj in [data["index"], data["index_signature"], *(o for job in data["jobs"] for o in job["objects"])]:
        obj["url"] = store.presigned_url(prefix + obj["path"], seconds)
    for job in data["jobs"]:
        job["manifest"] = next(o["url"] for o in job["objects"] if o["name"] == f"{job['id']}/{MANIFEST}")
    data["url"] = store.presigned_url(f"{prefix}{INDEX}", seconds).split(INDEX, 1)[0]
    return Published.model_validate(data)


# --- retention ----------------------------------------------------------------------------------


@dataclass
class Release:
    """One ref folder of a store, as prune sees it."""

    ref: str
    keys: list[str]
    size: int
    published: datetime  # index.json's time, or the newest object's when there is no index
    complete: bool
    pointers: list[str] = field(default_factory=list)  # latest/<channel>.json naming it
    action: str = ""  # "remove" or why it is kept

    def to_json(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "published": self.published.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "objects": len(self.keys),
            "bytes": self.size,
            "complete": self.complete,
            "pointers": self.pointers,
            "action": self.action,
        }


def releases(store: Store) -> list[Release]:
    """Every ref folder of ``store`` with the pointers naming it, newest first."""
    found: dict[str, Release] = {}
    pointers: dict[str, list[str]] = {}
    for info in store.objects(""):
        ref, _, rest = info.key.partition("/")
        if not rest:
            continue
        if ref == LATEST:
            target = _pointer_ref(store, info.key)
            if target is not None:
                pointers.setdefault(target, []).append(info.key)
            continue
        if not _REF.fullmatch(ref):
            continue  # not a release: the shared build caches (`cipbuild cache`, under _cache/)
        release = found.setdefault(ref, Release(ref, [], 0, info.modified, False))
        release.keys.append(info.key)
        release.size += info.size
        if rest == INDEX:
            release.complete = True
            release.published = info.modified
        elif not release.complete:
            release.published = max(release.published, info.modified)
    for ref, names in pointers.items():
        if ref in found:
            found[ref].pointers = sorted(names)
    return sorted(found.values(), key=lambda r: (r.published, r.ref), reverse=True)


def _pointer_ref(store: Store, key: str) -> str | None:
    try:
        with store.open(key) as handle:
            data = json.loads(handle.read(1 << 20))
    except (KeyError, ValueError):
        return None
    ref = data.get("ref") if isinstance(data, dict) else None
    return ref if isinstance(ref, str) else None


def choose_prunable(found: list[Release], patterns: list[str], older_than: int, keep: int) -> list[Release]:
    """Mark each release matching ``patterns``: kept (one of the ``keep`` newest, newer than
    ``older_than`` seconds, or named by a pointer) or to remove. The matching ones, newest first."""
    from fnmatch import fnmatchcase

    now = datetime.now(UTC)
    matching = [r for r in found if any(fnmatchcase(r.ref, p) for p in patterns)]
    newest = 0
    for release in matching:
        age = (now - release.published).total_seconds()
        if release.pointers:
            release.action = "kept: " + ", ".join(release.pointers) + " names it"
            continue
        newest += 1
        if newest <= keep:
            release.action = f"kept: one of the {keep} newest"
        elif age < older_than:
            release.action = f"kept: {age / 86400:.1f} days old"
        else:
            release.action = "remove"
    return matching


def prune_release(store: Store, release: Release) -> None:
    """Remove a release, its index first: no reader ever finds an index naming a removed object."""
    first = [f"{release.ref}/{name}" for name in (INDEX, INDEX + SIGNATURE_SUFFIX, PUBLISHED)]
    store.delete([key for key in first if key in release.keys])
    store.delete([key for key in release.keys if key not in first])


# --- build avoidance across machines ------------------------------------------------------------


def published_digests(location: str, *, endpoint_url: str | None = None) -> dict[str, str]:
    """Job id -> inputs digest of each job manifest the release at ``location`` (a published
    release: s3://bucket/prefix/<ref>, file:// or a folder) holds, from its published.json and
    from the parts runners published for it (`publish --part`; a part wins: it is the newer);
    empty when nothing is published there yet. The endpoint of an S3-compatible server comes
    from AWS_ENDPOINT_URL."""
    from .store import open_store

    store = open_store(location, endpoint_url=endpoint_url)
    try:
        if isinstance(store, LocalStore) and not store.root.is_dir():
            return {}
        jobs: dict[str, PublishedJob] = {}
        try:
            with store.open(PUBLISHED) as handle:
                jobs = {job.id: job for job in Published.model_validate_json(handle.read(SMALL)).jobs}
        except KeyError:
            pass
        except ValueError:
            raise UserError(f"{PUBLISHED} is not a cipbuild published record", where=location) from None
        for info in store.objects("parts/"):
            try:
                with store.open(info.key) as handle:
                    job = json.loads(handle.read(SMALL))["job"]
                jobs[job["id"]] = PublishedJob.model_validate(job)
            except (KeyError, ValueError, TypeError):
                continue  # not a part, or gone since the listing: build the job
        digests: dict[str, str] = {}
        for job in jobs.values():
            manifest = next((o for o in job.objects if o.name == f"{job.id}/{MANIFEST}"), None)
            if manifest is None:
                continue
            try:
                with store.open(manifest.path) as handle:
                    data = handle.read(SMALL)
            except KeyError:
                continue  # named but gone: build it
            if hashlib.sha256(data).hexdigest() != manifest.sha256:
                continue
            digest = json.loads(data).get("inputs_digest")
            if isinstance(digest, str):
                digests[job.id] = digest
        return digests
    finally:
        store.close()

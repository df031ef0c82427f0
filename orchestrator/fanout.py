"""Publishing a release from many runners: each runner publishes its own jobs as *parts* (their
artifacts and trust files, then ``<ref>/parts/<job>.json``), and one final job *assembles* the
release from what the store holds: it reads every part, checks each job's manifest against the
sha256 its part recorded, writes and signs ``index.json`` over them, and commits the release in
the usual order (published.json, the index's signature, index.json, the latest pointer).

CI children cannot hand artifacts back to their parent pipeline: the store is where they meet.
A part never makes a release visible (no index is written), so a reader never sees a release
with a job still missing; a rerun of a runner sends only what changed (publish's sha256 skip).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from .cancel import CancelToken
from .errors import UserError, VerificationError
from .manifest import INDEX, INDEX_SCHEMA, JOB_ID, MANIFEST, ReleaseIndex, dumps
from .publish import (
    LATEST,
    LAYOUT,
    POINTER_SCHEMA,
    PUBLISHED,
    PUBLISHED_SCHEMA,
    SMALL,
    Item,
    JobFacts,
    Plan,
    Published,
    PublishedJob,
    Silent,
    Tally,
    Watcher,
    _Record,
    _run_all,
    _small_item,
    check_channel,
    check_ref,
    job_records,
    send,
)
from .signing import SIGNATURE_SUFFIX, Signer
from .store import Store

PARTS = "parts"  # <ref>/parts/<job>.json
PART_SCHEMA = "cipbuild-published-part/1"


class PublishedPart(_Record):
    """<ref>/parts/<job>.json: one job published by one runner, waiting for the release's index."""

    schema_: Literal["cipbuild-published-part/1"] = Field(alias="schema")
    store: str
    ref: str
    layout: str
    url: str = Field(description="the release's URL: <store>/<ref>/")
    job: PublishedJob


def part_key(ref: str, job_id: str) -> str:
    return f"{ref}/{PARTS}/{job_id}.json"


def publish_parts(
    store: Store, plan: Plan, token: CancelToken, *, watcher: Watcher | None = None, workers: int = 4
) -> tuple[list[PublishedPart], Tally]:
    """Send the jobs of ``plan`` (artifacts, then trust files, then one part record per job);
    never the local index: the release's index is assembled from every runner's parts."""
    from concurrent.futures import ThreadPoolExecutor
    from functools import partial

    watcher = watcher or Silent()
    tally = Tally()
    started = time.monotonic()
    store.check()
    tally.aborted_uploads = store.abort_incomplete(plan.ref)
    watcher.start(plan)
    url = store.public_url(f"{plan.ref}/{INDEX}")[: -len(INDEX)]
    parts = [
        PublishedPart.model_validate(
            {"schema": PART_SCHEMA, "store": store.url, "ref": plan.ref, "layout": plan.layout, "url": url, "job": job}
        )
        for job in job_records(store, plan)
    ]
    with token.on_cancel(store.cancel), ThreadPoolExecutor(max_workers=workers, thread_name_prefix="part") as pool:
        for stage in ("artifact", "trust"):
            _run_all(pool, [partial(send, store, item, token, tally, watcher) for item in plan.stage(stage)])
        for part in parts:
            data = dumps(part.model_dump(mode="json", by_alias=True)).encode()
            key = part_key(plan.ref, part.job.id)
            send(store, _small_item(key, key, plan.release_dir, data, "record", "part"), token, tally, watcher)
    tally.seconds = round(time.monotonic() - started, 3)
    return parts, tally


def plan_jobs(release_dir: Path, ref: str, job_ids: list[str], layout: str = LAYOUT) -> Plan:
    """The publish plan of signed job folders of ``release_dir`` (no index.json needed: a job is
    published as a part the moment it is signed)."""
    from .publish import _ReleaseReader, check_layout, claim_key

    check_ref(ref)
    check_layout(layout)
    reader = _ReleaseReader(release_dir)
    jobs: list[JobFacts] = []
    by_job: dict[str, list[Item]] = {}
    by_key: dict[str, Item] = {}
    for job_id in job_ids:
        manifest = reader.small(f"{job_id}/{MANIFEST}", hint=f"sign it first: `cipbuild sign {release_dir}`")
        facts, items = reader.job({"id": job_id, "sha256": hashlib.sha256(manifest).hexdigest()}, ref, layout)
        jobs.append(facts)
        by_job[facts.id] = items
        for item in items:
            claim_key(by_key, item, layout)
    order = {"artifact": 0, "trust": 1}
    items = sorted(by_key.values(), key=lambda i: (order.get(i.stage, 2), i.key))
    return Plan(release_dir, ref, layout, jobs, items, by_job)


def read_parts(store: Store, ref: str) -> dict[str, PublishedPart]:
    """Every part under ``<ref>/parts/``, by job id; a part that is not one is a VerificationError."""
    found: dict[str, PublishedPart] = {}
    prefix = f"{ref}/{PARTS}/"
    for info in store.objects(prefix):
        name = info.key[len(prefix) :]
        job_id = name.removesuffix(".json")
        if not name.endswith(".json") or not JOB_ID.fullmatch(job_id):
            continue
        try:
            with store.open(info.key) as handle:
                part = PublishedPart.model_validate_json(handle.read(SMALL))
        except KeyError:
            continue  # removed since the listing
        except (ValidationError, ValueError):
            raise VerificationError(f"{store.url}/{info.key} is not a cipbuild part record") from None
        if part.job.id != job_id or part.ref != ref:
            raise VerificationError(f"{store.url}/{info.key} is the part of {part.job.id} in {part.ref}")
        found[job_id] = part
    return found


def assemble(
    store: Store,
    ref: str,
    signer: Signer,
    token: CancelToken,
    *,
    expected: list[str] | None = None,
    latest: str | None = None,
    watcher: Watcher | None = None,
) -> tuple[Published, Tally]:
    """The release at ``<ref>/`` from the parts the runners published: index.json over every
    part's manifest (checked against the sha256 its part recorded), signed, and committed
    after published.json. With ``expected``, a job without a part stops it before any write."""
    check_ref(ref)
    if latest is not None:
        check_channel(latest)
    watcher = watcher or Silent()
    tally = Tally()
    started = time.monotonic()
    store.check()
    previous = _previous_release(store, ref)
    parts = read_parts(store, ref)
    if previous is not None:  # jobs published from one machine, before or beside the fan-out
        for job in previous.jobs:
            if job.id not in parts:
                parts[job.id] = PublishedPart.model_validate(
                    {
                        "schema": PART_SCHEMA,
                        "store": previous.store,
                        "ref": ref,
                        "layout": previous.layout,
                        "url": previous.url,
                        "job": job,
                    }
                )
    if expected is not None:
        missing = sorted(set(expected) - set(parts))
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise UserError(
                f"{len(missing)} job(s) not published under {store.url}/{ref}/: {', '.join(missing[:3])}{more}",
                hint="their build jobs failed or have not run; rerun them (`cipbuild publish OUT --part`)",
            )
        parts = {job_id: part for job_id, part in parts.items() if job_id in set(expected)}
    if not parts:
        raise UserError(f"no job is published under {store.url}/{ref}/{PARTS}/", hint="`cipbuild publish OUT --part`")
    _check_shared_keys(parts)
    entries = [_index_entry(store, part) for _, part in sorted(parts.items())]
    index = ReleaseIndex.model_validate({"schema": INDEX_SCHEMA, "jobs": entries})
    index_data = dumps(index.model_dump(mode="json", by_alias=True)).encode()
    jobs = [part.job for _, part in sorted(parts.items())]
    if previous is not None and _unchanged(store, ref, index_data, previous, jobs) and latest is None:
        tally.seconds = round(time.monotonic() - started, 3)
        return previous, tally  # the same release is there, signed: nothing to write
    with tempfile.TemporaryDirectory(prefix="cipbuild-index-") as tmp:
        path = Path(tmp) / INDEX
        path.write_bytes(index_data)
        signature = signer.sign(path).read_bytes()
    first = next(iter(parts.values()))
    items = {
        INDEX: _small_item(INDEX, f"{ref}/{INDEX}", Path(INDEX), index_data, "index", "index"),
        INDEX + SIGNATURE_SUFFIX: _small_item(
            INDEX + SIGNATURE_SUFFIX, f"{ref}/{INDEX}{SIGNATURE_SUFFIX}", Path(INDEX), signature, "index", "index"
        ),
    }

    def obj(item: Item) -> dict[str, Any]:
        return {
            "name": item.name,
            "path": item.name,
            "url": store.public_url(item.key),
            "sha256": item.sha256,
            "size": item.size,
            "type": item.type,
        }

    record = Published.model_validate(
        {
            "schema": PUBLISHED_SCHEMA,
            "store": store.url,
            "ref": ref,
            "layout": first.layout,
            "url": store.public_url(f"{ref}/{INDEX}")[: -len(INDEX)],
            "index": obj(items[INDEX]),
            "index_signature": obj(items[INDEX + SIGNATURE_SUFFIX]),
            "jobs": jobs,
        }
    )
    record_data = dumps(record.model_dump(mode="json", by_alias=True)).encode()
    order = [
        _small_item(PUBLISHED, f"{ref}/{PUBLISHED}", Path(PUBLISHED), record_data, "record", "published"),
        items[INDEX + SIGNATURE_SUFFIX],
        items[INDEX],  # the commit point
    ]
    if latest is not None:
        pointer = {"schema": POINTER_SCHEMA, "ref": ref, "index": items[INDEX].key, "sha256": items[INDEX].sha256}
        key = f"{LATEST}/{latest}.json"
        order.append(_small_item(key, key, Path(key), dumps(pointer).encode(), "pointer", "pointer"))
    with token.on_cancel(store.cancel):
        for item in order:
            send(store, item, token, tally, watcher)
    tally.seconds = round(time.monotonic() - started, 3)
    return record, tally


def _previous_release(store: Store, ref: str) -> Published | None:
    try:
        with store.open(f"{ref}/{PUBLISHED}") as handle:
            return Published.model_validate_json(handle.read(SMALL))
    except KeyError:
        return None
    except ValueError:
        raise VerificationError(f"{store.url}/{ref}/{PUBLISHED} is not a cipbuild published record") from None


def _unchanged(store: Store, ref: str, index_data: bytes, previous: Published, jobs: list[PublishedJob]) -> bool:
    """Whether ``<ref>/`` already holds this index, signed, and a published record of these jobs."""
    if previous.jobs != jobs:
        return False
    found = store.head(f"{ref}/{INDEX}")
    signature = store.head(f"{ref}/{INDEX}{SIGNATURE_SUFFIX}")
    return (
        found is not None
        and signature is not None
        and found.sha256 == hashlib.sha256(index_data).hexdigest()
        and signature.sha256 == previous.index_signature.sha256
    )


def _index_entry(store: Store, part: PublishedPart) -> dict[str, str]:
    name = f"{part.job.id}/{MANIFEST}"
    obj = next((o for o in part.job.objects if o.name == name), None)
    if obj is None:
        raise VerificationError(f"the part of {part.job.id} names no {MANIFEST}")
    try:
        with store.open(f"{part.ref}/{obj.path}") as handle:
            data = handle.read(SMALL)
    except KeyError:
        raise VerificationError(f"{store.url}/{part.ref}/{obj.path} ({name}) is gone from the store") from None
    if hashlib.sha256(data).hexdigest() != obj.sha256:
        raise VerificationError(
            f"{store.url}/{part.ref}/{obj.path} is not the {name} its part recorded (sha256 differs): "
            "another runner overwrote it?"
        )
    return {"id": part.job.id, "manifest": name, "sha256": obj.sha256}


def _check_shared_keys(parts: dict[str, PublishedPart]) -> None:
    """Two runners that put different files on one key overwrote each other: refuse the release."""
    seen: dict[str, tuple[str, str]] = {}
    for job_id, part in sorted(parts.items()):
        for obj in part.job.objects:
            other = seen.setdefault(obj.path, (job_id, obj.sha256))
            if other[1] != obj.sha256:
                raise VerificationError(
                    f"{other[0]} and {job_id} published different files on the same key {part.ref}/{obj.path}: "
                    "publish with a --layout that has {job} in it"
                )


def part_json(parts: list[PublishedPart]) -> list[dict[str, Any]]:
    return [json.loads(dumps(p.model_dump(mode="json", by_alias=True))) for p in parts]

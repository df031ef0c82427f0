"""`cipbuild release`: plan, build, sign, publish (each job as it is signed), assemble and commit
the index in one command, resumable; over the fixture upstreams with the native runtime and a
folder store and the real SeaweedFS store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from buildworld import World
from s3fixtures import S3Bucket
from test_signing import (
    Keys,
    keys,  # noqa: F401  (the session fixture)
)

from orchestrator.signing import KEY_ENV

FOUR = [
    "isar-bookworm-qemu-amd64",
    "isar-bookworm-qemu-amd64-test",
    "isar-bookworm-qemu-arm64",
    "isar-bookworm-qemu-arm64-test",
]


def release_argv(world: World, *args: str) -> list[str]:
    return [
        sys.executable, "-m", "orchestrator", "--catalog", str(world.catalog), "release", *args,
        "--runtime", "native", "--out", str(world.out), "--cache", str(world.cache), "--mirror", str(world.mirror),
        "--ref", "master", "--json",
    ]  # fmt: skip


def release(world: World, keys: Keys, *args: str) -> tuple[int, dict[str, Any], str]:  # noqa: F811
    env = {**os.environ, KEY_ENV: str(keys.good.secret)}
    proc = subprocess.run(release_argv(world, *args), capture_output=True, text=True, env=env, check=False, timeout=600)
    data = json.loads(proc.stdout) if proc.stdout.strip() else {}
    return proc.returncode, data, proc.stderr


def builds(data: dict[str, Any]) -> dict[str, str]:
    return {job["id"]: job["build"].split(":")[0] for job in data["jobs"]}


def test_release_builds_publishes_and_a_rerun_with_nothing_changed_moves_nothing(
    world: World,
    keys: Keys,  # noqa: F811
    tmp_path: Path,
) -> None:
    store = tmp_path / "store"
    code, data, err = release(world, keys, "-r", "four", "--to", str(store))
    assert code == 0, err
    assert builds(data) == dict.fromkeys(FOUR, "success") and data["index"] == "written"
    index = json.loads((store / "master" / "index.json").read_text())
    assert [entry["id"] for entry in index["jobs"]] == FOUR
    verified = subprocess.run(
        [sys.executable, "-m", "orchestrator", "verify", str(store / "master"), "--keyring", str(keys.good.public)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stdout + verified.stderr

    before = {p: p.stat().st_mtime_ns for p in (store / "master").rglob("*") if p.is_file()}
    started = time.monotonic()
    code, data, err = release(world, keys, "-r", "four", "--to", str(store))
    took = time.monotonic() - started
    assert code == 0, err
    assert builds(data) == dict.fromkeys(FOUR, "published")  # nothing built
    assert data["sent_bytes"] == 0 and data["index"] == "unchanged"
    assert {p: p.stat().st_mtime_ns for p in (store / "master").rglob("*") if p.is_file()} == before
    assert took < 60  # bench/release.py measures the 10 s goal; this catches a collapse


def test_an_interrupted_release_finishes_the_rest_only(
    world: World,
    keys: Keys,  # noqa: F811
    s3: S3Bucket,
) -> None:
    args = ("-r", "four", "--to", f"{s3.url}/cip-core", "--endpoint-url", s3.endpoint)
    env = {**os.environ, KEY_ENV: str(keys.good.secret)}
    process = subprocess.Popen(
        release_argv(world, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    deadline = time.monotonic() + 300
    while len(s3.keys("cip-core/master/parts/")) < 2:
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    published = {k.rsplit("/", 1)[1].removesuffix(".json") for k in s3.keys("cip-core/master/parts/")}
    assert 2 <= len(published) < 4
    assert "cip-core/master/index.json" not in s3.keys("cip-core/master/")  # no release yet

    code, data, err = release(world, keys, *args)
    assert code == 0, err
    status = builds(data)
    assert {job for job, s in status.items() if s == "published"} == published  # not built again
    assert all(status[job] in ("success", "up to date") for job in FOUR if job not in published)
    assert data["index"] == "written"
    index = json.loads(s3.client().get_object(Bucket=s3.bucket, Key="cip-core/master/index.json")["Body"].read())
    assert [entry["id"] for entry in index["jobs"]] == FOUR


def test_a_failing_build_publishes_the_others_and_no_release(
    world: World,
    keys: Keys,  # noqa: F811
    tmp_path: Path,
) -> None:
    store = tmp_path / "store"
    jobs = ("isar-bookworm-qemu-amd64", "isar-bookworm-qemu-amd64-fail")
    code, data, err = release(world, keys, *jobs, "--to", str(store))
    assert code == 3, err
    assert builds(data) == {"isar-bookworm-qemu-amd64": "success", "isar-bookworm-qemu-amd64-fail": "failed"}
    assert "not assembled" in data["index"]
    assert (store / "master" / "parts" / "isar-bookworm-qemu-amd64.json").is_file()
    assert not (store / "master" / "index.json").exists()
    assert "isar-bookworm-qemu-amd64-fail" in err.strip().splitlines()[-1]

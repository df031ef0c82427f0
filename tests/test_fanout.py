"""Publishing from many runners (`publish --part` on each, `publish --assemble` once): parts make
no release visible, the assembled release verifies like one published from a single machine, and
what a runner overwrote or never published stops the release before its index is written."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from s3fixtures import S3Bucket
from test_signing import (
    Keys,
    keys,  # noqa: F401  (the session fixture)
    make_job,
)

from orchestrator.publish import published_digests
from orchestrator.signing import KEY_ENV

Cli = Callable[..., Any]
AMD64, ARM64 = "isar-bookworm-qemu-amd64", "isar-bookworm-qemu-arm64"


@pytest.fixture
def runners(cli: Cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, keys: Keys) -> dict[str, Path]:  # noqa: F811
    """Two runners' out folders, each with one signed job (`build --sign JOB` leaves that)."""
    monkeypatch.setenv(KEY_ENV, str(keys.good.secret))
    outs = {}
    for job_id, files in (
        (AMD64, {"image.wic": b"amd64 image" * 100, "vmlinuz": b"amd64 kernel"}),
        (ARM64, {"image.wic": b"arm64" * 100, "Image": b"arm64 kernel"}),
    ):
        out = tmp_path / f"runner-{job_id}"
        make_job(out, job_id, files)
        assert cli("sign", str(out)).code == 0
        outs[job_id] = out
    return outs


def part(cli: Cli, out: Path, *store: str) -> dict[str, Any]:
    result = cli("publish", str(out), "--part", "--ref", "master", "--json", *store)
    assert result.code == 0, result.err
    data: dict[str, Any] = json.loads(result.out)
    return data


def test_parts_from_two_runners_assemble_into_a_release_that_verifies(
    cli: Cli,
    runners: dict[str, Path],
    tmp_path: Path,
    keys: Keys,  # noqa: F811
) -> None:
    store = tmp_path / "store"
    first = part(cli, runners[AMD64], "--to", str(store))
    # the runner's test job reads its build job's part: the URLs are known before the release is
    (tmp_path / "part.json").write_text(json.dumps(first))
    rendered = cli("test", "render", str(tmp_path / "part.json"), "--out", str(tmp_path / "jobs"), "--json")
    assert rendered.code == 0, rendered.err
    (job,) = json.loads(rendered.out)
    assert (job["job"], job["plan"]) == (AMD64, "boot")
    assert all(url.startswith(store.as_uri()) or url.startswith(str(store)) for url in job["urls"]), job["urls"]
    (record,) = first["parts"]
    assert record["schema"] == "cipbuild-published-part/1" and record["job"]["id"] == AMD64
    assert (store / "master" / "parts" / f"{AMD64}.json").is_file()
    assert not (store / "master" / "index.json").exists()  # a part makes no release visible
    part(cli, runners[ARM64], "--to", str(store))
    assert not (store / "master" / "index.json").exists()
    assert cli("verify", str(store / "master"), "--keyring", str(keys.good.public)).code != 0

    assembled = cli("publish", "--assemble", "--to", str(store), "--ref", "master", "--json", "-r", "ci")
    assert assembled.code == 2 and "not published" in assembled.err  # the ci recipe has many more jobs
    assert not (store / "master" / "index.json").exists()

    assembled = cli("publish", "--assemble", "--to", str(store), "--ref", "master", "--json", "--latest", "master")
    assert assembled.code == 0, assembled.err
    release = json.loads(assembled.out)
    assert [job["id"] for job in release["jobs"]] == [AMD64, ARM64]
    index = json.loads((store / "master" / "index.json").read_text())
    assert [entry["id"] for entry in index["jobs"]] == [AMD64, ARM64]
    assert json.loads((store / "latest" / "master.json").read_text())["ref"] == "master"
    verified = cli("verify", str(store / "master"), "--keyring", str(keys.good.public))
    assert verified.code == 0, verified.err
    # a rerun of a runner after the release was assembled sends nothing and the digests are known
    again = part(cli, runners[AMD64], "--to", str(store))
    assert again["summary"]["sent_objects"] == 0
    assert set(published_digests(str(store / "master"))) == {AMD64, ARM64}


def test_a_manifest_another_runner_overwrote_stops_the_release(
    cli: Cli, runners: dict[str, Path], tmp_path: Path
) -> None:
    store = tmp_path / "store"
    for out in runners.values():
        part(cli, out, "--to", str(store))
    manifest = store / "master" / "qemu-amd64" / f"{AMD64}.manifest.json"
    manifest.write_text(manifest.read_text().replace("2026", "2027"))
    result = cli("publish", "--assemble", "--to", str(store), "--ref", "master")
    assert result.code == 5, result.err
    assert f"{AMD64}/manifest.json" in result.err and "sha256 differs" in result.err
    assert not (store / "master" / "index.json").exists() and not (store / "master" / "published.json").exists()


def test_two_jobs_that_put_different_files_on_one_key_are_refused(
    cli: Cli,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    keys: Keys,  # noqa: F811
) -> None:
    """Same board, same artifact name, different bytes: the second runner overwrote the first's."""
    monkeypatch.setenv(KEY_ENV, str(keys.good.secret))
    store = tmp_path / "store"
    for job_id, data in ((AMD64, b"base image"), (f"{AMD64}-test", b"test image")):
        out = tmp_path / job_id
        make_job(out, job_id, {"image.wic": data})
        meta = json.loads((out / job_id / "metadata.json").read_text())
        meta["job"]["board"] = "qemu-amd64"
        (out / job_id / "metadata.json").write_text(json.dumps(meta))
        assert cli("sign", str(out)).code == 0
        part(cli, out, "--to", str(store))
    result = cli("publish", "--assemble", "--to", str(store), "--ref", "master")
    assert result.code == 5 and "same key master/qemu-amd64/image.wic" in result.err and "{job}" in result.err
    assert not (store / "master" / "index.json").exists()


def test_bad_combinations_are_one_line(cli: Cli, runners: dict[str, Path]) -> None:
    both = cli("publish", str(runners[AMD64]), "--part", "--assemble")
    assert both.code == 2 and "pass one" in both.err
    latest = cli("publish", str(runners[AMD64]), "--part", "--latest", "master")
    assert latest.code == 2 and "a part is not a release" in latest.err
    nothing = cli("publish", "--assemble", "--to", "empty-store", "--ref", "master")
    assert nothing.code == 2 and "no job is published" in nothing.err
    for result in (both, latest, nothing):
        assert result.err.count("\n") == 1 and "Traceback" not in result.err


@pytest.mark.integration
def test_parts_assemble_in_a_real_s3_store(
    cli: Cli,
    runners: dict[str, Path],
    s3: S3Bucket,
    keys: Keys,  # noqa: F811
) -> None:
    args = ("--to", f"{s3.url}/cip-core", "--endpoint-url", s3.endpoint)
    for out in runners.values():
        part(cli, out, *args)
    assert not [k for k in s3.keys("cip-core/master/") if k.endswith("index.json")]
    result = cli("publish", "--assemble", *args, "--ref", "master")
    assert result.code == 0, result.err
    release = f"{s3.url}/cip-core/master"
    verified = cli("verify", release, "--endpoint-url", s3.endpoint, "--keyring", str(keys.good.public))
    assert verified.code == 0, verified.err

"""A job built again says why: which of its inputs changed since its last successful build in the
same folder, in one line of the progress output and in full in metadata.json."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from buildworld import BUILDER_IMAGE, World, open_to_builder
from kasfixture import GIT_ENV, make_test_catalog, make_upstreams

from orchestrator.rebuild import compare, why_rebuilt

JOB = "isar-bookworm-qemu-amd64"

INPUTS: dict[str, object] = {
    "kas_file_sha256": "a" * 64,
    "upstream": {"isar": {"url": "https://example.org/isar.git", "commit": "1" * 40}},
    "builder_image": "kas-isar:4.8.1",
    "builder_image_digest": "sha256:" + "b" * 64,
    "cipbuild_version": "0.9.0",
    "env": {},
    "env_sha256": "c" * 64,
    "artifact_rules": [{"type": "wic", "glob": "{image}.wic"}],
    "facts": {"machine": "qemuamd64"},
}


def changed(**now: object) -> dict[str, object]:
    return {**INPUTS, **now}


@pytest.mark.parametrize(
    ("now", "key", "summary"),
    [
        (changed(cipbuild_version="1.0.0"), "cipbuild_version", "cipbuild version 0.9.0 -> 1.0.0"),
        (
            changed(builder_image_digest="sha256:" + "d" * 64),
            "builder_image_digest",
            f"builder image digest sha256:{'b' * 12} -> sha256:{'d' * 12}",
        ),
        (
            changed(upstream={"isar": {"url": "https://example.org/isar.git", "commit": "2" * 40}}),
            "upstream",
            f"upstream isar {'1' * 12} -> {'2' * 12}",
        ),
        (changed(artifact_rules=[]), "artifact_rules", "artifact rules"),
        (
            changed(env={"DISTRO_APT_PREMIRRORS": "http://***@mirror/"}, env_sha256="e" * 64),
            "env",
            "environment: DISTRO_APT_PREMIRRORS",
        ),
        (changed(env_sha256="e" * 64), "env", "environment (hidden part)"),
    ],
)
def test_each_kind_of_input_is_named(tmp_path: Path, now: dict[str, object], key: str, summary: str) -> None:
    (tmp_path / "last-success.json").write_text(
        json.dumps({"inputs_digest": "old", "inputs": INPUTS, "kas_file": "header: {version: 14}\n"})
    )
    why = why_rebuilt(tmp_path, now, "new", "header: {version: 14}\n", forced=False)
    assert list(why.changes) == [key]
    assert why.summary == summary


def test_kas_file_lines_are_shown_as_a_difference() -> None:
    changes = compare(INPUTS, changed(kas_file_sha256="f" * 64), "machine: a\ntarget: x\n", "machine: b\ntarget: x\n")
    assert changes["kas_file"] == ["--- job.yml (last success)", "+++ job.yml", "-machine: a", "+machine: b"]


def test_no_reason_without_a_change_and_a_plain_one_without_history(tmp_path: Path) -> None:
    assert why_rebuilt(tmp_path, INPUTS, "d", "", forced=False).summary == "no successful build in this folder yet"
    (tmp_path / "last-success.json").write_text(json.dumps({"inputs_digest": "d", "inputs": INPUTS}))
    assert why_rebuilt(tmp_path, INPUTS, "d", "", forced=False).summary == ""
    assert why_rebuilt(tmp_path, INPUTS, "d", "", forced=True).summary == "--force, nothing changed"


@pytest.mark.integration
def test_a_rebuild_names_the_input_that_changed(docker_engine: str, tmp_path: Path) -> None:
    root = open_to_builder(tmp_path)
    upstreams = make_upstreams(root / "upstreams")
    world = World(make_test_catalog(root / "catalog", upstreams), upstreams.root, root / "out", root / "cache")

    def build(*extra: str, env: dict[str, str] | None = None) -> tuple[str, dict[str, Any]]:
        proc = world.build(JOB, *extra, env={"CI": "1", **(env or {})})
        assert proc.returncode == 0, proc.stderr
        queued = [line for line in proc.stderr.splitlines() if f"{JOB}: queued" in line]
        meta = world.metadata(JOB)
        return (queued[0].split(": queued", 1)[1].strip(" ()") if queued else ""), meta["rebuilt_because"]

    said, why = build()
    assert said == "no successful build in this folder yet" and why["changes"] == {}

    env = {"DISTRO_APT_PREMIRRORS": "http://user:secret@deb.example/debian"}
    said, why = build(env=env)
    assert said == "rebuilt: environment: DISTRO_APT_PREMIRRORS"
    assert why["changes"]["env"]["DISTRO_APT_PREMIRRORS"]["now"] == "http://***@deb.example/debian"
    assert "secret" not in json.dumps(why)

    cip_core = upstreams.root / "isar-cip-core"
    subprocess.run(["git", "commit", "-q", "--allow-empty", "-m", "next"], cwd=cip_core, env={**os.environ, **GIT_ENV},
                   check=True)  # fmt: skip
    new = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=cip_core, capture_output=True, text=True, check=True
    ).stdout.strip()
    repos = world.catalog / "kas" / "repos.yml"
    repos.write_text(repos.read_text().replace(upstreams.commits["isar-cip-core"], new))
    said, why = build(env=env)
    assert said == f"rebuilt: upstream cip-core {upstreams.commits['isar-cip-core'][:12]} -> {new[:12]}"
    assert set(why["changes"]) == {"kas_file", "upstream"}  # the lock's commit is in job.yml too

    board = world.catalog / "boards" / "qemu-amd64.yml"
    board.write_text(board.read_text().replace("machine: qemu-amd64", "machine: qemu-amd64-b"))
    said, why = build(env=env)
    assert (
        "-  machine: qemu-amd64" in why["changes"]["kas_file"] or "-machine: qemu-amd64" in why["changes"]["kas_file"]
    )
    assert said.startswith("rebuilt: kas file: ")

    subprocess.run(["docker", "tag", BUILDER_IMAGE, "cipbuild-test:why"], check=True)
    args = world.args(JOB)
    args[args.index(BUILDER_IMAGE)] = "cipbuild-test:why"
    proc = subprocess.run(args, capture_output=True, text=True, env={**os.environ, **env, "CI": "1"}, check=False)
    assert proc.returncode == 0, proc.stderr
    assert f"{JOB}: queued (rebuilt: builder image {BUILDER_IMAGE} -> cipbuild-test:why)" in proc.stderr


@pytest.mark.integration
def test_plan_why_says_the_same_without_building(docker_engine: str, world: World) -> None:
    assert world.build(JOB).returncode == 0
    plan = [*world.args()[:5], "plan", JOB, "--why", "--out", str(world.out), "--image", BUILDER_IMAGE, "--json"]

    def why(env: dict[str, str] | None = None) -> dict[str, Any]:
        proc = subprocess.run(plan, capture_output=True, text=True, env={**os.environ, **(env or {})}, check=False)
        assert proc.returncode == 0, proc.stderr
        (row,) = json.loads(proc.stdout)
        assert isinstance(row, dict)
        return row

    assert why() == {"id": JOB, "would_build": False, "summary": "", "changes": {}}
    row = why({"DISTRO_APT_PREMIRRORS": "http://deb.example/debian"})
    assert row["would_build"] is True and row["summary"] == "environment: DISTRO_APT_PREMIRRORS"
    built = world.build(JOB, env={"DISTRO_APT_PREMIRRORS": "http://deb.example/debian"})
    assert built.returncode == 0
    assert world.metadata(JOB)["rebuilt_because"]["summary"] == row["summary"]  # what plan said, build did

"""manifest.json, SHA256SUMS, provenance and index.json of real fixture builds; the package parser."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from buildworld import BUILDER_IMAGE, World

from orchestrator.catalog import default_catalog_dir
from orchestrator.errors import UserError
from orchestrator.manifest import (
    CHECKSUMS,
    INDEX,
    MANIFEST,
    PROVENANCE,
    SBOM,
    SIGNED,
    SPDX,
    manifest_schema_text,
    write_index,
    write_job_trust,
)
from orchestrator.packages import Package, from_dpkg_status, from_isar_manifest

JOB = "isar-bookworm-qemu-amd64"

STATUS = """\
Package: libc6
Status: install ok installed
Architecture: amd64
Multi-Arch: same
Source: glibc
Version: 2.36-9+deb12u4
Description: GNU C Library: Shared libraries
 Contains the standard libraries.

Package: nano
Status: deinstall ok config-files
Architecture: amd64
Version: 7.2-1

Package: libssl3
Status: install ok installed
Architecture: arm64
Source: openssl (3.0.11-1~deb12u2)
Version: 3.0.13-1~deb12u1

Package: half-done
Status: install ok half-configured
Architecture: amd64
Version: 1.0

Package: tzdata
Status: install ok installed
Architecture: all
Version: 2024a-0+deb12u1
"""


def test_dpkg_status_keeps_installed_packages_with_their_source_name() -> None:
    assert from_dpkg_status(STATUS) == [
        Package("libc6", "2.36-9+deb12u4", "amd64", "glibc"),
        Package("libssl3", "3.0.13-1~deb12u1", "arm64", "openssl"),
        Package("tzdata", "2024a-0+deb12u1", "all", "tzdata"),
    ]


def test_dpkg_status_garbage_is_no_package() -> None:
    assert from_dpkg_status("") == []
    assert from_dpkg_status("not: a\nstatus file\n\n\x00\x01") == []
    assert from_dpkg_status("Package: x\nStatus: install ok installed\n") == []  # no version


def test_isar_manifest_lines_and_plain_dpkg_query_lines() -> None:
    text = "glibc|2.36-9|libc6:amd64|2.36-9\nbase-files|12.4|base-files|12.4\ngarbage\nbash 5.2-1\n"
    assert from_isar_manifest(text) == [
        Package("base-files", "12.4", "", "base-files"),
        Package("bash", "5.2-1", "", "bash"),
        Package("libc6", "2.36-9", "amd64", "glibc"),
    ]


def test_shipped_manifest_schema_matches_the_model() -> None:
    shipped = default_catalog_dir() / "schemas" / "manifest.schema.json"
    assert shipped.read_text() == manifest_schema_text(), (
        "refresh it: python -c 'from pathlib import Path; from orchestrator.manifest import write_manifest_schema;"
        ' write_manifest_schema(Path("schemas"))\''
    )


# --- real builds -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, test_catalog: Path, upstreams: Any) -> Path:
    """One real fixture job built with the docker engine, kept pristine for the module."""
    from buildworld import open_to_builder

    root = open_to_builder(tmp_path_factory.mktemp("trust"))
    world = World(test_catalog, upstreams.root, root / "out", root / "cache")
    _need_docker()
    proc = world.build(JOB, "--json")
    assert proc.returncode == 0, proc.stderr
    return world.out


def _need_docker() -> None:
    import docker
    from buildworld import unavailable

    try:
        client = docker.from_env(timeout=10)
        client.images.get(BUILDER_IMAGE)
    except Exception as exc:
        unavailable(f"no docker engine or builder image ({exc})")


@pytest.fixture
def job(built: Path, tmp_path: Path) -> Path:
    """A private copy of the built job folder (out/<job-id>), to write into and break."""
    out = tmp_path / "out"
    shutil.copytree(built / JOB, out / JOB, symlinks=True, ignore=shutil.ignore_patterns("work", "build"))
    return out / JOB


def load(path: Path) -> Any:
    return json.loads(path.read_text())


@pytest.mark.integration
def test_a_built_job_gets_manifest_checksums_and_provenance(job: Path) -> None:
    written = write_job_trust(job)
    assert sorted(p.name for p in written) == sorted([MANIFEST, SBOM, SPDX, PROVENANCE, CHECKSUMS])
    # sha256sum alone checks the whole folder
    proc = subprocess.run(
        ["sha256sum", "--strict", "-c", CHECKSUMS], check=False, cwd=job, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    meta = load(job / "metadata.json")
    listed = [line.split("  ", 1)[1] for line in (job / CHECKSUMS).read_text().splitlines()]
    assert listed == sorted([a["path"] for a in meta["artifacts"]] + [MANIFEST, SBOM, SPDX, PROVENANCE])

    manifest = load(job / MANIFEST)
    jsonschema.validate(manifest, load(default_catalog_dir() / "schemas" / "manifest.schema.json"))
    assert manifest["schema"] == "cipbuild-manifest/1"
    assert manifest["job"] == meta["job"] and manifest["inputs"] == meta["inputs"]
    assert manifest["inputs_digest"] == meta["inputs_digest"]
    assert manifest["builder"] == {"image": BUILDER_IMAGE, "digest": meta["inputs"]["builder_image_digest"]}
    assert (manifest["status"], manifest["started"], manifest["finished"]) == (
        meta["status"],
        meta["started"],
        meta["finished"],
    )
    assert manifest["artifacts"] == meta["artifacts"]  # the same record, nothing rehashed or renamed
    assert manifest["packages"] == [
        {"name": "base-files", "version": "12.4+deb12u5", "architecture": "amd64", "source": "base-files"},
        {"name": "libc6", "version": "2.36-9+deb12u4", "architecture": "amd64", "source": "glibc"},
        {"name": "libssl3", "version": "3.0.13-1~deb12u1", "architecture": "amd64", "source": "openssl"},
        {"name": "tzdata", "version": "2024a-0+deb12u1", "architecture": "all", "source": "tzdata"},
    ]
    assert manifest["files"] == {
        "sbom": SBOM,
        "spdx": SPDX,
        "provenance": PROVENANCE,
        "checksums": CHECKSUMS,
        "signatures": {name: f"{name}.asc" for name in SIGNED},
    }
    # the host's details stay in metadata.json
    assert "host" not in manifest and "runtime" not in manifest


@pytest.mark.integration
def test_provenance_names_subjects_commits_builder_and_log(job: Path) -> None:
    write_job_trust(job)
    meta = load(job / "metadata.json")
    prov = load(job / PROVENANCE)
    assert prov["_type"] == "https://in-toto.io/Statement/v1"
    assert prov["predicateType"] == "https://slsa.dev/provenance/v1"
    assert prov["subject"] == [{"name": a["path"], "digest": {"sha256": a["sha256"]}} for a in meta["artifacts"]]
    build = prov["predicate"]["buildDefinition"]
    assert build["externalParameters"] == meta["job"]
    deps = build["resolvedDependencies"]
    commits = {d["name"]: d["digest"]["gitCommit"] for d in deps if "gitCommit" in d["digest"]}
    for name, pin in meta["inputs"]["upstream"].items():
        assert commits[name] == pin["commit"]
    assert "isar" in commits  # the transitive repository kas.lock.yml resolved
    image_digest = meta["inputs"]["builder_image_digest"].removeprefix("sha256:")
    assert {"name": "builder-image", "uri": f"docker://{BUILDER_IMAGE}", "digest": {"sha256": image_digest}} in deps
    kas_sha = hashlib.sha256((job / "job.yml").read_bytes()).hexdigest()
    assert {"name": "job.yml", "uri": "job.yml", "digest": {"sha256": kas_sha}} in deps
    run = prov["predicate"]["runDetails"]
    assert run["metadata"]["startedOn"] == meta["started"] and run["metadata"]["finishedOn"] == meta["finished"]
    log_sha = hashlib.sha256((job / "build.log").read_bytes()).hexdigest()
    assert run["byproducts"] == [{"name": "build.log", "uri": "build.log", "digest": {"sha256": log_sha}}]


@pytest.mark.integration
def test_a_second_run_writes_the_same_bytes(job: Path) -> None:
    first = {p.name: p.read_bytes() for p in write_job_trust(job)}
    second = {p.name: p.read_bytes() for p in write_job_trust(job)}
    assert first == second and SPDX in first


@pytest.mark.integration
def test_index_lists_each_manifest_with_its_digest(job: Path) -> None:
    write_job_trust(job)
    other = job.parent / "isar-bookworm-qemu-amd64-copy"
    shutil.copytree(job, other, symlinks=True)
    meta = load(other / "metadata.json")
    meta["job"]["id"] = other.name
    (other / "metadata.json").write_text(json.dumps(meta))
    write_job_trust(other)
    path = write_index(job.parent, [other, job])
    assert path == job.parent / INDEX
    index = load(path)
    assert index == {
        "schema": "cipbuild-index/1",
        "jobs": [
            {
                "id": d.name,
                "manifest": f"{d.name}/{MANIFEST}",
                "sha256": hashlib.sha256((d / MANIFEST).read_bytes()).hexdigest(),
            }
            for d in (job, other)
        ],
    }
    # a manifest swapped for another job's is refused
    shutil.copy(job / MANIFEST, other / MANIFEST)
    with pytest.raises(UserError, match="manifest of job"):
        write_index(job.parent, [job, other])


@pytest.mark.integration
def test_a_compressed_artifact_gets_the_digest_of_its_content(job: Path) -> None:
    content = b"rootfs content\n" * 1000
    (job / "artifacts" / "rootfs.tar.gz").write_bytes(gzip.compress(content, mtime=0))
    meta = load(job / "metadata.json")
    data = (job / "artifacts" / "rootfs.tar.gz").read_bytes()
    record = {"type": "tar.gz", "path": "artifacts/rootfs.tar.gz", "size": len(data)}
    meta["artifacts"].append({**record, "sha256": hashlib.sha256(data).hexdigest()})
    (job / "metadata.json").write_text(json.dumps(meta))
    write_job_trust(job)
    arts = {a["path"]: a for a in load(job / MANIFEST)["artifacts"]}
    assert arts["artifacts/rootfs.tar.gz"]["uncompressed_sha256"] == hashlib.sha256(content).hexdigest()
    assert "uncompressed_sha256" not in arts[meta["artifacts"][0]["path"]]


def set_meta(job: Path, **changes: Any) -> None:
    meta = load(job / "metadata.json")
    meta.update(changes)
    (job / "metadata.json").write_text(json.dumps(meta))


@pytest.mark.integration
@pytest.mark.parametrize("status", ["failed", "running", "infra-error", None])
def test_a_job_that_did_not_succeed_is_refused(job: Path, status: str | None) -> None:
    set_meta(job, status=status)
    with pytest.raises(UserError, match="did not succeed") as info:
        write_job_trust(job)
    assert str(job) in str(info.value) and info.value.exit_code == 2
    assert not (job / MANIFEST).exists()


def test_a_folder_without_metadata_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"no metadata\.json"):
        write_job_trust(tmp_path)
    (tmp_path / "metadata.json").write_text("{not json")
    with pytest.raises(UserError, match=r"metadata.json is not valid JSON"):
        write_job_trust(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        write_job_trust(tmp_path / "nope")


@pytest.mark.integration
def test_a_symlinked_artifact_is_not_followed(job: Path, tmp_path: Path) -> None:
    meta = load(job / "metadata.json")
    status = next(a for a in meta["artifacts"] if a["type"] == "dpkg_status")
    secret = tmp_path / "elsewhere"
    secret.write_text((job / status["path"]).read_text())
    os.unlink(job / status["path"])
    os.symlink(secret, job / status["path"])
    with pytest.raises(UserError, match="symlink: refused") as info:
        write_job_trust(job)
    assert status["path"] in str(info.value)


@pytest.mark.integration
def test_symlinks_planted_at_output_names_are_replaced_not_written_through(job: Path, tmp_path: Path) -> None:
    target = tmp_path / "victim"
    target.write_text("keep me")
    for name in (MANIFEST, CHECKSUMS, SBOM, SPDX, PROVENANCE):
        os.symlink(target, job / name)
    write_job_trust(job)
    assert target.read_text() == "keep me"
    assert not any((job / name).is_symlink() for name in (MANIFEST, CHECKSUMS, SBOM, SPDX, PROVENANCE))


@pytest.mark.integration
def test_a_symlinked_job_folder_or_metadata_is_refused(job: Path, tmp_path: Path) -> None:
    link = tmp_path / "link"
    os.symlink(job, link)
    with pytest.raises(UserError, match="symlink"):
        write_job_trust(link)
    os.rename(job / "metadata.json", tmp_path / "meta.json")
    os.symlink(tmp_path / "meta.json", job / "metadata.json")
    with pytest.raises(UserError, match="symlink: refused"):
        write_job_trust(job)


@pytest.mark.integration
@pytest.mark.parametrize("path", ["../metadata.json", "/etc/passwd", "artifacts/../build.log", "artifacts/a\nb"])
def test_an_artifact_path_leaving_the_folder_is_refused(job: Path, path: str) -> None:
    meta = load(job / "metadata.json")
    meta["artifacts"][0]["path"] = path
    (job / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="not valid: refused"):
        write_job_trust(job)


@pytest.mark.integration
def test_an_artifact_changed_since_the_build_is_refused(job: Path) -> None:
    meta = load(job / "metadata.json")
    with open(job / meta["artifacts"][0]["path"], "ab") as f:
        f.write(b"more")
    with pytest.raises(UserError, match="changed since it was built"):
        write_job_trust(job)

"""The CycloneDX SBOM of a real fixture build, validated against the official 1.6 schema."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from buildworld import BUILDER_IMAGE, World, open_to_builder, unavailable
from packageurl import PackageURL

from orchestrator.manifest import MANIFEST, SBOM, write_job_trust
from orchestrator.packages import Package
from orchestrator.sbom import ImageFacts, debian_distro, package_purls, purl_of, sbom_text

JOB = "isar-bookworm-qemu-arm64"


def validate(text: str) -> None:
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    errors = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
    assert errors is None, errors


def test_purls_follow_the_deb_type_with_the_debian_number() -> None:
    pkg = Package("libssl3", "1:3.0.13-1~deb12u1+b1", "arm64", "openssl")
    assert purl_of(pkg, "bookworm") == "pkg:deb/debian/libssl3@1:3.0.13-1~deb12u1%2Bb1?arch=arm64&distro=debian-12"
    parsed = PackageURL.from_string(purl_of(pkg, "bookworm"))
    assert (parsed.name, parsed.version, parsed.qualifiers) == (
        "libssl3",
        "1:3.0.13-1~deb12u1+b1",
        {"arch": "arm64", "distro": "debian-12"},
    )
    assert debian_distro("trixie") == "debian-13" and debian_distro("sid") == "debian-sid"
    assert purl_of(Package("bash", "5.2", "", "bash"), "buster") == "pkg:deb/debian/bash@5.2?distro=debian-10"


def test_an_sbom_of_no_packages_and_no_kernel_is_still_valid() -> None:
    facts = ImageFacts("j", "img", "bookworm", None, "0" * 64, None, None, None, None)
    validate(sbom_text(facts, [], "0.1.0"))


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory, test_catalog: Path, upstreams: Any) -> Path:
    import docker

    try:
        docker.from_env(timeout=10).images.get(BUILDER_IMAGE)
    except Exception as exc:
        unavailable(f"no docker engine or builder image ({exc})")
    root = open_to_builder(tmp_path_factory.mktemp("sbom"))
    world = World(test_catalog, upstreams.root, root / "out", root / "cache")
    proc = world.build(JOB, "--json")
    assert proc.returncode == 0, proc.stderr
    write_job_trust(world.out / JOB)
    return world.out / JOB


@pytest.mark.integration
def test_the_sbom_is_valid_cyclonedx_and_lists_the_manifest_packages(job: Path) -> None:
    text = (job / SBOM).read_text()
    validate(text)
    bom = json.loads(text)
    manifest = json.loads((job / MANIFEST).read_text())
    assert bom["specVersion"] == "1.6"
    root = bom["metadata"]["component"]
    assert root["type"] == "operating-system" and root["name"] == manifest["job"]["image"]
    wic = next(a for a in manifest["artifacts"] if a["type"] == "wic")
    assert root["hashes"] == [{"alg": "SHA-256", "content": wic["sha256"]}]
    expected = {
        purl_of(Package(p["name"], p["version"], p["architecture"], p["source"]), "bookworm")
        for p in manifest["packages"]
    }
    assert package_purls(bom) == expected and len(expected) == 4
    assert "pkg:deb/debian/libc6@2.36-9%2Bdeb12u4?arch=arm64&distro=debian-12" in expected
    kernel = next(a for a in manifest["artifacts"] if a["type"] == "kernel")
    files = [c for c in bom["components"] if c["type"] == "file"]
    assert [(c["name"], c["version"], c["hashes"][0]["content"]) for c in files] == [
        (kernel["path"].removeprefix("artifacts/"), manifest["job"]["kernel"], kernel["sha256"])
    ]
    # the root depends on every component
    deps = {d["ref"]: d.get("dependsOn", []) for d in bom["dependencies"]}
    assert set(deps[root["bom-ref"]]) == {c["bom-ref"] for c in bom["components"]}
    assert bom["metadata"]["timestamp"].startswith(manifest["finished"][:19])


@pytest.mark.integration
def test_a_deployed_sbom_is_referenced_not_replaced(job: Path, tmp_path: Path) -> None:
    copy = tmp_path / JOB
    shutil.copytree(job, copy, symlinks=True, ignore=shutil.ignore_patterns("work", "build", SBOM))
    own = copy / "artifacts" / "image.cdx.json"
    own.write_text((job / SBOM).read_text())
    meta = json.loads((copy / "metadata.json").read_text())
    import hashlib

    data = own.read_bytes()
    meta["artifacts"].append(
        {
            "type": "sbom",
            "path": "artifacts/image.cdx.json",
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
    )
    (copy / "metadata.json").write_text(json.dumps(meta))
    written = write_job_trust(copy)
    assert own in written and not (copy / SBOM).exists()
    manifest = json.loads((copy / MANIFEST).read_text())
    assert manifest["files"]["sbom"] == "artifacts/image.cdx.json"
    sums = (copy / "SHA256SUMS").read_text()
    assert sums.count("artifacts/image.cdx.json") == 1 and SBOM not in sums

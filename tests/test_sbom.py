"""The CycloneDX and SPDX SBOMs of a real fixture build, validated against the official CycloneDX 1.6
schema and by spdx-tools' SPDX 2.3 validator."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from buildworld import BUILDER_IMAGE, World, open_to_builder, unavailable
from packageurl import PackageURL

from orchestrator import __version__
from orchestrator.manifest import MANIFEST, SBOM, SPDX, write_job_trust
from orchestrator.packages import Package
from orchestrator.sbom import ImageFacts, debian_distro, package_purls, purl_of, sbom_text
from orchestrator.spdx import spdx_id, spdx_text
from orchestrator.verify import sbom_packages

JOB = "isar-bookworm-qemu-arm64"


def validate(text: str) -> None:
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    errors = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
    assert errors is None, errors


def validate_spdx(text: str) -> dict[str, Any]:
    """No message from spdx-tools' full validation of the document parsed back from ``text``."""
    from spdx_tools.spdx.parser.json.json_parser import parse_from_file
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sbom.spdx.json"
        path.write_text(text)
        document = parse_from_file(str(path))
    messages = validate_full_spdx_document(document)
    assert messages == [], [m.validation_message for m in messages]
    data: dict[str, Any] = json.loads(text)
    return data


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
    spdx = validate_spdx(spdx_text(facts, [], "0.1.0"))
    assert [p["name"] for p in spdx["packages"]] == ["img"]
    assert spdx["creationInfo"]["created"] == "1970-01-01T00:00:00Z"


def test_spdx_ids_are_valid_and_unique_for_any_package_name() -> None:
    packages = [
        Package("libstdc++6", "1:12.2.0-14", "arm64", "gcc-12"),
        Package("a+b", "1~rc1", "arm64", "a"),
        Package("a-b", "1~rc1", "arm64", "a"),
        Package("a.b", "1", "", "a"),
    ]
    facts = ImageFacts(
        "job/with odd:chars", "img", "bookworm", "6.1", "1" * 64, None, "2" * 64, "artifacts/k", "3" * 64
    )
    spdx = validate_spdx(spdx_text(facts, packages, "0.1.0"))
    ids = [p["SPDXID"] for p in spdx["packages"]]
    assert len(set(ids)) == len(ids) == 6
    assert ids[2:4] == ["SPDXRef-Package-a-b-1-rc1-arm64", "SPDXRef-Package-a-b-1-rc1-arm64-2"]
    assert spdx_id("Image", "+++") == "SPDXRef-Image-x"
    assert sbom_packages(spdx) == {f"{p.name}@{p.version}" for p in packages}
    assert spdx["documentNamespace"].startswith("https://cipbuild.invalid/spdx/job%2Fwith%20odd%3Achars/")


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
def test_the_spdx_sbom_is_valid_and_lists_the_manifest_packages(job: Path) -> None:
    text = (job / SPDX).read_text()
    spdx = validate_spdx(text)
    manifest = json.loads((job / MANIFEST).read_text())
    cdx = json.loads((job / SBOM).read_text())
    assert manifest["files"]["spdx"] == SPDX
    assert spdx["spdxVersion"] == "SPDX-2.3" and spdx["dataLicense"] == "CC0-1.0"
    serial = cdx["serialNumber"].removeprefix("urn:uuid:")
    assert spdx["documentNamespace"] == f"https://cipbuild.invalid/spdx/{JOB}/{serial}"  # the CycloneDX serial
    assert spdx["creationInfo"]["creators"] == [f"Tool: cipbuild-{__version__}"]
    assert spdx["creationInfo"]["created"] == manifest["finished"][:19] + "Z"
    packages = {p["SPDXID"]: p for p in spdx["packages"]}
    relations = [(r["spdxElementId"], r["relationshipType"], r["relatedSpdxElement"]) for r in spdx["relationships"]]
    described = [r for r in relations if r[1] == "DESCRIBES"]
    assert len(described) == 1 and described[0][0] == "SPDXRef-DOCUMENT"
    image = packages[described[0][2]]
    wic = next(a for a in manifest["artifacts"] if a["type"] == "wic")
    assert image["name"] == manifest["job"]["image"] and image["primaryPackagePurpose"] == "OPERATING_SYSTEM"
    assert image["checksums"] == [{"algorithm": "SHA256", "checksumValue": wic["sha256"]}]
    # the image contains every other package, and each one states no license and no files
    assert sorted(r[2] for r in relations if r[1] == "CONTAINS" and r[0] == image["SPDXID"]) == sorted(
        i for i in packages if i != image["SPDXID"]
    )
    assert all(
        (p["filesAnalyzed"], p["licenseConcluded"], p["licenseDeclared"]) == (False, "NOASSERTION", "NOASSERTION")
        for p in packages.values()
    )
    # the same purls as the CycloneDX SBOM: the manifest's package set
    purls = {
        r["referenceLocator"]
        for p in packages.values()
        for r in p.get("externalRefs", [])
        if (r["referenceCategory"], r["referenceType"]) == ("PACKAGE_MANAGER", "purl")
    }
    assert purls == package_purls(cdx) and len(purls) == 4
    assert sbom_packages(spdx) == {f"{p['name']}@{p['version']}" for p in manifest["packages"]}
    kernel = next(a for a in manifest["artifacts"] if a["type"] == "kernel")
    files = [p for p in packages.values() if p["primaryPackagePurpose"] == "FILE"]
    assert [(p["packageFileName"], p["checksums"][0]["checksumValue"]) for p in files] == [
        (kernel["path"], kernel["sha256"])
    ]


@pytest.mark.integration
def test_the_sboms_of_a_second_run_are_byte_identical(job: Path, tmp_path: Path) -> None:
    copy = tmp_path / JOB
    shutil.copytree(job, copy, symlinks=True, ignore=shutil.ignore_patterns("work", "build"))
    write_job_trust(copy)
    for name in (SBOM, SPDX, MANIFEST):
        assert (copy / name).read_bytes() == (job / name).read_bytes(), name


@pytest.mark.integration
def test_a_deployed_sbom_is_referenced_not_replaced(job: Path, tmp_path: Path) -> None:
    copy = tmp_path / JOB
    shutil.copytree(job, copy, symlinks=True, ignore=shutil.ignore_patterns("work", "build", SBOM, SPDX))
    own = copy / "artifacts" / "image.cdx.json"
    own.write_text((job / SBOM).read_text())
    meta = json.loads((copy / "metadata.json").read_text())
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
    assert own in written and not (copy / SBOM).exists() and not (copy / SPDX).exists()
    manifest = json.loads((copy / MANIFEST).read_text())
    assert manifest["files"]["sbom"] == "artifacts/image.cdx.json" and "spdx" not in manifest["files"]
    sums = (copy / "SHA256SUMS").read_text()
    assert sums.count("artifacts/image.cdx.json") == 1 and SBOM not in sums and SPDX not in sums

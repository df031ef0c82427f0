"""A CycloneDX 1.6 SBOM of one image: the image as the root, its kernel and its Debian packages.

Pure: records in, JSON text out (``manifest`` reads and writes the files). The document is
reproducible: its serial number is derived from what it describes and its timestamp is the
build's own finish time, so the same job gives byte-identical SBOMs.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .packages import Package

# Debian's release names and numbers (a fixed fact of Debian). A release not named here is
# written as ``debian-<codename>`` in the purls.
DEBIAN_NUMBERS = {
    "jessie": "8",
    "stretch": "9",
    "buster": "10",
    "bullseye": "11",
    "bookworm": "12",
    "trixie": "13",
    "forky": "14",
    "duke": "15",
}


def debian_distro(release: str) -> str:
    """The purl ``distro`` qualifier of a Debian release: ``bookworm`` -> ``debian-12``."""
    return f"debian-{DEBIAN_NUMBERS.get(release, release)}"


def purl_of(package: Package, release: str) -> str:
    """``pkg:deb/debian/<name>@<version>?arch=<arch>&distro=debian-<number>`` (canonical purl
    encoding: ``+`` in a version is ``%2B``, an epoch's ``:`` stays); no ``arch`` when unknown."""
    return str(_purl(package, release).to_string())


def _purl(package: Package, release: str) -> Any:
    from packageurl import PackageURL

    qualifiers = {"distro": debian_distro(release)}
    if package.architecture:
        qualifiers["arch"] = package.architecture
    return PackageURL(type="deb", namespace="debian", name=package.name, version=package.version, qualifiers=qualifiers)


@dataclass(frozen=True)
class ImageFacts:
    """What the SBOM says about the image itself, from the job's metadata."""

    job_id: str
    image: str  # the image's name (the job record's ``image``)
    release: str  # Debian release codename
    kernel: str | None  # kernel version line, e.g. "6.1"
    inputs_digest: str
    finished: str | None  # ISO 8601, the build's own finish time
    image_sha256: str | None  # the disk image artifact, when there is one
    kernel_path: str | None  # the kernel artifact, relative to the job folder
    kernel_sha256: str | None


def serial(facts: ImageFacts, packages: list[Package]) -> uuid.UUID:
    """The SBOM's identity, derived from what it describes: the CycloneDX serial number, and the
    last segment of the SPDX document namespace."""
    seed = json.dumps([facts.job_id, facts.inputs_digest, facts.image_sha256, [p.to_json() for p in packages]])
    return uuid.uuid5(uuid.NAMESPACE_URL, f"https://cipbuild.invalid/sbom/{seed}")


def sbom_text(facts: ImageFacts, packages: list[Package], cipbuild_version: str) -> str:
    """The CycloneDX 1.6 JSON document (sorted keys, two-space indent, final newline)."""
    from cyclonedx.model import HashAlgorithm, HashType, Property
    from cyclonedx.model.bom import Bom, BomMetaData
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.output import make_outputter
    from cyclonedx.schema import OutputFormat, SchemaVersion

    def sha256(value: str) -> list[HashType]:
        return [HashType(alg=HashAlgorithm.SHA_256, content=value)]

    root = Component(
        type=ComponentType.OPERATING_SYSTEM,
        name=facts.image,
        version=facts.inputs_digest[:16],
        bom_ref=f"cipbuild:image:{facts.job_id}",
        description=f"CIP Core image built by cipbuild job {facts.job_id} (Debian {facts.release})",
        hashes=sha256(facts.image_sha256) if facts.image_sha256 else None,
        properties=[
            Property(name="cipbuild:job", value=facts.job_id),
            Property(name="cipbuild:inputs_digest", value=facts.inputs_digest),
        ],
    )
    tool = Component(type=ComponentType.APPLICATION, name="cipbuild", version=cipbuild_version)
    components = [
        Component(
            type=ComponentType.LIBRARY,
            name=p.name,
            version=p.version,
            purl=_purl(p, facts.release),
            bom_ref=purl_of(p, facts.release),
            properties=[Property(name="cipbuild:source_package", value=p.source)],
        )
        for p in packages
    ]
    if facts.kernel_path and facts.kernel_sha256:
        components.append(
            Component(
                type=ComponentType.FILE,
                name=facts.kernel_path.rsplit("/", 1)[-1],
                version=facts.kernel,
                bom_ref=f"cipbuild:kernel:{facts.job_id}",
                description=f"Linux kernel {facts.kernel or ''} of the image".replace("  ", " "),
                hashes=sha256(facts.kernel_sha256),
                properties=[Property(name="cipbuild:artifact", value=facts.kernel_path)],
            )
        )
    metadata = BomMetaData(
        component=root,
        timestamp=datetime.fromisoformat(facts.finished) if facts.finished else None,
    )
    metadata.tools.components.add(tool)
    bom = Bom(
        serial_number=serial(facts, packages),
        metadata=metadata,
        components=components,
    )
    bom.register_dependency(root, components)
    text = make_outputter(bom, OutputFormat.JSON, SchemaVersion.V1_6).output_as_string()
    return json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"


def package_purls(document: dict[str, Any]) -> set[str]:
    """The purls of an SBOM's library components: its package set."""
    return {c["purl"] for c in document.get("components", []) if c.get("type") == "library" and "purl" in c}

"""An SPDX 2.3 JSON SBOM of one image, the same facts as the CycloneDX one, made with spdx-tools.

The image is the package the document DESCRIBES; it CONTAINS one package per Debian package (with
the same purl as the CycloneDX component, as a PACKAGE-MANAGER reference) and its kernel. No
file is analysed and no license is asserted. Reproducible like the CycloneDX document: the
namespace is derived from what it describes and the creation time is the build's finish time.
"""

from __future__ import annotations

import io
import json
import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from .packages import Package
from .sbom import ImageFacts, purl_of, serial

NAMESPACE = "https://cipbuild.invalid/spdx"
DOCUMENT_ID = "SPDXRef-DOCUMENT"
_NOT_ID = re.compile(r"[^A-Za-z0-9.-]+")


def spdx_id(kind: str, text: str, taken: set[str] | None = None) -> str:
    """``SPDXRef-<kind>-<text>`` with every run of characters an SPDX id cannot hold made a ``-``;
    ``-2``, ``-3``... appended when that id is in ``taken`` (which gets the new one)."""
    base = f"SPDXRef-{kind}-{_NOT_ID.sub('-', text).strip('-') or 'x'}"
    if taken is None:
        return base
    ident, number = base, 1
    while ident in taken:
        number += 1
        ident = f"{base}-{number}"
    taken.add(ident)
    return ident


def spdx_text(facts: ImageFacts, packages: list[Package], cipbuild_version: str) -> str:
    """The SPDX 2.3 JSON document (sorted keys, two-space indent, final newline). Not validated
    here: spdx-tools' validator is quadratic in the package count (seconds for a large image); the
    tests validate what this writes."""
    from spdx_tools.spdx.model.actor import Actor, ActorType
    from spdx_tools.spdx.model.checksum import Checksum, ChecksumAlgorithm
    from spdx_tools.spdx.model.document import CreationInfo, Document
    from spdx_tools.spdx.model.package import ExternalPackageRef, ExternalPackageRefCategory, PackagePurpose
    from spdx_tools.spdx.model.package import Package as SpdxPackage
    from spdx_tools.spdx.model.relationship import Relationship, RelationshipType
    from spdx_tools.spdx.model.spdx_no_assertion import SpdxNoAssertion
    from spdx_tools.spdx.writer.json.json_writer import write_document_to_stream

    def package(ident: str, name: str, version: str | None, purpose: PackagePurpose, **more: Any) -> SpdxPackage:
        return SpdxPackage(
            spdx_id=ident,
            name=name,
            version=version,
            download_location=SpdxNoAssertion(),
            files_analyzed=False,
            license_concluded=SpdxNoAssertion(),
            license_declared=SpdxNoAssertion(),
            copyright_text=SpdxNoAssertion(),
            primary_package_purpose=purpose,
            **more,
        )

    def sha256(value: str | None) -> list[Checksum]:
        return [Checksum(ChecksumAlgorithm.SHA256, value)] if value else []

    image_id = spdx_id("Image", facts.job_id)
    taken: set[str] = set()
    image = package(
        image_id,
        facts.image,
        facts.inputs_digest[:16],
        PackagePurpose.OPERATING_SYSTEM,
        checksums=sha256(facts.image_sha256),
        description=f"CIP Core image built by cipbuild job {facts.job_id} (Debian {facts.release})",
    )
    contained = [
        package(
            spdx_id("Package", f"{p.name}-{p.version}-{p.architecture}", taken),
            p.name,
            p.version,
            PackagePurpose.LIBRARY,
            source_info=f"built from the Debian source package {p.source}",
            external_references=[
                ExternalPackageRef(ExternalPackageRefCategory.PACKAGE_MANAGER, "purl", purl_of(p, facts.release))
            ],
        )
        for p in packages
    ]
    if facts.kernel_path and facts.kernel_sha256:
        contained.append(
            package(
                spdx_id("Kernel", facts.job_id),
                facts.kernel_path.rsplit("/", 1)[-1],
                facts.kernel,
                PackagePurpose.FILE,
                checksums=sha256(facts.kernel_sha256),
                file_name=facts.kernel_path,
                description=f"Linux kernel {facts.kernel or ''} of the image".replace("  ", " "),
            )
        )
    created = datetime.fromisoformat(facts.finished) if facts.finished else datetime.fromtimestamp(0, UTC)
    document = Document(
        CreationInfo(
            spdx_version="SPDX-2.3",
            spdx_id=DOCUMENT_ID,
            name=f"cipbuild {facts.job_id}",
            document_namespace=f"{NAMESPACE}/{quote(facts.job_id, safe='')}/{serial(facts, packages)}",
            creators=[Actor(ActorType.TOOL, f"cipbuild-{cipbuild_version}")],
            created=created,
        ),
        packages=[image, *contained],
        relationships=[
            Relationship(DOCUMENT_ID, RelationshipType.DESCRIBES, image_id),
            *(Relationship(image_id, RelationshipType.CONTAINS, p.spdx_id) for p in contained),
        ],
    )
    stream = io.StringIO()
    write_document_to_stream(document, stream, validate=False, drop_duplicates=False)
    return json.dumps(json.loads(stream.getvalue()), indent=2, sort_keys=True) + "\n"

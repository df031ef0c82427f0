"""An SPDX 2.3 JSON SBOM of one image, the same facts as the CycloneDX one.

The image is the package the document DESCRIBES; it CONTAINS one package per Debian package (with
the same purl as the CycloneDX component, as a PACKAGE-MANAGER reference) and its kernel. No
file is analysed and no license is asserted. Reproducible like the CycloneDX document: the
namespace is derived from what it describes and the creation time is the build's finish time.
"""

from __future__ import annotations

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
    """The SPDX 2.3 JSON document (sorted keys, two-space indent, final newline), written as plain
    data: spdx-tools costs a third of a second to import, and its validator is quadratic in the
    package count. The tests parse and validate what this writes with spdx-tools."""
    image_id = spdx_id("Image", facts.job_id)
    taken: set[str] = set()
    image = _package(image_id, facts.image, facts.inputs_digest[:16], "OPERATING_SYSTEM")
    image.update(_sha256(facts.image_sha256))
    image["description"] = f"CIP Core image built by cipbuild job {facts.job_id} (Debian {facts.release})"
    contained = []
    for p in packages:
        entry = _package(
            spdx_id("Package", f"{p.name}-{p.version}-{p.architecture}", taken), p.name, p.version, "LIBRARY"
        )
        entry["sourceInfo"] = f"built from the Debian source package {p.source}"
        entry["externalRefs"] = [
            {
                "referenceCategory": "PACKAGE_MANAGER",
                "referenceType": "purl",
                "referenceLocator": purl_of(p, facts.release),
            }
        ]
        contained.append(entry)
    if facts.kernel_path and facts.kernel_sha256:
        kernel = _package(spdx_id("Kernel", facts.job_id), facts.kernel_path.rsplit("/", 1)[-1], facts.kernel, "FILE")
        kernel.update(_sha256(facts.kernel_sha256))
        kernel["packageFileName"] = facts.kernel_path
        kernel["description"] = f"Linux kernel {facts.kernel or ''} of the image".replace("  ", " ")
        contained.append(kernel)
    created = datetime.fromisoformat(facts.finished) if facts.finished else datetime.fromtimestamp(0, UTC)
    relationships = [_relationship(DOCUMENT_ID, "DESCRIBES", image_id)]
    relationships += [_relationship(image_id, "CONTAINS", str(p["SPDXID"])) for p in contained]
    document = {
        "SPDXID": DOCUMENT_ID,
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "name": f"cipbuild {facts.job_id}",
        "documentNamespace": f"{NAMESPACE}/{quote(facts.job_id, safe='')}/{serial(facts, packages)}",
        "creationInfo": {
            "created": created.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "creators": [f"Tool: cipbuild-{cipbuild_version}"],
        },
        "packages": [image, *contained],
        "relationships": relationships,
    }
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def _package(ident: str, name: str, version: str | None, purpose: str) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "SPDXID": ident,
        "name": name,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": False,
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
        "primaryPackagePurpose": purpose,
    }
    if version is not None:
        entry["versionInfo"] = version
    return entry


def _sha256(value: str | None) -> dict[str, Any]:
    return {"checksums": [{"algorithm": "SHA256", "checksumValue": value}]} if value else {}


def _relationship(element: str, kind: str, related: str) -> dict[str, str]:
    return {"spdxElementId": element, "relationshipType": kind, "relatedSpdxElement": related}

"""The Debian packages installed in an image, read from what its build deployed.

Isar deploys the rootfs's ``/var/lib/dpkg/status`` (``export-dpkg-status``) and a one-line-per-package
manifest (``generate-manifest``: ``dpkg-query -W -f '${source:Package}|${source:Version}|
${binary:Package}|${Version}'``). The status file is the richer one and is parsed with python-debian;
the manifest is the fallback. Both are written by the build, so they are untrusted text: a malformed
paragraph or line is skipped, never an error.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

INSTALLED = "install ok installed"


@dataclass(frozen=True, order=True)
class Package:
    """One installed Debian binary package of an image, as the SBOM and the manifest list it."""

    name: str
    version: str
    architecture: str
    source: str  # the source package's name, without its version

    def to_json(self) -> dict[str, str]:
        return asdict(self)


def source_name(field: str | None, default: str) -> str:
    """``openssl (3.0.11-1)`` -> ``openssl``; an absent or empty Source field means the package's own name."""
    words = (field or "").split()
    return words[0] if words else default


def from_dpkg_status(text: str) -> list[Package]:
    """Every installed package of a dpkg status file (Status ``install ok installed``), sorted."""
    from debian.deb822 import Deb822

    found: set[Package] = set()
    for para in Deb822.iter_paragraphs(text.splitlines(keepends=True), use_apt_pkg=False):
        if " ".join(para.get("Status", "").split()) != INSTALLED:
            continue
        name, version = para.get("Package", "").strip(), para.get("Version", "").strip()
        if not name or not version:
            continue
        found.add(Package(name, version, para.get("Architecture", "").strip(), source_name(para.get("Source"), name)))
    return sorted(found)


def from_isar_manifest(text: str) -> list[Package]:
    """The packages of an Isar rootfs manifest, sorted.

    Lines are ``source|source-version|name[:arch]|version`` (isar's generate-manifest) or
    ``name version`` (a plain ``dpkg-query -W``). The architecture is known only where dpkg-query
    qualified the name (Multi-Arch: same packages); elsewhere it is empty.
    """
    found: set[Package] = set()
    for line in text.splitlines():
        if "|" in line:
            fields = [f.strip() for f in line.split("|")]
            if len(fields) != 4 or not fields[2] or not fields[3]:
                continue
            source, _, binary, version = fields
        else:
            words = line.split()
            if len(words) != 2:
                continue
            source, binary, version = "", words[0], words[1]
        name, _, arch = binary.partition(":")
        if name:
            found.add(Package(name, version, arch, source or name))
    return sorted(found)

"""Check a signed job folder or release: signatures, checksums, manifest, index and SBOM.

Everything is read through a ``Source`` (relative names: list, open, size): ``LocalFolder`` for
what `build` and `sign` wrote, ``store.source.PublishedRelease`` for a published release in a
folder, a bucket or behind HTTPS. Each file is read once: the small signed files are kept in
memory, so what gpg verified is exactly what is parsed, and every other file is hashed as it
streams past in 1 MiB chunks.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Protocol
from urllib.parse import unquote

from .errors import UserError
from .manifest import CHECKSUMS, CHUNK, INDEX, INDEX_SCHEMA, JOB_ID, MANIFEST, MANIFEST_SCHEMA, SIGNED, SUM_LINE
from .signing import SIGNATURE_SUFFIX, GpgHome, import_keys, run_gpg

SMALL_LIMIT = 64 << 20  # a manifest, an SBOM or a checksum list larger than this is refused


class SourceError(Exception):
    """A name that cannot be read: missing, a symlink on the way, not a regular file."""


@dataclass(frozen=True)
class Entry:
    name: str
    kind: str  # "file", "dir", "symlink" or "other"


class Source(Protocol):
    """Read-only access to a folder of published files by relative POSIX names."""

    label: str

    def list(self, name: str) -> list[Entry]: ...

    def open(self, name: str) -> BinaryIO: ...

    def size(self, name: str) -> int: ...

    def exists(self, name: str) -> bool: ...


class LocalFolder:
    """A local folder; no name is ever reached through a symlink."""

    def __init__(self, root: Path):
        self.root = root
        self.label = str(root)

    def _open_fd(self, name: str, *, directory: bool) -> int:
        parts = [p for p in name.split("/") if p not in ("", ".")]
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for i, part in enumerate(parts):
                last = i == len(parts) - 1
                flags = os.O_RDONLY | os.O_NOFOLLOW | (os.O_DIRECTORY if directory or not last else 0)
                try:
                    nxt = os.open(part, flags, dir_fd=fd)
                except OSError as exc:
                    raise SourceError(_why(exc, os.lstat(part, dir_fd=fd) if _lexists(part, fd) else None)) from None
                os.close(fd)
                fd = nxt
            mode = os.fstat(fd).st_mode
            if not directory and not stat.S_ISREG(mode):
                raise SourceError("is not a regular file")
            return fd
        except BaseException:
            os.close(fd)
            raise

    def list(self, name: str) -> list[Entry]:
        fd = self._open_fd(name, directory=True)
        try:
            entries = []
            for child in sorted(os.listdir(fd)):
                mode = os.lstat(child, dir_fd=fd).st_mode
                kind = (
                    "symlink"
                    if stat.S_ISLNK(mode)
                    else "dir"
                    if stat.S_ISDIR(mode)
                    else "file"
                    if stat.S_ISREG(mode)
                    else "other"
                )
                entries.append(Entry(child, kind))
            return entries
        finally:
            os.close(fd)

    def open(self, name: str) -> BinaryIO:
        return os.fdopen(self._open_fd(name, directory=False), "rb")

    def size(self, name: str) -> int:
        fd = self._open_fd(name, directory=False)
        try:
            return os.fstat(fd).st_size
        finally:
            os.close(fd)

    def exists(self, name: str) -> bool:
        try:
            os.close(self._open_fd(name, directory=False))
        except SourceError:
            return False
        return True


def _lexists(part: str, fd: int) -> bool:
    try:
        os.lstat(part, dir_fd=fd)
    except OSError:
        return False
    return True


def _why(exc: OSError, info: os.stat_result | None) -> str:
    if info is not None and stat.S_ISLNK(info.st_mode):
        return "is a symlink: refused"
    if exc.errno == errno.ENOENT:
        return "is missing"
    if exc.errno == errno.ENOTDIR:
        return "is not a folder on the way"
    return exc.strerror or str(exc)


class Prefixed:
    """The files of one job inside a release: ``<job-id>/...`` of another source."""

    def __init__(self, inner: Source, prefix: str):
        self.inner = inner
        self.prefix = prefix
        self.label = f"{inner.label}/{prefix}"

    def list(self, name: str) -> list[Entry]:
        return self.inner.list(f"{self.prefix}/{name}")

    def open(self, name: str) -> BinaryIO:
        return self.inner.open(f"{self.prefix}/{name}")

    def size(self, name: str) -> int:
        return self.inner.size(f"{self.prefix}/{name}")

    def exists(self, name: str) -> bool:
        return self.inner.exists(f"{self.prefix}/{name}")


def open_source(location: str, endpoint_url: str | None = None) -> Source:
    """The reader for ``location``: a local job or release folder, or a published release (one
    with published.json) in a folder, at ``s3://bucket/prefix/<ref>`` or ``https://.../<ref>``."""
    from .publish import PUBLISHED
    from .store.source import PublishedRelease, raw_source

    source = raw_source(location, endpoint_url)
    local = isinstance(source, LocalFolder) and not source.exists(PUBLISHED)
    return source if local else PublishedRelease(source)


@dataclass(frozen=True)
class Problem:
    file: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.message}"


@dataclass
class Report:
    checks: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    signers: set[str] = field(default_factory=set)
    files: int = 0
    bytes: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checks": self.checks,
            "problems": [{"file": p.file, "message": p.message} for p in self.problems],
            "signers": sorted(self.signers),
            "files": self.files,
            "bytes": self.bytes,
        }


def safe_name(name: str) -> str | None:
    """Why ``name`` is not a plain relative path inside the folder, or None when it is."""
    if not name or "\\" in name or "\n" in name or "\0" in name:
        return "is not a plain file name"
    if name.startswith("/") or PurePosixPath(name).is_absolute():
        return "is an absolute path: refused"
    if ".." in PurePosixPath(name).parts:
        return "leaves the folder (..): refused"
    return None


def verify(location: str, keyring: Path, endpoint_url: str | None = None) -> Report:
    """Check the job folder or release at ``location`` against the public keys in ``keyring``."""
    source = open_source(location, endpoint_url)
    try:
        key_data = keyring.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read the keyring: {exc.strerror or exc}", where=str(keyring)) from None
    report = Report()
    with GpgHome() as home:
        keys = import_keys(home, key_data, what=str(keyring))
        report.checks.append(f"keyring {keyring}: {len(keys)} key(s) {', '.join(keys)}")
        checker = _Checker(source, home, report)
        if source.exists(INDEX):
            checker.release()
        elif source.exists(MANIFEST):
            checker.job("", source)
        else:
            raise UserError(f"holds neither {INDEX} nor {MANIFEST}", where=location)
    return report


class _Checker:
    def __init__(self, source: Source, home: Path, report: Report):
        self.source = source
        self.home = home
        self.report = report

    def problem(self, file: str, message: str) -> None:
        self.report.problems.append(Problem(file, message))

    def read_small(self, source: Source, name: str, shown: str) -> bytes | None:
        try:
            if source.size(name) > SMALL_LIMIT:
                self.problem(shown, f"is larger than {SMALL_LIMIT >> 20} MiB: refused")
                return None
            with source.open(name) as handle:
                data = handle.read(SMALL_LIMIT + 1)
        except SourceError as exc:
            self.problem(shown, str(exc))
            return None
        self.report.files += 1
        self.report.bytes += len(data)
        return data

    def signed(self, source: Source, name: str, shown: str) -> bytes | None:
        """The bytes of ``name`` if its detached signature verifies, else None (problem noted)."""
        data = self.read_small(source, name, shown)
        signature = self.read_small(source, name + SIGNATURE_SUFFIX, shown + SIGNATURE_SUFFIX)
        if data is None or signature is None:
            return None
        why, signer = check_signature(self.home, data, signature)
        if why is not None:
            self.problem(shown + SIGNATURE_SUFFIX, why)
            return None
        self.report.signers.add(signer)
        self.report.checks.append(f"{shown}: signature good, by {signer}")
        return data

    def release(self) -> None:
        data = self.signed(self.source, INDEX, INDEX)
        if data is None:
            return
        index = _json(data)
        jobs = index.get("jobs") if isinstance(index, dict) else None
        if not isinstance(index, dict) or index.get("schema") != INDEX_SCHEMA or not isinstance(jobs, list):
            self.problem(INDEX, f"is not a {INDEX_SCHEMA} document")
            return
        listed: set[str] = set()
        for entry in jobs:
            job_id = entry.get("id") if isinstance(entry, dict) else None
            if not isinstance(job_id, str) or not JOB_ID.fullmatch(job_id) or job_id in listed:
                self.problem(INDEX, f"entry {str(job_id)[:80]!r} is not a job id (or is listed twice)")
                continue
            listed.add(job_id)
            if entry.get("manifest") != f"{job_id}/{MANIFEST}":
                self.problem(INDEX, f"entry {job_id}: manifest is not {job_id}/{MANIFEST}")
                continue
            self.job(job_id, Prefixed(self.source, job_id), index_sha256=str(entry.get("sha256")))
        for extra in self.source.list(""):
            if extra.kind != "file" and extra.name not in listed:
                if extra.kind == "dir" and not self.source.exists(f"{extra.name}/{MANIFEST}"):
                    continue
                self.problem(extra.name, f"is not listed in {INDEX}")
        self.report.checks.append(f"{INDEX}: {len(listed)} job(s), each against its manifest's sha256 and id")

    def job(self, job_id: str, source: Source, index_sha256: str | None = None) -> None:
        at = f"{job_id}/" if job_id else ""
        signed = {name: self.signed(source, name, at + name) for name in SIGNED}
        sums_data, manifest_data = signed[CHECKSUMS], signed[MANIFEST]
        if (
            manifest_data is not None
            and index_sha256 is not None
            and hashlib.sha256(manifest_data).hexdigest() != index_sha256
        ):
            self.problem(at + MANIFEST, f"sha256 differs from the one in {INDEX}")
        if sums_data is None or manifest_data is None:
            return
        manifest = _json(manifest_data)
        if not isinstance(manifest, dict) or manifest.get("schema") != MANIFEST_SCHEMA:
            self.problem(at + MANIFEST, f"is not a {MANIFEST_SCHEMA} document")
            return
        found_id = manifest.get("job", {}).get("id") if isinstance(manifest.get("job"), dict) else None
        if job_id and found_id != job_id:
            self.problem(at + MANIFEST, f"is the manifest of job {str(found_id)[:80]!r}, not of {job_id}")
        sums = self.checksums(sums_data, at)
        in_memory = {n: d for n, d in signed.items() if d is not None}
        sboms = [self.sbom_name(manifest, sums, at), self.sbom_name(manifest, sums, at, key="spdx", required=False)]
        sbom_names = list(dict.fromkeys(name for name in sboms if name is not None))
        for sbom_name in sbom_names:
            if sbom_name not in in_memory:
                data = self.read_small(source, sbom_name, at + sbom_name)
                if data is not None:
                    in_memory[sbom_name] = data
        actual = self.hash_listed(source, sums, at, in_memory)
        self.artifacts(source, manifest, sums, actual, at)
        for sbom_name in sbom_names:
            if sbom_name in in_memory:
                self.sbom(manifest, in_memory[sbom_name], at + sbom_name)
        self.report.checks.append(f"{at}{MANIFEST}: job {found_id}, {len(sums)} checksum line(s)")

    def sbom_name(
        self, manifest: dict[str, Any], sums: dict[str, str], at: str, key: str = "sbom", required: bool = True
    ) -> str | None:
        """The SBOM ``files.<key>`` names, when it is a safe name listed in SHA256SUMS."""
        files = manifest.get("files")
        name = files.get(key) if isinstance(files, dict) else None
        if name is None and not required:
            return None
        if not isinstance(name, str) or safe_name(name) is not None:
            self.problem(at + MANIFEST, f"does not name its SBOM (files.{key})")
            return None
        name = str(PurePosixPath(name))
        if name not in sums:
            self.problem(at + name, f"is not in {CHECKSUMS}")
            return None
        return name

    def checksums(self, data: bytes, at: str) -> dict[str, str]:
        sums: dict[str, str] = {}
        text = data.decode("utf-8", "replace")
        if text and not text.endswith("\n"):
            self.problem(at + CHECKSUMS, "is truncated (no newline at the end)")
        for number, line in enumerate(text.splitlines(), 1):
            match = SUM_LINE.fullmatch(line)
            if match is None:
                self.problem(f"{at}{CHECKSUMS}:{number}", "is not a `<sha256>  <path>` line")
                continue
            digest, name = match.groups()
            why = safe_name(name)
            if why is not None:
                self.problem(f"{at}{CHECKSUMS}:{number}", f"{name[:200]!r} {why}")
                continue
            name = str(PurePosixPath(name))
            if name in sums:
                self.problem(f"{at}{CHECKSUMS}:{number}", f"{name} is listed twice")
            sums[name] = digest
        for name in SIGNED:
            if name not in sums and name != CHECKSUMS:
                self.problem(at + CHECKSUMS, f"does not list {name}")
        return sums

    def hash_listed(
        self, source: Source, sums: dict[str, str], at: str, in_memory: dict[str, bytes]
    ) -> dict[str, tuple[int, str]]:
        """Hash every file SHA256SUMS lists (once each); returns name -> (size, sha256) of those read."""
        actual: dict[str, tuple[int, str]] = {}
        for name, want in sums.items():
            if name in in_memory:
                data = in_memory[name]
                got: tuple[int, str] | None = (len(data), hashlib.sha256(data).hexdigest())
            else:
                got = self.hash_file(source, name, at + name)
            if got is None:
                continue
            actual[name] = got
            if got[1] != want:
                self.problem(at + name, f"sha256 {got[1]} differs from {CHECKSUMS} ({want})")
        self.report.checks.append(f"{at}{CHECKSUMS}: {len(actual)}/{len(sums)} file(s) read and hashed")
        return actual

    def hash_file(self, source: Source, name: str, shown: str) -> tuple[int, str] | None:
        digest = hashlib.sha256()
        size = 0
        try:
            with source.open(name) as handle:
                buffer = bytearray(CHUNK)
                view = memoryview(buffer)
                while count := handle.readinto(view):  # type: ignore[attr-defined]
                    digest.update(view[:count])
                    size += count
        except SourceError as exc:
            self.problem(shown, str(exc))
            return None
        self.report.files += 1
        self.report.bytes += size
        return size, digest.hexdigest()

    def artifacts(
        self,
        source: Source,
        manifest: dict[str, Any],
        sums: dict[str, str],
        actual: dict[str, tuple[int, str]],
        at: str,
    ) -> None:
        artifacts = manifest.get("artifacts")
        if not isinstance(artifacts, list):
            self.problem(at + MANIFEST, "has no artifacts list")
            return
        claimed: set[str] = set()
        for item in artifacts:
            name = item.get("path") if isinstance(item, dict) else None
            if not isinstance(name, str):
                self.problem(at + MANIFEST, "has an artifact without a path")
                continue
            why = safe_name(name)
            if why is None and not name.startswith("artifacts/"):
                why = "is not under artifacts/"
            if why is not None:
                self.problem(at + MANIFEST, f"artifact {name[:200]!r} {why}")
                continue
            name = str(PurePosixPath(name))
            claimed.add(name)
            if name not in sums:
                self.problem(at + name, f"is in {MANIFEST} but not in {CHECKSUMS}")
                continue
            if item.get("sha256") != sums[name]:
                self.problem(at + name, f"sha256 in {MANIFEST} differs from {CHECKSUMS}")
            if name in actual and item.get("size") != actual[name][0]:
                self.problem(at + name, f"size {actual[name][0]} differs from {MANIFEST} ({item.get('size')})")
        for name in self.walk(source, "artifacts", at):
            if name not in claimed:
                self.problem(at + name, f"is not listed in {MANIFEST}")
        self.report.checks.append(
            f"{at}artifacts/: against the {len(claimed)} artifact(s) {MANIFEST} lists, sizes and sha256"
        )

    def walk(self, source: Source, folder: str, at: str) -> Iterator[str]:
        try:
            entries = source.list(folder)
        except SourceError as exc:
            self.problem(at + folder, str(exc))
            return
        for entry in entries:
            name = f"{folder}/{entry.name}"
            if entry.kind == "dir":
                yield from self.walk(source, name, at)
            else:
                yield name

    def sbom(self, manifest: dict[str, Any], data: bytes, shown: str) -> None:
        """The SBOM's package set must equal the manifest's (its bytes were checked against SHA256SUMS)."""
        found = sbom_packages(_json(data))
        if found is None:
            self.problem(shown, "is neither a CycloneDX nor an SPDX JSON document")
            return
        packages = manifest.get("packages")
        want = {
            f"{p.get('name')}@{p.get('version')}"
            for p in (packages if isinstance(packages, list) else [])
            if isinstance(p, dict)
        }
        missing, extra = sorted(want - found), sorted(found - want)
        if missing:
            self.problem(shown, f"lacks {len(missing)} package(s) of {MANIFEST}: {', '.join(missing[:5])}")
        if extra:
            self.problem(shown, f"has {len(extra)} package(s) {MANIFEST} lacks: {', '.join(extra[:5])}")
        if not missing and not extra:
            self.report.checks.append(f"{shown}: {len(found)} package(s), the same set as {MANIFEST}")


def sbom_packages(document: Any) -> set[str] | None:
    """The ``name@version`` of every Debian package of a CycloneDX or SPDX JSON SBOM."""
    if not isinstance(document, dict):
        return None
    if document.get("bomFormat") == "CycloneDX":
        found: set[str] = set()
        stack = list(document.get("components") or [])
        while stack:
            comp = stack.pop()
            if not isinstance(comp, dict):
                continue
            stack.extend(comp.get("components") or [])
            key = _deb_purl(comp.get("purl"))
            if key is not None:
                found.add(key)
            elif comp.get("type") == "library" and not comp.get("purl"):
                found.add(f"{comp.get('name')}@{comp.get('version')}")
        return found
    if "spdxVersion" in document:
        found = set()
        for package in document.get("packages") or []:
            refs = package.get("externalRefs") or [] if isinstance(package, dict) else []
            for ref in refs:
                key = _deb_purl(ref.get("referenceLocator")) if isinstance(ref, dict) else None
                if key is not None:
                    found.add(key)
        return found
    return None


def _deb_purl(purl: Any) -> str | None:
    """``name@version`` of a ``pkg:deb/<vendor>/<name>@<version>?...`` purl."""
    if not isinstance(purl, str) or not purl.startswith("pkg:deb/"):
        return None
    path = purl[len("pkg:deb/") :].split("?", 1)[0].split("#", 1)[0]
    name_version = path.rsplit("/", 1)[-1]
    if "@" not in name_version:
        return None
    name, version = name_version.split("@", 1)
    return f"{unquote(name)}@{unquote(version)}"


def _json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None


def check_signature(home: Path, data: bytes, signature: bytes) -> tuple[str | None, str]:
    """(None, signer fingerprint) when ``signature`` is one good detached signature of ``data`` by
    a key of ``home``'s keyring, else (why not, "")."""
    sig_path = home / "checked.asc"
    sig_path.write_bytes(signature)
    try:
        result = run_gpg(home, ["--verify", str(sig_path), "-"], stdin=data)
    finally:
        sig_path.unlink(missing_ok=True)
    keywords = [line[0] for line in result.status]
    if "NO_PUBKEY" in keywords:
        keyid = result.args("NO_PUBKEY")[0][0]
        return f"signed by key {keyid}, which is not in the keyring", ""
    if "PLAINTEXT" in keywords or keywords.count("NEWSIG") > 1:
        return "is not one detached signature", ""
    for bad, why in (
        ("EXPKEYSIG", "signed by an expired key"),
        ("REVKEYSIG", "signed by a revoked key"),
        ("EXPSIG", "the signature has expired"),
        ("BADSIG", "bad signature: the file or the signature was changed"),
        ("ERRSIG", "the signature cannot be checked"),
    ):
        if bad in keywords:
            found = result.args(bad)[0]
            return f"{why} ({found[0] if found else '?'})", ""
    valid = result.args("VALIDSIG")
    if result.code != 0 or "GOODSIG" not in keywords or len(valid) != 1 or not valid[0]:
        return "is not a valid OpenPGP signature", ""
    return None, valid[0][-1]

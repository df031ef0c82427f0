"""The published truth about a job: manifest.json, SHA256SUMS, the SBOM and the provenance, all
derived from its metadata.json (the one job record); and a release's index.json.

The job folder was written by the build, so it is hostile: every file in it is opened relative to
the folder without following a symlink, and every file written there replaces its name atomically
(a planted symlink is replaced, never written through). The image is never read again: the
sha256 and size recorded when it was collected are reused; only compressed artifacts are read
once, streaming, for the digest of their uncompressed content.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import json
import lzma
import os
import re
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from . import __version__
from .errors import UserError
from .packages import Package, from_dpkg_status, from_isar_manifest

MANIFEST = "manifest.json"
CHECKSUMS = "SHA256SUMS"
SBOM = "sbom.cdx.json"
SPDX = "sbom.spdx.json"
PROVENANCE = "provenance.intoto.json"
INDEX = "index.json"
SIGNED = (CHECKSUMS, MANIFEST, PROVENANCE)  # the per-job files that get a detached <name>.asc

MANIFEST_SCHEMA = "cipbuild-manifest/1"
INDEX_SCHEMA = "cipbuild-index/1"
SUCCEEDED = ("success", "up-to-date")
COMPRESSED = (".gz", ".xz", ".zst", ".bz2")
SBOM_TYPES = ("sbom", "cyclonedx", "sbom.cdx")
SBOM_SUFFIXES = (".cdx.json", ".cyclonedx.json", ".bom.json")
CHUNK = 1 << 20
TEXT_LIMIT = 256 << 20  # a package list or metadata file larger than this is not one
OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
SHA256_HEX = r"^[0-9a-f]{64}$"
ARTIFACT_PATH = r"^artifacts/[^/]*[^/.][^/]*$"
SAFE_NAME = re.compile(r"[^/\\\x00-\x1f\x7f]+")
SUM_LINE = re.compile(r"([0-9a-f]{64}) [ *](.+)")  # a line of SHA256SUMS
JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


# --- the published records (pydantic at the edge: JSON out, JSON Schema shipped) ---------------


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class JobRecord(BaseModel):
    """The job as metadata.json records it (plan --json shows the same)."""

    model_config = ConfigDict(extra="allow")

    id: str
    distro: str
    release: str
    board: str
    image: str


class ManifestArtifact(_Record):
    path: str = Field(pattern=ARTIFACT_PATH, description="relative to the job folder")
    type: str
    size: int = Field(ge=0)
    sha256: str = Field(pattern=SHA256_HEX)
    uncompressed_sha256: str | None = Field(
        default=None, pattern=SHA256_HEX, description="sha256 of the decompressed content (.gz, .xz, .zst, .bz2)"
    )


class ManifestPackage(_Record):
    name: str
    version: str
    architecture: str
    source: str


class ManifestBuilder(_Record):
    image: str
    digest: str


class ManifestFiles(_Record):
    sbom: str = Field(description="the CycloneDX SBOM, relative to the job folder")
    spdx: str | None = Field(
        default=None, description="the SPDX 2.3 SBOM cipbuild wrote (none when the build deployed its own SBOM)"
    )
    provenance: str
    checksums: Literal["SHA256SUMS"]
    signatures: dict[str, str] = Field(description="signed file -> its detached armored signature")


class ManifestReproducibility(_Record):
    report: Literal["reproducibility.json"] = Field(description="the whole check, in the job folder")
    identical: bool = Field(description="every artifact of a second, independent build was bit-identical")
    checked: str
    differing: list[str] = Field(description="the artifacts that differed")


class Manifest(_Record):
    """manifest.json: what one job built, from what, and where its SBOM, provenance and
    signatures are. Derived from metadata.json."""

    schema_: Literal["cipbuild-manifest/1"] = Field(alias="schema")
    job: JobRecord
    inputs: dict[str, Any]
    inputs_digest: str = Field(pattern=SHA256_HEX)
    builder: ManifestBuilder
    status: Literal["success", "up-to-date"]
    started: str
    finished: str
    duration_s: float | None
    artifacts: list[ManifestArtifact]
    packages: list[ManifestPackage]
    files: ManifestFiles
    reproducibility: ManifestReproducibility | None = Field(
        default=None, description="the job's `build --check-reproducible` result for these inputs, when it was run"
    )


class IndexEntry(_Record):
    id: str
    manifest: str
    sha256: str = Field(pattern=SHA256_HEX)


class ReleaseIndex(_Record):
    """index.json: every job manifest of a release with its sha256."""

    schema_: Literal["cipbuild-index/1"] = Field(alias="schema")
    jobs: list[IndexEntry]


def manifest_schema() -> dict[str, Any]:
    schema = Manifest.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://cipbuild.invalid/schemas/manifest.schema.json"
    return schema


def manifest_schema_text() -> str:
    return json.dumps(manifest_schema(), indent=2, sort_keys=True) + "\n"


def write_manifest_schema(folder: Path) -> Path:
    """schemas/manifest.schema.json, regenerated from the model."""
    path = folder / "manifest.schema.json"
    path.write_text(manifest_schema_text(), encoding="utf-8")
    return path


def dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


# --- reading and writing inside a hostile folder -------------------------------------------------


@contextlib.contextmanager
def _folder(path: Path, what: str) -> Iterator[int]:
    """``path`` opened as a folder, refused when it is missing, not a folder or a symlink."""
    try:
        fd = os.open(path, OPEN_DIR)
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist") from None
    except OSError as exc:
        if os.path.islink(path):
            raise UserError(f"{what} {path} is a symlink: refused") from None
        raise UserError(f"{what} {path} cannot be opened: {exc.strerror or exc}") from None
    try:
        yield fd
    finally:
        os.close(fd)


def _open_in(dir_fd: int, rel: str, where: Path) -> int:
    """A regular file ``rel`` below the folder ``dir_fd``, reached without following any symlink.
    FileNotFoundError when it is not there; UserError when it is anything but a regular file."""
    parts = rel.split("/")
    fd = os.dup(dir_fd)
    try:
        for part in parts[:-1]:
            nxt = _openat(fd, part, OPEN_DIR, where / rel)
            os.close(fd)
            fd = nxt
        file_fd = _openat(fd, parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, where / rel)
    finally:
        os.close(fd)
    if not stat.S_ISREG(os.fstat(file_fd).st_mode):
        os.close(file_fd)
        raise UserError(f"{where / rel} is not a regular file: refused")
    return file_fd


def _openat(dir_fd: int, name: str, flags: int, path: Path) -> int:
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        raise
    except OSError as exc:
        with contextlib.suppress(OSError):
            if stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                raise UserError(f"{path} is a symlink: refused (cipbuild never follows one in a job folder)") from None
        raise UserError(f"{path} cannot be read: {exc.strerror or exc}") from None


def _read(dir_fd: int, rel: str, where: Path, limit: int = TEXT_LIMIT) -> bytes:
    fd = _open_in(dir_fd, rel, where)
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise UserError(f"{where / rel} is larger than {limit >> 20} MiB: refused")
    return data


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def _sha256_of(stream: _Readable) -> str:
    digest = hashlib.sha256()
    while chunk := stream.read(CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def _uncompressed_sha256(fd: int, name: str, where: Path) -> str | None:
    """The sha256 of the decompressed content, read once, streaming; None for a format this
    machine cannot decompress (zstd without the zstd tool, before Python 3.14)."""
    raw = os.fdopen(os.dup(fd), "rb")
    try:
        if name.endswith(".zst"):
            return _zstd_sha256(raw, where)
        if name.endswith(".gz"):
            with gzip.GzipFile(fileobj=raw, mode="rb") as gz:
                return _sha256_of(gz)
        if name.endswith(".xz"):
            with lzma.LZMAFile(raw, "rb") as xz:
                return _sha256_of(xz)
        with bz2.BZ2File(raw, "rb") as bz:
            return _sha256_of(bz)
    except (OSError, EOFError, lzma.LZMAError) as exc:
        raise UserError(f"{where}: not a valid compressed file: {exc}") from None
    finally:
        raw.close()


def _zstd_sha256(raw: IO[bytes], where: Path) -> str | None:
    try:
        from compression import zstd  # type: ignore[import-not-found]  # Python >= 3.14
    except ImportError:
        tool = shutil.which("zstd")
        if tool is None:
            return None
        proc = subprocess.Popen([tool, "-dcq"], stdin=raw, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert proc.stdout is not None
        digest = _sha256_of(proc.stdout)
        if proc.wait() != 0:
            raise UserError(f"{where}: not a valid zstd file") from None
        return digest
    with zstd.ZstdFile(raw, "rb") as stream:
        result: str = _sha256_of(stream)
        return result


def _write(dir_fd: int, name: str, data: bytes) -> None:
    """Replace ``name`` in the folder atomically; a symlink at its place is replaced, not followed."""
    tmp = f".{name}.{os.getpid()}.{time.monotonic_ns()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=dir_fd)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fchmod(fd, 0o644)
    except BaseException:
        os.close(fd)
        os.unlink(tmp, dir_fd=dir_fd)
        raise
    os.close(fd)
    os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


# --- one job -------------------------------------------------------------------------------------


def read_metadata(job_dir: Path, dir_fd: int) -> dict[str, Any]:
    try:
        meta = json.loads(_read(dir_fd, "metadata.json", job_dir))
    except FileNotFoundError:
        raise UserError(f"{job_dir}: no metadata.json (not a job folder?)") from None
    except (ValueError, UnicodeDecodeError):
        raise UserError(f"{job_dir}/metadata.json is not valid JSON") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("job"), dict) or not isinstance(meta.get("inputs"), dict):
        raise UserError(f"{job_dir}/metadata.json is not a cipbuild job record")
    if meta.get("status") not in SUCCEEDED:
        raise UserError(
            f"{job_dir}: the job did not succeed (status {meta.get('status')!r}): nothing to publish",
            hint="rebuild it first",
        )
    return meta


def _artifact_records(job_dir: Path, meta: dict[str, Any]) -> list[dict[str, Any]]:
    records = meta.get("artifacts")
    if not isinstance(records, list):
        raise UserError(f"{job_dir}/metadata.json: artifacts is not a list")
    out = []
    for rec in records:
        ok = isinstance(rec, dict) and all(isinstance(rec.get(k), str) for k in ("type", "path", "sha256"))
        path = rec.get("path", "") if ok else ""
        name = path.removeprefix("artifacts/")
        if (
            not ok
            or not isinstance(rec.get("size"), int)
            or not re.fullmatch(SHA256_HEX[1:-1], rec["sha256"])
            or not path.startswith("artifacts/")
            or not SAFE_NAME.fullmatch(name)
            or name in (".", "..")
        ):
            raise UserError(f"{job_dir}/metadata.json: artifact record {rec!r} is not valid: refused")
        record = {"path": path, "type": rec["type"], "size": rec["size"], "sha256": rec["sha256"]}
        inner = rec.get("uncompressed_sha256")  # `sign --compress` knew it: no need to decompress
        if isinstance(inner, str) and re.fullmatch(SHA256_HEX[1:-1], inner) and path.endswith(COMPRESSED):
            record["uncompressed_sha256"] = inner
        out.append(record)
    return out


def _packages(dir_fd: int, job_dir: Path, artifacts: list[dict[str, Any]]) -> list[Package]:
    """From the deployed dpkg status when there is one, else from Isar's rootfs manifest."""
    for kind, parse in (("dpkg_status", from_dpkg_status), ("manifest", from_isar_manifest)):
        found: set[Package] = set()
        sources = [a for a in artifacts if a["type"] == kind]
        for art in sources:
            found.update(parse(_read(dir_fd, art["path"], job_dir).decode("utf-8", errors="replace")))
        if sources:
            return sorted(found)
    return []


def _locked_commits(dir_fd: int, job_dir: Path, name: str) -> dict[str, str]:
    """Repository name -> commit from kas.lock.yml's overrides; {} when there is no lock file."""
    import yaml

    try:
        data = yaml.safe_load(_read(dir_fd, name, job_dir))
    except FileNotFoundError:
        return {}
    except yaml.YAMLError:
        raise UserError(f"{job_dir / name} is not valid YAML") from None
    repos = (data or {}).get("overrides", {}).get("repos", {}) if isinstance(data, dict) else {}
    if not isinstance(repos, dict):
        return {}
    return {
        str(n): str(spec["commit"])
        for n, spec in repos.items()
        if isinstance(spec, dict) and isinstance(spec.get("commit"), str)
    }


def _file_sha256(dir_fd: int, job_dir: Path, name: str) -> str | None:
    try:
        fd = _open_in(dir_fd, name, job_dir)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as f:
        return _sha256_of(f)


def _deployed_sbom(artifacts: list[dict[str, Any]]) -> str | None:
    """A CycloneDX SBOM the build deployed itself (newer Isar does), as an artifact path."""
    for art in artifacts:
        if art["type"] in SBOM_TYPES or art["path"].endswith(SBOM_SUFFIXES):
            return str(art["path"])
    return None


def write_job_trust(job_dir: Path) -> list[Path]:
    """Write manifest.json, sbom.cdx.json and sbom.spdx.json (unless the build deployed an SBOM:
    then it is referenced, and neither is made), provenance.intoto.json and SHA256SUMS into a
    succeeded job's folder; the paths written (a deployed SBOM's path in place of the two SBOMs).
    Same inputs, same bytes."""
    from .provenance import statement
    from .reprocheck import REPORT, recorded
    from .sbom import ImageFacts, sbom_text
    from .spdx import spdx_text

    with _folder(job_dir, "job folder") as dir_fd:
        meta = read_metadata(job_dir, dir_fd)
        artifacts = _artifact_records(job_dir, meta)
        for art in artifacts:
            try:
                fd = _open_in(dir_fd, art["path"], job_dir)
            except FileNotFoundError:
                raise UserError(f"{job_dir / art['path']} is missing: rebuild the job") from None
            try:
                if os.fstat(fd).st_size != art["size"]:
                    raise UserError(f"{job_dir / art['path']} changed since it was built (size): rebuild the job")
                if art["path"].endswith(COMPRESSED) and "uncompressed_sha256" not in art:
                    inner = _uncompressed_sha256(fd, art["path"], job_dir / art["path"])
                    if inner:
                        art["uncompressed_sha256"] = inner
            finally:
                os.close(fd)
        packages = _packages(dir_fd, job_dir, artifacts)
        files = meta.get("files", {}) if isinstance(meta.get("files"), dict) else {}
        locked = _locked_commits(dir_fd, job_dir, str(files.get("lock", "kas.lock.yml")))
        log_sha256 = _file_sha256(dir_fd, job_dir, str(files.get("log", "build.log")))

        job, inputs = meta["job"], meta["inputs"]
        repro = recorded(job_dir, str(meta.get("inputs_digest", "")))
        outputs: dict[str, bytes] = {}
        sbom_path = _deployed_sbom(artifacts)
        if sbom_path is None:
            sbom_path = SBOM
            first = {t: next((a for a in artifacts if a["type"] == t), None) for t in ("wic", "kernel")}
            image_art = first["wic"] or (artifacts[0] if artifacts else None)
            kernel_art = first["kernel"]
            facts = ImageFacts(
                job_id=str(job.get("id")),
                image=str(job.get("image") or job.get("id")),
                release=str(job.get("release", "")),
                kernel=str(job["kernel"]) if job.get("kernel") else None,
                inputs_digest=str(meta.get("inputs_digest", "")),
                finished=meta.get("finished"),
                image_sha256=image_art["sha256"] if image_art else None,
                kernel_path=kernel_art["path"] if kernel_art else None,
                kernel_sha256=kernel_art["sha256"] if kernel_art else None,
            )
            outputs[SBOM] = sbom_text(facts, packages, __version__).encode()
            outputs[SPDX] = spdx_text(facts, packages, __version__).encode()
        provenance = statement(meta, artifacts, locked, log_sha256, __version__)
        outputs[PROVENANCE] = dumps(provenance).encode()
        try:
            manifest = Manifest.model_validate(
                {
                    "schema": MANIFEST_SCHEMA,
                    "job": job,
                    "inputs": inputs,
                    "inputs_digest": meta.get("inputs_digest"),
                    "builder": {"image": inputs.get("builder_image"), "digest": inputs.get("builder_image_digest")},
                    "status": meta["status"],
                    "started": meta.get("started"),
                    "finished": meta.get("finished"),
                    "duration_s": meta.get("duration_s"),
                    "artifacts": artifacts,
                    "packages": [p.to_json() for p in packages],
                    "files": {
                        "sbom": sbom_path,
                        "spdx": SPDX if SPDX in outputs else None,
                        "provenance": PROVENANCE,
                        "checksums": CHECKSUMS,
                        "signatures": {name: f"{name}.asc" for name in SIGNED},
                    },
                    "reproducibility": None
                    if repro is None
                    else {
                        "report": REPORT,
                        "identical": repro.get("identical"),
                        "checked": repro.get("checked"),
                        "differing": [a.get("path") for a in repro.get("artifacts", []) if not a.get("identical")],
                    },
                }
            )
        except ValueError as exc:
            raise UserError(f"{job_dir}/metadata.json cannot make a manifest: {exc}".splitlines()[0]) from None
        data = manifest.model_dump(mode="json", by_alias=True)
        for art in data["artifacts"]:
            if art["uncompressed_sha256"] is None:
                del art["uncompressed_sha256"]
        if data["files"]["spdx"] is None:
            del data["files"]["spdx"]
        if data["reproducibility"] is None:
            del data["reproducibility"]
        outputs[MANIFEST] = dumps(data).encode()
        sums = {a["path"]: a["sha256"] for a in artifacts}
        if repro is not None and (report_sha256 := _file_sha256(dir_fd, job_dir, REPORT)):
            sums[REPORT] = report_sha256
        sums.update({name: hashlib.sha256(body).hexdigest() for name, body in outputs.items()})
        outputs[CHECKSUMS] = "".join(f"{sums[p]}  {p}\n" for p in sorted(sums)).encode()
        for name, body in outputs.items():
            _write(dir_fd, name, body)
    written = [job_dir / name for name in outputs]
    return written if SBOM in outputs else [job_dir / sbom_path, *written]


# --- a release -----------------------------------------------------------------------------------


def write_index(release_dir: Path, job_dirs: list[Path]) -> Path:
    """index.json in ``release_dir``: every job's manifest.json (relative path) with its sha256,
    sorted by job id. Each job folder must be directly in ``release_dir``."""
    entries: dict[str, dict[str, str]] = {}
    with _folder(release_dir, "release folder") as rel_fd:
        for job_dir in job_dirs:
            if Path(os.path.abspath(job_dir)).parent != Path(os.path.abspath(release_dir)):
                raise UserError(f"{job_dir} is not a job folder of {release_dir}")
            name = job_dir.name
            try:
                body = _read(rel_fd, f"{name}/{MANIFEST}", release_dir)
            except FileNotFoundError:
                raise UserError(f"{job_dir}: no {MANIFEST} (write the job's manifest first)") from None
            try:
                job_id = json.loads(body)["job"]["id"]
            except (ValueError, KeyError, TypeError):
                raise UserError(f"{job_dir / MANIFEST} is not a cipbuild manifest") from None
            if job_id != name:
                raise UserError(f"{job_dir / MANIFEST} is the manifest of job {job_id!r}, not of {name!r}")
            if job_id in entries:
                raise UserError(f"job {job_id} is named twice")
            entries[job_id] = {
                "id": job_id,
                "manifest": f"{name}/{MANIFEST}",
                "sha256": hashlib.sha256(body).hexdigest(),
            }
        index = ReleaseIndex.model_validate({"schema": INDEX_SCHEMA, "jobs": [entries[k] for k in sorted(entries)]})
        _write(rel_fd, INDEX, dumps(index.model_dump(mode="json", by_alias=True)).encode())
    return release_dir / INDEX


def signable_jobs(release_dir: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """The job folders of ``release_dir`` that built (success or up to date), and the others as
    (id, status); a symlinked folder is never taken."""
    jobs: list[Path] = []
    skipped: list[tuple[str, str]] = []
    for folder in sorted(release_dir.iterdir()):
        meta_path = folder / "metadata.json"
        if folder.is_symlink() or not folder.is_dir() or not meta_path.is_file():
            continue
        try:
            status = json.loads(meta_path.read_text(encoding="utf-8")).get("status")
        except (OSError, ValueError, AttributeError):
            status = "unreadable metadata.json"
        if status in SUCCEEDED:
            jobs.append(folder)
        else:
            skipped.append((folder.name, str(status)))
    return jobs, skipped

"""Compress a built job's disk images before they are signed, as CIP publishes them.

The image is streamed once through the compressor (``zstd -T0`` or ``xz -T0``: every core) while
its sha256 is checked against the one the build recorded; the compressed file is hashed as it
comes out. metadata.json then names the compressed file with both digests, so the manifest
records both and the job stays up to date for the next `build`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InfrastructureError, UserError

METHODS: dict[str, tuple[str, list[str]]] = {
    "zstd": (".zst", ["zstd", "-q", "-T0", "-3", "-c"]),
    "xz": (".xz", ["xz", "-q", "-T0", "-6", "-c"]),
}
CHOICES = ("none", *METHODS)
DISK_TYPES = ("wic", "img", "ext4")  # what CIP compresses; kernels, initrds, tarballs stay as they are
CHUNK = 1 << 20
COMPRESSED = (".zst", ".xz", ".gz", ".bz2")


@dataclass(frozen=True)
class Compressed:
    path: str  # the new artifact path, relative to the job folder
    size: int
    raw_size: int


def check_method(method: str) -> str:
    if method not in CHOICES:
        raise UserError(f"unknown compression {method!r}", where="--compress", hint="use " + ", ".join(CHOICES))
    if method != "none" and shutil.which(METHODS[method][1][0]) is None:
        raise InfrastructureError(f"--compress {method}: the {METHODS[method][1][0]} tool is not installed")
    return method


def compress_job(job_dir: Path, method: str) -> list[Compressed]:
    """Compress the disk images of the succeeded job at ``job_dir`` in place (the raw file is
    replaced by the compressed one); what was compressed. Idempotent: a compressed image stays."""
    if method == "none":
        return []
    ext, command = METHODS[method]
    meta_path = job_dir / "metadata.json"
    meta: dict[str, Any] = json.loads(meta_path.read_text(encoding="utf-8"))
    done: list[Compressed] = []
    stamps = meta.get("artifact_stamps") if isinstance(meta.get("artifact_stamps"), dict) else None
    for art in meta.get("artifacts", []):
        path = str(art.get("path", ""))
        if art.get("type") not in DISK_TYPES or not path.startswith("artifacts/") or path.endswith(COMPRESSED):
            continue
        source = job_dir / art["path"]
        target = source.with_name(source.name + ext)
        if source.is_symlink() or not source.is_file():
            raise UserError(f"{source} is missing or not a regular file: rebuild the job")
        size, digest = _compress(source, target, command, art)
        new_path = f"{art['path']}{ext}"
        if stamps is not None:
            stamps.pop(art["path"], None)
            info = os.lstat(target)
            stamps[new_path] = [info.st_size, info.st_mtime_ns, info.st_ino]
        done.append(Compressed(new_path, size, art["size"]))
        art.update(path=new_path, size=size, sha256=digest, uncompressed_sha256=art["sha256"])
        tmp = meta_path.with_name(f".{meta_path.name}.tmp")
        tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, meta_path)  # metadata names the new file before the raw one goes
        source.unlink()
    return done


def _compress(source: Path, target: Path, command: list[str], art: dict[str, Any]) -> tuple[int, str]:
    partial = target.with_name(f".{target.name}.partial")
    raw_digest = hashlib.sha256()
    out_digest = hashlib.sha256()
    raw_size = 0
    size = 0
    feed_error: list[BaseException] = []
    try:
        proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as exc:
        raise InfrastructureError(f"cannot run {command[0]}: {exc.strerror or exc}") from None
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None

    def feed() -> None:
        nonlocal raw_size
        try:
            with source.open("rb") as handle:
                while data := handle.read(CHUNK):
                    raw_digest.update(data)
                    raw_size += len(data)
                    proc.stdin.write(data)  # type: ignore[union-attr]
        except BaseException as exc:  # a broken pipe shows as the tool's own failure below
            feed_error.append(exc)
        finally:
            proc.stdin.close()  # type: ignore[union-attr]

    feeder = threading.Thread(target=feed, name="compress-feed")
    feeder.start()
    try:
        with partial.open("wb") as out:
            while data := proc.stdout.read(CHUNK):
                out_digest.update(data)
                size += len(data)
                out.write(data)
            out.flush()
            os.fsync(out.fileno())
        feeder.join()
        errors = proc.stderr.read().decode(errors="replace").strip()
        if proc.wait() != 0:
            raise InfrastructureError(f"{command[0]} failed on {source}: {errors.splitlines()[-1:] or 'no message'}")
        if feed_error:
            raise InfrastructureError(f"cannot read {source}: {feed_error[0]}")
        if raw_size != art["size"] or raw_digest.hexdigest() != art["sha256"]:
            raise UserError(f"{source} changed since it was built (sha256 differs from metadata.json): rebuild the job")
        os.replace(partial, target)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        feeder.join()
        partial.unlink(missing_ok=True)
    return size, out_digest.hexdigest()

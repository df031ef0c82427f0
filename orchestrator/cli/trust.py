"""Verbs of trust: sign, verify."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import UserError, VerificationError
from ..output import print_json, print_line, print_table
from .app import JsonOpt, app


@app.command()
def sign(
    out: Annotated[Path, typer.Argument(help="The folder `build` wrote (one folder per job).")] = Path("out"),
    key_id: Annotated[
        str | None,
        typer.Option("--key-id", metavar="ID", help="Secret key in your own keyring (fingerprint, id or e-mail)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Write manifest.json, SBOM, provenance and SHA256SUMS for each successful job in OUT, sign
    them, and sign the release's index.json. Detached armored signatures (<file>.asc), never over
    the images: SHA256SUMS covers them.

    The key is the armored secret key file named by CIPBUILD_SIGNING_KEY, or --key-id; its
    passphrase, if any, comes from CIPBUILD_SIGNING_PASSPHRASE. Exit codes: 0 signed, 2 no key or
    an unusable one, 4 gpg missing.
    """
    from .. import manifest
    from ..signing import KeySource, Signer

    if not out.is_dir():
        raise UserError("is not a folder", where=str(out))
    jobs, skipped = _signable_jobs(out)
    if not jobs:
        raise UserError("holds no successful job to sign", where=str(out), hint="run `cipbuild build` first")
    rows: list[dict[str, Any]] = []
    with Signer(KeySource.from_env(key_id)) as signer:
        assert signer.key is not None
        for job_dir in jobs:
            manifest.write_job_trust(job_dir)
            signatures = [signer.sign(job_dir / name) for name in manifest.SIGNED]
            rows.append({"id": job_dir.name, "folder": str(job_dir), "signed": [p.name for p in signatures]})
        index = manifest.write_index(out, jobs)
        index_sig = signer.sign(index)
        fingerprint = signer.key.fingerprint
    if as_json:
        print_json(
            {
                "out": str(out),
                "key": fingerprint,
                "jobs": rows,
                "skipped": skipped,
                "index": str(index),
                "index_signature": str(index_sig),
            }
        )
        return
    table = [[r["id"], "signed", ", ".join(r["signed"])] for r in rows]
    table += [[s["id"], "skipped", s["status"]] for s in skipped]
    print_table(None, ["job", "status", "signatures"], table)
    print_line(f"signed {len(rows)} job(s) and {index.name} with key {fingerprint}")


def _signable_jobs(out: Path) -> tuple[list[Path], list[dict[str, str]]]:
    from ..status import Status

    jobs: list[Path] = []
    skipped: list[dict[str, str]] = []
    for folder in sorted(out.iterdir()):
        meta_path = folder / "metadata.json"
        if folder.is_symlink() or not folder.is_dir() or not meta_path.is_file():
            continue
        try:
            status = json.loads(meta_path.read_text(encoding="utf-8")).get("status")
        except (OSError, ValueError, AttributeError):
            status = "unreadable metadata.json"
        if status in (Status.SUCCESS, Status.UP_TO_DATE):
            jobs.append(folder)
        else:
            skipped.append({"id": folder.name, "status": str(status)})
    return jobs, skipped


@app.command()
def verify(
    path: Annotated[str, typer.Argument(help="A job folder or a release folder (index.json + job folders).")],
    keyring: Annotated[
        Path, typer.Option("--keyring", metavar="KEY.asc", help="Public key(s) the signatures must be made by.")
    ],
    as_json: JsonOpt = False,
) -> None:
    """Check a signed job folder or release: every signature good and by a key of --keyring,
    every file of SHA256SUMS present with its sha256, every artifact the manifest lists (and no
    other) with its size and sha256, index entries matching their manifests, and the SBOM's
    packages equal to the manifest's. Exit codes: 0 verified, 2 bad arguments, 5 a check failed.
    """
    from ..verify import verify as run_verify

    report = run_verify(path, keyring)
    if as_json:
        print_json({"path": path, **report.to_json()})
    else:
        for check in report.checks:
            print_line(f"checked  {check}")
        for problem in report.problems:
            print_line(f"PROBLEM  {problem}")
        if report.ok:
            print_line(f"verified {path}: {report.files} file(s), {report.bytes / (1 << 20):.1f} MiB")
    if not report.ok:
        first = report.problems[0]
        more = f" and {len(report.problems) - 1} more" if len(report.problems) > 1 else ""
        raise VerificationError(f"{path} did not verify: {first}{more}")

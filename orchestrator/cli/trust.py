"""Verbs of trust: sign, verify."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..errors import VerificationError
from ..output import print_json, print_line, print_table
from .app import CompressOpt, JsonOpt, app

if TYPE_CHECKING:
    from ..signing import SignedRelease


@app.command()
def sign(
    out: Annotated[Path, typer.Argument(help="The folder `build` wrote (one folder per job).")] = Path("out"),
    key_id: Annotated[
        str | None,
        typer.Option("--key-id", metavar="ID", help="Secret key in your own keyring (fingerprint, id or e-mail)."),
    ] = None,
    compress: CompressOpt = "none",
    as_json: JsonOpt = False,
) -> None:
    """Write manifest.json, SBOM, provenance and SHA256SUMS for each successful job in OUT, sign
    them, and sign the release's index.json. Detached armored signatures (<file>.asc), never over
    the images: SHA256SUMS covers them.

    The key is the armored secret key file named by CIPBUILD_SIGNING_KEY, or --key-id; its
    passphrase, if any, comes from CIPBUILD_SIGNING_PASSPHRASE. Exit codes: 0 signed, 2 no key or
    an unusable one, 4 gpg missing.
    """
    from ..compress import check_method
    from ..signing import KeySource, Signer, jobs_to_sign, sign_release

    check_method(compress)
    jobs_to_sign(out)  # nothing to sign is said before the key is looked at
    with Signer(KeySource.from_env(key_id)) as signer:
        print_signed(sign_release(signer, out, compress), as_json)


def signed_json(release: SignedRelease | None) -> dict[str, Any] | None:
    if release is None:
        return None
    return {
        "key": release.key,
        "jobs": [{"id": job, "signed": [p.name for p in sigs]} for job, sigs in release.jobs.items()],
        "skipped": [{"id": job, "status": status} for job, status in release.skipped],
        "index": str(release.index),
        "index_signature": str(release.index_signature),
    }


def print_signed(release: SignedRelease, as_json: bool) -> None:
    """What `sign` and `build --sign` print."""
    if as_json:
        print_json(signed_json(release))
        return
    table = [[job, "signed", ", ".join(p.name for p in sigs)] for job, sigs in release.jobs.items()]
    table += [[job, "skipped", status] for job, status in release.skipped]
    print_table(None, ["job", "status", "signatures"], table)
    print_line(f"signed {len(release.jobs)} job(s) and {release.index.name} with key {release.key}")


@app.command()
def verify(
    path: Annotated[
        str,
        typer.Argument(
            help="A job folder, a release folder (index.json + job folders), or a published release: "
            "its folder, s3://bucket/prefix/REF or https://.../REF."
        ),
    ],
    keyring: Annotated[
        Path, typer.Option("--keyring", metavar="KEY.asc", help="Public key(s) the signatures must be made by.")
    ],
    endpoint_url: Annotated[
        str | None, typer.Option("--endpoint-url", metavar="URL", help="The S3-compatible server of an s3:// PATH.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Check a signed job folder or release: every signature good and by a key of --keyring,
    every file of SHA256SUMS present with its sha256, every artifact the manifest lists (and no
    other) with its size and sha256, index entries matching their manifests, and the SBOM's
    packages equal to the manifest's. Exit codes: 0 verified, 2 bad arguments, 5 a check failed.
    """
    from ..verify import verify as run_verify

    report = run_verify(path, keyring, endpoint_url)
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

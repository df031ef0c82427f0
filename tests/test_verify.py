"""`cipbuild verify` with the real gpg over folders `cipbuild sign` made, and every attack the
trust issue lists: each fails with the file named and exit 5, never a traceback."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_signing import (
    IMAGE,
    Keys,
    gpg_sign,
    keys,  # noqa: F401  (the session fixture)
    make_job,
    make_out,
    sha256,
)

from orchestrator.errors import UserError
from orchestrator.manifest import SIGNED
from orchestrator.signing import KEY_ENV
from orchestrator.verify import safe_name, sbom_packages, verify

pytestmark = pytest.mark.integration

Cli = Callable[..., Any]
AMD = "isar-bookworm-qemu-amd64"
ARM = "isar-bookworm-qemu-arm64"


@pytest.fixture
def signed(cli: Cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, keys: Keys) -> Path:  # noqa: F811
    out = make_out(tmp_path / "out")
    monkeypatch.setenv(KEY_ENV, str(keys.good.secret))
    result = cli("sign", str(out))
    assert result.code == 0, result.err
    monkeypatch.delenv(KEY_ENV)
    return out


@pytest.fixture
def keyring(keys: Keys) -> Path:  # noqa: F811
    return keys.good.public


def resign(keys: Keys, job_dir: Path, *names: str) -> None:  # noqa: F811
    """What a build that goes wrong (or a key holder) would publish: re-signed after a change."""
    for name in names or SIGNED:
        gpg_sign(keys.home, keys.good.fpr, job_dir / name)


def rewrite_sums(job_dir: Path, edit: Callable[[list[str]], list[str]]) -> None:
    path = job_dir / "SHA256SUMS"
    path.write_text("".join(line + "\n" for line in edit(path.read_text().splitlines())))


def edit_manifest(job_dir: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    path = job_dir / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, indent=2) + "\n")
    sum_of = sha256(path.read_bytes())
    rewrite_sums(
        job_dir, lambda lines: [f"{sum_of}  manifest.json" if ln.endswith("  manifest.json") else ln for ln in lines]
    )


def fails(cli: Cli, path: Path, keyring: Path, *files: str) -> str:
    result = cli("verify", str(path), "--keyring", str(keyring))
    assert result.code == 5, (result.out, result.err)
    assert "Traceback" not in result.err and result.err.count("\n") == 1
    for name in files:
        assert name in result.out, result.out
    return str(result.out)


def test_a_signed_release_verifies(cli: Cli, signed: Path, keyring: Path, keys: Keys) -> None:  # noqa: F811
    result = cli("verify", str(signed), "--keyring", str(keyring))
    assert result.code == 0, result.out + result.err
    assert f"checked  index.json: signature good, by {keys.good.fpr}" in result.out
    assert f"checked  {AMD}/SHA256SUMS: 7/7 file(s) read and hashed" in result.out
    assert f"checked  {AMD}/sbom.cdx.json: 3 package(s), the same set as manifest.json" in result.out
    assert "checked  index.json: 2 job(s)" in result.out
    assert "PROBLEM" not in result.out
    assert f"verified {signed}:" in result.out


def test_a_signed_job_folder_verifies_alone_with_json(cli: Cli, signed: Path, keyring: Path) -> None:
    result = cli("verify", str(signed / AMD), "--keyring", str(keyring), "--json")
    assert result.code == 0, result.out + result.err
    report = json.loads(result.out)
    assert report["ok"] and report["problems"] == []
    assert report["bytes"] > len(IMAGE)


def test_one_flipped_byte_in_an_image(cli: Cli, signed: Path, keyring: Path) -> None:
    image = signed / AMD / "artifacts" / "image.wic"
    data = bytearray(image.read_bytes())
    data[len(data) // 2] ^= 1
    image.write_bytes(bytes(data))
    out = fails(cli, signed, keyring, f"PROBLEM  {AMD}/artifacts/image.wic: sha256")
    assert [line for line in out.splitlines() if line.startswith("PROBLEM")] == [
        next(line for line in out.splitlines() if line.startswith(f"PROBLEM  {AMD}/artifacts/image.wic: sha256"))
    ]


def test_a_manifest_swapped_for_another_jobs(cli: Cli, signed: Path, keyring: Path) -> None:
    for name in ("manifest.json", "manifest.json.asc"):
        shutil.copy(signed / ARM / name, signed / AMD / name)
    fails(cli, signed / AMD, keyring, "PROBLEM  manifest.json: sha256")
    fails(cli, signed, keyring, f"{AMD}/manifest.json: sha256 differs from the one in index.json")


def test_a_whole_job_folder_swapped_in_a_release(cli: Cli, signed: Path, keyring: Path) -> None:
    shutil.rmtree(signed / AMD)
    shutil.copytree(signed / ARM, signed / AMD)
    fails(cli, signed, keyring, f"{AMD}/manifest.json: is the manifest of job '{ARM}'")


def test_a_signature_by_a_key_not_in_the_keyring(cli: Cli, signed: Path, keyring: Path, keys: Keys) -> None:  # noqa: F811
    gpg_sign(keys.home, keys.other.fpr, signed / AMD / "SHA256SUMS")
    fails(cli, signed, keyring, f"{AMD}/SHA256SUMS.asc: signed by key {keys.other.fpr[-16:]}, which is not in")


def test_a_signature_by_an_expired_key(cli: Cli, signed: Path, tmp_path: Path, keys: Keys) -> None:  # noqa: F811
    for name in SIGNED:
        gpg_sign(keys.home, keys.expired.fpr, signed / AMD / name, faked="20200101T120000")
    ring = tmp_path / "ring.asc"
    ring.write_bytes(keys.all_public(keys.good, keys.expired))
    fails(cli, signed, ring, f"{AMD}/manifest.json.asc: signed by an expired key")


def test_a_signature_by_a_revoked_key(cli: Cli, signed: Path, tmp_path: Path, keys: Keys) -> None:  # noqa: F811
    gpg_sign(keys.home, keys.revoked.fpr, signed / "index.json")
    ring = tmp_path / "ring.asc"
    ring.write_bytes(keys.all_public(keys.good, keys.revoked))
    fails(cli, signed, ring, "index.json.asc: signed by a revoked key")


def test_a_missing_artifact(cli: Cli, signed: Path, keyring: Path) -> None:
    (signed / AMD / "artifacts" / "vmlinuz").unlink()
    fails(cli, signed, keyring, f"{AMD}/artifacts/vmlinuz: is missing")


def test_an_extra_file_in_artifacts(cli: Cli, signed: Path, keyring: Path) -> None:
    (signed / AMD / "artifacts" / "backdoor.sh").write_text("#!/bin/sh\n")
    fails(cli, signed, keyring, f"{AMD}/artifacts/backdoor.sh: is not listed in manifest.json")


def test_a_truncated_sha256sums(cli: Cli, signed: Path, keyring: Path) -> None:
    sums = signed / AMD / "SHA256SUMS"
    sums.write_bytes(sums.read_bytes()[:100])
    fails(cli, signed, keyring, f"{AMD}/SHA256SUMS.asc: bad signature")


def test_a_truncated_sha256sums_even_when_re_signed(cli: Cli, signed: Path, keyring: Path, keys: Keys) -> None:  # noqa: F811
    rewrite_sums(signed / AMD, lambda lines: [ln for ln in lines if "image.wic" not in ln])
    resign(keys, signed / AMD, "SHA256SUMS")
    fails(cli, signed, keyring, f"{AMD}/artifacts/image.wic: is in manifest.json but not in SHA256SUMS")


@pytest.mark.parametrize("bad", ["../../etc/passwd", "/etc/passwd", "artifacts/../../x"])
def test_escaping_paths_in_a_signed_manifest(cli: Cli, signed: Path, keyring: Path, keys: Keys, bad: str) -> None:  # noqa: F811
    def swap(data: dict[str, Any]) -> None:
        data["artifacts"][0]["path"] = bad

    edit_manifest(signed / AMD, swap)
    rewrite_sums(signed / AMD, lambda lines: [*lines, f"{'0' * 64}  {bad}"])
    resign(keys, signed / AMD)
    out = fails(cli, signed / AMD, keyring, "PROBLEM  manifest.json: artifact", "PROBLEM  SHA256SUMS:8:")
    assert "refused" in out


def test_a_symlink_where_an_artifact_should_be(cli: Cli, signed: Path, keyring: Path, tmp_path: Path) -> None:
    image = signed / AMD / "artifacts" / "image.wic"
    copy = tmp_path / "elsewhere.wic"
    shutil.copy(image, copy)
    image.unlink()
    image.symlink_to(copy)
    fails(cli, signed, keyring, f"{AMD}/artifacts/image.wic: is a symlink: refused")


def test_a_symlinked_job_folder_in_a_release(cli: Cli, signed: Path, keyring: Path, tmp_path: Path) -> None:
    shutil.move(signed / AMD, tmp_path / "moved")
    (signed / AMD).symlink_to(tmp_path / "moved")
    fails(cli, signed, keyring, f"{AMD}/SHA256SUMS: is a symlink: refused")


def test_sbom_packages_must_equal_the_manifests(cli: Cli, signed: Path, keyring: Path, keys: Keys) -> None:  # noqa: F811
    def drop(data: dict[str, Any]) -> None:
        data["packages"] = data["packages"][1:]

    edit_manifest(signed / AMD, drop)
    resign(keys, signed / AMD)
    fails(cli, signed / AMD, keyring, "PROBLEM  sbom.cdx.json: has 1 package(s) manifest.json lacks: base-files@")


def test_a_job_folder_the_index_does_not_list(cli: Cli, signed: Path, keyring: Path) -> None:
    shutil.copytree(signed / ARM, signed / "isar-bookworm-qemu-riscv64")
    fails(cli, signed, keyring, "PROBLEM  isar-bookworm-qemu-riscv64: is not listed in index.json")


def test_an_unsigned_folder(cli: Cli, tmp_path: Path, keyring: Path) -> None:
    job = make_job(tmp_path / "out", AMD, {"image.wic": b"x"})
    from orchestrator.manifest import write_job_trust

    write_job_trust(job)
    fails(cli, job, keyring, "PROBLEM  SHA256SUMS.asc: is missing", "PROBLEM  manifest.json.asc: is missing")


def test_bad_arguments_are_user_errors(cli: Cli, signed: Path, keyring: Path, tmp_path: Path) -> None:
    for args, message in (
        ([str(tmp_path / "nowhere")], "is not a folder"),
        ([str(tmp_path)], "holds neither index.json nor manifest.json"),
    ):
        result = cli("verify", *args, "--keyring", str(keyring))
        assert result.code == 2 and message in result.err, result.err
    unreachable = cli("verify", "https://127.0.0.1:9/release", "--keyring", str(keyring))
    assert unreachable.code == 4, unreachable.err
    assert unreachable.err.count("\n") == 1 and "cannot be fetched" in unreachable.err
    junk = tmp_path / "junk.asc"
    junk.write_text("nothing\n")
    result = cli("verify", str(signed), "--keyring", str(junk))
    assert result.code == 2 and "holds no OpenPGP key" in result.err


def test_safe_names() -> None:
    assert safe_name("artifacts/x.wic") is None
    assert safe_name("../x") == "leaves the folder (..): refused"
    assert safe_name("/x") == "is an absolute path: refused"
    assert safe_name("a\\b") == "is not a plain file name"


def test_sbom_packages_of_cyclonedx_and_spdx() -> None:
    purl = "pkg:deb/debian/systemd@1%3A252.22-1~deb12u1?arch=amd64&distro=debian-12"
    cdx = {"bomFormat": "CycloneDX", "components": [{"type": "library", "purl": purl}, {"type": "file", "name": "k"}]}
    spdx = {"spdxVersion": "SPDX-2.3", "packages": [{"externalRefs": [{"referenceLocator": purl}]}]}
    assert sbom_packages(cdx) == sbom_packages(spdx) == {"systemd@1:252.22-1~deb12u1"}
    assert sbom_packages({"nothing": 1}) is None


def test_verify_api_reports_problems_without_raising(signed: Path, keyring: Path) -> None:
    os.unlink(signed / ARM / "artifacts" / "Image")
    report = verify(str(signed), keyring)
    assert not report.ok
    assert [str(p) for p in report.problems] == [f"{ARM}/artifacts/Image: is missing"]
    with pytest.raises(UserError):
        verify(str(signed), signed / "no-such-keyring.asc")

"""`sign --compress`: disk images compressed with the real zstd and xz before signing, both
digests in the manifest, what publish sends and verify checks."""

from __future__ import annotations

import hashlib
import json
import lzma
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_signing import (
    IMAGE,
    Keys,
    keys,  # noqa: F401  (the session fixture)
    make_out,
)

from orchestrator.signing import KEY_ENV

pytestmark = pytest.mark.integration

Cli = Callable[..., Any]
JOB = "isar-bookworm-qemu-amd64"


def decompress(path: Path) -> bytes:
    if path.suffix == ".xz":
        return lzma.decompress(path.read_bytes())
    return subprocess.run(["zstd", "-dcq", str(path)], capture_output=True, check=True).stdout


@pytest.mark.parametrize("method", ["zstd", "xz"])
def test_sign_compress_replaces_the_image_and_the_manifest_keeps_both_digests(
    cli: Cli,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    keys: Keys,  # noqa: F811
    method: str,
) -> None:
    out = make_out(tmp_path / "out")
    monkeypatch.setenv(KEY_ENV, str(keys.good.secret))
    result = cli("sign", str(out), "--compress", method)
    assert result.code == 0, result.err
    suffix = {"zstd": ".zst", "xz": ".xz"}[method]
    artifacts = out / JOB / "artifacts"
    assert not (artifacts / "image.wic").exists()
    packed = artifacts / f"image.wic{suffix}"
    assert decompress(packed) == IMAGE
    assert packed.stat().st_size < len(IMAGE) // 10  # the image is a repeating pattern
    manifest = json.loads((out / JOB / "manifest.json").read_text())
    wic = next(a for a in manifest["artifacts"] if a["type"] == "wic")
    assert wic["path"] == f"artifacts/image.wic{suffix}"
    assert wic["sha256"] == hashlib.sha256(packed.read_bytes()).hexdigest()
    assert wic["uncompressed_sha256"] == hashlib.sha256(IMAGE).hexdigest()
    assert (artifacts / "vmlinuz").is_file()  # only disk images are compressed
    assert cli("verify", str(out), "--keyring", str(keys.good.public)).code == 0

    again = cli("sign", str(out), "--compress", method)  # already compressed: left as it is
    assert again.code == 0, again.err
    assert json.loads((out / JOB / "manifest.json").read_text())["artifacts"] == manifest["artifacts"]


def test_an_image_changed_since_the_build_is_not_compressed(
    cli: Cli,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    keys: Keys,  # noqa: F811
) -> None:
    out = make_out(tmp_path / "out")
    image = out / JOB / "artifacts" / "image.wic"
    image.write_bytes(IMAGE[:-1] + b"!")
    monkeypatch.setenv(KEY_ENV, str(keys.good.secret))
    result = cli("sign", str(out), "--compress", "zstd")
    assert result.code == 2
    assert "changed since it was built" in result.err
    assert image.read_bytes().endswith(b"!")  # the raw file stays
    assert sorted(p.name for p in image.parent.iterdir()) == ["image.dpkg_status", "image.wic", "vmlinuz"]


def test_the_compressed_image_is_what_publish_sends(
    cli: Cli,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    keys: Keys,  # noqa: F811
) -> None:
    out = make_out(tmp_path / "out")
    monkeypatch.setenv(KEY_ENV, str(keys.good.secret))
    assert cli("sign", str(out), "--compress", "zstd").code == 0
    result = cli("publish", str(out), "--to", str(tmp_path / "store"), "--ref", "master", "--json")
    assert result.code == 0, result.err
    names = {o["path"] for job in json.loads(result.out)["jobs"] for o in job["objects"]}
    assert "qemu-amd64/image.wic.zst" in names
    assert "qemu-amd64/image.wic" not in names
    verified = cli("verify", str(tmp_path / "store" / "master"), "--keyring", str(keys.good.public))
    assert verified.code == 0, verified.err


def test_an_unknown_method_is_refused_before_anything_is_signed(cli: Cli, tmp_path: Path) -> None:
    out = make_out(tmp_path / "out")
    result = cli("sign", str(out), "--compress", "lz4")
    assert result.code == 2
    assert "unknown compression 'lz4'" in result.err
    assert not (out / JOB / "manifest.json").exists()

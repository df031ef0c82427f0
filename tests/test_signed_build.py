"""`cipbuild build --sign`: a real build in a real container, signed with real gpg, verifiable,
and no secret of the caller's in anything it wrote."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from buildworld import World
from test_signing import (
    PASSPHRASE,
    Keys,
    keys,  # noqa: F401  (the session fixture)
)

from orchestrator.signing import KEY_ENV, PASSPHRASE_ENV

JOB = "isar-bookworm-qemu-amd64"
SECRET_ENV = {"AWS_SECRET_ACCESS_KEY": "aws-secret-3b9d1f0c", "LAVA_TOKEN": "lava-token-8e2a6c44"}

pytestmark = pytest.mark.integration


def test_signed_build_verifies_and_leaks_no_secret(
    docker_engine: str,
    world: World,
    keys: Keys,  # noqa: F811  (the fixture imported above)
) -> None:
    env = {KEY_ENV: str(keys.protected.secret), PASSPHRASE_ENV: PASSPHRASE, **SECRET_ENV}
    proc = world.build(JOB, "--sign", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["results"][0]["status"] == "success"
    assert report["signed"]["key"] == keys.protected.fpr
    assert [j["id"] for j in report["signed"]["jobs"]] == [JOB]

    verify = subprocess.run(
        [sys.executable, "-m", "orchestrator", "verify", str(world.out), "--keyring", str(keys.protected.public)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert f"verified {world.out}" in verify.stdout

    armored = keys.protected.secret.read_text().splitlines()
    secrets = [PASSPHRASE, str(keys.protected.secret), *SECRET_ENV.values()]
    secrets += [line for line in armored if len(line) >= 40 and not line.startswith("-----")]
    written = [p for p in world.out.rglob("*") if p.is_file() and not p.is_symlink() and p.stat().st_size < 4 << 20]
    names = {p.name for p in written}
    assert {"build.log", "metadata.json", "manifest.json", "provenance.intoto.json", "sbom.cdx.json"} <= names
    assert {"reproducer.sh", "SHA256SUMS.asc", "index.json.asc"} <= names
    for text in [*(p.read_text(errors="replace") for p in written), proc.stdout, proc.stderr]:
        for secret in secrets:
            assert secret not in text


def test_an_unusable_key_stops_the_build_before_it_starts(docker_engine: str, world: World, tmp_path: Path) -> None:
    proc = world.build(JOB, "--sign", env={KEY_ENV: str(tmp_path / "missing.asc")})
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith("signing key file does not exist")
    assert not (world.out / JOB).exists()  # nothing was built

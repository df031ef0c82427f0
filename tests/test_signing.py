"""Signing with the real gpg: keys made in a temporary GNUPGHOME, `cipbuild sign` over job folders
written by manifest.py, and every way a key can be unusable."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from orchestrator.errors import UserError
from orchestrator.manifest import SIGNED
from orchestrator.signing import KEY_ENV, PASSPHRASE_ENV, KeySource, Signer, gpg_env

pytestmark = pytest.mark.integration

PASSPHRASE = "correct-horse-7f3a9c"  # the value the secret scan looks for


def gpg(home: Path, *args: str, stdin: bytes = b"") -> bytes:
    proc = subprocess.run(
        ["gpg", "--batch", "--no-tty", *args],
        input=stdin,
        capture_output=True,
        env={"PATH": os.environ["PATH"], "GNUPGHOME": str(home), "LC_ALL": "C"},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout


def new_home() -> Path:
    # short: gpg-agent's socket path must fit in 108 bytes
    home = Path(tempfile.mkdtemp(prefix="cbt-"))
    home.chmod(0o700)
    return home


def fingerprint(home: Path, uid: str) -> str:
    listing = gpg(home, "--with-colons", "--list-keys", uid).decode()
    return next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))


@dataclass
class Key:
    uid: str
    fpr: str
    secret: Path  # armored secret key file
    public: Path  # armored public key file (the keyring a consumer gets)


@dataclass
class Keys:
    home: Path  # holds every secret key, none of them revoked
    good: Key
    other: Key  # never in a consumer's keyring
    protected: Key  # passphrase PASSPHRASE
    expired: Key  # made in 2020 with a one-day expiry
    revoked: Key  # its public and secret files carry the revocation

    def all_public(self, *keys: Key) -> bytes:
        return b"".join(k.public.read_bytes() for k in keys)


def _make_key(home: Path, folder: Path, name: str, *, passphrase: str = "", faked: str | None = None) -> Key:
    uid = f"{name} <{name}@cipbuild.test>"
    when = ["--faked-system-time", faked] if faked else []
    expiry = "1d" if faked else "0"
    gpg(home, *when, "--passphrase", passphrase, "--quick-gen-key", uid, "ed25519", "sign", expiry)
    fpr = fingerprint(home, uid)
    secret, public = folder / f"{name}.sec.asc", folder / f"{name}.asc"
    secret.write_bytes(
        gpg(home, "--pinentry-mode", "loopback", "--passphrase", passphrase, "--armor", "--export-secret-keys", fpr)
    )
    public.write_bytes(gpg(home, "--armor", "--export", fpr))
    return Key(uid, fpr, secret, public)


def _revoke_copies(home: Path, key: Key) -> None:
    """Replace the key's files by revoked copies; ``home`` keeps the unrevoked key for signing."""
    cert = (home / "openpgp-revocs.d" / f"{key.fpr}.rev").read_text()
    cert = cert.replace(":-----BEGIN PGP PUBLIC KEY BLOCK-----", "-----BEGIN PGP PUBLIC KEY BLOCK-----")
    other = new_home()
    try:
        gpg(other, "--import", str(key.secret))
        gpg(other, "--import", stdin=cert.encode())
        key.public.write_bytes(gpg(other, "--armor", "--export", key.fpr))
        key.secret.write_bytes(
            gpg(other, "--pinentry-mode", "loopback", "--passphrase", "", "--armor", "--export-secret-keys", key.fpr)
        )
    finally:
        subprocess.run(["gpgconf", "--kill", "all"], env={**os.environ, "GNUPGHOME": str(other)}, check=False)
        shutil.rmtree(other, ignore_errors=True)


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keys]:
    if shutil.which("gpg") is None:
        pytest.fail("gpg is not installed (.ci/run installs gnupg)") if os.environ.get("CI") else pytest.skip("no gpg")
    folder = tmp_path_factory.mktemp("keys")
    home = new_home()
    made = Keys(
        home,
        _make_key(home, folder, "good"),
        _make_key(home, folder, "other"),
        _make_key(home, folder, "protected", passphrase=PASSPHRASE),
        _make_key(home, folder, "expired", faked="20200101T000000"),
        _make_key(home, folder, "revoked"),
    )
    _revoke_copies(home, made.revoked)
    yield made
    subprocess.run(["gpgconf", "--kill", "all"], env={**os.environ, "GNUPGHOME": str(home)}, check=False)
    shutil.rmtree(home, ignore_errors=True)


# --- job folders as `build` leaves them ----------------------------------------------------------

PACKAGES = [
    {"name": "base-files", "version": "12.4+deb12u5", "architecture": "amd64", "source": "base-files"},
    {"name": "libc6", "version": "2.36-9+deb12u4", "architecture": "amd64", "source": "glibc"},
    {"name": "systemd", "version": "1:252.22-1~deb12u1", "architecture": "amd64", "source": "systemd"},
]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def dpkg_status(packages: list[dict[str, str]]) -> bytes:
    paragraphs = [
        f"Package: {p['name']}\nStatus: install ok installed\nArchitecture: {p['architecture']}\n"
        f"Source: {p['source']}\nVersion: {p['version']}\n"
        for p in packages
    ]
    return "\n".join(paragraphs).encode()


def make_job(out: Path, job_id: str, artifacts: dict[str, bytes], status: str = "success") -> Path:
    """A finished job folder as `build` leaves it: metadata.json, build.log, artifacts/ (the
    image, a kernel, the deployed dpkg status)."""
    job_dir = out / job_id
    (job_dir / "artifacts").mkdir(parents=True)
    records = []
    files = {**artifacts, "image.dpkg_status": dpkg_status(PACKAGES)}
    for name, data in files.items():
        (job_dir / "artifacts" / name).write_bytes(data)
        kind = "wic" if name.endswith(".wic") else "dpkg_status" if name.endswith("dpkg_status") else "kernel"
        records.append({"type": kind, "path": f"artifacts/{name}", "size": len(data), "sha256": sha256(data)})
    (job_dir / "build.log").write_text("kas build ...\n")
    (job_dir / "job.yml").write_text("header: {version: 14}\n")
    parts = job_id.split("-", 2)
    meta = {
        "schema": 1,
        "job": {"id": job_id, "distro": parts[0], "release": parts[1], "board": parts[2], "image": "cip-core-image"},
        "inputs": {
            "builder_image": "ghcr.io/siemens/kas/kas-isar:4.5",
            "builder_image_digest": "sha256:" + "ab" * 32,
            "kas_file_sha256": sha256(b"header: {version: 14}\n"),
            "env": {},
            "cipbuild_version": "0.1",
        },
        "inputs_digest": sha256(job_id.encode()),
        "runtime": {"name": "docker"},
        "files": {"kas_file": "job.yml", "lock": "kas.lock.yml", "log": "build.log", "reproducer": "reproducer.sh"},
        "status": status,
        "started": "2026-11-30T10:00:00Z",
        "finished": "2026-11-30T10:20:00Z",
        "duration_s": 1200.0,
        "exit_code": 0,
        "error": None,
        "source_date_epoch": None,
        "artifacts": records,
    }
    (job_dir / "metadata.json").write_text(json.dumps(meta))
    return job_dir


IMAGE = bytes(range(256)) * 4096  # 1 MiB


def make_out(out: Path) -> Path:
    make_job(out, "isar-bookworm-qemu-amd64", {"image.wic": IMAGE, "vmlinuz": b"kernel" * 100})
    make_job(out, "isar-bookworm-qemu-arm64", {"image.wic": IMAGE[::-1], "Image": b"arm kernel" * 50})
    make_job(out, "isar-bookworm-bbb", {"image.wic": b"half"}, status="failed")
    return out


def gpg_sign(home: Path, fpr: str, path: Path, *, faked: str | None = None, passphrase: str = "") -> None:
    when = ["--faked-system-time", faked] if faked else []
    args = ["--yes", "--pinentry-mode", "loopback", "--passphrase", passphrase, "--armor", "--local-user", fpr]
    gpg(home, *when, *args, "--output", f"{path}.asc", "--detach-sign", str(path))


@pytest.fixture
def short_tmp(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private TMPDIR, to see what signing leaves behind there."""
    folder = Path(tempfile.mkdtemp(prefix="cbs-"))
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


Cli = Callable[..., Any]


def sign_out(cli: Cli, monkeypatch: pytest.MonkeyPatch, out: Path, key: Key, *args: str) -> Any:
    monkeypatch.setenv(KEY_ENV, str(key.secret))
    return cli("sign", str(out), *args)


# --- the tests ----------------------------------------------------------------------------------


def test_sign_writes_detached_signatures_for_each_successful_job(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, keys: Keys, short_tmp: Path
) -> None:
    out = make_out(tmp_path / "out")
    result = sign_out(cli, monkeypatch, out, keys.good, "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["key"] == keys.good.fpr
    assert [j["id"] for j in report["jobs"]] == ["isar-bookworm-qemu-amd64", "isar-bookworm-qemu-arm64"]
    assert report["skipped"] == [{"id": "isar-bookworm-bbb", "status": "failed"}]
    for job in ("isar-bookworm-qemu-amd64", "isar-bookworm-qemu-arm64"):
        for name in SIGNED:
            assert (out / job / f"{name}.asc").read_text().startswith("-----BEGIN PGP SIGNATURE-----")
        assert not (out / job / "artifacts" / "image.wic.asc").exists()  # never over the image
    assert not (out / "isar-bookworm-bbb" / "manifest.json").exists()
    assert (out / "index.json.asc").is_file()
    assert list(short_tmp.iterdir()) == []  # the temporary GNUPGHOME is gone


def test_sign_output_names_each_job(cli: Cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, keys: Keys) -> None:
    result = sign_out(cli, monkeypatch, make_out(tmp_path / "out"), keys.good)
    assert result.code == 0, result.err
    assert "isar-bookworm-qemu-amd64  signed" in result.out
    assert "isar-bookworm-bbb         skipped  failed" in result.out
    assert f"with key {keys.good.fpr}" in result.out


def test_a_signed_folder_verifies_with_sha256sum_and_gpg_alone(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, keys: Keys
) -> None:
    out = make_out(tmp_path / "out")
    assert sign_out(cli, monkeypatch, out, keys.good).code == 0
    consumer = new_home()
    try:
        gpg(consumer, "--import", str(keys.good.public))
        for job in ("isar-bookworm-qemu-amd64", "isar-bookworm-qemu-arm64"):
            check = subprocess.run(
                ["sha256sum", "--strict", "-c", "SHA256SUMS"], cwd=out / job, capture_output=True, check=False
            )
            assert check.returncode == 0, check.stdout + check.stderr
            for name in SIGNED:
                gpg(consumer, "--verify", str(out / job / f"{name}.asc"), str(out / job / name))
        gpg(consumer, "--verify", str(out / "index.json.asc"), str(out / "index.json"))
    finally:
        subprocess.run(["gpgconf", "--kill", "all"], env={**os.environ, "GNUPGHOME": str(consumer)}, check=False)
        shutil.rmtree(consumer, ignore_errors=True)


def test_secrets_never_reach_a_written_file_or_the_output(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, keys: Keys
) -> None:
    out = make_out(tmp_path / "out")
    monkeypatch.setenv(PASSPHRASE_ENV, PASSPHRASE)
    result = sign_out(cli, monkeypatch, out, keys.protected, "--json")
    assert result.code == 0, result.err
    armored = keys.protected.secret.read_text().splitlines()
    key_lines = [line for line in armored if len(line) >= 40 and not line.startswith("-----")]
    assert key_lines
    secrets = [PASSPHRASE, str(keys.protected.secret), *key_lines]
    written = [p for p in out.rglob("*") if p.is_file()]
    assert len(written) > 20
    for text in [*(p.read_text(errors="replace") for p in written), result.out, result.err]:
        for secret in secrets:
            assert secret not in text


def test_gpg_children_get_a_minimal_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(KEY_ENV, "/run/secrets/key.asc")
    monkeypatch.setenv(PASSPHRASE_ENV, PASSPHRASE)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "nope")
    env = gpg_env(tmp_path)
    assert set(env) <= {"PATH", "HOME", "GNUPGHOME", "LC_ALL", "LANG"}
    assert env["GNUPGHOME"] == str(tmp_path)
    assert PASSPHRASE not in repr(KeySource.from_env(None))


def test_passphrase_reaches_gpg_on_stdin_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, keys: Keys, short_tmp: Path
) -> None:
    seen: list[tuple[list[str], dict[str, str]]] = []
    real_run = subprocess.run

    def spy(argv: list[str], **kwargs: Any) -> Any:
        seen.append((list(argv), dict(kwargs.get("env") or {})))
        return real_run(argv, **kwargs)

    monkeypatch.setattr(subprocess, "run", spy)
    target = tmp_path / "SHA256SUMS"
    target.write_text("x\n")
    with Signer(KeySource(keys.protected.secret, None, PASSPHRASE)) as signer:
        signer.sign(target)
    assert seen
    for argv, env in seen:
        assert not any(PASSPHRASE in word for word in argv)
        assert PASSPHRASE not in "".join(env.values())


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("no-key", "no signing key (set CIPBUILD_SIGNING_KEY to an armored secret key file or pass --key-id)"),
        ("missing-file", "signing key file does not exist"),
        ("public-only", "holds no OpenPGP secret key"),
        ("not-a-key", "holds no OpenPGP key that gpg can import"),
        ("no-passphrase", "the key is protected by a passphrase (set CIPBUILD_SIGNING_PASSPHRASE)"),
        ("wrong-passphrase", "wrong passphrase (check CIPBUILD_SIGNING_PASSPHRASE)"),
        ("expired", "has expired"),
        ("revoked", "is revoked"),
        ("unknown-key-id", "--key-id 0xDEADBEEF: no such secret key in the keyring"),
    ],
)
def test_an_unusable_key_is_one_line_and_exit_2(
    cli: Cli,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    keys: Keys,
    short_tmp: Path,
    setup: str,
    message: str,
) -> None:
    out = make_out(tmp_path / "out")
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
    args: list[str] = []
    junk = tmp_path / "junk.asc"
    junk.write_text("not a key\n")
    key_file = {
        "missing-file": tmp_path / "nowhere.asc",
        "public-only": keys.good.public,
        "not-a-key": junk,
        "no-passphrase": keys.protected.secret,
        "wrong-passphrase": keys.protected.secret,
        "expired": keys.expired.secret,
        "revoked": keys.revoked.secret,
    }.get(setup)
    if key_file is not None:
        monkeypatch.setenv(KEY_ENV, str(key_file))
    if setup == "wrong-passphrase":
        monkeypatch.setenv(PASSPHRASE_ENV, "not-" + PASSPHRASE)
    if setup == "unknown-key-id":
        monkeypatch.setenv("GNUPGHOME", str(keys.home))
        args = ["--key-id", "0xDEADBEEF"]
    result = cli("sign", str(out), *args)
    assert result.code == 2, result.err
    assert message in result.err
    assert result.err.count("\n") == 1 and "Traceback" not in result.err
    assert not list(out.rglob("*.asc"))
    assert list(short_tmp.iterdir()) == []  # the temporary GNUPGHOME is gone, also on error


def test_sign_with_a_key_id_from_the_callers_keyring(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, keys: Keys
) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.setenv("GNUPGHOME", str(keys.home))
    result = cli("sign", str(make_out(tmp_path / "out")), "--key-id", keys.good.fpr, "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["key"] == keys.good.fpr


def test_no_gpg_is_an_infrastructure_error(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, keys: Keys
) -> None:
    out = make_out(tmp_path / "out")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    result = sign_out(cli, monkeypatch, out, keys.good)
    assert result.code == 4
    assert "gpg is not installed" in result.err


def test_nothing_to_sign_is_a_user_error(cli: Cli, tmp_path: Path) -> None:
    out = tmp_path / "out"
    make_job(out, "isar-bookworm-bbb", {"image.wic": b"x"}, status="failed")
    result = cli("sign", str(out), "--key-id", "x")
    assert result.code == 2
    assert "holds no successful job to sign" in result.err


def test_sign_refuses_a_symlink(tmp_path: Path, keys: Keys) -> None:
    (tmp_path / "real").write_text("x")
    (tmp_path / "SHA256SUMS").symlink_to(tmp_path / "real")
    with Signer(KeySource(keys.good.secret)) as signer, pytest.raises(UserError, match="not a regular file"):
        signer.sign(tmp_path / "SHA256SUMS")

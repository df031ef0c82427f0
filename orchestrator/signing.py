"""OpenPGP detached signatures made and checked by the real `gpg`.

The secret key comes from ``CIPBUILD_SIGNING_KEY`` (a path to an armored secret key file, as a
GitLab file variable provides), imported into a temporary GNUPGHOME deleted afterwards, or from
``--key-id`` in the caller's own keyring. The passphrase, from ``CIPBUILD_SIGNING_PASSPHRASE``,
reaches gpg on a pipe only. Every gpg child gets a minimal environment, so neither variable nor
anything else of ours reaches it, and nothing gpg prints is echoed back except status codes.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from .errors import InfrastructureError, UserError

KEY_ENV = "CIPBUILD_SIGNING_KEY"
PASSPHRASE_ENV = "CIPBUILD_SIGNING_PASSPHRASE"
SIGNATURE_SUFFIX = ".asc"
GPG_TIMEOUT = 120

# gpg's INV_SGNR reasons (doc/DETAILS) that a user can act on.
_INVALID_SIGNER = {
    "1": "not found",
    "2": "ambiguous",
    "3": "not usable for signing",
    "4": "revoked",
    "5": "expired",
    "9": "has no usable secret key (expired, revoked or not a secret key)",
    "13": "disabled",
}
# libgpg-error codes (low 16 bits of a FAILURE status) for a passphrase problem.
_BAD_PASSPHRASE = 11
_NO_PASSPHRASE = {85, 99, 177}  # no pinentry, canceled, missing passphrase


def gpg_env(home: Path | None) -> dict[str, str]:
    """The whole environment of a gpg child: where gpg is, its home, a fixed locale."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C"}
    if "HOME" in os.environ:
        env["HOME"] = os.environ["HOME"]
    if home is not None:
        env["GNUPGHOME"] = str(home)
    elif "GNUPGHOME" in os.environ:
        env["GNUPGHOME"] = os.environ["GNUPGHOME"]
    return env


def gpg_binary() -> str:
    found = shutil.which("gpg")
    if found is None:
        raise InfrastructureError("gpg is not installed (Debian: apt-get install gnupg)")
    return found


@dataclass
class GpgResult:
    code: int
    status: list[list[str]]  # "[GNUPG:] KEYWORD args..." lines, split, without the prefix
    lines: list[str]  # the rest of stdout: --with-colons listings

    def has(self, keyword: str) -> bool:
        return any(line[0] == keyword for line in self.status)

    def args(self, keyword: str) -> list[list[str]]:
        return [line[1:] for line in self.status if line[0] == keyword]


def run_gpg(home: Path | None, args: list[str], *, stdin: bytes = b"") -> GpgResult:
    """Run gpg in batch mode with machine-readable status on stdout."""
    argv = [gpg_binary(), "--batch", "--no-tty", "--status-fd", "1", *args]
    try:
        proc = subprocess.run(
            argv, input=stdin, capture_output=True, env=gpg_env(home), timeout=GPG_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise InfrastructureError(f"gpg did not answer within {GPG_TIMEOUT} s") from exc
    except OSError as exc:
        raise InfrastructureError(f"cannot run gpg: {exc.strerror or exc}") from exc
    out = proc.stdout.decode("utf-8", "replace").splitlines()
    status = [line.split()[1:] for line in out if line.startswith("[GNUPG:] ") and len(line.split()) > 1]
    # gpg's stderr is dropped: it may quote user ids or file names we show in our own words
    return GpgResult(proc.returncode, status, [line for line in out if not line.startswith("[GNUPG:] ")])


class GpgHome:
    """A temporary GNUPGHOME (mode 0700), removed with its agent on exit, also on error."""

    def __init__(self) -> None:
        self.path: Path | None = None

    def __enter__(self) -> Path:
        gpg_binary()
        # short and in TMPDIR: the agent's socket path must fit in sun_path (108 bytes)
        self.path = Path(tempfile.mkdtemp(prefix="cipbuild-gpg-"))
        os.chmod(self.path, 0o700)
        return self.path

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.path is None:
            return
        gpgconf = shutil.which("gpgconf")
        if gpgconf is not None:
            subprocess.run(
                [gpgconf, "--kill", "all"],
                env=gpg_env(self.path),
                capture_output=True,
                timeout=GPG_TIMEOUT,
                check=False,
            )
        shutil.rmtree(self.path, ignore_errors=True)
        self.path = None


def import_keys(home: Path, data: bytes, *, what: str) -> list[str]:
    """Import armored or binary keys into ``home``; returns the fingerprints imported."""
    result = run_gpg(home, ["--import"], stdin=data)
    fingerprints = [a[1] for a in result.args("IMPORT_OK") if len(a) > 1]
    if not fingerprints:
        raise UserError("holds no OpenPGP key that gpg can import", where=what)
    return sorted(set(fingerprints))


@dataclass(frozen=True)
class KeySource:
    """Where the signing key comes from; ``passphrase`` is never shown."""

    key_file: Path | None = None
    key_id: str | None = None
    passphrase: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, key_id: str | None, environ: Mapping[str, str] | None = None) -> KeySource:
        env = os.environ if environ is None else environ
        key_file = env.get(KEY_ENV) or None
        passphrase = env.get(PASSPHRASE_ENV)
        if key_file is None and not key_id:
            raise UserError(
                "no signing key",
                where="sign",
                hint=f"set {KEY_ENV} to an armored secret key file or pass --key-id",
            )
        return cls(Path(key_file) if key_file else None, key_id or None, passphrase)


@dataclass(frozen=True)
class SignerKey:
    fingerprint: str
    uid: str


class Signer:
    """Signs files with one key; use as a context manager (it may hold a temporary GNUPGHOME)."""

    def __init__(self, source: KeySource):
        self.source = source
        self._home = GpgHome()
        self.home: Path | None = None
        self.key: SignerKey | None = None

    def __enter__(self) -> Signer:
        try:
            if self.source.key_file is not None:
                self.home = self._home.__enter__()
                self._import_key_file(self.source.key_file)
            self.key = self._pick_key()
        except BaseException:
            self._home.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._home.__exit__(kind, exc, tb)
        self.home = None

    def _import_key_file(self, path: Path) -> None:
        assert self.home is not None
        where = f"{KEY_ENV}={path}"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise UserError("signing key file does not exist", where=where) from None
        except OSError as exc:
            raise UserError(f"cannot read signing key file: {exc.strerror}", where=where) from None
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise UserError("signing key is not a regular file", where=where)
            data = handle.read(1 << 20)
        result = run_gpg(self.home, ["--import"], stdin=data)
        if not result.args("IMPORT_OK"):
            raise UserError("holds no OpenPGP key that gpg can import", where=where)
        listing = run_gpg(self.home, ["--with-colons", "--list-secret-keys"])
        if not any(line.startswith("sec:") for line in _colon_lines(listing)):
            raise UserError("holds no OpenPGP secret key (a public key only?)", where=where)

    def _pick_key(self) -> SignerKey:
        wanted = [self.source.key_id] if self.source.key_id else []
        where = f"--key-id {self.source.key_id}" if self.source.key_id else f"{KEY_ENV}={self.source.key_file}"
        listing = run_gpg(self.home, ["--with-colons", "--fixed-list-mode", "--list-secret-keys", *wanted])
        keys = _secret_keys(_colon_lines(listing))
        if not keys:
            raise UserError("no such secret key in the keyring", where=where)
        if len(keys) > 1:
            raise UserError(f"names {len(keys)} secret keys", where=where, hint="pass --key-id with a fingerprint")
        key = keys[0]
        if key.validity == "r":
            raise UserError(f"signing key {key.fingerprint} is revoked", where=where)
        if key.validity == "e":
            raise UserError(f"signing key {key.fingerprint} has expired", where=where)
        if "S" not in key.capabilities:
            raise UserError(f"key {key.fingerprint} cannot sign (no usable signing subkey)", where=where)
        return SignerKey(key.fingerprint, key.uid)

    def sign(self, path: Path) -> Path:
        """Write ``<path>.asc``, a detached armored signature of the regular file ``path``."""
        assert self.key is not None, "use Signer as a context manager"
        info = os.lstat(path)
        if not stat.S_ISREG(info.st_mode):
            raise UserError("is not a regular file: refusing to sign it", where=str(path))
        target = path.with_name(path.name + SIGNATURE_SUFFIX)
        partial = path.with_name(f".{path.name}{SIGNATURE_SUFFIX}.partial")
        args = ["--yes", "--armor", "--local-user", self.key.fingerprint, "--output", str(partial)]
        stdin = b""
        if self.source.passphrase is not None:
            args += ["--pinentry-mode", "loopback", "--passphrase-fd", "0"]
            stdin = self.source.passphrase.encode() + b"\n"
        elif self.source.key_file is not None:
            args += ["--pinentry-mode", "error"]  # no prompt for a key file: it needs the variable
        try:
            result = run_gpg(self.home, [*args, "--detach-sign", str(path)], stdin=stdin)
            if result.code != 0 or not result.has("SIG_CREATED"):
                raise self._failure(result)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        return target

    def _failure(self, result: GpgResult) -> UserError:
        assert self.key is not None
        where = f"signing key {self.key.fingerprint}"
        for args in result.args("INV_SGNR"):
            reason = _INVALID_SIGNER.get(args[0] if args else "", "unusable")
            return UserError(f"gpg refused the key: {reason}", where=where)
        codes = {int(a[1]) & 0xFFFF for a in result.args("FAILURE") if len(a) > 1 and a[1].isdigit()}
        if result.has("BAD_PASSPHRASE") or _BAD_PASSPHRASE in codes:
            return UserError("wrong passphrase", where=where, hint=f"check {PASSPHRASE_ENV}")
        if codes & _NO_PASSPHRASE or result.has("MISSING_PASSPHRASE"):
            return UserError("the key is protected by a passphrase", where=where, hint=f"set {PASSPHRASE_ENV}")
        return UserError(f"gpg could not sign (exit {result.code})", where=where)


@dataclass(frozen=True)
class _SecretKey:
    fingerprint: str
    validity: str
    capabilities: str
    uid: str


def _colon_lines(result: GpgResult) -> list[str]:
    return result.lines


def _secret_keys(lines: list[str]) -> list[_SecretKey]:
    keys: list[_SecretKey] = []
    current: list[str] | None = None
    fingerprint = ""
    for line in lines:
        fields = line.split(":")
        if fields[0] == "sec":
            current, fingerprint = fields, ""
        elif fields[0] == "fpr" and current is not None and not fingerprint:
            fingerprint = fields[9]
            keys.append(_SecretKey(fingerprint, current[1], current[11] if len(current) > 11 else "", ""))
        elif fields[0] == "uid" and keys and current is not None and not keys[-1].uid:
            keys[-1] = _SecretKey(keys[-1].fingerprint, keys[-1].validity, keys[-1].capabilities, fields[9])
    return keys


@dataclass(frozen=True)
class SignedRelease:
    """What signing a release wrote: each job's signatures, the index and its signature."""

    jobs: dict[str, list[Path]]
    skipped: list[tuple[str, str]]
    index: Path
    index_signature: Path
    key: str


def jobs_to_sign(release_dir: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """The job folders of ``release_dir`` that built, and the others as (id, status); a folder
    with no such job is a UserError (checked before any key is touched)."""
    from . import manifest

    if not release_dir.is_dir():
        raise UserError("is not a folder", where=str(release_dir))
    jobs, skipped = manifest.signable_jobs(release_dir)
    if not jobs:
        raise UserError("holds no successful job to sign", where=str(release_dir), hint="run `cipbuild build` first")
    return jobs, skipped


def sign_job(signer: Signer, job_dir: Path, compress: str = "none") -> list[Path]:
    """Write a built job's trust files (manifest, SBOM, provenance, SHA256SUMS) and sign them;
    with ``compress`` (zstd, xz), its disk images are compressed first."""
    from . import manifest
    from .compress import compress_job

    compress_job(job_dir, compress)
    manifest.write_job_trust(job_dir)
    return [signer.sign(job_dir / name) for name in manifest.SIGNED]


def sign_index(
    signer: Signer, release_dir: Path, signed: dict[str, list[Path]], skipped: list[tuple[str, str]]
) -> SignedRelease:
    """Write and sign the index.json of the jobs ``signed`` holds (id -> their signatures)."""
    from . import manifest

    assert signer.key is not None, "use Signer as a context manager"
    index = manifest.write_index(release_dir, [release_dir / job for job in sorted(signed)])
    return SignedRelease(dict(sorted(signed.items())), skipped, index, signer.sign(index), signer.key.fingerprint)


def sign_release(signer: Signer, release_dir: Path, compress: str = "none") -> SignedRelease:
    """Sign every job of ``release_dir`` that built, then its index.json."""
    jobs, skipped = jobs_to_sign(release_dir)
    signed = {job_dir.name: sign_job(signer, job_dir, compress) for job_dir in jobs}
    return sign_index(signer, release_dir, signed, skipped)

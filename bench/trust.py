"""Benchmark signing and verifying: `cipbuild sign` and `cipbuild verify` on a job folder with a
2 GiB random image-like file plus small artifacts, next to `sha256sum -c SHA256SUMS` + `gpg
--verify` of the same folder, measured in the same run. Sign is also timed with a 64 MiB image to
show it does not depend on the image's size.

Run: python3 bench/trust.py [--size-mib 2048] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from build import timed  # bench/build.py: time one command, stop on its failure
from test_signing import make_job

CIPBUILD = [sys.executable, "-m", "orchestrator"]
JOB = "isar-bookworm-qemu-amd64"


def random_file(path: Path, size: int) -> None:
    chunk = 64 << 20
    with path.open("wb") as f:
        left = size
        while left:
            f.write(os.urandom(min(chunk, left)))
            left -= min(chunk, left)


def make_release(root: Path, image: Path, name: str) -> Path:
    out = root / name
    job = make_job(out, JOB, {"vmlinuz": os.urandom(8 << 20), "initrd.img": os.urandom(16 << 20)})
    os.link(image, job / "artifacts" / "image.wic")  # one copy of the big file on disk
    import hashlib
    import json

    meta = json.loads((job / "metadata.json").read_text())
    digest = hashlib.sha256()
    with image.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    meta["artifacts"].append(
        {"type": "wic", "path": "artifacts/image.wic", "size": image.stat().st_size, "sha256": digest.hexdigest()}
    )
    (job / "metadata.json").write_text(json.dumps(meta))
    return out


def gen_key(home: Path) -> tuple[Path, Path]:
    env = {"PATH": os.environ["PATH"], "GNUPGHOME": str(home)}
    gpg = ["gpg", "--batch", "--no-tty"]
    subprocess.run(
        [*gpg, "--passphrase", "", "--quick-gen-key", "bench <b@x>", "ed25519", "sign", "0"],
        env=env,
        check=True,
        capture_output=True,
    )
    secret = home.parent / "key.sec.asc"
    public = home.parent / "key.asc"
    exp = ["--pinentry-mode", "loopback", "--passphrase", ""]
    secret.write_bytes(
        subprocess.run([*gpg, *exp, "--armor", "--export-secret-keys"], env=env, check=True, capture_output=True).stdout
    )
    public.write_bytes(subprocess.run([*gpg, "--armor", "--export"], env=env, check=True, capture_output=True).stdout)
    return secret, public


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=2048)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cbb-"))
    try:
        home = tmp / "g"
        home.mkdir(mode=0o700)
        secret, public = gen_key(home)
        big, small = tmp / "big.img", tmp / "small.img"
        random_file(big, args.size_mib << 20)
        random_file(small, 64 << 20)
        env = {**os.environ, "CIPBUILD_SIGNING_KEY": str(secret)}
        env.pop("CIPBUILD_SIGNING_PASSPHRASE", None)
        sign_big, sign_small, ours, theirs = [], [], [], []
        consumer = tmp / "c"
        consumer.mkdir(mode=0o700)
        cenv = {"PATH": os.environ["PATH"], "GNUPGHOME": str(consumer)}
        subprocess.run(["gpg", "--batch", "--import", str(public)], env=cenv, check=True, capture_output=True)
        for i in range(args.runs):
            rel_small = make_release(tmp, small, f"s{i}")
            rel_big = make_release(tmp, big, f"b{i}")
            sign_small.append(timed([*CIPBUILD, "sign", str(rel_small)], env))
            sign_big.append(timed([*CIPBUILD, "sign", str(rel_big)], env))
            job = rel_big / JOB
            timed(
                ["dd", f"if={job / 'artifacts' / 'image.wic'}", "of=/dev/null", "bs=1M"], env
            )  # same page-cache state for both
            ours.append(timed([*CIPBUILD, "verify", str(rel_big), "--keyring", str(public)], env))
            start = time.perf_counter()
            timed(["sha256sum", "--strict", "-c", "SHA256SUMS"], cenv, cwd=job)
            for name in ("SHA256SUMS", "manifest.json", "provenance.intoto.json"):
                timed(["gpg", "--batch", "--verify", f"{name}.asc", name], cenv, cwd=job)
            timed(["gpg", "--batch", "--verify", "index.json.asc", "index.json"], cenv, cwd=rel_big)
            theirs.append(time.perf_counter() - start)
            shutil.rmtree(rel_small)
            shutil.rmtree(rel_big)
        subprocess.run(["gpgconf", "--kill", "all"], env=cenv, check=False)
        subprocess.run(["gpgconf", "--kill", "all"], env={**cenv, "GNUPGHOME": str(home)}, check=False)
        med = statistics.median
        total = args.size_mib + 64 + 24
        print(
            f"job folder: {args.size_mib} MiB random image + 24 MiB kernel/initrd + dpkg status; median of {args.runs}"
        )
        print(f"  cipbuild sign, {args.size_mib} MiB image   {med(sign_big) * 1000:7.0f} ms  (goal < 1000 ms)")
        print(f"  cipbuild sign, 64 MiB image     {med(sign_small) * 1000:7.0f} ms  (size-independence)")
        print(f"  sha256sum -c + 4x gpg --verify  {med(theirs) * 1000:7.0f} ms  x1.00")
        print(
            f"  cipbuild verify (release)       {med(ours) * 1000:7.0f} ms  x{med(ours) / med(theirs):.2f}  "
            f"(goal <= 0.50; {total - 64} MiB at {(total - 64) / med(ours):.0f} MiB/s)"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

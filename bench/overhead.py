"""cipbuild's fixed cost per job, by phase, against the job's own reproducer.sh run bare (the same
container, the same kas file, no cipbuild), alternating the two in one run; and the disk a finished
job leaves under --out with and without --keep-build.

Run: DOCKER_HOST=... python3 bench/overhead.py [--runs 5]
     (the fixture layer: fake bitbake, as the tests use)
     DOCKER_HOST=... python3 bench/overhead.py --isar /path/to/isar [--image cipbuild-builder:isar]
     (the real isar-image-base of the catalogue guide's example: warm builds from a shared cache, minutes each)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from kasfixture import make_test_catalog, make_upstreams

from orchestrator.starter import ISAR_COMMIT, write_starter

JOB = "isar-bookworm-qemu-amd64"


def timed(argv: list[str], cwd: Path | None = None) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, check=False)
    took = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:8])}... failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return took


def du(path: Path) -> int:
    return int(
        subprocess.run(["du", "-s", "-B1", str(path)], capture_output=True, text=True, check=True).stdout.split()[0]
    )


def gib(count: float) -> str:
    return f"{count / 2**30:.2f} GiB" if count >= 2**28 else f"{count / 2**20:.1f} MiB"


class Setup:
    def __init__(self, tmp: Path, args: argparse.Namespace):
        self.tmp, self.image = tmp, args.image
        self.cache = Path(args.cache) if args.cache else tmp / "cache"
        if args.isar:
            commit = subprocess.run(
                ["git", "-C", args.isar, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
            ).stdout.strip()
            self.catalog = tmp / "catalog"  # the catalogue guide's example
            write_starter(self.catalog)
            repos = self.catalog / "kas" / "repos.yml"
            repos.write_text(repos.read_text().replace(ISAR_COMMIT, commit))
            self.mirror = tmp / "mirror"
            subprocess.run(["git", "clone", "-q", "--mirror", args.isar, str(self.mirror / "isar")], check=True)
        else:
            upstreams = make_upstreams(tmp / "upstreams")
            self.catalog, self.mirror = make_test_catalog(tmp / "catalog", upstreams), upstreams.root

    def build(self, out: Path, *extra: str) -> list[str]:
        return [
            sys.executable, "-m", "orchestrator", "--catalog", str(self.catalog), "build", *extra,
            "--image", self.image, "--out", str(out), "--cache", str(self.cache), "--mirror", str(self.mirror),
        ]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--isar", metavar="CHECKOUT", help="a local isar checkout: measure the real build")
    parser.add_argument("--image", default=None, help="builder image (default: minimal, or isar with --isar)")
    parser.add_argument("--cache", help="a warm cache to reuse (real isar)")
    args = parser.parse_args()
    args.image = args.image or ("cipbuild-builder:isar" if args.isar else "cipbuild-builder:minimal")
    tmp = Path(tempfile.mkdtemp(prefix="cipbuild-bench-", dir=os.environ.get("BENCH_TMP")))
    os.chmod(tmp, 0o755)  # the builder user (not root) works in it
    try:
        setup = Setup(tmp, args)
        out = tmp / "out"
        timed(setup.build(out, JOB))  # warm the caches and write reproducer.sh
        ours: list[float] = []
        bare: list[float] = []
        phases: list[dict[str, Any]] = []
        left = 0
        for _ in range(args.runs):
            ours.append(timed(setup.build(out, JOB, "--force")))
            left = du(out / JOB)  # what a finished job leaves under --out
            meta = json.loads((out / JOB / "metadata.json").read_text())
            phases.append({**meta["phases_s"], "wall": ours[-1]})
            bare.append(timed(["sh", str(out / JOB / "reproducer.sh")], cwd=out / JOB))
            # back to what cipbuild leaves, so that the next --force does not remove the bare run's build/tmp
            shutil.rmtree(out / JOB / "build" / "tmp", ignore_errors=True)
        o, b = statistics.median(ours), statistics.median(bare)

        def median(key: str) -> float:
            return float(statistics.median(float(p[key]) for p in phases))

        inside = median("container")
        before = median("before_container")
        after = median("collect") + median("tidy")
        cli = median("wall") - before - inside - after
        print(f"one job ({'real isar' if args.isar else 'fixture layer'}), median of {args.runs}, alternating:")
        print(f"  cipbuild build --force    {o:7.2f} s")
        print(f"  reproducer.sh bare        {b:7.2f} s")
        print(f"  fixed cost                {o - b:7.2f} s per job (goal < 1 s), ratio x{o / b:.2f}")
        print(f"    process start, catalogue, input digest   {cli:6.2f} s")
        print(f"    before the container (folder, files)     {before:6.2f} s")
        print(f"    the container (bitbake inside)           {inside:6.2f} s   (bare run: {b:.2f} s)")
        print(f"    after it: collect {median('collect'):.2f} s, tidy {median('tidy'):.2f} s")

        kept_out = tmp / "kept"
        timed(setup.build(kept_out, JOB, "--keep-build"))
        print("disk left under --out per finished job:")
        print(f"  --keep-build   {gib(du(kept_out / JOB))}")
        print(f"  default        {gib(left)}")
        if not args.isar:
            eight, eight_kept = tmp / "eight", tmp / "eight-kept"
            timed(setup.build(eight, "-r", "eight", "-j", "2"))
            timed(setup.build(eight_kept, "-r", "eight", "-j", "2", "--keep-build"))
            jobs = len([p for p in eight.iterdir() if (p / "metadata.json").exists()])
            print(f"  fixture matrix ({jobs} jobs): {gib(du(eight_kept) / jobs)} kept, {gib(du(eight) / jobs)} default")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

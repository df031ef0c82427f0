"""Benchmark builds on the fixture matrix (fake bitbake): orchestrator overhead per job next to a
bare `kas build` of the same config, an unchanged rerun of 8 jobs, and --jobs 2 against --jobs 1.

Run: DOCKER_HOST=... python3 bench/build.py [--runtime docker] [--image cipbuild-builder:minimal]
Needs the builder image (`cipbuild image build --profile minimal`).
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

from kasfixture import make_test_catalog, make_upstreams


def timed(argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd, check=False)
    took = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:6])}... failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runtime", default="docker")
    parser.add_argument("--image", default="cipbuild-builder:minimal")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cipbuild-bench-"))
    try:
        upstreams = make_upstreams(tmp / "upstreams")
        catalog = make_test_catalog(tmp / "catalog", upstreams)

        def cipbuild(out: Path, *extra: str) -> list[str]:
            return [
                sys.executable,
                "-m",
                "orchestrator",
                "--catalog",
                str(catalog),
                "build",
                *extra,
                "--runtime",
                args.runtime,
                "--image",
                args.image,
                "--out",
                str(out),
                "--cache",
                str(tmp / "cache"),
                "--mirror",
                str(upstreams.root),
            ]

        job = "isar-bookworm-qemu-amd64"
        ours, bare = [], []
        for run in range(args.runs):
            out = tmp / f"one-{run}"
            ours.append(timed(cipbuild(out, job, "--force")))
            # the peer: kas alone on the same kas file and repos, on this host
            kas_dir = tmp / f"bare-{run}"
            kas_dir.mkdir()
            shutil.copy(out / job / "job.yml", kas_dir / "job.yml")
            env = {
                **os.environ,
                "KAS_WORK_DIR": str(kas_dir),
                "KAS_BUILD_DIR": str(kas_dir / "build"),
                "KAS_PREMIRRORS": f"^https?://.*/([^/]+?)(?:\\.git)?$ file://{upstreams.root}/\\1",
            }
            bare.append(timed(["kas", "build", "job.yml"], env=env, cwd=kas_dir))
        o, b = statistics.median(ours), statistics.median(bare)
        print(f"one job, median of {args.runs} ({args.runtime}):")
        print(f"  cipbuild build          {o:6.2f} s")
        print(f"  bare kas build (host)   {b:6.2f} s")
        print(f"  orchestrator overhead   {o - b:6.2f} s per job (goal < 5 s), ratio x{o / b:.2f}")

        out8 = tmp / "eight"
        first = timed(cipbuild(out8, "-r", "eight", "-j", "2"))
        rerun = timed(cipbuild(out8, "-r", "eight", "-j", "2"))
        print(f"8-job matrix: first build {first:.2f} s, unchanged rerun {rerun:.2f} s (goal < 2 s, zero builds)")

        j1 = timed(cipbuild(tmp / "j1", "-r", "eight", "-j", "1"))
        j2 = timed(cipbuild(tmp / "j2", "-r", "eight", "-j", "2"))
        print(f"8 jobs: --jobs 1 {j1:.2f} s, --jobs 2 {j2:.2f} s, speed-up x{j1 / j2:.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

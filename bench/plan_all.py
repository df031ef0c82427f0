"""Benchmark: `cipbuild plan --all` on the shipped catalogue and on synthetic ones with more isar
options (bench/synth.py): wall time and peak memory of each command, next to `kas --version`.

Run: python3 bench/plan_all.py [--runs N] [--options 20 25 30] [--tree DIR]
Each command runs as its own process (`python3 -m orchestrator`, with DIR on PYTHONPATH: by
default this checkout) with stdout to /dev/null; its peak RSS is ru_maxrss of RUSAGE_CHILDREN in
a small parent that runs only it. A run over --timeout seconds or --memory GiB of address space
is stopped and reported as such, and the command is not repeated. "per job" is the median time
divided by the plan's jobs (all of them are printed by --json; --explain prints 200 and counts).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from synth import SHIPPED_ISAR_OPTIONS, make_catalogue

HERE = Path(__file__).resolve().parent
COMMANDS = {"plan --all --json": ["plan", "--all", "--json"], "plan --all --explain": ["plan", "--all", "--explain"]}


@dataclass
class Run:
    seconds: float
    peak_mib: float
    outcome: str  # "ok", "stopped after N s", "failed (exit N)"


# A child's ru_maxrss starts from the RSS of the process that spawned it, so each command is
# started by this small process rather than by the benchmark itself.
TIMED = """
import resource, subprocess, sys, time
timeout, limit = float(sys.argv[1]), int(sys.argv[2])
start = time.perf_counter()
proc = subprocess.Popen(sys.argv[3:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
resource.prlimit(proc.pid, resource.RLIMIT_AS, (limit, limit))
try:
    code = proc.wait(timeout)
    outcome = "ok" if code == 0 else f"failed-(exit-{code})"
except subprocess.TimeoutExpired:
    proc.kill()
    proc.wait()
    outcome = f"stopped-after-{timeout:.0f}-s"
print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, outcome)
"""


def run_once(argv: list[str], tree: Path, env: dict[str, str], timeout: float, memory_gib: float) -> Run:
    limit = str(int(memory_gib * 2**30))
    timed = [sys.executable, "-c", TIMED, str(timeout), limit, *argv]
    out = subprocess.run(timed, cwd=tree, env=env, capture_output=True, text=True, check=True)
    seconds, peak_kib, outcome = out.stdout.split()
    return Run(float(seconds), int(peak_kib) / 1024, outcome.replace("-", " "))


def measure(argv: list[str], env: dict[str, str], args: argparse.Namespace) -> list[Run]:
    runs = [run_once(argv, args.tree, env, args.timeout, args.memory)]
    while runs[-1].outcome == "ok" and len(runs) < args.runs:
        runs.append(run_once(argv, args.tree, env, args.timeout, args.memory))
    return runs


def plan_size(cipbuild: list[str], catalogue: Path | None, env: dict[str, str]) -> tuple[int, int]:
    """(jobs, candidates) of `plan --all`, as this checkout counts them (from its caption)."""
    flags = ["--catalog", str(catalogue)] if catalogue else []
    own = {**env, "PYTHONPATH": str(HERE.parent)}
    argv = [*cipbuild, *flags, "plan", "--all"]
    out = subprocess.run(argv, cwd=HERE.parent, env=own, capture_output=True, text=True, check=True)
    found = re.search(r"(\d+) jobs? from the whole catalogue; \d+ of (\d+) candidates", out.stdout)
    if not found:
        raise SystemExit(f"no plan caption in: {out.stdout[-300:]}")
    return int(found[1]), int(found[2])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--options", type=int, nargs="*", default=[20, 25, 30], help="isar options of each synthetic catalogue"
    )
    parser.add_argument("--tree", type=Path, default=HERE.parent, help="checkout whose orchestrator to run")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--memory", type=float, default=8.0, help="address-space limit per run, GiB")
    args = parser.parse_args()

    kas = shutil.which("kas")
    if not kas:
        print("kas not on PATH: install the project first (pip install -e .)", file=sys.stderr)
        return 1
    args.tree = args.tree.resolve()  # `python3 -m` puts the working folder first: run from the tree
    env = {**os.environ, "PYTHONPATH": str(args.tree)}
    cipbuild = [sys.executable, "-m", "orchestrator"]
    subprocess.run([kas, "--version"], capture_output=True, check=True)
    peer = statistics.median(r.seconds for r in measure([kas, "--version"], dict(os.environ), args))
    print(f"tree {args.tree}; peer: kas --version, median of {args.runs}: {peer * 1000:.0f} ms")
    print(
        f"{'catalogue':12s} {'jobs':>7s} {'candidates':>14s}  {'command':20s} {'median':>8s} {'x kas':>7s} "
        f"{'peak RSS':>9s} {'per job':>8s}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        catalogues: list[tuple[str, Path | None]] = [(f"shipped {SHIPPED_ISAR_OPTIONS}", None)]
        for n in args.options:
            catalogues.append((f"isar {n}", make_catalogue(Path(tmp) / f"isar{n}", n)))
        for label, catalogue in catalogues:
            flags = ["--catalog", str(catalogue)] if catalogue else []
            warm = [*cipbuild, *flags, "plan", "-r", "release"]
            subprocess.run(warm, cwd=args.tree, env=env, capture_output=True, check=True)
            jobs, candidates = plan_size(cipbuild, catalogue, env)
            for name, verb in COMMANDS.items():
                runs = measure([*cipbuild, *flags, *verb], env, args)
                ok = [r for r in runs if r.outcome == "ok"]
                if not ok:
                    peak = max(r.peak_mib for r in runs)
                    print(
                        f"{label:12s} {jobs:7d} {candidates:14d}  {name:20s} {runs[0].outcome} "
                        f"(peak RSS {peak:.0f} MiB at {runs[0].seconds:.0f} s)"
                    )
                    continue
                med = statistics.median(r.seconds for r in ok)
                peak = max(r.peak_mib for r in ok)
                print(
                    f"{label:12s} {jobs:7d} {candidates:14d}  {name:20s} {med:7.2f}s {med / peer:6.1f}x "
                    f"{peak:6.0f} MiB {med / jobs * 1e6:6.0f} us"
                )
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())

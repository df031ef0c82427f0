"""Benchmark: full-catalogue expansion time, and CLI start-up next to `kas --version`.

Run: python3 bench/plan.py [--runs N]
Prints medians; ratios compare cipbuild with kas measured in the same run.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

from orchestrator.catalog import default_catalog_dir, load_catalog
from orchestrator.matrix import Expander


def timed(fn: Callable[[], object], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def command(argv: list[str]) -> Callable[[], object]:
    def run() -> object:
        return subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)

    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()

    catalog = load_catalog(default_catalog_dir(), cache=False)
    plan = Expander(catalog).expand_all()
    # the Job records are made as they are read: make them all, as the expansion once did
    expand = timed(lambda: Expander(catalog).expand_all().jobs, args.runs)
    print(
        f"full-catalogue expansion: {plan.candidates} candidates -> {plan.job_count()} jobs, "
        f"{plan.excluded_count()} excluded"
    )
    print(f"  median {statistics.median(expand) * 1000:.0f} ms, best {min(expand) * 1000:.0f} ms (goal < 500 ms)")

    cipbuild = shutil.which("cipbuild")
    kas = shutil.which("kas")
    if not (cipbuild and kas):
        print("cipbuild or kas not on PATH: install the project first (pip install -e .)", file=sys.stderr)
        return 1
    command([cipbuild, "plan", "-r", "release"])()  # warm the catalogue cache and page cache
    command([kas, "--version"])()
    rows = {
        "kas --version": timed(command([kas, "--version"]), args.runs),
        "cipbuild --help": timed(command([cipbuild, "--help"]), args.runs),
        "cipbuild plan -r release": timed(command([cipbuild, "plan", "-r", "release"]), args.runs),
    }
    base = statistics.median(rows["kas --version"])
    print(f"start-up, median of {args.runs} runs (ratio to kas --version; goal <= 1.00):")
    for name, values in rows.items():
        med = statistics.median(values)
        print(f"  {name:28s} {med * 1000:6.0f} ms  x{med / base:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

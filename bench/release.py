"""Benchmark CI at scale (issue 11): `cipbuild release` of the fixture matrix (fake bitbake,
native runtime, a folder store), first run and the rerun with nothing changed (goal: zero builds,
zero bytes published, under 10 s end to end), and `cipbuild ci gitlab --all` for the whole
catalogue (goal: under 2 s), next to `cipbuild plan --all --json` of the same catalogue, the
least any generator must do.

Run: python3 bench/release.py [--runs 3]   (kas and gpg on the host; no container engine needed)
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from kasfixture import make_test_catalog, make_upstreams


def timed(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    took = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:8])}... failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return took, proc.stdout


def signing_key(folder: Path) -> Path:
    home = folder / "gnupg"
    home.mkdir(mode=0o700)
    env = {**os.environ, "GNUPGHOME": str(home)}
    uid = "cipbuild bench <bench@example.invalid>"
    gpg = ["gpg", "--batch", "--quiet", "--passphrase", ""]
    subprocess.run([*gpg, "--quick-gen-key", uid, "ed25519", "sign", "1d"], env=env, check=True)
    key = folder / "secret.asc"
    key.write_bytes(subprocess.run([*gpg, "--armor", "--export-secret-keys"], env=env, check=True,
                                   capture_output=True).stdout)  # fmt: skip
    return key


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--recipe", default="eight")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cipbuild-bench-release-"))
    try:
        upstreams = make_upstreams(tmp / "upstreams")
        catalog = make_test_catalog(tmp / "catalog", upstreams)
        env = {**os.environ, "CIPBUILD_SIGNING_KEY": str(signing_key(tmp))}
        release = [
            sys.executable, "-m", "orchestrator", "--catalog", str(catalog), "release", "-r", args.recipe,
            "--runtime", "native", "--out", str(tmp / "out"), "--cache", str(tmp / "cache"),
            "--mirror", str(upstreams.root), "--to", str(tmp / "store"), "--ref", "bench", "--json",
        ]  # fmt: skip
        first, out = timed(release, env)
        jobs = len(json.loads(out)["jobs"])
        print(f"release -r {args.recipe} ({jobs} jobs), first run: {first:.2f} s")
        reruns = []
        for _ in range(args.runs):
            took, out = timed(release, env)
            data = json.loads(out)
            built = sum(job["build"].split(":")[0] != "published" for job in data["jobs"])
            reruns.append(took)
            print(f"  rerun, nothing changed: {took:.2f} s, {built} built, {data['sent_bytes']} bytes sent, "
                  f"index {data['index']}")  # fmt: skip
        print(f"rerun median {statistics.median(reruns):.2f} s (goal < 10 s)")

        generate = [sys.executable, "-m", "orchestrator", "ci", "gitlab", "--all", "--no-pin", "--ref", "bench",
                    "--out", str(tmp / "ci"), "--json"]  # fmt: skip
        plan = [sys.executable, "-m", "orchestrator", "plan", "--all", "--json"]
        gen_times, plan_times = [], []
        for _ in range(args.runs):
            took, out = timed(generate)
            gen_times.append(took)
            took_plan, _ = timed(plan)
            plan_times.append(took_plan)
        data = json.loads(out)
        gen, base = statistics.median(gen_times), statistics.median(plan_times)
        files = len(data["files"])
        print(f"ci gitlab --all: {data['builds']} builds + {data['tests']} tests in {files} files, median {gen:.2f} s")
        print(f"  (goal < 2 s); plan --all --json median {base:.2f} s; ratio {gen / base:.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

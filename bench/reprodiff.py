"""Benchmark the reproducibility check's comparison (orchestrator.reprodiff): compare_files on
two identical 1 GiB files next to `cmp` of the same files, interleaved in the same run (dense
random files, then sparse ones: 10% data in 1 MiB extents, and nearly all hole); then the
differing case, a ~64 MiB ext4 root file system image made twice with one file's content and
another's mtime changed, explained down to those files, next to the usual way without root
(`debugfs -R "rdump / dir"` of both images, then `diff -r`, which sees content only).

Run: python3 bench/reprodiff.py [--size-mib 1024] [--rounds 3] [--tmp DIR]
"""

from __future__ import annotations

import argparse
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
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from orchestrator.reprodiff import compare_files  # noqa: E402  (after the path set-up, as the other benches)

MIB = 1 << 20


def dense(path: Path, size: int) -> None:
    with path.open("wb") as f:
        for _ in range(size // MIB):
            f.write(os.urandom(MIB))


def sparse(path: Path, size: int, share: float, seed: int = 3) -> None:
    """``size`` bytes of which ``share`` are random 1 MiB extents, the rest holes."""
    rng = random.Random(seed)
    with path.open("wb") as f:
        f.truncate(size)
        for block in range(size // MIB):
            if rng.random() < share:
                f.seek(block * MIB)
                f.write(rng.randbytes(MIB))


def clone(source: Path, dest: Path) -> None:
    """A copy that keeps the holes (cp --sparse=always), and a real copy of the data."""
    subprocess.run(["cp", "--sparse=always", "--reflink=never", str(source), str(dest)], check=True)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def cmp(a: Path, b: Path) -> None:
    subprocess.run(["cmp", str(a), str(b)], check=True)


def ours(a: Path, b: Path) -> None:
    result = compare_files(a, b, a.name)
    if not result.identical:
        raise SystemExit(f"compare_files says {a} and {b} differ: {result.note}")


def race(label: str, a: Path, b: Path, rounds: int) -> None:
    for path in (a, b):  # into the page cache, as a just-finished build leaves its artifacts
        cmp(path, path)
    mine, theirs = [], []
    for _ in range(rounds):
        mine.append(timed(lambda: ours(a, b)))
        theirs.append(timed(lambda: cmp(a, b)))
    m, t = statistics.median(mine), statistics.median(theirs)
    used = os.stat(a).st_blocks * 512 / MIB
    print(
        f"  {label:<34} ({used:5.0f} MiB of data)  compare_files {m:6.3f} s   cmp {t:6.3f} s   cmp/ours x{t / m:5.2f}"
    )


def rootfs(root: Path, seed: int, total: int) -> Path:
    """A tree like a small root file system: ~2,000 files in ~100 folders, sizes spread from
    bytes to a MiB, ``total`` bytes in all; pinned times."""
    from test_reprodiff import tree

    rng = random.Random(seed)
    files: dict[str, bytes] = {}
    used = 0
    i = 0
    while used < total:
        size = min(int(rng.lognormvariate(8.5, 2.0)), MIB)
        files[f"usr/lib/d{i % 97:02d}/f{i:05d}"] = rng.randbytes(size)
        used += size
        i += 1
    files["etc/hostname"] = b"cip-one\n"
    files["etc/motd"] = b"welcome\n"
    return tree(root, files)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024, help="size of each identical file (default 1024)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each measurement, interleaved (default 3)")
    parser.add_argument("--tmp", type=Path, default=None, help="where the scratch folder goes (default: $TMPDIR)")
    args = parser.parse_args()

    from test_reprodiff import T, make_ext

    print(f"load average (1/5/15 min) at start: {'/'.join(f'{x:.2f}' for x in os.getloadavg())}; {os.cpu_count()} CPUs")
    tmp = Path(tempfile.mkdtemp(prefix="cbr-", dir=args.tmp))
    try:
        size = args.size_mib * MIB
        print(f"identical files, {args.size_mib} MiB each, median of {args.rounds}, page cache warm:")
        a, b = tmp / "a", tmp / "b"
        dense(a, size)
        clone(a, b)
        race("dense random", a, b, args.rounds)
        for share, label in ((0.10, "sparse, 10% data"), (0.0, "sparse, all hole")):
            a.unlink()
            b.unlink()
            sparse(a, size, share)
            clone(a, b)
            race(label, a, b, args.rounds)
        a.unlink()
        b.unlink()

        print("differing ext4 images (64 MiB, one file's content and another's mtime changed):")
        first = rootfs(tmp / "r1", 1, 40 * MIB)
        second = rootfs(tmp / "r2", 1, 40 * MIB)
        (second / "etc/hostname").write_bytes(b"cip-two\n")
        os.utime(second / "etc/hostname", (T, T))
        os.utime(second / "etc/motd", (T, T + 100))
        img_a = make_ext(first, tmp / "a.ext4", size="64M")
        img_b = make_ext(second, tmp / "b.ext4", size="64M")
        files = sum(1 for _ in first.rglob("*"))
        mine, theirs = [], []
        for _ in range(args.rounds):
            start = time.perf_counter()
            result = compare_files(img_a, img_b, "rootfs.ext4")
            mine.append(time.perf_counter() - start)
            found = [(d.path, d.kinds) for d in result.differences]
            if found != [("/etc/hostname", ("content",)), ("/etc/motd", ("mtime",))]:
                raise SystemExit(f"unexpected differences: {found} {result.note}")
            if shutil.which("debugfs"):
                peer = tmp / "peer"

                def rdump_diff(where: Path = peer) -> None:
                    for name, img in (("a", img_a), ("b", img_b)):
                        (where / name).mkdir(parents=True)
                        subprocess.run(
                            ["debugfs", "-R", f"rdump / {where / name}", str(img)], capture_output=True, check=True
                        )
                    subprocess.run(
                        ["diff", "-r", "-q", str(where / "a"), str(where / "b")], capture_output=True, check=False
                    )

                theirs.append(timed(rdump_diff))
                shutil.rmtree(peer)
        m = statistics.median(mine)
        line = f"  {files} files: compare_files {m:6.3f} s (names /etc/hostname content, /etc/motd mtime)"
        if theirs:
            t = statistics.median(theirs)
            line += f"; debugfs rdump x2 + diff -r {t:6.3f} s (content only), ratio x{t / m:.2f}"
        print(line)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

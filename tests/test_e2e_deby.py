"""End-to-end with real deby: `cipbuild build` of the shipped catalogue's deby-buster-qemu-amd64
through kas and bitbake's parse, in its builder image, with deby, poky and meta-debian at their
pinned commits read from local git mirrors, twice (cold, then with bitbake's parse cache).

The catalogue is the shipped one plus tests/e2e/deby/parse.yml in the distro's base: bitbake
parses every recipe, resolves the providers of core-image-minimal's whole tree and runs only
do_listtasks, offline. kas and bitbake succeed; the job then fails on its missing image files,
which a parse does not make, and on nothing else.

Not in CI (a cold parse of deby's 1036 recipes takes minutes on two cores). Run it with
    CIPBUILD_E2E_DEBY=/folder/of/mirrors [CIPBUILD_E2E_DEBY_IMAGE=cipbuild-builder:deby] \\
    python3 -m pytest -s tests/test_e2e_deby.py
where the folder holds git mirrors named after each upstream URL's last component: deby, poky and
meta-debian. Without CIPBUILD_E2E_DEBY_IMAGE the build uses the image cipbuild picks for the
distro; `cipbuild image build --profile deby` makes it.

A mirror git cannot serve whole (a snapshot that lacks old large blobs of poky's history) is put
into the cache as kas's reference repository (KAS_REPO_REF_DIR, named as kas documents) by a local
copy, which needs only the objects the pinned commit uses; the test says which it seeded.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml
from buildworld import open_to_builder

MIRRORS = os.environ.get("CIPBUILD_E2E_DEBY")
IMAGE = os.environ.get("CIPBUILD_E2E_DEBY_IMAGE")
PARSE_FRAGMENT = Path(__file__).parent / "e2e" / "deby" / "parse.yml"
JOB = "deby-buster-qemu-amd64"
DEBY_KAS = "kas/board/kas.yml"  # where deby pins poky and meta-debian

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not MIRRORS, reason="set CIPBUILD_E2E_DEBY to a folder of deby, poky and meta-debian mirrors"),
]

KAS_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) - ")
PARSED = re.compile(
    r"Parsing of (\d+) \.bb files complete \((\d+) cached, (\d+) parsed\)\. "
    r"(\d+) targets, (\d+) skipped, (\d+) masked, (\d+) errors\."
)
PARSE_DONE = re.compile(r"Parsing recipes\.\.\.done|Loaded \d+ entries from dependency cache")


def git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout


def upstream_pins(catalog: Path, mirrors: Path) -> dict[str, tuple[str, str]]:
    """Mirror name -> (upstream URL, pinned commit): deby from cipbuild's kas/repos.yml, poky and
    meta-debian from deby's own kas file at that commit."""
    pins = yaml.safe_load((catalog / "kas" / "repos.yml").read_text())["repos"]["meta-cip-core"]
    deby_url, deby_commit = pins["url"], pins["commit"]
    inner = yaml.safe_load(git("--git-dir", str(mirrors / "deby"), "show", f"{deby_commit}:{DEBY_KAS}"))["repos"]
    out = {"deby": (deby_url, deby_commit)}
    for name in ("poky", "meta-debian"):
        out[name] = (inner[name]["url"], inner[name].get("commit") or inner[name]["refspec"])
    return out


def ref_name(url: str) -> str:
    """kas's name for a repository in KAS_REPO_REF_DIR (host and path, '/' and ':' as '.')."""
    parsed = urlparse(url)
    return f"{parsed.netloc}{parsed.path}".replace("@", ".").replace(":", ".").replace("/", ".").replace("*", ".")


def seed_incomplete(mirrors: Path, pins: dict[str, tuple[str, str]], ref_dir: Path) -> list[str]:
    """Copy each mirror git cannot serve whole into kas's reference folder; the names seeded."""
    seeded = []
    for name, (url, commit) in pins.items():
        mirror = mirrors / name
        assert git("--git-dir", str(mirror), "cat-file", "-t", commit).strip() == "commit", f"{name} lacks {commit}"
        whole = subprocess.run(
            ["git", "--git-dir", str(mirror), "fsck", "--connectivity-only", "--no-dangling"],
            capture_output=True,
            check=False,
        )
        if whole.returncode != 0:
            ref_dir.mkdir(parents=True, exist_ok=True)
            git("clone", "-q", "--bare", "--no-hardlinks", str(mirror), str(ref_dir / ref_name(url)))
            seeded.append(name)
    return seeded


def phases(log: str) -> tuple[float, float]:
    """Seconds of kas's checkout (its first run, `kas dump --lock`) and of bitbake's parse (from
    the build run's last checkout to the parse done or loaded from cache), by kas's timestamps."""
    stamped = [(datetime.fromisoformat(m.group(1)), line) for line in log.splitlines() if (m := KAS_TIME.match(line))]
    starts = [i for i, (_, line) in enumerate(stamped) if " started on " in line]
    assert len(starts) == 2, log[-5000:]  # kas dump --lock, kas build
    checkout_s = (stamped[starts[1] - 1][0] - stamped[starts[0]][0]).total_seconds()
    bitbake = max(i for i, (_, line) in enumerate(stamped) if "checked out to" in line)
    done = next(i for i, (_, line) in enumerate(stamped) if i > bitbake and PARSE_DONE.search(line))
    return checkout_s, (stamped[done][0] - stamped[bitbake][0]).total_seconds()


def test_real_deby_job_parses(catalog_copy: Path, tmp_path: Path) -> None:
    assert MIRRORS
    mirrors = Path(MIRRORS).resolve()
    open_to_builder(tmp_path)
    catalog, out, cache = catalog_copy, tmp_path / "out", tmp_path / "cache"
    shutil.copy(PARSE_FRAGMENT, catalog / "kas" / "deby" / "e2e-parse.yml")
    distro = catalog / "distros" / "deby.yml"
    text = distro.read_text()
    base = "\n  - kas/deby/base.yml\n"
    assert base in text
    distro.write_text(text.replace(base, base + "  - kas/deby/e2e-parse.yml\n"))
    pins = upstream_pins(catalog, mirrors)
    seeded = seed_incomplete(mirrors, pins, cache / "repo-ref")

    def build() -> tuple[float, dict[str, object], str]:
        start = time.monotonic()
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "orchestrator",
                "--catalog",
                str(catalog),
                "build",
                JOB,
                *(["--image", IMAGE] if IMAGE else []),
                "--out",
                str(out),
                "--cache",
                str(cache),
                "--mirror",
                str(mirrors),
                "--json",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        took = time.monotonic() - start
        log = (out / JOB / "build.log").read_text()
        assert proc.returncode == 3, proc.stderr[-3000:] + log[-5000:]  # a job failed: on its image files
        meta = json.loads((out / JOB / "metadata.json").read_text())
        assert meta["exit_code"] == 0, log[-5000:]  # kas, and bitbake in it, succeeded
        problems = str(meta["error"]).split("; ")
        assert problems and all(p.startswith("missing ") and " artifact " in p for p in problems), problems
        return took, meta, log

    cold_s, meta, log = build()
    (files, cached, parsed, targets, skipped, masked, errors) = map(int, PARSED.findall(log)[-1])
    assert errors == 0 and files > 1000 and (cached, parsed) == (0, files), log[-5000:]
    assert re.search(r"Running task 1 of 1 \(\S+/core-image-minimal\.bb:do_listtasks\)", log), log[-5000:]
    lock = yaml.safe_load((out / JOB / "kas.lock.yml").read_text())["overrides"]["repos"]
    assert {name: lock[name]["commit"] for name in ("poky", "meta-debian", "meta-cip-core")} == {
        "poky": pins["poky"][1],
        "meta-debian": pins["meta-debian"][1],
        "meta-cip-core": pins["deby"][1],
    }
    inputs = meta["inputs"]
    assert isinstance(inputs, dict)
    image = inputs["builder_image"]
    checkout_s, parse_s = phases(log)

    warm_s, _, warm_log = build()  # rebuilt (it failed) in the kept build folder: bitbake's parse cache
    assert f"Loaded {targets} entries from dependency cache" in warm_log, warm_log[-5000:]
    assert "do_listtasks)" in warm_log
    _, warm_parse_s = phases(warm_log)

    report = (
        f"real deby e2e: {JOB} in {image}; {files} recipes parsed ({targets} targets, {skipped} skipped, "
        f"{masked} masked, 0 errors), do_listtasks of core-image-minimal ran; cold {cold_s:.0f} s "
        f"(kas checkout {checkout_s:.0f} s, parse {parse_s:.0f} s), with the parse cache {warm_s:.0f} s "
        f"(parse {warm_parse_s:.0f} s); seeded as kas reference repositories: {', '.join(seeded) or 'none'}"
    )
    print(report)
    if os.environ.get("CIPBUILD_E2E_REPORT"):
        Path(os.environ["CIPBUILD_E2E_REPORT"]).write_text(report + "\n")

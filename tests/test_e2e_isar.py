"""End-to-end with real Isar: `cipbuild build` of plain Isar's isar-image-base for qemuamd64 /
debian-bookworm in a privileged container, cold, warm and unchanged.

Not in CI (about ten minutes, and it downloads Debian packages). Run it with
    CIPBUILD_E2E_ISAR=/path/to/isar/checkout [CIPBUILD_E2E_IMAGE=cipbuild-builder:isar] \\
    python3 -m pytest -s tests/test_e2e_isar.py
The builder image comes from `cipbuild image build --profile isar`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from buildworld import open_to_builder

ISAR = os.environ.get("CIPBUILD_E2E_ISAR")
IMAGE = os.environ.get("CIPBUILD_E2E_IMAGE", "cipbuild-builder:isar")
E2E_CATALOG = Path(__file__).parent / "e2e" / "catalog"
JOB = "isar-bookworm-qemu-amd64"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not ISAR, reason="set CIPBUILD_E2E_ISAR to a local isar checkout to run the real build"),
]


def test_real_isar_build_cold_warm_and_unchanged(tmp_path: Path) -> None:
    assert ISAR
    open_to_builder(tmp_path)
    commit = subprocess.run(
        ["git", "-C", ISAR, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    catalog = tmp_path / "catalog"
    shutil.copytree(E2E_CATALOG, catalog)
    repos = catalog / "kas" / "repos.yml"
    repos.write_text(repos.read_text().replace('"@isar@"', commit))
    mirror = tmp_path / "mirror"
    subprocess.run(["git", "clone", "-q", "--mirror", ISAR, str(mirror / "isar")], check=True)
    cache = tmp_path / "cache"

    def build(out: Path, *extra: str) -> tuple[float, dict[str, dict[str, object]]]:
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
                "--image",
                IMAGE,
                "--out",
                str(out),
                "--cache",
                str(cache),
                "--mirror",
                str(mirror),
                "--json",
                *extra,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        took = time.monotonic() - start
        assert proc.returncode == 0, proc.stderr[-3000:] + (out / JOB / "build.log").read_text()[-3000:]
        return took, {r["id"]: r for r in json.loads(proc.stdout)["results"]}

    cold, first = build(tmp_path / "out-cold")
    warm, second = build(tmp_path / "out-warm")  # a fresh build folder, the same downloads and sstate
    unchanged, third = build(tmp_path / "out-warm")  # nothing changed: cipbuild builds nothing
    bitbake_noop, fourth = build(tmp_path / "out-warm", "--force")  # bitbake finds nothing to do
    assert first[JOB]["status"] == second[JOB]["status"] == fourth[JOB]["status"] == "success"
    assert third[JOB]["status"] == "up-to-date"
    meta = json.loads((tmp_path / "out-warm" / JOB / "metadata.json").read_text())
    sizes = {a["type"]: a["size"] for a in meta["artifacts"]}
    assert set(sizes) == {"wic", "wic.bmap", "kernel", "initrd", "manifest", "dpkg_status"}
    assert sizes["wic"] > 100 * 2**20 and sizes["kernel"] > 2**20
    report = (
        f"real isar e2e: cold {cold:.0f} s, warm {warm:.0f} s, unchanged {unchanged:.1f} s, "
        f"forced with nothing to do {bitbake_noop:.0f} s; wic {sizes['wic'] / 2**20:.0f} MiB"
    )
    print(report)
    if os.environ.get("CIPBUILD_E2E_REPORT"):
        Path(os.environ["CIPBUILD_E2E_REPORT"]).write_text(report + "\n")

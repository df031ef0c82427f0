"""End-to-end with real Isar: `cipbuild build` of plain Isar's isar-image-base for qemuamd64 /
debian-bookworm in a privileged container, cold, warm, unchanged and forced (a fresh build folder
restored from sstate); `build --check-reproducible` of the warm build (a second, independent build
whose artifacts are compared down to the files inside the .wic); then `cipbuild sign` of the
warm build with a throwaway key, `cipbuild verify` against its public key, `sha256sum -c` and a
plain `gpg --verify` of SHA256SUMS, the SBOM's package count checked against the manifest's, and
the image booted under QEMU.

Not in CI (about twenty minutes, and it downloads Debian packages). Run it with
    CIPBUILD_E2E_ISAR=/path/to/isar/checkout [CIPBUILD_E2E_IMAGE=cipbuild-builder:isar] \\
    python3 -m pytest -s tests/test_e2e_isar.py
The builder image comes from `cipbuild image build --profile isar`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from buildworld import open_to_builder

from orchestrator.starter import ISAR_COMMIT, write_starter

ISAR = os.environ.get("CIPBUILD_E2E_ISAR")
IMAGE = os.environ.get("CIPBUILD_E2E_IMAGE", "cipbuild-builder:isar")
JOB = "isar-bookworm-qemu-amd64"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not ISAR, reason="set CIPBUILD_E2E_ISAR to a local isar checkout to run the real build"),
]


@contextmanager
def gnupg_home() -> Iterator[Path]:
    """A throwaway GNUPGHOME (short: gpg-agent's socket path must fit in 108 bytes)."""
    home = Path(tempfile.mkdtemp(prefix="e2e-gpg-"))
    home.chmod(0o700)
    try:
        yield home
    finally:
        subprocess.run(["gpgconf", "--kill", "all"], env={**os.environ, "GNUPGHOME": str(home)}, check=False)
        shutil.rmtree(home, ignore_errors=True)


def gpg(home: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["gpg", "--batch", "--no-tty", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={"PATH": os.environ["PATH"], "GNUPGHOME": str(home), "LC_ALL": "C"},
        check=False,
    )
    assert proc.returncode == 0, f"gpg {' '.join(args)}: {proc.stderr}"
    return proc


def make_key(folder: Path) -> tuple[str, Path, Path]:
    """A test signing key: (fingerprint, armored secret key file, armored public key file)."""
    uid = "e2e <e2e@cipbuild.test>"
    with gnupg_home() as home:
        gpg(home, "--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign", "1d")
        listing = gpg(home, "--with-colons", "--list-secret-keys", uid).stdout
        fpr = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
        secret, public = folder / "e2e.sec.asc", folder / "e2e.asc"
        secret.write_text(
            gpg(home, "--pinentry-mode", "loopback", "--passphrase", "", "--armor", "--export-secret-keys", fpr).stdout
        )
        public.write_text(gpg(home, "--armor", "--export", fpr).stdout)
    return fpr, secret, public


def sign_and_verify(out: Path, differing: list[str]) -> tuple[float, float, int]:
    """Sign the build folder ``out`` with a fresh key and verify its job every way a consumer
    would (its manifest records the reproducibility check that found ``differing``); (sign
    seconds, verify seconds, the SBOM's package count)."""
    job_dir = out / JOB
    keys = out.parent / "keys"
    keys.mkdir()
    fpr, secret, public = make_key(keys)
    cli = [sys.executable, "-m", "orchestrator"]

    start = time.monotonic()
    signed = subprocess.run(
        [*cli, "sign", str(out), "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, "CIPBUILD_SIGNING_KEY": str(secret)},
        check=False,
    )
    sign_s = time.monotonic() - start
    assert signed.returncode == 0, signed.stderr[-3000:]
    release = json.loads(signed.stdout)
    assert release["key"] == fpr
    assert [job["id"] for job in release["jobs"]] == [JOB]
    assert secret.read_text() not in signed.stdout + signed.stderr

    start = time.monotonic()
    verified = subprocess.run(
        [*cli, "verify", str(job_dir), "--keyring", str(public), "--json"], capture_output=True, text=True, check=False
    )
    verify_s = time.monotonic() - start
    assert verified.returncode == 0, verified.stdout[-3000:] + verified.stderr[-3000:]
    report = json.loads(verified.stdout)
    assert report["ok"] is True and report["problems"] == []
    assert report["signers"] == [fpr]

    sums = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=job_dir, capture_output=True, text=True, check=False)
    assert sums.returncode == 0, sums.stdout[-3000:] + sums.stderr[-3000:]
    with gnupg_home() as consumer:  # the public key only
        gpg(consumer, "--import", str(public))
        status = gpg(consumer, "--status-fd", "1", "--verify", "SHA256SUMS.asc", "SHA256SUMS", cwd=job_dir).stdout
        assert f"VALIDSIG {fpr}" in status, status

    manifest = json.loads((job_dir / "manifest.json").read_text())
    assert manifest["reproducibility"]["differing"] == differing
    assert manifest["reproducibility"]["identical"] is (not differing)
    assert "reproducibility.json" in (job_dir / "SHA256SUMS").read_text()
    sbom = json.loads((job_dir / manifest["files"]["sbom"]).read_text())
    assert sbom["bomFormat"] == "CycloneDX"
    debs = {
        f"{c['name']}@{c['version']}" for c in sbom.get("components", []) if c.get("purl", "").startswith("pkg:deb/")
    }
    listed = {f"{p['name']}@{p['version']}" for p in manifest["packages"]}
    assert len(debs) > 100
    assert len(debs) == len(manifest["packages"]) and debs == listed
    return sign_s, verify_s, len(debs)


def boot_check(catalog: Path, out: Path) -> tuple[float, float]:
    """`cipbuild boot --check` of the built wic under QEMU (software emulation here): the login
    prompt, root's login, `uname -a`; the seconds to the login prompt and in all."""
    argv = [sys.executable, "-m", "orchestrator", "--catalog", str(catalog), "boot", JOB, "--out", str(out)]
    proc = subprocess.run(
        [*argv, "--check", "--timeout", "900", "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["output"].startswith("Linux ")
    return float(report["seconds_to_login_prompt"]), float(report["seconds_total"])


def boot_plan(catalog: Path, out: Path) -> float:
    """`cipbuild boot --plan boot`: the catalogue's boot plan run without a lab, as LAVA's test
    shell would; the seconds it took."""
    argv = [sys.executable, "-m", "orchestrator", "--catalog", str(catalog), "boot", JOB, "--out", str(out)]
    proc = subprocess.run([*argv, "--plan", "boot", "--timeout", "900", "--json"], capture_output=True, text=True,
                          check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (plan,) = json.loads(proc.stdout)["plans"]
    assert [(c["name"], c["result"]) for c in plan["cases"]] == [("uname", "pass")]
    assert (out / JOB / "results" / "boot.xml").is_file()
    return float(plan["boot"]["seconds_total"])


def reproducibility(out: Path, meta: dict[str, Any], took: float, warm: float) -> tuple[list[str], str]:
    """What `build --check-reproducible` wrote for the job in ``out``, checked for what is stable
    (every artifact compared; kernel and initrd identical; each difference explained); the
    differing artifacts and a summary for the report line."""
    report = json.loads((out / JOB / "reproducibility.json").read_text())
    assert report["schema"] == "cipbuild-reproducibility/1" and report["job"] == JOB
    assert report["inputs_digest"] == meta["inputs_digest"] and report["error"] is None
    by_type = {a["path"]: a["type"] for a in meta["artifacts"]}
    compared = {a["path"]: a for a in report["artifacts"]}
    assert set(compared) == set(by_type), "every artifact is compared"
    identical = sorted(by_type[p] for p, a in compared.items() if a["identical"])
    assert {"kernel", "initrd"} <= set(identical), report["artifacts"]
    differing = sorted(p for p, a in compared.items() if not a["identical"])
    assert report["identical"] is (not differing)
    second = Path(report["second_build"])
    assert not (out / ".reproducibility" / JOB / "sstate").exists(), "the private sstate goes"
    assert second.is_dir() is bool(differing), "the second build stays only when something differs"
    found = []
    for path in differing:
        a = compared[path]
        assert a["differences"] or a["note"], f"{path} differs unexplained"
        assert all(d["path"] and d["kinds"] for d in a["differences"]), a["differences"][:5]
        total = len(a["differences"]) + a["omitted"]
        counts = "/".join(f"{k} {n}" for k, n in a["kind_counts"].items())
        shown = [d["path"] for d in a["differences"] if d["kinds"] != ["order"]][:12]
        what = f"{total} differences ({counts}) in {', '.join(shown)}" if total else a["note"][:70] + "..."
        found.append(f"{by_type[path]}: {what}")
    cmp = ""
    wic = next((p for p in differing if by_type[p] == "wic"), None)
    if wic:  # the same two files through cmp, reading all of both as the comparison must (not to
        # /dev/null: GNU cmp then stops at the first difference)
        started = time.monotonic()
        subprocess.run(["cmp", "-l", str(out / JOB / wic), str(second / wic)], capture_output=True, check=False)
        cmp = f", cmp -l of the two .wic {time.monotonic() - started:.1f} s"
    summary = (
        f"check-reproducible in {took:.0f} s (second build {report['second_build_s']:.0f} s, compare "
        f"{report['compare_s']:.1f} s = {100 * report['compare_s'] / warm:.1f}% of the warm build{cmp}): "
        f"identical {', '.join(identical)}; differ: {'; '.join(found) or 'nothing'}"
    )
    return differing, summary


def second_build(catalog: Path, out: Path, build: Any) -> tuple[float, str]:
    """A second build of the job, as upstream CI's build_swu_v2 is one: ``PV = "2.0"`` appended to
    the image recipe (a .bbappend the build's local.conf adds), the first build's manifest in
    build/previous-image. Kept (--keep-build) to look into: bitbake built the image as 2.0, and
    nothing else."""
    distro = catalog / "distros" / "isar.yml"
    distro.write_text(
        distro.read_text()
        + "follow_ups:\n  v2:\n    summary: the image again as version 2.0\n"
        + '    appends: {isar-image-base: PV = "2.0"}\n    previous: [manifest]\n'
    )
    second = f"{JOB}--v2"
    took, results = build(out, "--keep-build", job=second)
    assert results[JOB]["status"] == "up-to-date" and results[second]["status"] == "success"
    first = json.loads((out / JOB / "metadata.json").read_text())
    manifest = next(a for a in first["artifacts"] if a["type"] == "manifest")
    copied = out / second / "build" / "previous-image" / Path(manifest["path"]).name
    assert hashlib.sha256(copied.read_bytes()).hexdigest() == manifest["sha256"]
    work = out / second / "build" / "tmp" / "work" / "debian-bookworm-amd64"
    versions = {p.parent.name: p.name for p in work.glob("*/*-r*") if p.is_dir()}
    assert versions["isar-image-base-qemuamd64"] == "2.0-r0", versions
    others = {name: v for name, v in versions.items() if v.startswith("2.0-") and name != "isar-image-base-qemuamd64"}
    assert not others, f"PV 2.0 reached other recipes: {others}"
    return took, f"image WORKDIR {versions['isar-image-base-qemuamd64']}, previous-image holds the first's manifest"


def test_real_isar_build_cold_warm_and_unchanged(tmp_path: Path) -> None:
    assert ISAR
    open_to_builder(tmp_path)
    commit = subprocess.run(
        ["git", "-C", ISAR, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    catalog = tmp_path / "catalog"  # the catalogue guide's example, as `cipbuild catalog new` writes it
    write_starter(catalog)
    repos = catalog / "kas" / "repos.yml"
    repos.write_text(repos.read_text().replace(ISAR_COMMIT, commit))  # the checkout's, if another
    mirror = tmp_path / "mirror"
    subprocess.run(["git", "clone", "-q", "--mirror", ISAR, str(mirror / "isar")], check=True)
    cache = tmp_path / "cache"

    def build(
        out: Path, *extra: str, codes: tuple[int, ...] = (0,), job: str = JOB
    ) -> tuple[float, dict[str, dict[str, Any]]]:
        start = time.monotonic()
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "orchestrator",
                "--catalog",
                str(catalog),
                "build",
                job,
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
        assert proc.returncode in codes, proc.stderr[-3000:] + (out / JOB / "build.log").read_text()[-3000:]
        return took, {r["id"]: r for r in json.loads(proc.stdout)["results"]}

    cold, first = build(tmp_path / "out-cold")
    warm, second = build(tmp_path / "out-warm")  # a fresh build folder, the same downloads and sstate
    unchanged, third = build(tmp_path / "out-warm")  # nothing changed: cipbuild builds nothing
    forced, fourth = build(tmp_path / "out-warm", "--force")  # build/ removed first: restored from sstate
    assert first[JOB]["status"] == second[JOB]["status"] == fourth[JOB]["status"] == "success"
    assert third[JOB]["status"] == "up-to-date"
    for result in (first[JOB], second[JOB], fourth[JOB]):  # build/tmp goes after a good build
        assert result["disk"]["build_tmp"] == "removed" and result["disk"]["build_tmp_bytes"] > 2**30
        assert result["disk"]["job_folder_bytes"] < 1.5 * 2**30  # it took 3.6 GB with build/tmp kept
    assert not (tmp_path / "out-warm" / JOB / "build" / "tmp").exists()
    meta = json.loads((tmp_path / "out-warm" / JOB / "metadata.json").read_text())
    assert meta["disk"] == fourth[JOB]["disk"]
    sizes = {a["type"]: a["size"] for a in meta["artifacts"]}
    assert set(sizes) == {"wic", "wic.bmap", "kernel", "initrd", "manifest", "dpkg_status"}
    assert sizes["wic"] > 100 * 2**20 and sizes["kernel"] > 2**20
    # A second, independent build (own sstate, another path); exit 3 when an artifact differs.
    started = time.monotonic()
    _, fifth = build(tmp_path / "out-warm", "--check-reproducible", codes=(0, 3))
    differing, repro = reproducibility(tmp_path / "out-warm", meta, time.monotonic() - started, warm)
    assert fifth[JOB]["status"] == "up-to-date"
    sign_s, verify_s, packages = sign_and_verify(tmp_path / "out-warm", differing)
    second_s, second_detail = second_build(catalog, tmp_path / "out-warm", build)
    login_s, boot_s = boot_check(catalog, tmp_path / "out-warm")
    plan_s = boot_plan(catalog, tmp_path / "out-warm")
    report = (
        f"real isar e2e: cold {cold:.0f} s, warm {warm:.0f} s, unchanged {unchanged:.1f} s, "
        f"forced (fresh build folder from sstate) {forced:.0f} s, job folder "
        f"{meta['disk']['job_folder_bytes'] / 2**20:.0f} MiB (build/tmp "
        f"{meta['disk']['build_tmp_bytes'] / 2**30:.1f} GiB removed); wic {sizes['wic'] / 2**20:.0f} MiB; "
        f"{repro}; signed in {sign_s:.1f} s, verified in {verify_s:.1f} s; sbom {packages} packages; "
        f"boot --check: login prompt after {login_s:.0f} s, done in {boot_s:.0f} s; "
        f"boot --plan boot: its case passed in {plan_s:.0f} s; second build {second_s:.0f} s ({second_detail})"
    )
    print(report)
    if os.environ.get("CIPBUILD_E2E_REPORT"):
        Path(os.environ["CIPBUILD_E2E_REPORT"]).write_text(report + "\n")

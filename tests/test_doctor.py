"""`cipbuild doctor` names what a host lacks for builds, and how to fix it, before a build fails."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest
from buildworld import BUILDER_IMAGE, TUN, RootlessUser, World, open_to_builder, results, rootless_user, tun_device

pytestmark = pytest.mark.integration


def doctor_as(user: RootlessUser, catalog: Path, runtime: str) -> tuple[int, dict[str, dict[str, Any]]]:
    proc = user.cipbuild(
        "--catalog", str(catalog), "doctor", "--runtime", runtime, "--image", BUILDER_IMAGE, "--json", timeout=120
    )
    assert proc.stdout, proc.stderr
    return proc.returncode, {c["name"]: c for c in json.loads(proc.stdout)}


@pytest.mark.parametrize("runtime", ["podman", "auto"])  # auto: the user cannot reach a docker engine
def test_rootless_podman_without_the_tun_device_is_named_with_its_fix(test_catalog: Path, runtime: str) -> None:
    """A fresh VM has /dev/net/tun at 0600: every rootless podman build would fail late (exit 126)."""
    user = rootless_user()
    open_to_builder(test_catalog)
    with tun_device(exclusive=True):
        mode = stat.S_IMODE(TUN.stat().st_mode)
        try:
            TUN.chmod(0o600)
            code, checks = doctor_as(user, test_catalog, runtime)
        finally:
            TUN.chmod(mode)
    assert code == 4
    tun = checks["rootless podman network"]
    assert tun["status"] == "fail"
    assert "cannot open /dev/net/tun (Permission denied)" in tun["detail"]
    assert tun["fix"] == "as root: chmod 0666 /dev/net/tun"

    with tun_device(exclusive=False):
        _, checks = doctor_as(user, test_catalog, runtime)
    assert checks["rootless podman network"]["status"] == "ok", "/dev/net/tun is not 0666 (.ci/run makes it so)"


def test_a_rootless_build_without_the_tun_device_says_what_podman_said(world: World, tmp_path: Path) -> None:
    user = rootless_user()
    job = "isar-bookworm-qemu-amd64"
    with tun_device(exclusive=True):
        mode = stat.S_IMODE(TUN.stat().st_mode)
        try:
            TUN.chmod(0o600)
            proc = user.build(world, tmp_path / "rootless", job)
        finally:
            TUN.chmod(mode)
    assert proc.returncode == 4, proc.stdout + proc.stderr
    res = results(proc)[job]
    assert res["status"] == "infra-error"
    assert res["error"].startswith("podman could not run the container (exit 126): ")
    assert 'open(\\"/dev/net/tun\\"): Permission denied' in res["error"]
    assert res["error"].endswith("`cipbuild doctor` may name the fix")


def test_binfmt_is_checked_for_the_selected_jobs_architectures_only(cli: Any, docker_engine: str) -> None:
    def binfmt(*selectors: str) -> set[str]:
        res = cli("doctor", *selectors, "--runtime", "docker", "--json")
        assert res.out, res.err
        return {c["name"] for c in json.loads(res.out) if c["name"].startswith("binfmt")}

    assert binfmt("-b", "qemu-amd64") == set()  # this host's own architecture needs no emulation
    assert binfmt("-b", "qemu-arm64") == {"binfmt arm64"}
    assert binfmt("-b", "qemu-arm64", "-b", "bbb") == {"binfmt arm64", "binfmt armhf"}

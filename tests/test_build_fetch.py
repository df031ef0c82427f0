"""An upstream kas cannot clone is the network's or the URL's fault, not the build's: exit 4,
infra-error, and the message names the URL."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from buildworld import World, open_to_builder, results

pytestmark = pytest.mark.integration

JOB = "isar-bookworm-qemu-amd64"
UPSTREAM = "https://fixtures.cipbuild.invalid/isar-cip-core.git"


@pytest.mark.parametrize(
    ("url", "why"),
    [
        # no mirror has it, so kas goes to the network: the host does not resolve
        ("https://nowhere.cipbuild.invalid/cip-project/no-such-upstream.git", "Could not resolve host"),
    ],
)
def test_an_upstream_that_cannot_be_cloned_is_an_infrastructure_error(
    docker_engine: str, world: World, tmp_path: Path, url: str, why: str
) -> None:
    catalog = tmp_path / "catalog"
    shutil.copytree(world.catalog, catalog)
    repos = catalog / "kas" / "repos.yml"
    assert UPSTREAM in repos.read_text()
    repos.write_text(repos.read_text().replace(UPSTREAM, url))
    world.catalog = catalog
    proc = world.build(JOB, "--json")
    assert proc.returncode == 4, proc.stdout + proc.stderr
    res = results(proc)[JOB]
    assert res["status"] == "infra-error"
    assert res["error"].startswith(f"could not fetch upstream {url}: ")
    assert why in res["error"] and res["error"].endswith(f"see {world.out / JOB / 'build.log'}")
    assert world.metadata(JOB)["status"] == "infra-error"
    table = world.build(JOB)  # what a person reads
    assert table.returncode == 4 and f"could not fetch upstream {url}" in table.stdout


def test_a_build_that_fails_after_fetching_is_still_a_failed_build(docker_engine: str, world: World) -> None:
    proc = world.build("isar-bookworm-qemu-amd64-fail", "--json")
    assert proc.returncode == 3
    assert results(proc)["isar-bookworm-qemu-amd64-fail"]["status"] == "failed"


def test_an_upstream_on_this_machine_is_cloned_in_the_container(
    docker_engine: str, world: World, tmp_path: Path
) -> None:
    """A catalogue may pin a file:// repository: the container gets it read-only at its own path
    (a name no --mirror folder has, so nothing redirects it)."""
    local = open_to_builder(tmp_path) / "local" / "cip-core-here.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(world.mirror / "isar-cip-core"), str(local)], check=True)
    catalog = tmp_path / "catalog"
    shutil.copytree(world.catalog, catalog)
    repos = catalog / "kas" / "repos.yml"
    repos.write_text(repos.read_text().replace(UPSTREAM, f"file://{local}"))
    world.catalog = catalog
    proc = world.build(JOB, "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert results(proc)[JOB]["status"] == "success"


def test_a_file_url_that_is_no_repository_is_refused_before_anything_runs(world: World, tmp_path: Path) -> None:
    catalog = tmp_path / "catalog"
    shutil.copytree(world.catalog, catalog)
    repos = catalog / "kas" / "repos.yml"
    repos.write_text(repos.read_text().replace(UPSTREAM, "file:///nonexistent/cip-project/no-such-upstream.git"))
    world.catalog = catalog
    proc = world.build(JOB)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"cipbuild: error: {repos}:") and "/nonexistent/cip-project/no-such-upstream.git" in line
    assert "--mirror" in line
    assert not (world.out / JOB).exists()

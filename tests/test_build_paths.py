"""Where a build writes: --out, --cache and the job folders in it are checked before anything
starts, and cipbuild never writes through a symlink it finds there."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from buildworld import World, results

from orchestrator.buildjob import make_folder
from orchestrator.errors import InfrastructureError

JOB = "isar-bookworm-qemu-amd64"


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_a_symlinked_job_folder_is_refused_before_anything_starts(world: World, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    world.out.mkdir(parents=True)
    (world.out / JOB).symlink_to(elsewhere)
    line = one_error_line(world.build(JOB))
    assert line.startswith(f"cipbuild: error: job folder {world.out / JOB} is a symlink: remove it")
    assert list(elsewhere.iterdir()) == []
    assert not world.cache.exists()


@pytest.mark.parametrize("flag", ["--out", "--cache"])
@pytest.mark.parametrize("kind", ["a file", "under a file", "in /proc"])
def test_an_unusable_out_or_cache_is_a_user_error(world: World, tmp_path: Path, flag: str, kind: str) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not a folder\n")
    bad = {"a file": afile, "under a file": afile / "sub", "in /proc": Path("/proc/cipbuild-test")}[kind]
    if flag == "--out":
        world.out = bad
    else:
        world.cache = bad
    line = one_error_line(world.build(JOB))
    assert line.startswith(f"cipbuild: error: {flag}: ") and str(bad) in line
    assert afile.read_text() == "not a folder\n"
    if flag == "--out":
        assert not world.cache.exists()


def test_a_job_folder_is_made_without_following_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "target"
    (tmp_path / "job").symlink_to(target)
    with pytest.raises(InfrastructureError, match="is not a folder"):
        make_folder(tmp_path / "job")
    assert not target.exists()
    (tmp_path / "job").unlink()
    make_folder(tmp_path / "job")
    make_folder(tmp_path / "job")  # already there: fine
    assert (tmp_path / "job").is_dir()


@pytest.mark.integration
def test_a_symlink_a_build_left_in_its_folder_is_not_followed(docker_engine: str, world: World, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (world.out / JOB).mkdir(parents=True)
    (world.out / JOB / "work").symlink_to(elsewhere)
    proc = world.build(JOB, "--json")
    assert proc.returncode == 4, proc.stderr
    res = results(proc)[JOB]
    assert res["status"] == "infra-error"
    assert res["error"] == f"{world.out / JOB / 'work'} is not a folder (a symlink?): remove it"
    assert list(elsewhere.iterdir()) == []

"""Disk per job: bitbake's build/tmp goes once the artifacts are safe (unless --keep-build), a
failed build keeps everything, each job says what it takes, and doctor warns before a build runs
out of space."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from buildworld import BUILDER_IMAGE, World, open_to_builder, results, rootless_user

from orchestrator.diskuse import LOCK, TRASH, Need, empty_trash_later, remove_later, remove_tree, usage
from orchestrator.doctor import disk_checks, to_json

JOB = "isar-bookworm-qemu-amd64"


def du_bytes(path: Path) -> int:
    """What coreutils' du says the tree takes on disk (hard links once, symlinks not followed)."""
    out = subprocess.run(["du", "-s", "-B1", str(path)], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def make_tree(root: Path, outside: Path) -> None:
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "data").write_bytes(os.urandom(300_000))
    os.link(root / "a" / "b" / "data", root / "a" / "twin")
    (root / "a" / "sparse").write_bytes(b"")
    with (root / "a" / "sparse").open("r+b") as f:
        f.truncate(50 << 20)
        f.seek(10 << 20)
        f.write(b"x" * 4096)
    outside.mkdir(exist_ok=True)
    (outside / "keep").write_text("not the build's")
    (root / "link-out").symlink_to(outside)
    (root / "a" / "file-link").symlink_to(outside / "keep")


def test_usage_counts_what_du_counts(tmp_path: Path) -> None:
    make_tree(tmp_path / "tree", tmp_path / "outside")
    assert usage(tmp_path / "tree") == du_bytes(tmp_path / "tree")
    assert usage(tmp_path / "missing") == 0


def test_removal_counts_what_it_freed_and_never_follows_a_link_out(tmp_path: Path) -> None:
    make_tree(tmp_path / "tree", tmp_path / "outside")
    before = du_bytes(tmp_path / "tree")
    tally = remove_tree(tmp_path / "tree")
    assert tally.problems == []
    assert tally.bytes == before
    assert not (tmp_path / "tree").exists()
    assert (tmp_path / "outside" / "keep").read_text() == "not the build's"


def test_removal_of_a_deeper_tree_than_python_can_recurse(tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY)
    os.mkdir("deep", dir_fd=fd)
    for _ in range(1500):  # deeper than PATH_MAX allows as one path: only reachable by fd
        nxt = os.open("deep", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = nxt
        os.mkdir("deep", dir_fd=fd)
    os.close(fd)
    assert remove_tree(tmp_path / "deep").problems == []
    assert not (tmp_path / "deep").exists()


@pytest.mark.integration
def test_a_good_build_leaves_its_artifacts_and_not_bitbakes_tmp(docker_engine: str, world: World) -> None:
    proc = world.build(JOB, "--json")
    assert proc.returncode == 0, proc.stderr
    folder = world.out / JOB
    assert not (folder / "build" / "tmp").exists()
    assert (folder / "build" / "conf").is_dir()  # the rest of the build folder stays for kas
    disk = world.metadata(JOB)["disk"]
    assert disk["build_tmp"] == "removed" and disk["build_tmp_bytes"] > 0
    assert abs(disk["job_folder_bytes"] - du_bytes(folder)) <= 16384  # metadata.json itself grew since
    trash_emptied(world.out)  # build/tmp left the job folder at once; its disk is freed behind
    assert results(proc)[JOB]["disk"] == disk
    for artifact in world.metadata(JOB)["artifacts"]:
        assert (folder / artifact["path"]).is_file()
    table = world.build(JOB)  # up to date: a person sees the summary
    assert table.returncode == 0
    assert "disk" in table.stdout.splitlines()[0]


def trash_emptied(out: Path, timeout: float = 60) -> None:
    """The background remover empties --out's trash, and goes."""
    trash = out / TRASH
    deadline = time.monotonic() + timeout
    while [p.name for p in trash.iterdir()] != [".lock"]:
        assert time.monotonic() < deadline, f"still in the trash: {sorted(p.name for p in trash.iterdir())}"
        time.sleep(0.1)


def test_a_tree_removed_later_leaves_at_once_and_is_freed_in_the_background(tmp_path: Path) -> None:
    job = tmp_path / "out" / "job"
    tree = job / "build" / "tmp"
    (tree / "work" / "rootfs").mkdir(parents=True)
    (tree / "work" / "rootfs" / "big").write_bytes(os.urandom(1 << 20))
    outside = tmp_path / "precious"
    outside.write_text("not the build's")
    (tree / "work" / "link").symlink_to(outside)
    (tree / "work" / "rootfs").chmod(0o555)  # read-only folders of ours go too
    expected = du_bytes(tree)
    tally = remove_later(tree, tmp_path / "out")
    assert tally is not None and tally.bytes == expected
    assert not tree.exists() and (job / "build").is_dir()
    trash_emptied(tmp_path / "out")
    assert outside.read_text() == "not the build's"  # a link is removed, never followed


def test_no_removal_later_through_a_build_folder_the_build_made_a_link(tmp_path: Path) -> None:
    precious = tmp_path / "precious" / "tmp"
    precious.mkdir(parents=True)
    (precious / "data").write_text("not the build's")
    job = tmp_path / "out" / "job"
    job.mkdir(parents=True)
    (job / "build").symlink_to(tmp_path / "precious")
    assert remove_later(job / "build" / "tmp", tmp_path / "out") is None
    assert (precious / "data").read_text() == "not the build's"


def test_no_removal_later_through_a_trash_that_is_a_link(tmp_path: Path) -> None:
    tree = tmp_path / "out" / "job" / "build" / "tmp"
    tree.mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "out" / TRASH).symlink_to(tmp_path / "elsewhere")
    assert remove_later(tree, tmp_path / "out") is None
    assert tree.is_dir() and not any((tmp_path / "elsewhere").iterdir())


@pytest.mark.integration
def test_keep_build_keeps_tmp_and_a_failed_build_keeps_everything(docker_engine: str, world: World) -> None:
    kept = world.build(JOB, "--keep-build", "--json")
    assert kept.returncode == 0, kept.stderr
    assert (world.out / JOB / "build" / "tmp" / "deploy" / "images" / "qemu-amd64").is_dir()
    assert world.metadata(JOB)["disk"]["build_tmp"] == "kept (--keep-build)"

    failing = f"{JOB}-fail"
    proc = world.build(failing, "--json")
    assert proc.returncode == 3
    assert (world.out / failing / "build" / "bitbake.options").is_file()  # what bitbake was asked, for a look
    assert world.metadata(failing)["disk"]["build_tmp"] == "kept (the build failed)"


@pytest.mark.integration
def test_force_starts_from_a_fresh_build_folder(docker_engine: str, world: World) -> None:
    assert world.build(JOB, "--keep-build").returncode == 0
    stale = world.out / JOB / "build" / "tmp" / "stale-from-before"
    stale.write_text("left by the last build")
    proc = world.build(JOB, "--force", "--keep-build", "--json")
    assert proc.returncode == 0, proc.stderr
    assert results(proc)[JOB]["status"] == "success"
    assert not stale.exists()  # bitbake ran in a fresh folder, not over the old one


@pytest.mark.integration
def test_root_owned_files_an_isar_build_left_are_removed_in_the_builder(world: World, tmp_path: Path) -> None:
    """Isar's sudo leaves root-owned files in build/tmp that a developer cannot remove: --force
    (and the removal after a good build) hands them to a container of the builder image."""
    user = rootless_user()
    work = tmp_path / "dev"
    open_to_builder(world.catalog)
    open_to_builder(work.parent)
    work.mkdir()
    uid = int(subprocess.run(["id", "-u", user.name], capture_output=True, text=True, check=True).stdout)
    os.chown(work, uid, uid)
    args = ["--catalog", str(world.catalog), "build", JOB, "--runtime", "docker", "--image", BUILDER_IMAGE]
    args += ["--mirror", str(world.mirror), "--out", str(work / "out"), "--cache", str(work / "cache"), "--json"]
    first = user.cipbuild(*args, "--keep-build", groups=("docker",), env={"DOCKER_HOST": docker_host()})
    assert first.returncode == 0, first.stdout + first.stderr
    rootfs = work / "out" / JOB / "build" / "tmp" / "work" / "rootfs" / "etc"
    rootfs.mkdir(parents=True)
    (rootfs / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    for path in (rootfs.parent, rootfs, rootfs / "shadow"):
        os.chown(path, 0, 0)
    denied = user.run("rm", "-rf", str(rootfs.parent))
    assert denied.returncode != 0 and (rootfs / "shadow").exists()  # the developer cannot

    again = user.cipbuild(*args, "--force", groups=("docker",), env={"DOCKER_HOST": docker_host()})
    assert again.returncode == 0, again.stdout + again.stderr
    assert results(again)[JOB]["status"] == "success"
    assert not rootfs.exists()
    assert json.loads((work / "out" / JOB / "metadata.json").read_text())["disk"]["build_tmp"] == "removed"


@contextlib.contextmanager
def small_tmpfs(folder: Path, size: str) -> Iterator[None]:
    """``folder`` as a tmpfs of ``size`` while the block runs: a disk that is nearly full."""
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=False).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def docker_host() -> str:
    return os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")


@pytest.mark.integration
def test_doctor_warns_when_out_and_cache_are_short_of_what_the_jobs_need(
    docker_engine: str, world: World, tmp_path: Path
) -> None:
    small = tmp_path / "small"
    doctor = [*world.args(JOB)[:5], "doctor", JOB, "--image", BUILDER_IMAGE, "--json"]
    with small_tmpfs(small, "64m"):
        proc = subprocess.run(
            [*doctor, "--out", str(small / "out"), "--cache", str(small / "cache")],
            capture_output=True,
            text=True,
            check=False,
        )
    assert proc.returncode == 0, proc.stderr  # a warning, not a failure: the user may know better
    checks = {c["name"]: c for c in json.loads(proc.stdout)}
    space = checks["disk space --out and --cache"]
    assert space["status"] == "warn"
    assert space["detail"].startswith(f"64.0 MiB free at {small}; 1 job(s) should need about 6.0 GiB (estimated)")
    assert "larger disk" in space["fix"]

    assert world.build(JOB).returncode == 0  # measured here now: its own figures count
    proc = subprocess.run(
        [*doctor, "--out", str(world.out), "--cache", str(world.cache)], capture_output=True, text=True, check=False
    )
    space = {c["name"]: c for c in json.loads(proc.stdout)}["disk space --out and --cache"]
    assert space["status"] == "ok"
    assert "(1 from their last build here, the rest estimated)" in space["detail"]


def test_doctor_counts_the_trash_as_coming_free_and_says_whether_a_remover_is_at_work(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with small_tmpfs(out, "16m"):
        tree = out / "job" / "build" / "tmp"
        tree.mkdir(parents=True)
        (tree / "rootfs").write_bytes(os.urandom(6 << 20))
        trash = out / TRASH
        trash.mkdir()
        os.rename(tree, trash / "job.0123456789ab")  # what remove_later leaves when its remover was stopped
        free = shutil.disk_usage(out).free
        need = Need(out=free + (4 << 20), cache=0, measured=0)

        def checks() -> dict[str, dict[str, str]]:
            return {c["name"]: c for c in to_json(disk_checks(need, out, out, "1 job(s)"))}

        stopped = checks()
        assert stopped["disk space --out and --cache"]["status"] == "ok"  # 6 MiB comes back before it is needed
        assert "(+6.0 MiB in --out's trash)" in stopped["disk space --out and --cache"]["detail"]
        assert stopped["trash under --out"]["status"] == "warn"
        assert stopped["trash under --out"]["detail"].startswith(f"6.0 MiB in 1 build folder(s) at {trash}")
        assert "no remover is at work" in stopped["trash under --out"]["detail"]

        lock = os.open(trash / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)  # as a remover at work holds it
            working = checks()["trash under --out"]
            assert working["status"] == "ok" and working["detail"].endswith("being removed in the background")
        finally:
            os.close(lock)

        empty_trash_later(out)  # what the next build does first
        trash_emptied(out)
        after = checks()
        assert "trash under --out" not in after
        assert after["disk space --out and --cache"]["status"] == "ok"  # now as free space proper
        assert "in --out's trash" not in after["disk space --out and --cache"]["detail"]
        assert shutil.disk_usage(out).free >= free + (6 << 20)

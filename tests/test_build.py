"""Real builds: real kas inside real containers (docker engine, podman) and on the host, against
fixture upstreams whose bitbake is the one accepted fake."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest
from buildworld import BUILDER_IMAGE, World, results, rootless_user, tun_device, unavailable

from orchestrator.runtime import build_user

pytestmark = pytest.mark.integration

FOUR = [
    "isar-bookworm-qemu-amd64",
    "isar-bookworm-qemu-amd64-test",
    "isar-bookworm-qemu-arm64",
    "isar-bookworm-qemu-arm64-test",
]


def when(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp)


LABEL = "org.cip-project.cipbuild"


def docker_containers(label: str, *, running: bool = False, out: Path | None = None) -> list[str]:
    """Containers with ``label``; with ``out``, only those that mount a folder of that --out (so a
    test never touches another run's builds on the same engine)."""
    every = [] if running else ["-a"]
    names: set[str] = set()
    for job_dir in sorted(out.iterdir()) if out is not None and out.is_dir() else [None]:
        mounts = ["--filter", f"volume={job_dir}"] if job_dir is not None else []
        listed = subprocess.run(
            ["docker", "ps", *every, "--filter", f"label={label}", *mounts, "--format", "{{.Names}}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        names.update(line for line in listed.splitlines() if line)
    return sorted(names)


def test_four_jobs_two_at_a_time_leave_complete_folders(docker_engine: str, world: World) -> None:
    proc = world.build("-r", "four", "-j", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    got = results(proc)
    assert sorted(got) == sorted(FOUR)
    for job_id in FOUR:
        folder = world.out / job_id
        assert {"build.log", "job.yml", "kas.lock.yml", "metadata.json", "reproducer.sh", "run.sh"} <= {
            p.name for p in folder.iterdir()
        }
        meta = world.metadata(job_id)
        assert meta["status"] == "success" and meta["exit_code"] == 0
        assert meta["inputs"]["builder_image"] == BUILDER_IMAGE
        assert meta["inputs"]["builder_image_digest"].startswith("sha256:")
        assert meta["runtime"]["engine"] == "docker"
        assert meta["source_date_epoch"] > 1_600_000_000  # the pinned upstream commit's date
        types = {a["type"] for a in meta["artifacts"]}
        assert types == {"wic", "kernel", "initrd", "manifest", "dpkg_status"}
        for art in meta["artifacts"]:
            # collected artifacts belong to the caller, whoever the build ran as
            assert (folder / art["path"]).stat().st_uid == os.getuid()
            data = (folder / art["path"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == art["sha256"] and len(data) == art["size"]
        assert "overrides" in (folder / "kas.lock.yml").read_text()
        assert "Running task 4 of 4" in (folder / "build.log").read_text()
        # the build itself ran as the caller, or as an unprivileged builder when root calls
        assert (folder / "kas.lock.yml").stat().st_uid == build_user("docker")[0]
    # the -test image carries the suffix upstream's IMAGE_FULLNAME gives it
    test_meta = world.metadata("isar-bookworm-qemu-arm64-test")
    assert any(a["path"].endswith("qemu-arm64-test.wic") for a in test_meta["artifacts"])
    # first of each (distro, arch, release) group first, its sibling after; the two groups in parallel
    for arch in ("amd64", "arm64"):
        lead, sibling = world.metadata(f"isar-bookworm-qemu-{arch}"), world.metadata(f"isar-bookworm-qemu-{arch}-test")
        assert when(sibling["started"]) >= when(lead["finished"])
    a, b = world.metadata("isar-bookworm-qemu-amd64"), world.metadata("isar-bookworm-qemu-arm64")
    assert when(a["started"]) <= when(b["finished"]) and when(b["started"]) <= when(a["finished"])


def test_rerun_builds_nothing_and_one_changed_option_rebuilds_one_job(
    docker_engine: str, world: World, tmp_path: Path
) -> None:
    catalog = tmp_path / "catalog"
    shutil.copytree(world.catalog, catalog)
    world.catalog = catalog
    assert world.build("-r", "four", "-j", "2").returncode == 0
    before = {j: world.metadata(j)["finished"] for j in FOUR}
    again = world.build("-r", "four", "-j", "2", "--json")  # how fast: bench/build.py
    assert again.returncode == 0
    assert {j: r["status"] for j, r in results(again).items()} == dict.fromkeys(FOUR, "up-to-date")
    assert {j: world.metadata(j)["finished"] for j in FOUR} == before
    recipe = catalog / "recipes" / "four.yml"
    recipe.write_text(recipe.read_text().replace("options: [[], [test]]", "options: [[], [test, targz]]"))
    changed = results(world.build("-r", "four", "-j", "2", "--json"))
    assert {j: r["status"] for j, r in changed.items()} == {
        "isar-bookworm-qemu-amd64": "up-to-date",
        "isar-bookworm-qemu-arm64": "up-to-date",
        "isar-bookworm-qemu-amd64-test-targz": "success",
        "isar-bookworm-qemu-arm64-test-targz": "success",
    }
    assert "tar.gz" in {a["type"] for a in world.metadata("isar-bookworm-qemu-arm64-test-targz")["artifacts"]}
    forced = results(world.build("isar-bookworm-qemu-amd64", "--force", "--json"))
    assert forced["isar-bookworm-qemu-amd64"]["status"] == "success"


def test_failing_job_with_keep_going_lets_the_others_finish(docker_engine: str, world: World) -> None:
    proc = world.build(
        "isar-bookworm-qemu-amd64-fail",
        "isar-bookworm-qemu-arm64",
        "isar-bookworm-qemu-amd64-test",
        "--keep-going",
        "--json",
    )
    assert proc.returncode == 3
    got = results(proc)
    assert got["isar-bookworm-qemu-amd64-fail"]["status"] == "failed"
    assert "kas exited with" in got["isar-bookworm-qemu-amd64-fail"]["error"]
    assert got["isar-bookworm-qemu-arm64"]["status"] == "success"
    assert got["isar-bookworm-qemu-amd64-test"]["status"] == "success"
    assert "fixture asked to fail" in (world.out / "isar-bookworm-qemu-amd64-fail" / "build.log").read_text()
    assert world.metadata("isar-bookworm-qemu-amd64-fail")["status"] == "failed"


def test_without_keep_going_a_failure_stops_the_queue(docker_engine: str, world: World) -> None:
    proc = world.build("isar-bookworm-qemu-amd64-fail", "isar-bookworm-qemu-amd64-test", "--no-keep-going", "--json")
    assert proc.returncode == 3
    got = results(proc)
    assert got["isar-bookworm-qemu-amd64-fail"]["status"] == "failed"
    assert got["isar-bookworm-qemu-amd64-test"]["status"] == "skipped"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_stops_every_container_and_keeps_no_secret(
    docker_engine: str, world: World, sig: signal.Signals
) -> None:
    secret = "AKIAFIXTURESECRET123"
    proxy = f"http://builder:{secret}@proxy.invalid:3128"
    proc = world.start(
        "isar-bookworm-qemu-amd64-slow",
        "isar-bookworm-qemu-arm64-slow",
        "-j",
        "2",
        env={"AWS_SECRET_ACCESS_KEY": secret, "LAVA_TOKEN": secret, "no_proxy": "*", "https_proxy": proxy},
    )
    try:
        world.wait_for("isar-bookworm-qemu-amd64-slow", "running")
        world.wait_for("isar-bookworm-qemu-arm64-slow", "running")
        deadline = time.monotonic() + 30
        while len(docker_containers(LABEL, running=True, out=world.out)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        names = docker_containers(LABEL, running=True, out=world.out)
        assert len(names) == 2
        for name in names:
            env = subprocess.run(
                ["docker", "inspect", "--format", "{{json .Config.Env}}", name],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            assert "AWS_" not in env and "LAVA_" not in env
            assert f"https_proxy={proxy}" in env  # the one way a build reaches the network
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert docker_containers(LABEL, out=world.out) == []
    for job_id in ("isar-bookworm-qemu-amd64-slow", "isar-bookworm-qemu-arm64-slow"):
        meta_text = (world.out / job_id / "metadata.json").read_text()
        assert world.metadata(job_id)["status"] == "interrupted"
        assert secret not in meta_text
        assert secret not in (world.out / job_id / "reproducer.sh").read_text()


def test_artifact_escape_is_refused(docker_engine: str, world: World) -> None:
    proc = world.build("isar-bookworm-qemu-amd64-evil", "--json")
    assert proc.returncode == 3
    res = results(proc)["isar-bookworm-qemu-amd64-evil"]
    assert res["status"] == "failed"
    assert "leads outside the deploy folder (symlink): refused" in res["error"]
    artifacts = world.out / "isar-bookworm-qemu-amd64-evil" / "artifacts"
    for path in artifacts.rglob("*"):
        assert "root:" not in path.read_text(errors="replace")


def test_symlinked_deploy_folder_is_refused(docker_engine: str, world: World) -> None:
    res = results(world.build("isar-bookworm-qemu-amd64-dirlink", "--json"))["isar-bookworm-qemu-amd64-dirlink"]
    assert res["status"] == "failed"
    assert "the deploy folder is a symlink: refused" in res["error"]
    assert res["artifacts"] == []


def test_a_broken_job_folder_is_an_infrastructure_error_not_a_crash(docker_engine: str, world: World) -> None:
    (world.out / "isar-bookworm-qemu-amd64").mkdir(parents=True)
    (world.out / "isar-bookworm-qemu-amd64" / "build.log").mkdir()
    proc = world.build("isar-bookworm-qemu-amd64", "--json")
    assert proc.returncode == 4 and "Traceback" not in proc.stderr
    assert "build.log is not a regular file" in results(proc)["isar-bookworm-qemu-amd64"]["error"]
    assert docker_containers(LABEL, out=world.out) == []


def test_isar_runs_privileged_and_deby_does_not(docker_engine: str, world: World) -> None:
    proc = world.build("isar-bookworm-qemu-amd64", "deby-buster-qemu-amd64", "--json")
    assert proc.returncode == 0, proc.stderr
    deby = results(proc)["deby-buster-qemu-amd64"]
    # poky's stable names are symlinks to timestamped files in the same folder: followed
    assert {a["type"] for a in deby["artifacts"]} == {"cpio.gz", "manifest", "kernel"}
    assert {a["path"] for a in deby["artifacts"]} >= {
        "artifacts/bzImage",
        "artifacts/core-image-minimal-qemux86-64.cpio.gz",
    }

    def caps(job_id: str) -> int:
        line = next(x for x in (world.out / job_id / "build.log").read_text().splitlines() if "CapBnd" in x)
        return int(line.split()[-1], 16)

    cap_sys_admin = 1 << 21
    assert caps("isar-bookworm-qemu-amd64") & cap_sys_admin
    assert not caps("deby-buster-qemu-amd64") & cap_sys_admin


def test_the_engines_privileged_mode_is_probed_once_across_runs(docker_engine: str, world: World) -> None:
    """The first privileged build finds out what the engine allows and keeps it in the cache
    folder, by engine id and version; the next run starts its build container at once."""
    import docker

    client = docker.from_env()

    def probes(since: float) -> list[str]:
        events = client.events(since=since, until=time.time(), decode=True,
                               filters={"type": "container", "event": "create"})  # fmt: skip
        return [e["Actor"]["Attributes"].get("name", "") for e in events
                if e["Actor"]["Attributes"].get("name", "").startswith("cipbuild-probe-")]  # fmt: skip

    started = time.time()
    first = world.build("isar-bookworm-qemu-amd64", "--json")
    assert first.returncode == 0, first.stderr
    assert len(probes(started)) == 1
    info = client.info()
    memory = json.loads((world.cache / "engines.json").read_text())
    assert memory[f"docker {info['ID']} {info['ServerVersion']}"]["privileged"] in ("full", "substitute")

    again = time.time()
    second = world.build("isar-bookworm-qemu-amd64", "--json", "--force")
    assert second.returncode == 0, second.stderr
    assert probes(again) == []  # remembered: no probe container this time
    cap_sys_admin = 1 << 21
    line = next(x for x in (world.out / "isar-bookworm-qemu-amd64" / "build.log").read_text().splitlines()
                if "CapBnd" in x)  # fmt: skip
    assert int(line.split()[-1], 16) & cap_sys_admin  # and still privileged


def test_missing_builder_image_is_an_infrastructure_error(docker_engine: str, world: World) -> None:
    args = world.args("isar-bookworm-qemu-amd64")
    args[args.index(BUILDER_IMAGE)] = "cipbuild-builder:does-not-exist"
    proc = subprocess.run(args, capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode == 4
    assert "image 'cipbuild-builder:does-not-exist' is not on this engine and could not be pulled" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_native_runtime(world: World) -> None:
    if not shutil.which("kas"):
        pytest.fail("kas is a dependency of cipbuild and must be installed")
    proc = world.build("isar-bookworm-qemu-arm64-test", "--json", runtime="native")
    assert proc.returncode == 0, proc.stderr
    meta = world.metadata("isar-bookworm-qemu-arm64-test")
    assert meta["runtime"]["engine"] == "native" and meta["status"] == "success"
    assert (world.out / "isar-bookworm-qemu-arm64-test" / "reproducer.sh").read_text().count("sh run.sh") == 1


def test_podman_runtime(world: World) -> None:
    if not shutil.which("podman"):
        unavailable("podman is not installed (.ci/run installs it)")
    have = subprocess.run(["podman", "image", "exists", BUILDER_IMAGE], check=False).returncode == 0
    if not have:
        unavailable(f"{BUILDER_IMAGE} is not in podman's store (.ci/run copies it there)")
    proc = world.build("isar-bookworm-qemu-amd64", "--json", runtime="podman")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert world.metadata("isar-bookworm-qemu-amd64")["runtime"]["engine"] == "podman"


def test_doctor_names_what_is_there(docker_engine: str, test_catalog: Path) -> None:
    import json
    import sys

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator",
            "--catalog",
            str(test_catalog),
            "doctor",
            "--image",
            BUILDER_IMAGE,
            "--json",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    checks = {c["name"]: c for c in json.loads(proc.stdout)}
    assert checks["container engine"]["status"] == "ok"
    assert checks["builder image (isar)"]["status"] == "ok"
    assert checks["privileged containers"]["status"] == "ok"
    assert checks["kas on this host"]["status"] == "ok"
    assert proc.returncode == (4 if any(c["status"] == "fail" for c in checks.values()) else 0)


def test_reproducer_rebuilds_the_job_by_hand(docker_engine: str, world: World) -> None:
    job = "isar-bookworm-qemu-arm64"
    assert world.build(job).returncode == 0
    folder = world.out / job
    shutil.rmtree(folder / "build")
    proc = subprocess.run(
        ["sh", str(folder / "reproducer.sh")], capture_output=True, text=True, check=False, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    wic = (
        folder
        / "build"
        / "tmp"
        / "deploy"
        / "images"
        / "qemu-arm64"
        / "cip-core-image-cip-core-bookworm-qemu-arm64.wic"
    )
    assert wic.is_file()
    recorded = next(a for a in world.metadata(job)["artifacts"] if a["type"] == "wic")
    assert hashlib.sha256(wic.read_bytes()).hexdigest() == recorded["sha256"]


def test_rootless_podman_build_belongs_to_the_caller(world: World, tmp_path: Path) -> None:
    """A developer's build through rootless podman, as the user .ci/run provides."""
    import json
    import pwd

    user = rootless_user()
    pw = pwd.getpwnam(user.name)
    out = tmp_path / "rootless" / "out"
    job = "isar-bookworm-qemu-amd64"
    with tun_device(exclusive=False):
        proc = user.build(world, tmp_path / "rootless", job)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    meta = json.loads((out / job / "metadata.json").read_text())
    assert meta["status"] == "success" and meta["runtime"]["rootless"] == "true"
    assert [p for p in out.rglob("*") if p.lstat().st_uid != pw.pw_uid] == []  # no subordinate uid anywhere
    left = user.run("podman", "ps", "-a", "--filter", "label=org.cip-project.cipbuild", "--format", "{{.Names}}")
    assert left.returncode == 0 and left.stdout.strip() == ""


def test_an_image_like_kas_isar_with_its_own_builder_user_works(docker_engine: str, world: World) -> None:
    """The official kas images end with `USER builder` (uid 30000) and have that account already."""
    import io

    import docker

    dockerfile = (
        f"FROM {BUILDER_IMAGE}\n"
        "RUN groupadd -g 30000 builder && useradd -u 30000 -g builder -m -d /builder builder\n"
        "USER builder\n"
    )
    client = docker.from_env()
    client.images.build(
        fileobj=io.BytesIO(dockerfile.encode()), tag="cipbuild-test:kaslike", network_mode="none", rm=True
    )
    args = world.args("isar-bookworm-qemu-arm64", "--json")
    args[args.index(BUILDER_IMAGE)] = "cipbuild-test:kaslike"
    proc = subprocess.run(args, capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert results(proc)["isar-bookworm-qemu-arm64"]["status"] == "success"

"""What a person reads after a build: build.log starts by saying who built it, how to redo it and
in which image; reproducer.sh is written once, before the build, and is what ran; the times in
metadata.json are fine enough to show the order in which jobs ran."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from buildworld import BUILDER_IMAGE, World

from orchestrator import __version__

pytestmark = pytest.mark.integration

MILLISECONDS = re.compile(r"T\d\d:\d\d:\d\d\.\d{3}\+00:00$")


def shell_words(shell: str, script: str) -> list[str]:
    proc = subprocess.run([shell, "-c", script], capture_output=True, text=True, check=True)
    return proc.stdout.split("\0")[:-1]


def reproducer_words(script: Path) -> list[str]:
    """The words of the command reproducer.sh runs, as sh itself makes them."""
    text = script.read_text()
    assert text.count("\nexec ") == 1, text
    return shell_words("sh", text.replace("\nexec ", "\nprintf '%s\\0' "))


def header_words(line: str) -> list[str]:
    """The words a person's bash makes of the command line build.log shows."""
    return shell_words("bash", f"printf '%s\\0' {line}")


def option_values(words: list[str], option: str) -> list[str]:
    return [words[i + 1] for i, word in enumerate(words) if word == option]


def test_build_log_starts_with_version_reproducer_and_image_digest(docker_engine: str, world: World) -> None:
    job = "isar-bookworm-qemu-amd64"
    proc = world.build(job, "--json")
    assert proc.returncode == 0, proc.stderr
    folder = world.out / job
    first, second, third = (folder / "build.log").read_text().splitlines()[:3]
    assert first.startswith(f"# cipbuild {__version__}: {job} on docker, attempt 1, started ")
    prefix = "# to reproduce this build locally: "
    assert second.startswith(prefix)
    # the one line in the log is the command reproducer.sh runs
    assert header_words(second.removeprefix(prefix)) == reproducer_words(folder / "reproducer.sh")
    digest = world.metadata(job)["inputs"]["builder_image_digest"]
    assert digest.startswith("sha256:")
    assert third == f"# builder image: {BUILDER_IMAGE} {digest}"
    assert f"# Builder image {BUILDER_IMAGE} was {digest}." in (folder / "reproducer.sh").read_text()


def test_millisecond_times_show_a_sibling_waited_for_its_leader(docker_engine: str, world: World) -> None:
    lead, sibling = "isar-bookworm-qemu-amd64", "isar-bookworm-qemu-amd64-test"
    proc = world.build(lead, sibling, "-j", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    stamps: dict[str, dict[str, datetime]] = {}
    for job in (lead, sibling):
        meta = world.metadata(job)
        for key in ("started", "finished"):
            assert MILLISECONDS.search(meta[key]), meta[key]
        stamps[job] = {k: datetime.fromisoformat(meta[k]) for k in ("started", "finished")}
        assert stamps[job]["started"] < stamps[job]["finished"]  # a build takes more than a millisecond
    # -j 2 had room for both: the sibling still started only after its leader finished
    assert stamps[lead]["finished"] <= stamps[sibling]["started"]


def running_container(label: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        names = subprocess.run(
            ["docker", "ps", "--filter", f"label={label}", "--format", "{{.Names}}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        if names:
            out = subprocess.run(["docker", "inspect", names[0]], capture_output=True, text=True, check=True).stdout
            found = json.loads(out)[0]
            assert isinstance(found, dict)
            return found
        time.sleep(0.2)
    raise AssertionError(f"no running container labelled {label}")


def test_reproducer_is_written_once_before_the_run_and_is_what_ran(docker_engine: str, world: World) -> None:
    job = "isar-bookworm-qemu-amd64-slow"
    proc = world.start(job)
    try:
        world.wait_for(job, "running")
        container = running_container(f"org.cip-project.cipbuild.job={job}")
        script = world.out / job / "reproducer.sh"
        written = script.stat()
        words = reproducer_words(script)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    after = script.stat()
    assert (after.st_ino, after.st_mtime_ns) == (written.st_ino, written.st_mtime_ns)  # never rewritten
    config, host = container["Config"], container["HostConfig"]
    assert words[:3] == ["docker", "run", "--rm"]
    entry = option_values(words, "--entrypoint")
    image_at = words.index(entry[0]) + 1
    assert words[image_at] == config["Image"] == BUILDER_IMAGE
    assert [*entry, *words[image_at + 1 :]] == [*config["Entrypoint"], *config["Cmd"]]
    assert option_values(words, "--workdir") == [config["WorkingDir"]]
    assert option_values(words, "--user") == [config["User"]] == ["root"]
    assert sorted(option_values(words, "--volume")) == sorted(host["Binds"])
    env = dict(e.split("=", 1) for e in config["Env"])
    for item in option_values(words, "--env"):
        key, _, value = item.partition("=")
        assert key in env and (not value or env[key] == value), item
    # isar runs privileged: with --privileged, or with the substitute the engine allows
    if host["Privileged"]:
        assert "--privileged" in words
    else:
        assert option_values(words, "--cap-add") == host["CapAdd"] == ["ALL"]
        assert option_values(words, "--cap-drop") == host["CapDrop"]


def test_build_log_is_written_as_the_build_runs(docker_engine: str, world: World) -> None:
    """`tail -f build.log` follows a build: bitbake's first task is on disk while the build is
    still running (the fixture sleeps 20 s after each task line)."""
    job = "isar-bookworm-qemu-amd64-slow"
    proc = world.start(job)
    log = world.out / job / "build.log"
    try:
        world.wait_for(job, "running")
        deadline = time.monotonic() + 60
        while "NOTE: Running task 1 of 4" not in (log.read_text() if log.exists() else ""):
            assert time.monotonic() < deadline, log.read_text() if log.exists() else "no build.log"
            time.sleep(0.2)
        assert world.metadata(job)["status"] == "running"
        assert "NOTE: Running task 2 of 4" not in log.read_text()  # not written at the end, all at once
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130

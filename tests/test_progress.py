from __future__ import annotations

import io
import re

from orchestrator.progress import BuildProgress
from orchestrator.status import Status


def test_plain_progress_is_timestamped_and_throttled() -> None:
    out = io.StringIO()
    with BuildProgress(["a", "b"], live=False, stream=out) as progress:
        progress.event("a", Status.QUEUED, "")
        progress.event("a", Status.RUNNING, "")
        for done in range(1, 101):
            progress.task("a", done, 100)
        progress.event("a", Status.FAILED, "kas exited with 2")
    lines = out.getvalue().splitlines()
    assert all(re.match(r"\d\d:\d\d:\d\d ", line) for line in lines)
    assert "a: failed (kas exited with 2)" in lines[-1]
    task_lines = [line for line in lines if "task" in line]
    assert 9 <= len(task_lines) <= 11  # one line per tenth of the work, not one per task
    assert task_lines[-1].endswith("a: task 100 of 100")


def test_live_table_shows_state_and_bitbake_progress() -> None:
    out = io.StringIO()
    progress = BuildProgress(["isar-bookworm-qemu-amd64"], live=True, stream=out)
    progress.event("isar-bookworm-qemu-amd64", Status.RUNNING, "")
    progress.task("isar-bookworm-qemu-amd64", 12, 40)
    from rich.console import Console

    console = Console(file=out, width=120)
    console.print(progress._table())
    text = out.getvalue()
    assert "isar-bookworm-qemu-amd64" in text and "building" in text and "task 12 of 40" in text


def test_live_table_shows_the_current_bitbake_task_and_last_log_line() -> None:
    from rich.console import Console

    from orchestrator.buildjob import TASK_LINE, task_name

    line = "NOTE: Running task 301 of 422 (/work/isar/meta/recipes-core/images/isar-image-base.bb:do_rootfs_install)"
    match = TASK_LINE.search(line)
    assert match is not None
    progress = BuildProgress(["j"], live=True, stream=io.StringIO())
    progress.event("j", Status.RUNNING, "")
    progress.task("j", int(match[1]), int(match[2]))
    progress.said("j", task_name(match[3]), "Get:12 [bookworm/main] libc6 2.36-9 [2,757 kB]")
    out = io.StringIO()
    Console(file=out, width=200).print(progress._table())
    text = out.getvalue()
    assert "task 301 of 422 isar-image-base do_rootfs_install" in text
    assert "Get:12 [bookworm/main] libc6" in text  # square brackets shown as written, not as markup
    progress.event("j", Status.SUCCESS, "")
    out = io.StringIO()
    Console(file=out, width=200).print(progress._table())
    assert "Get:12" not in out.getvalue()  # a finished job shows no stale log line


def test_task_names_read_from_bitbake_lines() -> None:
    from orchestrator.buildjob import task_name

    assert task_name("/w/poky/meta/recipes-core/busybox/busybox_1.30.1.bb:do_compile") == "busybox do_compile"
    assert task_name("virtual:native:/w/isar/meta/recipes-devtools/sbuild-chroot/sbuild-chroot-host.bb:do_build") == (
        "sbuild-chroot-host do_build"
    )
    assert task_name("do_fixture_step_1") == "do_fixture_step_1"

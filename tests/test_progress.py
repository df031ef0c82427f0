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

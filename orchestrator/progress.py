"""Progress of many builds: a live table on a terminal, timestamped plain lines in CI."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Mapping
from datetime import datetime
from types import TracebackType
from typing import Any

from .status import Status

# how a step's status is shown; a room names its own RUNNING ("building", "uploading"...)
STYLE = {
    Status.SUCCESS: "green",
    Status.UP_TO_DATE: "green",
    Status.PUBLISHED: "green",
    Status.FAILED: "red",
    Status.INFRA_ERROR: "red",
    Status.INTERRUPTED: "yellow",
    Status.RUNNING: "cyan",
}
QUIET = frozenset({Status.CHECKING})  # not worth a line in CI logs


class BuildProgress:
    """Receives scheduler events; use as a context manager around the build."""

    def __init__(
        self,
        job_ids: list[str],
        *,
        live: bool | None = None,
        stream: Any = None,
        labels: Mapping[Status, str] = {Status.RUNNING: "building"},
    ):
        self.stream = stream or sys.stderr
        self.labels = labels
        # a live table only for a person at a terminal; CI logs get plain lines
        self.live = (self.stream.isatty() and not os.environ.get("CI")) if live is None else live
        self.state = dict.fromkeys(job_ids, Status.PENDING)
        self.detail = {j: "" for j in job_ids}
        self.started: dict[str, float] = {}
        self.ended: dict[str, float] = {}
        self.tasks: dict[str, tuple[int, int]] = {}
        self.now: dict[str, tuple[str, str]] = {}  # job id -> bitbake's current task, the log's last line
        self.lock = threading.Lock()
        self._live: Any = None

    def __enter__(self) -> BuildProgress:
        if self.live:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(
                self._table(), console=Console(file=self.stream), refresh_per_second=4, get_renderable=self._table
            )
            self._live.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._live is not None:
            self._live.__exit__(kind, exc, tb)

    def event(self, job_id: str, state: Status, detail: str) -> None:
        with self.lock:
            self.state[job_id] = state
            self.detail[job_id] = detail
            if state == Status.RUNNING:
                self.started.setdefault(job_id, time.monotonic())
            if state.final:
                self.ended[job_id] = time.monotonic()
        if not self.live and state not in QUIET:
            self._line(f"{job_id}: {self.label(state)}" + (f" ({detail})" if detail else ""))

    def label(self, state: Status) -> str:
        return self.labels.get(state, state.value)

    def task(self, job_id: str, done: int, total: int) -> None:
        with self.lock:
            previous = self.tasks.get(job_id)
            self.tasks[job_id] = (done, total)
        # plain output: one line per tenth of the tasks, not one per task
        if total <= 0:
            return
        if not self.live and (previous is None or done * 10 // total != previous[0] * 10 // max(previous[1], 1)):
            self._line(f"{job_id}: task {done} of {total}")

    def said(self, job_id: str, task: str, line: str) -> None:
        """What the job's log says now: shown in the live table (CI logs have build.log itself)."""
        with self.lock:
            self.now[job_id] = (task, line)

    def elapsed(self, job_id: str) -> float:
        start = self.started.get(job_id)
        if start is None:
            return 0.0
        return self.ended.get(job_id, time.monotonic()) - start

    def _line(self, text: str) -> None:
        with self.lock:
            self.stream.write(f"{datetime.now().strftime('%H:%M:%S')} {text}\n")
            self.stream.flush()

    def _table(self) -> Any:
        from rich.markup import escape
        from rich.table import Table

        table = Table(box=None, header_style="bold")
        for col in ("job", "state", "elapsed", "bitbake"):
            table.add_column(col)
        table.add_column("now", no_wrap=True, overflow="ellipsis", max_width=60, style="dim")
        with self.lock:
            for job_id, state in self.state.items():
                done, total = self.tasks.get(job_id, (0, 0))
                style, label = STYLE.get(state, ""), self.label(state)
                task, line = self.now.get(job_id, ("", "")) if state == Status.RUNNING else ("", "")
                table.add_row(
                    job_id,
                    f"[{style}]{label}[/]" if style else label,
                    f"{self.elapsed(job_id):5.0f}s" if job_id in self.started else "",
                    (f"task {done} of {total}" if total else "") + (f" {task}" if task else ""),
                    escape(line),
                )
        return table


def size_text(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


class TransferProgress:
    """Progress of a publish: a total bar and one bar per file being sent on a terminal; in CI a
    line per object and one per tenth of the bytes. Implements ``publish.Watcher``."""

    def __init__(self, *, live: bool | None = None, stream: Any = None):
        self.stream = stream or sys.stderr
        self.live = (self.stream.isatty() and not os.environ.get("CI")) if live is None else live
        self.lock = threading.Lock()
        self.total = 0
        self.sent = 0
        self._bars: Any = None
        self._tasks: dict[str, Any] = {}
        self._overall: Any = None

    def __enter__(self) -> TransferProgress:
        if self.live:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._bars = Progress(
                TextColumn("{task.description}", markup=False),
                BarColumn(),
                DownloadColumn(binary_units=True),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=Console(file=self.stream),
            )
            self._bars.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._bars is not None:
            self._bars.__exit__(kind, exc, tb)

    def start(self, plan: Any) -> None:
        self.total = plan.bytes
        if self._bars is not None:
            self._overall = self._bars.add_task("total", total=self.total)
        else:
            self._line(f"publishing {len(plan.items)} object(s), {size_text(self.total)}")

    def begin(self, item: Any) -> None:
        if self._bars is not None and item.size >= 1 << 20:
            with self.lock:
                self._tasks[item.key] = self._bars.add_task(item.key, total=item.size)

    def advance(self, item: Any, sent: int) -> None:
        with self.lock:
            before = self.sent
            self.sent += sent
            task = self._tasks.get(item.key)
        if self._bars is not None:
            self._bars.advance(self._overall, sent)
            if task is not None:
                self._bars.advance(task, sent)
        elif self.total and self.sent * 10 // self.total > before * 10 // self.total:
            self._line(f"sent {size_text(self.sent)} of {size_text(self.total)}")

    def done(self, item: Any, skipped: bool) -> None:
        with self.lock:
            task = self._tasks.pop(item.key, None)
        if self._bars is not None:
            if skipped:
                self._bars.advance(self._overall, item.size)
            if task is not None:
                self._bars.remove_task(task)
        else:
            self._line(f"{'present' if skipped else 'sent   '} {item.key} ({size_text(item.size)})")

    def _line(self, text: str) -> None:
        with self.lock:
            self.stream.write(f"{datetime.now().strftime('%H:%M:%S')} {text}\n")
            self.stream.flush()

"""Run many jobs: N at a time, the first of each (distro, arch, release) before its siblings,
keep-going, infrastructure retries, and a clean stop on Ctrl-C / SIGTERM (no container left)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType

from .buildjob import (
    FAILED,
    INFRA,
    INTERRUPTED,
    SKIPPED,
    SUCCESS,
    UP_TO_DATE,
    BuildContext,
    BuildResult,
    check_folders,
    mark_interrupted,
    paths,
    prepare,
    run_build,
)
from .errors import InfrastructureError
from .matrix import Job
from .runtime import Handle

Event = Callable[[str, str, str], None]  # job id, state, detail


@dataclass
class Options:
    jobs: int = 1
    keep_going: bool = False
    retries: int = 1  # infrastructure errors only


def group_of(ctx: BuildContext, job: Job) -> tuple[str, str, str]:
    return job.distro, ctx.catalog.boards[job.board].arch, job.release


class Scheduler:
    """Ctrl-C or SIGTERM during ``run`` kills every container, marks the jobs interrupted and
    returns; ``exit_code`` then says 130."""

    def __init__(self, ctx: BuildContext, opts: Options, on_event: Event, on_progress: Callable[[str, int, int], None]):
        self.ctx = ctx
        self.opts = opts
        self.on_event = on_event
        self.on_progress = on_progress
        self.handles: dict[str, Handle] = {}
        self.lock = threading.Lock()
        self.cancelled = threading.Event()
        self.prepared: dict[str, tuple[dict[str, object], str]] = {}

    def run(self, jobs: list[Job]) -> list[BuildResult]:
        """UserError, before anything starts, when --out, --cache or a job folder is unusable."""
        check_folders(self.ctx, jobs)
        results: dict[str, BuildResult] = {}
        with _signals_as_interrupt():
            try:
                self._run(jobs, results)
            except KeyboardInterrupt:
                self.cancel()
        for job in jobs:  # whatever an interrupt or an earlier failure left unbuilt
            if job.id not in results:
                interrupted = self.cancelled.is_set()
                state, why = (
                    (INTERRUPTED, "not started")
                    if interrupted
                    else (SKIPPED, "not built: an earlier job failed (use --keep-going)")
                )
                results[job.id] = BuildResult(job, state, paths(self.ctx, job)["job_dir"], error=why)
                self.on_event(job.id, state, why)
        return [results[j.id] for j in jobs]

    def _run(self, jobs: list[Job], results: dict[str, BuildResult]) -> None:
        pending: list[Job] = []
        for job in jobs:
            self.on_event(job.id, "checking", "")
            try:
                inputs, digest, cached = self._prepare(job)
            except InfrastructureError as exc:
                results[job.id] = BuildResult(job, INFRA, paths(self.ctx, job)["job_dir"], error=str(exc))
                self.on_event(job.id, INFRA, str(exc))
                continue
            if cached is not None:
                results[job.id] = cached
                self.on_event(job.id, UP_TO_DATE, "")
            else:
                self.prepared[job.id] = (inputs, digest)
                pending.append(job)
                self.on_event(job.id, "queued", "")
        leaders: dict[tuple[str, str, str], str] = {}
        for job in pending:
            leaders.setdefault(group_of(self.ctx, job), job.id)
        running: dict[Future[BuildResult], Job] = {}
        with ThreadPoolExecutor(max_workers=max(1, self.opts.jobs)) as pool:
            try:
                stop_new = False
                while pending or running:
                    for job in self._ready(pending, running, results, leaders):
                        if stop_new or self.cancelled.is_set():
                            break
                        running[pool.submit(self._build, job)] = job
                        pending.remove(job)
                    if not running:
                        break
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in done:
                        job = running.pop(future)
                        results[job.id] = self._result_of(future, job)
                        if results[job.id].status == FAILED and not self.opts.keep_going:
                            stop_new = True
            except KeyboardInterrupt:
                self.cancel()
                for future, job in running.items():
                    results[job.id] = self._result_of(future, job)
                    mark_interrupted(paths(self.ctx, job)["job_dir"])
                leaks = self.ctx.runtime.leftovers(self.ctx.session)
                if leaks:
                    self.on_event(
                        next(iter(running.values())).id if running else "cipbuild",
                        INFRA,
                        f"containers left behind: {', '.join(leaks)}",
                    )

    def _result_of(self, future: Future[BuildResult], job: Job) -> BuildResult:
        """The build's result; a build thread that died becomes an infrastructure error, not a crash."""
        try:
            return future.result()
        except BaseException as exc:
            state = INTERRUPTED if isinstance(exc, KeyboardInterrupt) else INFRA
            return BuildResult(job, state, paths(self.ctx, job)["job_dir"], error=f"{type(exc).__name__}: {exc}")

    def _prepare(self, job: Job) -> tuple[dict[str, object], str, BuildResult | None]:
        for attempt in range(self.opts.retries + 1):
            try:
                return prepare(self.ctx, job)
            except InfrastructureError:
                if attempt == self.opts.retries:
                    raise
                self.ctx.forget_image_digests()
        raise AssertionError("unreachable")

    def _ready(
        self,
        pending: list[Job],
        running: dict[Future[BuildResult], Job],
        results: dict[str, BuildResult],
        leaders: dict[tuple[str, str, str], str],
    ) -> Iterator[Job]:
        free = self.opts.jobs - len(running)
        for job in list(pending):
            if free <= 0:
                return
            leader = leaders[group_of(self.ctx, job)]
            if leader != job.id and leader not in results:
                continue  # its sibling that warms the sstate cache has not finished yet
            free -= 1
            yield job

    def _build(self, job: Job) -> BuildResult:
        attempts = 1 + self.opts.retries
        result: BuildResult | None = None
        for attempt in range(attempts):
            if self.cancelled.is_set():
                result = BuildResult(job, INTERRUPTED, paths(self.ctx, job)["job_dir"], error="not started")
                break
            self.on_event(job.id, "building", "" if attempt == 0 else "retry after infrastructure error")
            inputs, digest = self.prepared[job.id]
            try:
                result = run_build(
                    self.ctx,
                    job,
                    inputs,
                    digest,
                    lambda h: self._started(job, h),
                    self.on_progress,
                    attempt=attempt + 1,
                )
            finally:
                with self.lock:
                    self.handles.pop(job.id, None)
            if result.status != INFRA:
                break
        assert result is not None
        self.on_event(job.id, result.status, result.error)
        return result

    def _started(self, job: Job, handle: Handle) -> None:
        with self.lock:
            self.handles[job.id] = handle
        if self.cancelled.is_set():
            handle.kill()

    def cancel(self) -> None:
        """Stop every build now: kill their containers, let their threads record 'interrupted'."""
        self.cancelled.set()
        with self.lock:
            handles = list(self.handles.values())
        for handle in handles:
            handle.kill()


@contextmanager
def _signals_as_interrupt() -> Iterator[None]:
    """SIGTERM (a CI runner cancelling the job) stops builds the way Ctrl-C does."""

    def raise_interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def exit_code(results: list[BuildResult]) -> int:
    """0 all built, 4 infrastructure failure, 3 a build failed, 130 interrupted."""
    states = {r.status for r in results}
    if INTERRUPTED in states:
        return 130
    if INFRA in states:
        return 4
    if states - {SUCCESS, UP_TO_DATE}:
        return 3
    return 0


__all__ = ["FAILED", "Options", "Scheduler", "exit_code"]

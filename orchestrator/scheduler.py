"""Run many jobs: N at a time, the first of each (distro, arch, release) before its siblings,
keep-going, infrastructure retries, and a clean stop on Ctrl-C / SIGTERM (no container left)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

from .buildjob import BuildContext, BuildResult, Said, check_folders, mark_interrupted, paths, prepare, run_build
from .cancel import CancelToken, signals_cancel
from .diskuse import empty_trash_later
from .errors import InfrastructureError, InterruptError, UserError
from .kasfile import render
from .matrix import Job
from .rebuild import LAST_SUCCESS, why_rebuilt
from .retry import Retry
from .status import Status, raise_for, worst

Event = Callable[[str, Status, str], None]  # job id, state, detail
Prepared = tuple[dict[str, object], str, BuildResult | None]  # inputs, their digest, a result when up to date


@dataclass
class Options:
    jobs: int = 1
    keep_going: bool = False
    retries: int = 1  # infrastructure errors only


def group_of(ctx: BuildContext, job: Job) -> tuple[str, str, str]:
    return job.distro, ctx.catalog.boards[job.board].arch, job.release


class Scheduler:
    """Ctrl-C or SIGTERM during ``run`` cancels the token: every container is killed, the jobs are
    marked interrupted and ``run`` returns; ``raise_for`` then raises InterruptError (exit 130)."""

    def __init__(
        self,
        ctx: BuildContext,
        opts: Options,
        on_event: Event,
        on_progress: Callable[[str, int, int], None],
        token: CancelToken | None = None,
        after_job: Callable[[BuildResult], None] | None = None,
        on_said: Said | None = None,
    ):
        self.ctx = ctx
        self.opts = opts
        self.on_event = on_event
        self.on_progress = on_progress
        self.on_said = on_said  # bitbake's current task and the log's last line, as they come
        self.after_job = after_job  # called on this thread with each job's final result (e.g. to sign it)
        self.token = token or CancelToken()
        self.retry = Retry(opts.retries)
        self.prepared: dict[str, tuple[dict[str, object], str]] = {}
        self.needed_here: set[str] = set()  # first builds built here for their second builds

    def run(self, jobs: list[Job]) -> list[BuildResult]:
        """UserError, before anything starts, when --out, --cache or a job folder is unusable."""
        check_folders(self.ctx, jobs)
        empty_trash_later(self.ctx.out_dir)  # what an earlier run's remover did not finish
        results: dict[str, BuildResult] = {}
        with signals_cancel(self.token):
            self._run(jobs, results)
        for job in jobs:  # whatever an interrupt or an earlier failure left unbuilt
            if job.id not in results:
                self._settle(job, results, Status.SKIPPED, "not built: an earlier job failed (use --keep-going)")
        return [results[j.id] for j in jobs]

    def _settle(self, job: Job, results: dict[str, BuildResult], status: Status, why: str) -> None:
        """A job that was not built: interrupted when cancelled, ``status`` otherwise."""
        if self.token.cancelled:
            status, why = Status.INTERRUPTED, "not started"
        results[job.id] = BuildResult(job, status, paths(self.ctx, job)["job_dir"], error=why)
        self.on_event(job.id, status, why)

    def _run(self, jobs: list[Job], results: dict[str, BuildResult]) -> None:
        ids = {job.id for job in jobs}
        # a second build waits for its first: its inputs are the first's artifacts, so the first
        # is built here even when the store holds it (--skip-published)
        held = [job for job in jobs if job.follow_up and job.first.id in ids]
        self.needed_here = {job.first.id for job in held}
        pending: list[Job] = []
        for job in jobs:
            if self.token.cancelled:
                return
            if job not in held:
                self._check(job, results, pending, may_skip_published=job.id not in self.needed_here)
        leaders: dict[tuple[str, str, str], str] = {}
        for job in pending:
            leaders.setdefault(group_of(self.ctx, job), job.id)
        running: dict[Future[BuildResult], Job] = {}
        with ThreadPoolExecutor(max_workers=max(1, self.opts.jobs)) as pool:
            stop_new = False
            while pending or running or held:
                self._release(held, pending, results, leaders)
                for job in self._ready(pending, running, results, leaders):
                    if stop_new or self.token.cancelled:
                        break
                    running[pool.submit(self._build, job)] = job
                    pending.remove(job)
                if not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    job = running.pop(future)
                    results[job.id] = self._result_of(future, job)
                    self._finished(results[job.id])
                    if results[job.id].status == Status.FAILED and not self.opts.keep_going:
                        stop_new = True
        if self.token.cancelled:
            self._check_nothing_left(jobs)

    def _check(
        self, job: Job, results: dict[str, BuildResult], pending: list[Job], *, may_skip_published: bool
    ) -> None:
        """Work out whether ``job`` needs building: settled when not, queued in ``pending`` when it does."""
        self.on_event(job.id, Status.CHECKING, "")
        try:
            inputs, digest, cached = self._prepare(job, may_skip_published)
        except InterruptError:
            return
        except InfrastructureError as exc:
            self._settle(job, results, Status.INFRA_ERROR, str(exc))
            return
        except UserError as exc:  # a second build whose first build is not a good one
            self._settle(job, results, Status.SKIPPED, f"not built: {exc.message}")
            return
        if cached is not None:
            results[job.id] = cached
            self.on_event(job.id, cached.status, "")
            self._finished(cached)
        else:
            self.prepared[job.id] = (inputs, digest)
            pending.append(job)
            self.on_event(job.id, Status.QUEUED, self._why(job, inputs, digest))

    def _release(
        self,
        held: list[Job],
        pending: list[Job],
        results: dict[str, BuildResult],
        leaders: dict[tuple[str, str, str], str],
    ) -> None:
        """Check each second build whose first has finished: queue it when the first is good."""
        for job in [j for j in held if j.first.id in results]:
            held.remove(job)
            first = results[job.first.id].status  # never "published": a held job's first is built here
            if first not in (Status.SUCCESS, Status.UP_TO_DATE):
                self._settle(job, results, Status.SKIPPED, f"not built: its first build {job.first.id} is {first}")
                continue
            self._check(job, results, pending, may_skip_published=True)
            if job in pending:
                leaders.setdefault(group_of(self.ctx, job), job.id)

    def _why(self, job: Job, inputs: dict[str, object], digest: str) -> str:
        """One line on why the job is built (again): what changed since its last good build."""
        job_dir = paths(self.ctx, job)["job_dir"]
        why = why_rebuilt(job_dir, inputs, digest, render(self.ctx.catalog, job), forced=self.ctx.force)
        return f"rebuilt: {why.summary}" if (job_dir / LAST_SUCCESS).exists() else why.summary

    def _finished(self, result: BuildResult) -> None:
        if (
            result.job.id in self.needed_here
            and result.status in (Status.SUCCESS, Status.UP_TO_DATE)
            and self.ctx.published.get(result.job.id) == result.inputs_digest
        ):
            result.in_store = True
        if self.after_job is not None:
            self.after_job(result)

    def _check_nothing_left(self, jobs: list[Job]) -> None:
        """After a cancel: no job may still claim to be running, no container may be left."""
        for job in jobs:
            mark_interrupted(paths(self.ctx, job)["job_dir"])
        leaks = self.ctx.runtime.leftovers(self.ctx.session)
        if leaks:
            self.on_event("cipbuild", Status.INFRA_ERROR, f"containers left behind: {', '.join(leaks)}")

    def _result_of(self, future: Future[BuildResult], job: Job) -> BuildResult:
        """The build's result; a build thread that died becomes an infrastructure error, not a crash."""
        try:
            return future.result()
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            return BuildResult(job, Status.INFRA_ERROR, paths(self.ctx, job)["job_dir"], error=error)

    def _prepare(self, job: Job, may_skip_published: bool) -> Prepared:
        """The job's inputs and digest; an image pull may take long, a cancel does not wait for it."""
        return self.retry.run(
            lambda _: self.token.call(lambda: prepare(self.ctx, job, may_skip_published=may_skip_published)),
            self.token,
            before_retry=lambda _: self.ctx.forget_image_digests(),
        )

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
        inputs, digest = self.prepared[job.id]

        def attempt(number: int) -> BuildResult:
            self.on_event(job.id, Status.RUNNING, "" if number == 1 else "retry after infrastructure error")
            return run_build(
                self.ctx, job, inputs, digest, self.token, self.on_progress, attempt=number, said=self.on_said
            )

        try:
            result = self.retry.run(attempt, self.token, infra=lambda r: r.status == Status.INFRA_ERROR)
        except InterruptError:
            result = BuildResult(job, Status.INTERRUPTED, paths(self.ctx, job)["job_dir"], error="not started")
        self.on_event(job.id, result.status, result.error)
        return result

    def cancel(self) -> None:
        """Stop every build now: kill their containers, let their threads record 'interrupted'."""
        self.token.cancel()


def exit_code(results: list[BuildResult]) -> int:
    """0 all built, 4 infrastructure failure, 3 a build failed, 130 interrupted."""
    return worst(r.status for r in results).exit_code


def check_results(results: list[BuildResult]) -> None:
    """Raise what the results amount to (BuildError, InfrastructureError, InterruptError), naming the
    jobs; return when every job is built or up to date."""
    raise_for(((r.job.id, r.status) for r in results), "job")


__all__ = ["Options", "Scheduler", "check_results", "exit_code"]

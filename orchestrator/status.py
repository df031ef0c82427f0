"""The status of one step of work: a job's build today, a signing, an upload or a test run later.

The string values are what metadata.json and every ``--json`` output carry. A final status says
which error of the hierarchy it amounts to, and so which exit code (``errors``); a step that is
not final yet amounts to none.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from .errors import BuildError, CipbuildError, InfrastructureError, InterruptError


class Status(StrEnum):
    PENDING = "pending"
    CHECKING = "checking"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCESS = "success"
    UP_TO_DATE = "up-to-date"
    PUBLISHED = "published"  # not built here: the store holds a build of the same inputs
    FAILED = "failed"
    SKIPPED = "skipped"  # not done because an earlier step failed
    INFRA_ERROR = "infra-error"
    INTERRUPTED = "interrupted"

    @property
    def final(self) -> bool:
        return self not in _UNDER_WAY

    @property
    def ok(self) -> bool:
        return self in (Status.SUCCESS, Status.UP_TO_DATE, Status.PUBLISHED)

    @property
    def error(self) -> type[CipbuildError] | None:
        """The error this outcome amounts to; None for a success or a step still under way."""
        return _ERRORS.get(self)

    @property
    def exit_code(self) -> int:
        error = self.error
        return 0 if error is None else error.exit_code


_UNDER_WAY = frozenset({Status.PENDING, Status.CHECKING, Status.QUEUED, Status.RUNNING})
_ERRORS: dict[Status, type[CipbuildError]] = {
    Status.FAILED: BuildError,
    Status.SKIPPED: BuildError,
    Status.INFRA_ERROR: InfrastructureError,
    Status.INTERRUPTED: InterruptError,
}
# When steps end differently, the one that decides the outcome: an interrupt over the
# infrastructure over a failure.
_SAID = {Status.INFRA_ERROR: "hit an infrastructure error", Status.FAILED: "failed", Status.SKIPPED: "not run"}
_PRECEDENCE = (Status.INTERRUPTED, Status.INFRA_ERROR, Status.FAILED, Status.SKIPPED)


def worst(statuses: Iterable[Status]) -> Status:
    """The status that decides the outcome of many steps (SUCCESS when none went wrong)."""
    seen = set(statuses)
    return next((s for s in _PRECEDENCE if s in seen), Status.SUCCESS)


def raise_for(outcomes: Iterable[tuple[str, Status]], what: str = "step") -> None:
    """Raise the error that many steps' outcomes amount to, naming those of the deciding status;
    return when every one succeeded. ``outcomes`` pairs each step's name with its status."""
    pairs = list(outcomes)
    decisive = worst(s for _, s in pairs)
    error = decisive.error
    if error is None:
        return
    if decisive == Status.INTERRUPTED:
        raise error("interrupted")
    names = [name for name, status in pairs if status == decisive]
    plural = what if len(pairs) == 1 else f"{what}s"
    raise error(f"{len(names)} of {len(pairs)} {plural} {_SAID[decisive]}: {', '.join(names)}")

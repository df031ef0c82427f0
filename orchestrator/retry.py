"""One retry policy for every step that talks to something that can fail us: a bounded number of
attempts, for infrastructure errors only (a failed build or a bad signature is never retried)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from .cancel import CancelToken
from .errors import InfrastructureError

T = TypeVar("T")


@dataclass(frozen=True)
class Retry:
    """``retries`` more attempts after the first, ``delay`` seconds apart (a cancel cuts the delay)."""

    retries: int = 1
    delay: float = 0.0

    def run(
        self,
        attempt: Callable[[int], T],
        token: CancelToken,
        *,
        infra: Callable[[T], bool] = lambda _: False,
        before_retry: Callable[[int], None] = lambda _: None,
    ) -> T:
        """``attempt(n)`` for n = 1, 2, ... until it neither raises InfrastructureError nor returns
        what ``infra`` calls an infrastructure failure, or the attempts are used up (the last
        attempt's error is raised, its result returned). ``before_retry(n)`` runs before attempt n
        (n > 1). InterruptError when ``token`` is cancelled before an attempt."""
        last = self.retries + 1
        for number in range(1, last + 1):
            token.check()
            if number > 1:
                before_retry(number)
            try:
                result = attempt(number)
            except InfrastructureError:
                if number == last:
                    raise
            else:
                if number == last or not infra(result):
                    return result
            if self.delay and token.sleep(self.delay):
                token.check()
        raise AssertionError("unreachable")

"""The step model the build uses now and the trust, publish and test rooms will use: one status
enum mapped to the error hierarchy's exit codes, one cancel token, one retry policy."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from orchestrator.cancel import CancelToken, signals_cancel
from orchestrator.errors import BuildError, InfrastructureError, InterruptError
from orchestrator.retry import Retry
from orchestrator.status import Status, raise_for, worst


def test_each_final_status_implies_the_documented_exit_code() -> None:
    codes = {s: s.exit_code for s in Status if s.final}
    assert codes == {
        Status.SUCCESS: 0,
        Status.UP_TO_DATE: 0,
        Status.PUBLISHED: 0,
        Status.FAILED: 3,
        Status.SKIPPED: 3,
        Status.INFRA_ERROR: 4,
        Status.INTERRUPTED: 130,
    }
    assert not any(s.final for s in (Status.PENDING, Status.CHECKING, Status.QUEUED, Status.RUNNING))
    assert Status("infra-error") is Status.INFRA_ERROR  # the strings metadata.json carries


def test_an_interrupt_outweighs_the_infrastructure_which_outweighs_a_failure() -> None:
    assert worst([Status.SUCCESS, Status.UP_TO_DATE]) is Status.SUCCESS
    assert worst([Status.FAILED, Status.INFRA_ERROR]) is Status.INFRA_ERROR
    assert worst([Status.INFRA_ERROR, Status.INTERRUPTED, Status.FAILED]) is Status.INTERRUPTED
    raise_for([("a", Status.SUCCESS), ("b", Status.UP_TO_DATE)], "job")
    with pytest.raises(BuildError, match=r"^1 of 2 jobs failed: b$"):
        raise_for([("a", Status.SUCCESS), ("b", Status.FAILED)], "job")
    with pytest.raises(InfrastructureError, match="1 of 2 jobs hit an infrastructure error: a"):
        raise_for([("a", Status.INFRA_ERROR), ("b", Status.FAILED)], "job")
    with pytest.raises(InterruptError) as caught:
        raise_for([("a", Status.INTERRUPTED)], "job")
    assert caught.value.exit_code == 130


def test_the_retry_policy_retries_the_infrastructure_only_and_only_so_often() -> None:
    token, calls = CancelToken(), []

    def flaky(number: int) -> str:
        calls.append(number)
        raise InfrastructureError("engine gone")

    with pytest.raises(InfrastructureError):
        Retry(retries=1).run(flaky, token)
    assert calls == [1, 2]

    def broken(number: int) -> str:
        calls.append(number)
        raise BuildError("kas exited with 1")

    calls.clear()
    with pytest.raises(BuildError):
        Retry(retries=3).run(broken, token)
    assert calls == [1]
    # a result that says "infrastructure" is retried too; the last one is returned
    got = Retry(retries=2).run(lambda n: n, token, infra=lambda n: n < 2)
    assert got == 2


def test_a_cancel_stops_what_registered_and_cuts_a_wait_short() -> None:
    token, stopped = CancelToken(), []
    with token.on_cancel(lambda: stopped.append("first")):
        threading.Timer(0.1, token.cancel).start()
        start = time.monotonic()
        with pytest.raises(InterruptError):
            token.call(lambda: time.sleep(30))
        assert time.monotonic() - start < 5
    assert stopped == ["first"]
    with token.on_cancel(lambda: stopped.append("late")):
        pass
    assert stopped == ["first", "late"]  # registered after the cancel: stopped at once
    assert token.sleep(30) is True
    with pytest.raises(InterruptError):
        Retry().run(lambda n: n, token)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_and_sigterm_cancel_the_token_instead_of_raising(sig: signal.Signals) -> None:
    before = signal.getsignal(sig)
    with signals_cancel(CancelToken()) as token:
        os.kill(os.getpid(), sig)
        assert token.sleep(5) is True
    assert signal.getsignal(sig) == before

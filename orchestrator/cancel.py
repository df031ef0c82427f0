"""One way to stop long work: a token that Ctrl-C and SIGTERM cancel, that every long wait
checks, and that runs what was registered to stop (kill a container, abort an upload) at once.

Signals reach only the main thread; the token reaches every thread. Nothing else in cipbuild
catches KeyboardInterrupt.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TypeVar

from .errors import InterruptError

T = TypeVar("T")


class CancelToken:
    """Set once, never reset. Pass it to whatever waits long; one per command."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.RLock()  # a second signal may arrive while the first one's stops run
        self._stops: dict[int, Callable[[], None]] = {}
        self._next = 0

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def cancel(self) -> None:
        """Cancel, and run every registered stop (each once)."""
        with self._lock:
            self._event.set()
            stops = list(self._stops.values())
            self._stops.clear()
        for stop in stops:
            stop()

    def check(self) -> None:
        """Raise InterruptError when cancelled: call it between the steps of long work."""
        if self.cancelled:
            raise InterruptError("interrupted")

    def sleep(self, seconds: float) -> bool:
        """Wait ``seconds`` (a poll interval, a retry's delay); True when cancelled meanwhile."""
        return self._event.wait(seconds)

    @contextmanager
    def on_cancel(self, stop: Callable[[], None]) -> Iterator[None]:
        """Run ``stop`` if the token is cancelled while inside (at once if it already is)."""
        with self._lock:
            already = self.cancelled
            key = self._next
            self._next += 1
            if not already:
                self._stops[key] = stop
        if already:
            stop()
        try:
            yield
        finally:
            with self._lock:
                self._stops.pop(key, None)

    def call(self, work: Callable[[], T]) -> T:
        """Run a blocking call that cannot watch the token itself (an image pull, an HTTP request)
        in a helper thread; its result, or InterruptError as soon as the token is cancelled (the call
        is then left to end on its own)."""
        self.check()
        value: list[T] = []
        error: list[BaseException] = []
        done = threading.Event()

        def run() -> None:
            try:
                value.append(work())
            except BaseException as exc:
                error.append(exc)
            finally:
                done.set()

        with self.on_cancel(done.set):
            threading.Thread(target=run, name="cipbuild-call", daemon=True).start()
            done.wait()
        if error:
            raise error[0]
        if not value:
            raise InterruptError("interrupted")
        return value[0]


@contextmanager
def signals_cancel(token: CancelToken) -> Iterator[CancelToken]:
    """While inside, SIGINT (Ctrl-C) and SIGTERM (a CI runner cancelling the job) cancel ``token``
    instead of raising KeyboardInterrupt. Only the main thread can take signals; elsewhere this
    does nothing and the caller cancels the token itself."""
    if threading.current_thread() is not threading.main_thread():
        yield token
        return

    requested = False

    def cancel(signum: int, frame: FrameType | None) -> None:
        # A second signal can arrive while the first one's handler is inside cancel(), holding
        # the event's lock; handled again there it would deadlock. The flag is set first.
        nonlocal requested
        if requested:
            return
        requested = True
        token.cancel()

    previous = {sig: signal.signal(sig, cancel) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield token
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

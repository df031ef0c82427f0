"""The cipbuild command line: one module per verb group, each command only wiring the rooms
together. ``main`` maps the error hierarchy to exit codes, as kas's single ``main()`` does."""

from __future__ import annotations

import contextlib
import errno
import importlib
import os
import signal
import sys

from ..errors import CipbuildError, OutputError
from ..output import GuardedStdout
from .app import app

__all__ = ["app", "main"]

# Each module registers its verbs on ``app``; `cipbuild --help` lists them in this order.
VERB_GROUPS = ("catalogue", "build", "image", "trust", "publish", "cache", "test", "boot", "ci", "release")
for _group in VERB_GROUPS:
    importlib.import_module(f".{_group}", __name__)


def main() -> None:
    guard = GuardedStdout(sys.stdout)
    sys.stdout = guard
    try:
        code = _run()
        guard.flush()
    except OutputError as exc:
        code = _output_failed(exc)
    finally:
        sys.stdout = guard.inner
    sys.exit(code)


def _run() -> int:
    try:
        app()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except OutputError:
        raise
    except CipbuildError as exc:
        if exc.exit_code == 1:
            raise
        sys.stderr.write(f"cipbuild: error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("cipbuild: interrupted\n")
        return 130
    return 0


def _output_failed(exc: OutputError) -> int:
    # Nothing more can reach the reader; keep the interpreter's final flush from failing again.
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    if exc.errno == errno.EPIPE:
        return 128 + signal.SIGPIPE  # the reader stopped reading, as `| head` does: no message
    sys.stderr.write(f"cipbuild: error: {exc}\n")
    return exc.exit_code

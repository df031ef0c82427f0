"""One exception hierarchy; ``cli.main`` maps it to exit codes."""

from __future__ import annotations

from pathlib import Path


class CipbuildError(Exception):
    """Base of every error cipbuild reports on purpose."""

    exit_code = 1


class UserError(CipbuildError):
    """Bad input: a config file, a CLI argument or an impossible request (exit 2)."""

    exit_code = 2

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None):
        self.where = where
        self.hint = hint
        self.message = message
        super().__init__(self.render())

    def render(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.hint:
            text += f" ({self.hint})"
        # one line, whatever a file or an argument smuggled into the message
        return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class ConfigError(UserError):
    """A catalogue or recipe file is wrong; ``where`` is ``file:line``."""

    def __init__(self, path: Path | str, line: int | None, message: str, *, hint: str | None = None):
        where = f"{path}:{line}" if line else str(path)
        super().__init__(message, where=where, hint=hint)


class BuildError(CipbuildError):
    """A build or a test failed (exit 3)."""

    exit_code = 3


class InfrastructureError(CipbuildError):
    """The container engine, network, S3 or LAVA failed us (exit 4)."""

    exit_code = 4


class InterruptError(CipbuildError):
    """Ctrl-C or SIGTERM stopped the work (exit 130)."""

    exit_code = 130


class VerificationError(CipbuildError):
    """A checksum or signature did not verify (exit 5)."""

    exit_code = 5


class OutputError(InfrastructureError):
    """Standard output cannot be written (a full disk, a closed pipe)."""

    def __init__(self, cause: OSError):
        self.errno = cause.errno
        super().__init__(f"cannot write to standard output: {cause.strerror or cause}")

"""Errors a user can cause: the entry points print their message and exit non-zero."""

from pathlib import Path


class UserError(Exception):
    """A mistake in the config, the data or the files, explained in the message."""


class ConfigError(UserError):
    """A config value that cannot work."""


class DataError(UserError):
    """Data set files missing, unreadable or inconsistent with the config."""


class CheckpointError(UserError):
    """A checkpoint or resume target that cannot be used."""


class OutputError(UserError):
    """The run directory cannot be written (disk full, read-only, ...)."""


class RunInUse(UserError):
    """Another process is training into these run dirs (a run or sweep resumed twice)."""

    def __init__(self, run_dirs: list[Path], message: str) -> None:
        super().__init__(message)
        self.run_dirs = run_dirs


class Interrupted(Exception):
    """Training was stopped by a signal (Ctrl-C, SIGTERM) after saving what it had."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum

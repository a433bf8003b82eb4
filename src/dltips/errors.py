"""Errors a user can cause: the entry points print their message and exit non-zero."""


class UserError(Exception):
    """A mistake in the config, the data or the files, explained in the message."""


class ConfigError(UserError):
    """A config value that cannot work."""


class DataError(UserError):
    """Data set files missing, unreadable or inconsistent with the config."""


class CheckpointError(UserError):
    """A checkpoint or resume target that cannot be used."""

"""Errors a user can act on. The CLI prints them as one line, without a traceback."""


class InfoviewError(Exception):
    """Bad input: the message names what was wrong and what was expected."""


class ConfigError(InfoviewError, ValueError):
    """An unknown key, a value of the wrong type, or a missing config file."""


class Interrupted(InfoviewError):
    """A run stopped by Ctrl-C or SIGTERM after saving its state; the CLI exits with 130."""

    exit_code = 130

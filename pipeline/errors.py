"""Errors the user can fix (bad data, bad config); the CLI prints their message without a traceback."""

from __future__ import annotations


class UNoiseError(Exception):
    """Base class for problems with the user's input: the message says what, where and how to fix it."""


class DataError(UNoiseError, ValueError):
    """A dataset, datalist or volume is missing, unreadable or inconsistent."""


class ConfigError(UNoiseError, ValueError):
    """A configuration key or value is unknown or invalid."""


def check_choice(name: str, value: object, choices: tuple) -> None:
    """Refuse a setting that is not one of its ``choices``, naming the setting and the choices."""
    if value not in choices:
        raise ConfigError(f"{name} must be one of {choices}, got {value!r}.")


class WriteError(UNoiseError, OSError):
    """A file could not be written (disk full, no permission, read-only folder); what was written before stays whole."""


def user_error(err: BaseException) -> UNoiseError | None:
    """Our own error (the user's input) inside MONAI's "Failed to evaluate ..." wrappers, if any.

    Only :class:`UNoiseError` counts: any other exception is a bug and keeps its traceback.
    """
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, UNoiseError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def failure_reason(err: BaseException) -> str:
    """One line for a case's record: our own message (the file and the fix), or the exception's type and first line."""
    ours = user_error(err)
    if ours is not None:
        return str(ours)
    return f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:300]}"


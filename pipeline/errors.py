"""Errors the user can fix (bad data, bad config); the CLI prints their message without a traceback."""

from __future__ import annotations


class UNoiseError(Exception):
    """Base class for problems with the user's input: the message says what, where and how to fix it."""


class DataError(UNoiseError, ValueError):
    """A dataset, datalist or volume is missing, unreadable or inconsistent."""


class ConfigError(UNoiseError, ValueError):
    """A configuration key or value is unknown or invalid."""

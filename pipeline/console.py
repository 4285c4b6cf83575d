"""What ``unoise`` prints: quiet by default, the full engine log with ``-v``.

Quiet: our own progress lines (one per epoch, one per case, the summaries) and every warning or error; the
engines' per-event logs (Ignite's "Engine run resuming", MONAI's StatsHandler and bundle input summary) are
dropped, and library warnings that tell a user nothing (deprecation notices, MONAI's notice that a bundle
config runs code) are filtered here, in the command line, not in the library: a ``python -m monai.bundle run``
or a notebook still sees them all. Verbose: the bundle's own ``logging.conf`` (MONAI's format) and every
warning, as ``python -m monai.bundle run`` prints them. Progress lines and warnings go to stderr, the commands'
results (summaries, tables) to stdout.
"""

from __future__ import annotations

import logging
import sys
import warnings

# Library loggers whose INFO lines are per-event engine chatter; their warnings still show.
ENGINE_LOGGERS = ("ignite", "monai.bundle.scripts", "monai.bundle.workflows", "monai.bundle.config_parser",
                  "monai.handlers.StatsHandler", "monai.apps", "highdicom")
# (category, message regex) of warnings that say nothing a user can act on.
FILTERED_WARNINGS = (
    (DeprecationWarning, ""),
    (FutureWarning, ""),
    (UserWarning, r"parsing config_file .*_target_"),  # MONAI: a bundle config runs code (ours, by design)
)


def _not_the_skipped_logging_notice(record: logging.LogRecord) -> bool:
    """MONAI warns that a run given ``logging_file=False`` skips its logging config: quiet runs do so on purpose."""
    return "skipping logging" not in record.getMessage()


def _not_a_user_error_echo(record: logging.LogRecord) -> bool:
    """The engines' own report of an exception that ``unoise`` prints itself as one ``error:`` line (ours, the user's
    input: :func:`pipeline.errors.user_error`): Ignite's "terminating due to exception" and a handler's logged
    traceback are dropped; a bug's traceback is printed by the command as before."""
    from pipeline.errors import user_error

    if record.getMessage().startswith("Engine run is terminating due to exception"):
        return False
    error = record.exc_info[1] if record.exc_info else None
    return error is None or user_error(error) is None


class _ConsoleFormatter(logging.Formatter):
    """``HH:MM:SS message``; warnings and errors say so (``HH:MM:SS WARNING message``)."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = self.formatTime(record, "%H:%M:%S")
        level = "" if record.levelno < logging.WARNING else f"{record.levelname} "
        text = f"{stamp} {level}{record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def _drop_console_handlers(logger: logging.Logger) -> None:
    """Our console handlers, and the plain stdout/stderr one a bundle's ``logging.conf`` installs on the root logger,
    from an earlier command in this process (others, e.g. pytest's capture, stay)."""
    for handler in list(logger.handlers):
        plain = type(handler) is logging.StreamHandler and getattr(handler, "stream", None) in (sys.stdout, sys.stderr)
        if getattr(handler, "_unoise_console", False) or (logger is logging.getLogger() and plain):
            logger.removeHandler(handler)


def configure_console(verbose: bool = False) -> str:
    """Set up logging and warnings for one ``unoise`` command; returns the bundle logging mode (``quiet`` or ``full``).

    Safe to call again in the same process (each command of a notebook or a test calls it): what an earlier call set
    is replaced, in either direction.
    """
    from pipeline.bundle import set_log_mode

    root = logging.getLogger()
    _drop_console_handlers(root)
    existing = [logging.getLogger(name) for name in ENGINE_LOGGERS if name in logging.root.manager.loggerDict]
    for engine_logger in existing:
        _drop_console_handlers(engine_logger)
    handler = logging.StreamHandler(sys.stdout if verbose else sys.stderr)
    handler._unoise_console = True  # type: ignore[attr-defined]
    root.setLevel(logging.INFO)
    logging.getLogger("pipeline").setLevel(logging.NOTSET)
    if verbose:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        for engine_logger in existing:  # loggers not made yet are left to MONAI's get_logger, which gives them a handler
            engine_logger.setLevel(logging.NOTSET)
            if not engine_logger.handlers and not engine_logger.propagate:  # made bare by an earlier quiet command
                echo = logging.StreamHandler(sys.stdout)
                echo._unoise_console = True  # type: ignore[attr-defined]
                echo.setFormatter(logging.Formatter("%(asctime)s - %(levelname)s - %(message)s"))
                engine_logger.addHandler(echo)
        for category, message in FILTERED_WARNINGS:  # in front of the quiet filters of an earlier command
            warnings.filterwarnings("default", message=message, category=category)
    else:
        handler.setFormatter(_ConsoleFormatter())
        for name in ENGINE_LOGGERS:
            # MONAI's get_logger gives its loggers their own handler unless the logger exists already; created here,
            # they keep none and stop propagating, so their INFO lines go nowhere and warnings reach stderr
            logging.getLogger(name).setLevel(logging.WARNING)
        handler.addFilter(_not_a_user_error_echo)
        for name in ENGINE_LOGGERS:
            engine_logger = logging.getLogger(name)
            if _not_a_user_error_echo not in engine_logger.filters:
                engine_logger.addFilter(_not_a_user_error_echo)
        workflows = logging.getLogger("monai.bundle.workflows")
        if _not_the_skipped_logging_notice not in workflows.filters:
            workflows.addFilter(_not_the_skipped_logging_notice)
        for category, message in FILTERED_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
    root.addHandler(handler)
    # MONAI's optional GPU DICOM decoder, missing on most machines, warns once per file read: never useful here
    warnings.filterwarnings("ignore", message=".*nvImageCodec.*")
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
    mode = "full" if verbose else "quiet"
    set_log_mode(mode)
    return mode


__all__ = ["ENGINE_LOGGERS", "FILTERED_WARNINGS", "configure_console"]

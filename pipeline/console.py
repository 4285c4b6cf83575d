"""What ``unoise`` prints: quiet by default, the full engine log with ``-v``.

Quiet: our own progress lines (one per epoch, one per case, the summaries) and every warning or error; the
engines' per-event logs (Ignite's "Engine run resuming", MONAI's StatsHandler and bundle input summary) are
dropped, and library warnings that tell a user nothing (deprecation notices, MONAI's notice that a bundle
config runs code) are filtered here, in the command line, not in the library: a ``python -m monai.bundle run``
or a notebook still sees them all. Verbose: the bundle's own ``logging.conf`` (MONAI's format) and every
warning, as ``python -m monai.bundle run`` prints them, plus our debug lines.
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


class _ConsoleFormatter(logging.Formatter):
    """``HH:MM:SS message``; warnings and errors say so (``HH:MM:SS WARNING message``)."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = self.formatTime(record, "%H:%M:%S")
        level = "" if record.levelno < logging.WARNING else f"{record.levelname} "
        text = f"{stamp} {level}{record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def configure_console(verbose: bool = False) -> str:
    """Set up logging and warnings for one ``unoise`` command; returns the bundle logging mode (``quiet`` or ``full``)."""
    from pipeline.bundle import set_log_mode

    root = logging.getLogger()
    for handler in list(root.handlers):  # ours from an earlier command in this process; others' (pytest's) stay
        if getattr(handler, "_unoise_console", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr if not verbose else sys.stdout)
    handler._unoise_console = True  # type: ignore[attr-defined]
    if verbose:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        root.setLevel(logging.INFO)
        logging.getLogger("pipeline").setLevel(logging.DEBUG)
    else:
        handler.setFormatter(_ConsoleFormatter())
        root.setLevel(logging.INFO)
        for name in ENGINE_LOGGERS:
            # MONAI's get_logger gives its loggers their own handler unless the logger exists already; created here,
            # they keep none and stop propagating, so their INFO lines go nowhere and warnings reach stderr
            logging.getLogger(name).setLevel(logging.WARNING)
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

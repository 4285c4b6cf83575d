"""Running the bundle's configs as ``python -m monai.bundle run`` does, with our checks around it.

The ``unoise`` command, the sanity check's retraining and the benchmark all start configs of
``bundles/pancreas_ct_unoise`` through :func:`run_bundle`: unknown override keys are refused first, and a
run refused for the user's input removes what it had created (a refusal leaves the disk as it was).
"""

from __future__ import annotations

import difflib
import json
import logging
import os
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError, UNoiseError

logger = logging.getLogger("pipeline")


def default_bundle_root() -> Path:
    """The bundle shipped with this checkout (``$UNOISE_BUNDLE`` overrides it)."""
    return Path(os.environ.get("UNOISE_BUNDLE", Path(__file__).resolve().parent.parent / "bundles" / "pancreas_ct_unoise"))


def check_override_keys(config_file: Path, overrides: dict[str, Any]) -> None:
    """Fail on an override that names no key of the config (``a#b`` reaches into nested dicts)."""
    config = json.loads(config_file.read_text())
    for key in overrides:
        node: Any = config
        for part in key.split("#"):
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                experiment = config.get("run_config")  # the experiment values; components are reachable too
                known = sorted(k for k in (experiment if isinstance(experiment, dict) else config) if k in config)
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"did you mean --{close[0]}? " if close else ""
                raise ConfigError(
                    f"unknown config key {key!r} for {config_file.name}; {hint}keys: {', '.join(known)}."
                )


def run_bundle(config: str, overrides: dict[str, Any], bundle_root: Path | None = None) -> None:
    """Run ``configs/<config>.json`` of the bundle with overrides, exactly as ``python -m monai.bundle run``."""
    from monai.bundle import run

    root = Path(bundle_root or default_bundle_root())
    config_file = root / "configs" / f"{config}.json"
    if not config_file.is_file():
        raise ConfigError(f"{config_file}: bundle config not found; set --bundle-root (or $UNOISE_BUNDLE) to the bundle folder.")
    check_override_keys(config_file, overrides)
    from pipeline.rundir import forget_created, release_all, roll_back

    try:
        run(
            config_file=str(config_file),
            meta_file=str(root / "configs" / "metadata.json"),
            logging_file=str(root / "configs" / "logging.conf"),
            bundle_root=str(root),
            **overrides,
        )
    except Exception as err:
        if user_error(err) is not None:  # a refusal: leave the disk as it was
            for path in roll_back():
                logger.info("refused: removed %s, which this run had created", path)
        raise
    finally:
        forget_created()
        release_all()  # the run folder's lock, on errors too


def user_error(err: BaseException) -> UNoiseError | None:
    """Our own error (the user's input) inside MONAI's "Failed to evaluate ..." wrappers, if any.

    Only :class:`~pipeline.errors.UNoiseError` counts: any other exception is a bug and keeps its traceback.
    """
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, UNoiseError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


__all__ = ["check_override_keys", "default_bundle_root", "run_bundle", "user_error"]

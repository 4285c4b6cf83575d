"""Running the bundle's configs as ``python -m monai.bundle run`` does, with our checks around it.

The ``unoise`` command, the sanity check's retraining and the benchmark all start configs of
``bundles/pancreas_ct_unoise`` through :func:`run_bundle`: unknown override keys are refused first, and a
run refused for the user's input removes what it had created (a refusal leaves the disk as it was).
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError, UNoiseError

logger = logging.getLogger("pipeline")


def default_bundle_root() -> Path:
    """The bundle shipped with this checkout (``$UNOISE_BUNDLE`` overrides it)."""
    return Path(os.environ.get("UNOISE_BUNDLE", Path(__file__).resolve().parent.parent / "bundles" / "pancreas_ct_unoise"))


COMMON_CONFIG = "common.json"  # layered under every run config: the preprocessing chain


def config_files(root: str | os.PathLike, config: str, overlays: Sequence[str] = ()) -> list[Path]:
    """The files ``monai.bundle run --config_file`` takes for one config: ``configs/common.json``, ``<config>.json``,
    then each overlay (e.g. ``train_3d`` for volumetric networks, ``multi_gpu_train``), later files winning."""
    configs = Path(root) / "configs"
    files = []
    for name in (config, *overlays):
        config_file = configs / f"{name}.json"
        if not config_file.is_file():
            raise ConfigError(f"{config_file}: bundle config not found; set --bundle-root (or $UNOISE_BUNDLE) to the bundle folder.")
        files.append(config_file)
    common = configs / COMMON_CONFIG
    if not common.is_file():
        raise ConfigError(f"{common}: the bundle's shared config is missing; every run config is layered on it.")
    return [common, *files]


def check_override_keys(config_file: Path | list[Path], overrides: dict[str, Any]) -> None:
    """Fail on an override that names no key of the config(s) (``a#b`` reaches into nested dicts).

    Several files are merged by MONAI's own ``ConfigParser.load_config_files``, as ``monai.bundle run`` merges them.
    """
    from monai.bundle import ConfigParser

    files = [config_file] if isinstance(config_file, (str, Path)) else list(config_file)
    config = ConfigParser.load_config_files([str(path) for path in files])  # merged as monai.bundle run merges them
    config_file = Path(files[-1])
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


_LOG_MODE = {"mode": "full"}


def set_log_mode(mode: str) -> None:
    """``full``: runs apply the bundle's ``configs/logging.conf``, as ``python -m monai.bundle run`` does; ``quiet``: they
    keep the logging the caller set up (``unoise``'s console, :mod:`pipeline.console`)."""
    if mode not in ("full", "quiet"):
        raise ValueError(f"log mode is full or quiet, got {mode!r}.")
    _LOG_MODE["mode"] = mode


def bundle_logging_file(root: str | Path) -> str | bool:
    """What a run of the bundle in ``root`` passes as MONAI's ``logging_file`` under the current log mode."""
    return str(Path(root) / "configs" / "logging.conf") if _LOG_MODE["mode"] == "full" else False


def run_bundle(config: str, overrides: dict[str, Any], bundle_root: Path | None = None, overlays: Sequence[str] = ()) -> None:
    """Run ``configs/<config>.json`` (on ``common.json``, under ``overlays``) with overrides, exactly as
    ``python -m monai.bundle run`` (its logging config applied unless :func:`set_log_mode` said ``quiet``)."""
    from monai.bundle import run

    root = Path(bundle_root or default_bundle_root())
    files = config_files(root, config, overlays)
    check_override_keys(files, overrides)
    from pipeline.rundir import forget_created, release_all, roll_back

    try:
        run(
            config_file=[str(path) for path in files],
            meta_file=str(root / "configs" / "metadata.json"),
            logging_file=bundle_logging_file(root),
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


__all__ = ["COMMON_CONFIG", "bundle_logging_file", "check_override_keys", "config_files", "default_bundle_root", "run_bundle", "set_log_mode",
           "user_error"]

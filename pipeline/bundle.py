"""Running the bundle's configs as ``python -m monai.bundle run`` does, with our checks around it.

The ``unoise`` command, the sanity check's retraining and the benchmark all start configs of
``bundles/pancreas_ct_unoise`` through :func:`run_bundle`: unknown override keys are refused first, and a
run refused for the user's input removes what it had created (a refusal leaves the disk as it was).
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError, user_error
from pipeline.locations import COMMON_CONFIG, default_bundle_root

logger = logging.getLogger("pipeline")




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


BUNDLE_PATH = re.compile(r"^\$@bundle_root\s*\+\s*(['\"])[^'\"@$]*\1$")  # "$@bundle_root + '/models/model.pt'"


def is_setting(value: Any) -> bool:
    """A setting is a plain value written in the config: a number, a bool, null, a string that is not an
    expression (``$``), a reference (``@``) or a macro (``%``), or a list / dict of those (no ``_target_``); or a
    path inside the bundle written as model-zoo bundles write it (``"$@bundle_root + '/models/model.pt'"``)."""
    if isinstance(value, str):
        return bool(BUNDLE_PATH.match(value)) or not value.startswith(("$", "@", "%"))
    if isinstance(value, dict):
        return "_target_" not in value and all(is_setting(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return all(is_setting(item) for item in value)
    return value is None or isinstance(value, (bool, int, float))


def setting_names(config: dict[str, Any]) -> list[str]:
    """The settings of a merged config: its top-level keys whose value is a setting (:func:`is_setting`), in order.

    This is the one list of what a run can be told (``--key value``), what it records (``config.json``, the
    checkpoint's meta) and what the evaluation reads: each setting is written once, as a top-level key of a
    bundle config, and found here; nothing keeps a copy of the list.
    """
    return [key for key, value in config.items() if not key.startswith("_") and key != "imports" and is_setting(value)]


def run_settings() -> dict[str, Any]:
    """The running config's settings with the run's overrides applied: ``{name: value}`` for :func:`setting_names`.

    Called from the configs themselves (``"run_config": "$dict(pipeline.bundle.run_settings(), ...)"``), so it works
    under ``python -m monai.bundle run`` as under ``unoise``. MONAI gives a config expression no handle on its
    parser, so this finds the parser's ``ReferenceResolver`` on the call stack (the one evaluating this
    expression): its items are the merged config after overrides.

    Raises:
        RuntimeError: called outside the evaluation of a bundle config.
    """
    import inspect

    from monai.bundle.reference_resolver import ReferenceResolver

    frame = inspect.currentframe()
    while frame is not None:
        resolver = frame.f_locals.get("self")
        if isinstance(resolver, ReferenceResolver):
            top = {item_id: item.get_config() for item_id, item in resolver.items.items()
                   if item_id and "::" not in item_id and "#" not in item_id}
            return {name: resolver.get_resolved_content(name) for name in setting_names(top)}
        frame = frame.f_back
    raise RuntimeError("run_settings() reads the settings of the config being parsed; call it from a bundle config.")


def call_with_settings(function: Callable[..., Any], settings: dict[str, Any], /, **components: Any) -> Any:
    """Call ``function`` with each of its parameters taken from ``settings`` (the run's: :func:`run_settings`) or from
    ``components`` (what the config built), so a config passes one settings object instead of a reference per
    parameter. A parameter found in neither is refused: the config must define it (a default in Python would be
    a second source).

    Raises:
        ConfigError: ``function`` needs a parameter that is neither a setting nor a component.
    """
    import inspect

    parameters = inspect.signature(function).parameters
    missing = [name for name, parameter in parameters.items() if name not in settings and name not in components
               and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)]
    if missing:
        raise ConfigError(f"{function.__module__}.{function.__qualname__} needs settings the config does not define: "
                          f"{', '.join(missing)}; add them to the bundle config.")
    chosen = {name: settings[name] for name in parameters if name in settings and name not in components}
    return function(**chosen, **components)


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
                known = sorted(setting_names(config))  # the settings; components are reachable too (a#b)
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"did you mean --{close[0].replace('_', '-')}? " if close else ""
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


def bundle_workflow(config: str, overrides: dict[str, Any], bundle_root: Path | None = None, overlays: Sequence[str] = (),
                    logging_file: str | bool | None = None, init_id: str = "initialize", quiet: bool = False) -> Any:
    """MONAI's ``ConfigWorkflow`` for ``configs/<config>.json`` (on ``common.json``, under ``overlays``), built by
    ``monai.bundle.create_workflow`` as ``monai.bundle run`` builds it, with ``overrides`` checked against the configs'
    keys first; initialised (``init_id`` run), ready to ``run()`` and ``finalize()``. ``logging_file`` None: the
    bundle's ``logging.conf`` under the current log mode (:func:`set_log_mode`). ``quiet``: without MONAI's input
    summary and logging notices (the Python API builds its explainer this way)."""
    import warnings

    from monai.bundle import create_workflow

    root = Path(bundle_root or default_bundle_root())
    files = config_files(root, config, overlays)
    check_override_keys(files, overrides)
    loggers = [logging.getLogger(name) for name in ("monai.bundle.scripts", "monai.bundle.workflows")] if quiet else []
    levels = [item.level for item in loggers]
    try:
        for item in loggers:
            item.setLevel(logging.ERROR)
        with warnings.catch_warnings():  # MONAI's notice that configs run code: the bundle's own, run on purpose
            warnings.filterwarnings("ignore", message="parsing config_file")
            return create_workflow(config_file=[str(path) for path in files],
                                   meta_file=str(root / "configs" / "metadata.json"),
                                   logging_file=bundle_logging_file(root) if logging_file is None else logging_file,
                                   init_id=init_id, bundle_root=str(root), **overrides)
    finally:
        for item, level in zip(loggers, levels):
            item.setLevel(level)


def run_bundle(config: str, overrides: dict[str, Any], bundle_root: Path | None = None, overlays: Sequence[str] = ()) -> None:
    """Run ``configs/<config>.json`` (on ``common.json``, under ``overlays``) with overrides, as
    ``python -m monai.bundle run`` does (:func:`bundle_workflow`: initialize, run, finalize); a refusal of the
    user's input rolls back the folders the run created, and the run folder's lock goes, on errors too."""
    from pipeline.rundir import forget_created, release_all, roll_back

    try:
        workflow = bundle_workflow(config, overrides, bundle_root, overlays)
        workflow.run()
        workflow.finalize()
    except Exception as err:
        if user_error(err) is not None:  # a refusal: leave the disk as it was
            for path in roll_back():
                logger.info("refused: removed %s, which this run had created", path)
        raise
    finally:
        forget_created()
        release_all()  # the run folder's lock, on errors too


__all__ = [
    "COMMON_CONFIG", "bundle_logging_file", "bundle_workflow", "call_with_settings", "check_override_keys",
    "config_files", "default_bundle_root", "is_setting", "run_bundle", "run_settings", "set_log_mode",
    "setting_names"
]

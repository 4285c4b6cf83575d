"""A run's folder as the commands use it: refuse what would mix runs, then create, lock, and finish it.

The mechanisms (the lock, ``.tmp-*`` leftovers, what a refused run created) are in
:mod:`pipeline.rundir.lock`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from pipeline.networks.checkpoints import check_resume, load_checkpoint, reconcile_best
from pipeline.distributed import is_main_process
from pipeline.errors import ConfigError
from pipeline.fileio import write_json_atomic
from pipeline.rundir.lock import acquire_lock, check_run_kind, lock_is_held, record_created, release_lock, remove_temporaries

logger = logging.getLogger(__name__)


RESUME_DATA_KEYS = ("dataset_dir", "datalist_key", "window", "spatial_size", "pancreas_labels", "seed", "val_fraction",
                    "test_fraction", "utility_checkpoint", "utility_bundle", "target_channel", "utility_output",
                    "uncertainty_samples")  # besides the network


def check_run_dir(
    output_dir: str | os.PathLike,
    resume: bool,
    run_config: dict[str, Any],
    marker: str = "checkpoints/last.pt",
    expected_meta: dict[str, Any] | None = None,
) -> Path:
    """Every check of a run folder, creating and writing nothing (see :func:`prepare_run_dir`).

    The folder must not be a file, hold a run of another config (its ``config.json``), hold a run
    already (unless ``resume``), or be in use by another process. A resume needs ``last.pt``, the same
    kind of network (``expected_meta``) and the same data settings as the run's ``config.json``, and a
    readable ``metrics.json``.

    Raises:
        ConfigError: a folder problem, or a resume that would change the data.
        CheckpointError: a resume with a different network or checkpoint kind.
    """

    run_dir = Path(output_dir)
    last = run_dir / marker
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: exists and is not a folder; choose another --output.")
    check_run_kind(run_dir, str(run_config.get("config", "")))
    if is_main_process() and lock_is_held(run_dir):  # the other ranks of this run see rank 0's lock
        raise ConfigError(f"{run_dir}: in use by another run ({run_dir / '.lock'}); wait for it to finish or choose another --output.")
    if last.exists() and not resume:
        hint = ("pass --resume (unoise) or --resume true (monai.bundle run) to continue it, or choose another --output"
                if marker == "checkpoints/last.pt" else "choose another --output")
        raise ConfigError(f"{run_dir}: already holds a run ({last}); {hint}.")
    if resume and not last.exists():
        raise ConfigError(f"{run_dir}: --resume was asked for but {last} does not exist; start a new run without --resume.")
    if resume:
        if expected_meta is not None:
            check_resume(load_checkpoint(last).get("meta", {}), expected_meta, last)
        _check_resume_data(run_dir, run_config)
    return run_dir


def _same(key: str, recorded: Any, asked: Any) -> bool:
    if key in ("dataset_dir", "utility_checkpoint") and recorded is not None and asked is not None:
        return os.path.abspath(os.path.expanduser(str(recorded))) == os.path.abspath(os.path.expanduser(str(asked)))
    return recorded == asked


def _check_resume_data(run_dir: Path, run_config: dict[str, Any]) -> None:
    """A resume continues on the run's own data: its config.json settings and a readable metrics.json."""
    import json

    record, metrics = run_dir / "config.json", run_dir / "metrics.json"
    for path in (record, metrics):
        if path.exists():
            try:
                json.loads(path.read_text())
            except (OSError, ValueError) as err:
                raise ConfigError(f"{path}: cannot be read ({err}); the run folder is damaged: start a new run.") from err
    if not record.is_file():
        return
    recorded = json.loads(record.read_text())
    differ = [f"{key} {recorded[key]!r} in the run, {run_config[key]!r} asked for" for key in RESUME_DATA_KEYS
              if key in recorded and key in run_config and not _same(key, recorded[key], run_config[key])]
    if differ:
        raise ConfigError(f"{record}: --resume would continue on other data ({'; '.join(differ)}); resume with the run's "
                          "own settings or start a new run in another --output.")


def prepare_run_dir(
    output_dir: str | os.PathLike,
    resume: bool,
    run_config: dict[str, Any],
    marker: str = "checkpoints/last.pt",
    subfolders: tuple[str, ...] = ("checkpoints", "tensorboard"),
    expected_meta: dict[str, Any] | None = None,
) -> Path:
    """Check (:func:`check_run_dir`), then lock and create ``RUN_DIR`` and write ``config.json``.

    A refused run leaves the disk as it was: every check runs before anything is created. Then the
    folder is locked against a second process (:mod:`pipeline.rundir`), leftover ``.tmp-*`` files of a
    killed run are removed, and best/last checkpoints are reconciled for the resume.

    Under several processes every rank checks the folder (so all fail alike), but only rank 0 creates it
    and writes ``config.json``; ``multi_gpu_train.json`` makes the other ranks wait for it.

    Args:
        output_dir: the run folder.
        resume: continue the run whose ``marker`` (``checkpoints/last.pt``) is there.
        run_config: the experiment values, written to ``RUN_DIR/config.json``; ``run_config["config"]``
            names the kind of run.
        marker: the file whose presence means "this folder holds a run".
        subfolders: folders created inside the run folder.
        expected_meta: the checkpoint meta this run writes; a resume compares it with ``last.pt``'s.

    Raises:
        ConfigError: the folder already holds a run (or another kind of run), ``resume`` has nothing to
            resume or would change the data, or another process holds the folder.
        CheckpointError: ``resume`` with a different network or checkpoint kind.
    """

    run_dir = check_run_dir(output_dir, resume, run_config, marker, expected_meta)
    if not is_main_process():
        return run_dir
    folder_is_new = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    acquire_lock(run_dir)  # before recording: a process refused here must not roll back the owner's folder
    remove_temporaries(run_dir)
    if resume and marker == "checkpoints/last.pt" and reconcile_best(run_dir / "checkpoints"):
        logger.info("%s: best.pt rebuilt from last.pt, whose epoch was the best when the previous run stopped", run_dir)
    for sub in subfolders:
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
    record = run_dir / ("config_resume.json" if resume else "config.json")
    record_created(run_dir, folder_is_new, [] if record.exists() else [record])
    write_json_atomic(run_config, record)
    return run_dir


def finish_run_dir(output_dir: str | os.PathLike) -> None:
    """Release the run folder's lock (the configs' ``finalize``; ``atexit`` does it on errors)."""

    release_lock(output_dir)


def prepare_output_dir(
    output_dir: str | os.PathLike, datalist: list[dict[str, Any]], suffixes: list[str], overwrite: bool = False
) -> Path:
    """Check, then create and lock the output folder of ``explain``; refuse to replace earlier outputs unless ``overwrite``.

    The folder must not hold another kind of run; once locked, ``.tmp-*`` leftovers of a killed run go.

    Args:
        output_dir: the folder.
        datalist: entries with ``case`` names; outputs are ``<case><suffix>``.
        suffixes: output name endings, e.g. ``_importance.nii.gz``.
        overwrite: replace existing outputs.

    Raises:
        ConfigError: outputs of these cases are already there and ``overwrite`` is false (names them), the
            folder holds another kind of run, or another process writes into it.
    """

    folder = Path(output_dir)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder}: exists and is not a folder; choose another --output.")
    check_run_kind(folder, "inference")
    cases = [str(entry["case"]) for entry in datalist]
    existing = [folder / f"{case}{suffix}" for case in cases for suffix in suffixes if (folder / f"{case}{suffix}").exists()]
    if existing and not overwrite:
        shown = ", ".join(p.name for p in existing[:3]) + (" ..." if len(existing) > 3 else "")
        raise ConfigError(f"{folder}: {len(existing)} output file(s) already exist ({shown}); choose another --output or pass --overwrite.")
    folder_is_new = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    acquire_lock(folder)  # before recording: a process refused here must not roll back the owner's folder
    record_created(folder, folder_is_new, [])
    remove_temporaries(folder)
    return folder


__all__ = ["RESUME_DATA_KEYS", "check_run_dir", "finish_run_dir", "prepare_output_dir", "prepare_run_dir"]

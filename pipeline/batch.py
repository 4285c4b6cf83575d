"""Batches of cases across runs and processes: which cases a re-run skips (done before with the same models and
settings), and how ``torchrun`` shares them out. Within a run, a case that cannot be read or processed is recorded
and skipped while the rest finish (:mod:`pipeline.engines.cases` and :class:`pipeline.handlers.ImportanceExporter`,
which keeps ``OUTPUT_DIR/manifest.json`` through :mod:`pipeline.outputs.manifest`).

Under ``torchrun`` (``configs/multi_gpu_inference.json``) the cases are shared out over the ranks (:func:`shard`):
rank 0 checks and locks the output folder for all (:func:`prepare_shared_output`), each rank explains its own
cases and records them in ``manifest.rank<r>.json`` as it goes, and at the end rank 0 merges every rank's records
into the one ``manifest.json`` (:func:`merge_shards`). In a single process each of these is the plain step.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any


from pipeline import distributed
from pipeline.data.validate import ON_ERROR, resolve_on_error  # one rule for explain, inspect and evaluate
from pipeline.errors import ConfigError
from pipeline.outputs.manifest import MANIFEST, latest_records, manifest_parts

logger = logging.getLogger(__name__)
# Settings that do not change what a case's outputs are (where they go, what else runs, how failures are handled).
NOT_OUTPUT_SETTINGS = ("bundle_root", "inputs", "output_dir", "overwrite", "on_error", "num_workers", "overlay_slices", "datalist_key")
# Output settings added later: a manifest written before them meant these values.
SETTING_DEFAULTS = {"output_format": "nifti", "resample_uneven": False, "utility_output": "segmentation", "uncertainty_samples": 16,
                    "rater_mode": "vote"}


def _same_outputs(run: dict[str, Any], provenance: dict[str, Any]) -> bool:
    """True when an earlier run used the same checkpoints (by SHA-256) and the same output-changing settings."""
    def hashes(record: dict[str, Any]) -> dict[str, str]:
        return {role: entry.get("sha256") for role, entry in record.get("checkpoints", {}).items()}

    def settings(record: dict[str, Any]) -> dict[str, Any]:
        config = {**SETTING_DEFAULTS, **record.get("config", {})}
        return {k: v for k, v in config.items() if k not in NOT_OUTPUT_SETTINGS and not k.endswith("checkpoint")}

    return hashes(run) == hashes(provenance) and settings(run) == settings(provenance)


def finished_cases(output_dir: str | os.PathLike, datalist: Sequence[dict[str, Any]], provenance: dict[str, Any],
                   suffixes: Sequence[str]) -> list[str]:
    """Cases of ``datalist`` that ``manifest.json`` lists as done by a run with the same checkpoints and settings,
    every output still in place (a re-run skips them; ``overwrite`` redoes them)."""
    wanted = {str(entry["case"]) for entry in datalist}
    done = []
    for record, run in latest_records(output_dir):  # with an interrupted torchrun run's part files, newest first
        # "skipped": a later run found it done with the same checkpoints and settings, so it still is
        if record.get("status") not in ("done", "skipped") or record.get("case") not in wanted:
            continue
        outputs_there = all((Path(output_dir) / name).is_file() for name in record.get("outputs", []))
        required = all((Path(output_dir) / f"{record['case']}{suffix}").is_file() for suffix in suffixes[:2])
        if outputs_there and required and _same_outputs(run, provenance):
            done.append(str(record["case"]))
    return done


def shard(entries: Sequence[dict[str, Any]], done: Sequence[str] = ()) -> list[dict[str, Any]]:
    """This rank's cases: every ``world_size``-th case still to do, from its rank on; rank 0 also takes the ``done``
    ones (recorded as skipped in no time), so the work is shared evenly. All of them in a single process."""
    entries, done_set = list(entries), set(done)
    rank, world = distributed.get_rank(), distributed.get_world_size()
    todo = [entry for entry in entries if str(entry["case"]) not in done_set][rank::world]
    skipped = [entry for entry in entries if str(entry["case"]) in done_set] if rank == 0 else []
    return skipped + todo


def prepare_shared_output(output_dir: str | os.PathLike, entries: Sequence[dict[str, Any]], suffixes: Sequence[str],
                          overwrite: bool) -> None:
    """:func:`pipeline.rundir.prepare_output_dir` on rank 0 for every rank; a refusal there is raised on every rank
    (so no rank waits for a run that will not happen)."""
    from pipeline.rundir import prepare_output_dir

    if not distributed.is_distributed():
        prepare_output_dir(output_dir, list(entries), list(suffixes), overwrite)
        return
    refusal, error = None, None
    if distributed.is_main_process():
        try:
            prepare_output_dir(output_dir, list(entries), list(suffixes), overwrite)
        except Exception as err:  # every rank must hear of it: the others would wait for rank 0 forever
            refusal, error = str(err), err
    refusal = distributed.gather_objects(refusal)[0]
    if error is not None:
        raise error
    if refusal is not None:
        raise ConfigError(refusal)


def merge_shards(exporter: Any, datalist: Sequence[dict[str, Any]] = (), device: Any = None) -> None:
    """Every rank's case records into rank 0's ``manifest.json``, in ``datalist`` order (a collective); the part files
    go. In a single process only the part files an interrupted ``torchrun`` run left go (the exporter's manifest has
    taken their records)."""
    if not distributed.is_distributed():
        if exporter.provenance is not None and (exporter.output_dir / MANIFEST).is_file():
            for part in manifest_parts(exporter.output_dir):
                part.unlink(missing_ok=True)
        return
    records = distributed.gather_objects(list(exporter.cases))
    if distributed.is_main_process():
        merged: dict[str, dict[str, Any]] = {}
        for rank_cases in records:
            for case in rank_cases:
                merged[case["case"]] = case
        order = {str(entry["case"]): index for index, entry in enumerate(datalist)}
        exporter.cases = sorted(merged.values(), key=lambda case: order.get(case["case"], len(order)))
        if exporter.provenance is not None:
            exporter.provenance["processes"] = distributed.get_world_size()
            exporter.write_manifest()
        for part in manifest_parts(exporter.output_dir):
            part.unlink(missing_ok=True)
    distributed.barrier(device)


__all__ = ["ON_ERROR", "finished_cases", "merge_shards", "prepare_shared_output", "resolve_on_error", "shard"]

"""One case's maps on disk: NIfTI on the input's grid, and DICOM SEG + Parametric Map for a DICOM series input."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import DataError
from pipeline.fileio import save_nifti

logger = logging.getLogger(__name__)


def maps_from_prediction(pred: np.ndarray) -> dict[str, np.ndarray]:
    """The written maps of a (2, ...) prediction (importance, the utility's probability): ``importance`` float32
    clipped to [0, 1] and ``seg`` uint8, 1 where the probability > 0.5; a third channel (a Probabilistic U-Net's
    predictive entropy in bits) becomes ``uncertainty``, float32 in [0, 1]."""
    maps = {"importance": np.clip(pred[0], 0.0, 1.0).astype(np.float32), "seg": (pred[1] > 0.5).astype(np.uint8)}
    if pred.shape[0] > 2:
        maps["uncertainty"] = np.clip(pred[2], 0.0, 1.0).astype(np.float32)
    return maps


def write_case_maps(output_dir: str | Path, case: str, maps: dict[str, np.ndarray], affine: np.ndarray,
                    description: str | None = None, aux_file: str | None = None) -> list[Path]:
    """``<case>_<name>.nii.gz`` for each map, atomically, on ``affine``; the written paths. All or none: when one
    fails, the ones this call wrote go."""
    written: list[Path] = []
    try:
        for name, array in maps.items():
            written.append(save_nifti(array, affine, Path(output_dir) / f"{case}_{name}.nii.gz", description, aux_file))
    except Exception:
        remove_written(written)
        raise
    return written


def remove_written(paths: list[Path]) -> None:
    """Remove the files a failed case wrote (exactly those: the caller tracked them as they were written)."""
    for path in paths:
        try:
            path.unlink(missing_ok=True)
        except OSError as err:
            logger.warning("%s: could not be removed after its case failed: %s", path, err)


def write_case_outputs(output_dir: str | Path, case: str, maps: dict[str, np.ndarray], affine: np.ndarray, source: Any,
                       output_format: str = "nifti", series: str | None = None, provenance: dict[str, Any] | None = None,
                       resampled: bool = False, aux_file: str | None = None, notes: list[str] | None = None) -> list[Path]:
    """One case's maps in ``output_format``: NIfTI (``nifti``), DICOM SEG + Parametric Map of a DICOM series ``source``
    (``dicom``), or both (DICOM where ``source`` is a series). The DICOM objects come first: their checks refuse before
    any file. A series ``resampled`` onto an even grid gets no DICOM objects (refused with ``dicom``; with ``both``
    NIfTI and a warning, as for any DICOM failure; the one-line reason is appended to ``notes``). NIfTI headers carry
    the short ``provenance``; the written paths.
    """
    notes = [] if notes is None else notes
    from pipeline.dicom.write import check_dicom_inputs, write_case_dicom
    from pipeline.outputs.provenance import short_provenance

    check_dicom_inputs([{"image": source}], output_format)
    written: list[Path] = []
    if resampled and output_format == "dicom":
        raise DataError(f"{source}: the series was resampled onto an even grid (--resample-uneven true), so its maps do "
                        "not lie on the series' own slices, as DICOM SEG and Parametric Map frames must: pass "
                        "--output-format nifti (or both: NIfTI for it, DICOM for the others).")
    if resampled and output_format == "both":
        notes.append("NIfTI maps only: resampled onto an even grid, so no DICOM SEG / Parametric Map")
        logger.warning("%s: %s", case, notes[-1])
    elif output_format != "nifti" and isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
        try:
            written += write_case_dicom(output_dir, case, maps, affine, source, series, provenance)
        except DataError as err:
            if output_format == "dicom":
                raise
            notes.append(f"NIfTI maps only, no DICOM outputs: {err}")
            logger.warning("%s: %s", case, notes[-1])
    if output_format != "dicom":
        description = short_provenance(provenance) if provenance else None
        try:
            written = write_case_maps(output_dir, case, maps, affine, description, aux_file) + written
        except Exception:  # the case's DICOM objects go with its NIfTI maps: all of a case or none
            remove_written(written)
            raise
    return written


__all__ = ["maps_from_prediction", "remove_written", "write_case_maps", "write_case_outputs"]

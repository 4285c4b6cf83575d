"""``unoise denoise`` (``configs/denoise_inference.json``): denoised CT volumes on the input's own grid, with a manifest.

Each input (NIfTI file, DICOM series folder, a folder or datalist of them) is read as it is stored (no reorientation,
no resizing), denoised axial slice by axial slice (along the volume's third voxel axis, the slice axis of CT as
scanned) by a ``train-denoiser`` checkpoint, and written as ``<case>_denoised.nii.gz``: a NIfTI input's header is
kept (same affine, same qform / sform), HU stored as float32 within CT's
stored range [-1024, 3071]. A DICOM series input is also written as a DICOM CT series,
``<case>_denoised/``, one file per slice with the source's patient and study, a new series UID and its description
saying what made it. ``manifest.json`` lists each case's input, outputs, status and seconds with the run's
provenance (the denoiser's SHA-256); a case that fails is recorded and the others go on.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.data import Denoised, LoadVolumed, collect_inputs
from pipeline.errors import ConfigError, failure_reason
from pipeline.fileio import atomic_path
from pipeline.networks.checkpoints import load_denoiser
from pipeline.outputs.manifest import Manifest
from pipeline.outputs.provenance import run_provenance

logger = logging.getLogger("pipeline")

OUTPUT_FORMATS = ("nifti", "both")
HU_RANGE = (-1024.0, 3071.0)


def _write_nifti(volume: np.ndarray, source: Any, affine: np.ndarray, path: Path) -> None:
    """``volume`` (X, Y, Z) HU as NIfTI: a NIfTI source's header is reused, else ``affine`` (RAS) is written."""
    import nibabel as nib

    if isinstance(source, (str, Path)) and str(source).endswith((".nii", ".nii.gz")):
        header = nib.load(str(source))
        image = nib.Nifti1Image(volume.astype(np.float32), header.affine, header.header)
        image.set_data_dtype(np.float32)
        image.header.set_slope_inter(1.0, 0.0)
    else:
        image = nib.Nifti1Image(volume.astype(np.float32), affine)
    with atomic_path(path) as tmp:  # same ending: nibabel writes gzipped NIfTI
        nib.save(image, str(tmp))


def _write_dicom(volume: np.ndarray, affine: np.ndarray, folder: Path, source_dir: str, series: str | None, mode: str) -> None:
    """A DICOM CT series of ``volume`` with the source series' patient and study, a new series."""
    import pydicom
    from pydicom.uid import generate_uid

    from pipeline.dicom.ct_series import write_dicom_series
    from pipeline.dicom.read import choose_dicom_series

    header = pydicom.dcmread(choose_dicom_series(source_dir, series).files[0], stop_before_pixels=True)  # the series read
    write_dicom_series(folder, np.rint(volume), affine, series_uid=generate_uid(),
                       study_uid=str(header.get("StudyInstanceUID", generate_uid())), prefix="denoised",
                       patient_name=str(header.get("PatientName", "")), patient_id=str(header.get("PatientID", "")),
                       description=f"denoised ({mode}, U-Noise train-denoiser)")


def denoise_cases(inputs: list[str], datalist_key: str, series: str | None, allow_outside_paths: bool, resample_uneven: bool,
                  denoiser_checkpoint: str, output_dir: str, output_format: str, overwrite: bool, run_config: dict[str, Any],
                  batch_size: int) -> dict[str, int]:
    """Denoise every input case into ``output_dir`` (see the module's docstring); returns the status counts."""
    if output_format not in OUTPUT_FORMATS:
        raise ConfigError(f"output_format must be one of {list(OUTPUT_FORMATS)} for denoise, got {output_format!r}.")
    entries = collect_inputs(inputs, datalist_key, series, allow_outside_paths, resample_uneven)
    network, meta = load_denoiser(denoiser_checkpoint)
    denoise = Denoised("image", network, float(meta["hu_scale"]), batch_size=batch_size)
    load = LoadVolumed("image")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(out, run_provenance({"denoiser": denoiser_checkpoint}, torch.device("cpu"), run_config))
    counts = {"done": 0, "skipped": 0, "failed": 0}
    for number, entry in enumerate(entries, 1):
        case, source, start = str(entry["case"]), entry["image"], time.perf_counter()
        target = out / f"{case}_denoised.nii.gz"
        is_dicom = Path(str(source)).is_dir()
        outputs = [target.name] + ([f"{case}_denoised/"] if is_dicom and output_format == "both" else [])
        if target.exists() and not overwrite:
            manifest.record(case, source, "skipped", None, 0.0, outputs)
            counts["skipped"] += 1
            continue
        try:
            data = load({k: v for k, v in entry.items() if k != "label"})
            image = data["image"]
            if image.shape[0] != 1:
                raise ConfigError(f"{source}: the denoiser takes one CT channel, this image has {image.shape[0]}.")
            if not torch.isfinite(image).all():
                raise ConfigError(f"{source}: holds NaN or infinite voxels; fix or drop the file.")
            clean = denoise({"image": image})["image"]
            volume = np.clip(clean[0].detach().cpu().numpy(), *HU_RANGE)  # CT's stored range: no air below -1024 HU
            affine = np.asarray(image.affine, np.float64)
            _write_nifti(volume, source, affine, target)
            if is_dicom and output_format == "both":
                _write_dicom(volume, affine, out / f"{case}_denoised", str(source), entry.get("series"), str(meta.get("denoise_mode", "")))
            manifest.record(case, source, "done", None, time.perf_counter() - start, outputs)
            counts["done"] += 1
            logger.info("%d/%d %s: denoised (%.1f s)", number, len(entries), case, time.perf_counter() - start)
        except Exception as err:  # a bad case is recorded; the batch goes on
            manifest.record(case, source, "failed", failure_reason(err), time.perf_counter() - start, [])
            counts["failed"] += 1
            logger.error("%s: %s", case, failure_reason(err))
    return counts


__all__ = ["OUTPUT_FORMATS", "denoise_cases"]

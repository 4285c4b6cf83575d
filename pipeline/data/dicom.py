"""A DICOM series read on the grid ITK, SimpleITK and 3D Slicer read from it: slices sorted by their position along
the slice normal (never by InstanceNumber, which may run against it or be shuffled), an even spacing checked
first, and SimpleITK's ``ImageSeriesReader`` doing the reading (rescale slope and intercept applied).

The volume comes back as a MONAI ``MetaTensor`` (X, Y, Z) in SimpleITK's voxel order with its affine in RAS+
mm (DICOM's LPS with x and y negated), as MONAI's ``LoadImage`` returns a NIfTI.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from monai.data import MetaTensor

from pipeline.errors import DataError

SPACING_TOLERANCE = 0.01  # relative: slices more than 1% off the median step are a gap or an uneven series


def sort_by_position(files: Sequence[str], folder: str | os.PathLike) -> tuple[list[str], float]:
    """The files sorted along the slice normal, and the slice step in mm.

    Raises:
        DataError: a slice without position or orientation, slices of different orientations, two slices at
            one position, or uneven steps (a gap or a mixed series), naming the positions.
    """
    import pydicom

    records = []
    orientation = None
    for path in files:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            header = pydicom.dcmread(path, stop_before_pixels=True,
                                     specific_tags=["ImagePositionPatient", "ImageOrientationPatient"])
        position = getattr(header, "ImagePositionPatient", None)
        cosines = getattr(header, "ImageOrientationPatient", None)
        if position is None or cosines is None or len(position) != 3 or len(cosines) != 6:
            raise DataError(f"{path}: no ImagePositionPatient / ImageOrientationPatient; the slices of {folder} cannot be "
                            "placed in space: re-export the series from the scanner or PACS.")
        cosines = np.asarray([float(v) for v in cosines])
        if orientation is None:
            orientation = cosines
        elif not np.allclose(cosines, orientation, atol=1e-4):
            raise DataError(f"{folder}: slices of different orientations ({path}); the folder mixes series or "
                            "localisers: move the localiser images out.")
        records.append((np.asarray([float(v) for v in position]), path))
    normal = np.cross(orientation[:3], orientation[3:])
    ordered = sorted(records, key=lambda item: float(item[0] @ normal))
    along = np.asarray([float(position @ normal) for position, _ in ordered])
    if len(along) < 2:
        return [path for _, path in ordered], 1.0
    steps = np.diff(along)
    step = float(np.median(steps))
    if step <= 0 or np.any(steps <= 1e-6):
        same = along[np.flatnonzero(steps <= 1e-6)[0]]
        raise DataError(f"{folder}: two slices at one position ({same:.2f} mm along the slice normal); the folder holds "
                        "duplicates or two series: keep one copy of each slice.")
    uneven = np.flatnonzero(np.abs(steps - step) > SPACING_TOLERANCE * step)
    if len(uneven):
        shown = ", ".join(f"{along[i]:.2f} -> {along[i + 1]:.2f} mm" for i in uneven[:3]) + (" ..." if len(uneven) > 3 else "")
        raise DataError(f"{folder}: uneven slice spacing (median {step:.2f} mm; {shown}): a missing slice or a mixed "
                        "series; re-export the complete series, or resample it to an even spacing first.")
    return [path for _, path in ordered], step


def read_dicom_series(files: Sequence[str], folder: str | os.PathLike) -> MetaTensor:
    """One series as a MetaTensor (X, Y, Z), float32 HU, with its RAS+ affine (``affine``, ``original_affine``)."""
    import SimpleITK as sitk

    ordered, _ = sort_by_position(files, folder)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(ordered)
    try:
        image = reader.Execute()
    except RuntimeError as err:
        raise DataError(f"{folder}: the DICOM series cannot be read ({str(err).strip().splitlines()[-1][:200]}); "
                        "a file may be truncated or corrupt: re-export it.") from err
    array = sitk.GetArrayFromImage(image).astype(np.float32).transpose(2, 1, 0)  # (Z, Y, X) -> (X, Y, Z)
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    affine = torch.as_tensor(np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps, dtype=torch.float64)
    meta = {"original_affine": affine.clone(), "spatial_shape": np.asarray(array.shape),
            "filename_or_obj": str(folder), "original_channel_dim": "no_channel", "space": "RAS"}
    return MetaTensor(torch.from_numpy(np.ascontiguousarray(array)), affine=affine, meta=meta)


__all__ = ["SPACING_TOLERANCE", "read_dicom_series", "sort_by_position"]

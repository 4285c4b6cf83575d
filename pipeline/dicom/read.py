"""A DICOM series found in a folder (one chosen when several are there, from headers only), then read on the
grid ITK, SimpleITK and 3D Slicer read from it: slices sorted by their position along
the slice normal (never by InstanceNumber, which may run against it or be shuffled), an even spacing checked
first, and SimpleITK's ``ImageSeriesReader`` doing the reading (rescale slope and intercept applied).

The volume comes back as a MONAI ``MetaTensor`` (X, Y, Z) in SimpleITK's voxel order with its affine in RAS+
mm (DICOM's LPS with x and y negated), as MONAI's ``LoadImage`` returns a NIfTI.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor

from pipeline.errors import DataError
from pipeline.fileio import MAX_VOXELS

SPACING_TOLERANCE = 0.01  # relative: slices more than 1% off the median step are a gap or an uneven series


def sort_by_position(files: Sequence[str], folder: str | os.PathLike, allow_uneven: bool = False) -> tuple[list[str], float]:
    """The files sorted along the slice normal, and the slice step in mm (the median step).

    Raises:
        DataError: a slice without position or orientation, slices of different orientations, two slices at
            one position, or (unless ``allow_uneven``) uneven steps (a gap or a mixed series), naming the positions.
    """
    ordered, _, step = slice_layout(files, folder, allow_uneven)
    return ordered, step


def slice_layout(files: Sequence[str], folder: str | os.PathLike,
                 allow_uneven: bool = False) -> tuple[list[str], np.ndarray, float]:
    """:func:`sort_by_position` with each sorted slice's position along the slice normal (mm): files, positions, step."""
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
        return [path for _, path in ordered], along, 1.0
    steps = np.diff(along)
    step = float(np.median(steps))
    if step <= 0 or np.any(steps <= 1e-6):
        same = along[np.flatnonzero(steps <= 1e-6)[0]]
        raise DataError(f"{folder}: two slices at one position ({same:.2f} mm along the slice normal); the folder holds "
                        "duplicates or two series: keep one copy of each slice.")
    if is_uneven(along, step) and not allow_uneven:
        uneven = np.flatnonzero(np.abs(steps - step) > SPACING_TOLERANCE * step)
        shown = ", ".join(f"{along[i]:.2f} -> {along[i + 1]:.2f} mm" for i in uneven[:3]) + (" ..." if len(uneven) > 3 else "")
        raise DataError(f"{folder}: uneven slice spacing (median {step:.2f} mm; {shown}): a missing slice or a mixed "
                        "series; re-export the complete series, or pass --resample-uneven true to resample it onto an "
                        "even grid.")
    return [path for _, path in ordered], along, step


def is_uneven(along: np.ndarray, step: float) -> bool:
    """Whether slices at positions ``along`` (mm, sorted) stray more than :data:`SPACING_TOLERANCE` from ``step``."""
    return bool(np.any(np.abs(np.diff(along) - step) > SPACING_TOLERANCE * step))


def even_positions(along: np.ndarray, step: float) -> np.ndarray:
    """The even grid of ``step`` mm from the first position ``along`` to (at most) the last."""
    return along[0] + step * np.arange(int(np.floor((along[-1] - along[0]) / step + 1e-6)) + 1)


def _read(files: Sequence[str], folder: str | os.PathLike) -> "sitk.Image":  # noqa: F821
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(files))
    try:
        return reader.Execute()
    except RuntimeError as err:
        raise DataError(f"{folder}: the DICOM series cannot be read ({str(err).strip().splitlines()[-1][:200]}); "
                        "a file may be truncated or corrupt: re-export it.") from err


def _lps_affine(image: "sitk.Image") -> np.ndarray:  # noqa: F821
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    return lps


def resample_even(slices: np.ndarray, along: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Slices (Z, Y, X) at positions ``along`` (mm, increasing) linearly interpolated onto an even grid of ``step``
    mm from the first position to (at most) the last: the grid's volume and its positions.

    Each voxel of the new grid mixes the two source slices around it, weighted by distance (a missing slice is
    the mean of its neighbours); positions on a source slice take that slice exactly.
    """
    target = even_positions(along, step)  # (Z',)
    upper = np.clip(np.searchsorted(along, target, side="right"), 1, len(along) - 1)  # the source slice above each
    lower = upper - 1
    weight = ((target - along[lower]) / (along[upper] - along[lower])).astype(np.float32)[:, None, None]
    volume = (1.0 - weight) * slices[lower] + weight * slices[upper]  # (Z', Y, X)
    return volume.astype(np.float32), target


def read_dicom_series(files: Sequence[str], folder: str | os.PathLike, resample_uneven: bool = False) -> MetaTensor:
    """One series as a MetaTensor (X, Y, Z), float32 HU, with its RAS+ affine (``affine``, ``original_affine``).

    An uneven series (a missing slice, mixed steps) is refused, or with ``resample_uneven`` read slice by slice
    and resampled linearly onto an even grid at the median step (:func:`resample_even`); its meta then says
    ``resampled_from`` (the source slice positions) and the maps are written on the even grid, not the source's
    slices (so no DICOM SEG / Parametric Map of it: those must lie frame for frame on the series).
    """
    import SimpleITK as sitk

    ordered, along, step = slice_layout(files, folder, allow_uneven=resample_uneven)
    resampled_from = None
    if resample_uneven and len(ordered) > 2 and is_uneven(along, step):  # an even series is read as it is, below

        first = _read(ordered[:1], folder)
        size, count = first.GetSize(), len(even_positions(along, step))  # (X, Y, 1)
        if count * size[0] * size[1] > MAX_VOXELS:
            raise DataError(f"{folder}: resampled at its median step of {step:.2f} mm the series would be {size[0]} x "
                            f"{size[1]} x {count} voxels, over the limit of {MAX_VOXELS:,}; its slices are too far "
                            "apart to resample: re-export the complete series.")
        lps = _lps_affine(first)
        normal = np.asarray(first.GetDirection()).reshape(3, 3)[:, 2]  # ITK's slice normal from the orientation
        stack = np.stack([sitk.GetArrayFromImage(_read([path], folder))[0] for path in ordered]).astype(np.float32)
        array_zyx, _ = resample_even(stack, along, step)  # (Z, Y, X) slice by slice: no averaged step
        lps[:3, 2] = normal * step
        resampled_from = along.round(4).tolist()
        array = array_zyx.transpose(2, 1, 0)  # (Z, Y, X) -> (X, Y, Z)
        affine = torch.as_tensor(np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps, dtype=torch.float64)
    if resampled_from is None:
        image = _read(ordered, folder)
        array = sitk.GetArrayFromImage(image).astype(np.float32).transpose(2, 1, 0)  # (Z, Y, X) -> (X, Y, Z)
        affine = torch.as_tensor(np.diag([-1.0, -1.0, 1.0, 1.0]) @ _lps_affine(image), dtype=torch.float64)
    meta = {"original_affine": affine.clone(), "spatial_shape": np.asarray(array.shape),
            "filename_or_obj": str(folder), "original_channel_dim": "no_channel", "space": "RAS"}
    if resampled_from is not None:
        meta["resampled_from"] = resampled_from
    return MetaTensor(torch.from_numpy(np.ascontiguousarray(array)), affine=affine, meta=meta)


__all__ = ["SPACING_TOLERANCE", "even_positions", "is_uneven", "read_dicom_series", "resample_even", "slice_layout",
           "sort_by_position"]


@dataclass(frozen=True)
class DicomSeries:
    """One series of a DICOM folder: its UID, files, and what helps a user tell series apart."""

    uid: str
    files: tuple[str, ...]
    description: str
    slice_thickness: str
    rows: int = 0
    columns: int = 0

    @property
    def voxels(self) -> int:
        return self.rows * self.columns * len(self.files)

    def describe(self) -> str:
        text = f"{self.uid} ({len(self.files)} files"
        if self.slice_thickness:
            text += f", {self.slice_thickness} mm"
        if self.description:
            text += f", '{self.description}'"
        return text + ")"


def list_dicom_series(folder: str | os.PathLike) -> list[DicomSeries]:
    """The DICOM series directly inside ``folder``, headers only (no pixel data is read).

    Raises:
        DataError: the folder holds no readable DICOM file.
    """
    import pydicom

    folder = Path(folder)
    groups: dict[str, list[str]] = {}
    info: dict[str, tuple[str, str]] = {}
    for child in sorted(folder.iterdir()):
        if not child.is_file():
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                header = pydicom.dcmread(str(child), stop_before_pixels=True,
                                         specific_tags=["SeriesInstanceUID", "SeriesDescription", "SliceThickness", "Rows", "Columns"])
        except Exception:  # not DICOM (a README, a thumbnail): the folder scan ignores it too
            continue
        uid = str(getattr(header, "SeriesInstanceUID", "") or "unknown")
        groups.setdefault(uid, []).append(str(child))
        description = " ".join(str(getattr(header, "SeriesDescription", "") or "").split())  # one line in messages
        info.setdefault(uid, (description, str(getattr(header, "SliceThickness", "") or ""),
                              int(getattr(header, "Rows", 0) or 0), int(getattr(header, "Columns", 0) or 0)))
    if not groups:
        raise DataError(f"{folder}: holds no readable DICOM file; pass the folder of one CT series.")
    return [DicomSeries(uid, tuple(files), *info[uid]) for uid, files in sorted(groups.items())]


def choose_dicom_series(folder: str | os.PathLike, series: str | None = None, max_voxels: int = MAX_VOXELS) -> DicomSeries:
    """The one series to read from a DICOM folder: the only one, or the one ``series`` names.

    Raises:
        DataError: several series and none chosen (they are listed), ``series`` is not in the folder, or
            the series holds more than ``max_voxels`` voxels (from its headers, before any pixel is read).
    """
    found = list_dicom_series(folder)
    chosen = None
    if series is not None:
        chosen = next((item for item in found if item.uid == str(series)), None)
        if chosen is None:
            raise DataError(f"{folder}: holds no series {series}; it holds {'; '.join(s.describe() for s in found)}.")
    elif len(found) > 1:
        raise DataError(
            f"{folder}: holds {len(found)} DICOM series, which would be merged into one wrong volume: "
            f"{'; '.join(s.describe() for s in found)}; pick one with --series UID or move each into its own folder."
        )
    chosen = chosen or found[0]
    if chosen.voxels > max_voxels:
        raise DataError(f"{folder}: series {chosen.uid} holds {chosen.rows} x {chosen.columns} x {len(chosen.files)} = "
                        f"{chosen.voxels:,} voxels, over the limit of {max_voxels:,}; crop or resample it.")
    return chosen

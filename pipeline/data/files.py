"""Checks on one file before it is read: NIfTI header against file size, paths, intensities (DICOM series:
:mod:`pipeline.dicom.read`).

These run before any voxel array is allocated, so a 400-byte file whose header claims billions of voxels
costs a header read, not gigabytes of memory. Every problem is a :class:`~pipeline.errors.DataError`
whose one-line message names the file, says what is wrong and how to fix it.
"""

from __future__ import annotations

import errno
import gzip
import logging
import os
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import DataError
from pipeline.fileio import MAX_VOXELS

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii.gz", ".nii")
CT_AIR_HU = -500.0  # a CT of the abdomen holds air (about -1000 HU) around the body or in the bowel
CT_MAX_HU = 35000.0  # beyond int16-with-extended-range scales: not HU


def resolve_input(path: str | os.PathLike) -> Path:
    """Absolute, symlink-free path of an input; a symlink loop or unreachable link is a DataError."""
    expanded = Path(os.path.expanduser(str(path)))
    try:
        os.stat(expanded)
    except FileNotFoundError:
        pass  # the caller says "not found" with its own hint
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise DataError(f"{expanded}: is a symlink loop ({err.strerror}); point the link at a real file or folder.") from err
    try:
        return expanded.resolve(strict=False)
    except (RuntimeError, OSError) as err:  # some Pythons raise on a loop here instead
        raise DataError(f"{expanded}: cannot be resolved ({err}); the path is a symlink loop: point it at a real file or folder.") from err


def check_inside(entry: str | os.PathLike, root: str | os.PathLike, allow_outside: bool, source: str | os.PathLike) -> Path:
    """Resolve a datalist path against its folder; refuse one that leaves it (``..`` or absolute).

    The test is on the path as written (symlinks inside the folder are followed afterwards, so a
    dataset whose ``imagesTr`` links to shared storage still loads).

    Args:
        entry: an image or label path as the datalist holds it.
        root: the dataset folder (the datalist file's folder).
        allow_outside: accept paths outside it (``--allow-outside-paths``).
        source: the datalist file, named in the error.

    Returns:
        The absolute path as written (normalised, symlinks kept, so that a split written from it reads
        back inside the folder).
    """
    expanded = Path(os.path.expanduser(str(entry)))
    joined = Path(os.path.normpath(os.path.join(os.path.abspath(root), expanded)))
    base = Path(os.path.abspath(root))
    if not allow_outside and joined != base and base not in joined.parents:
        raise DataError(
            f"{source}: entry {entry} lies outside the dataset folder {base}; move the file into the dataset "
            "folder, or pass --allow-outside-paths (config key allow_outside_paths: true) if paths outside it are intended."
        )
    resolve_input(joined)  # a symlink loop is refused here
    return joined


DEFLATE_MAX_RATIO = 1032  # deflate cannot expand more than about 1032:1 (RFC 1951 block limits)


def _gzip_size(path: Path) -> int:
    """Uncompressed size modulo 2**32 from a gzip trailer (ISIZE, RFC 1952; of the last member only)."""
    with open(path, "rb") as handle:
        handle.seek(-4, os.SEEK_END)
        return int.from_bytes(handle.read(4), "little")


def _check_gzip_holds(path: Path, size: int, expected: int, shape: tuple[int, ...]) -> None:
    """Refuse a ``.nii.gz`` that cannot hold ``expected`` bytes, without allocating them.

    First the bound no deflate stream can beat (a 400-byte file cannot hold gigabytes); then the
    trailer's size, which settles a plain single-member file at once; otherwise (several members,
    padding, sizes past 4 GiB) the stream is decompressed in 1 MiB chunks and counted.
    """
    def refuse(found: str) -> DataError:
        return DataError(f"{path}: the file is truncated or its header is corrupt: the header's shape {shape} needs "
                         f"{expected:,} bytes, {found}; re-export or re-download it.")

    if expected > DEFLATE_MAX_RATIO * size + 4096:
        raise refuse(f"a gzip file of {size:,} bytes holds at most about {DEFLATE_MAX_RATIO * size:,}")
    if expected < 2**32 and _gzip_size(path) == expected:
        return
    count = 0
    try:
        with gzip.open(path, "rb") as stream:
            while count < expected:
                chunk = stream.read(2**20)
                if not chunk:
                    break
                count += len(chunk)
    except (OSError, EOFError, zlib.error) as err:
        if count < expected:
            raise refuse(f"the stream ends after {count:,} ({type(err).__name__})") from err
    if count < expected:
        raise refuse(f"the file decompresses to {count:,}")


def check_nifti_header(path: str | os.PathLike, max_voxels: int = MAX_VOXELS) -> tuple[int, ...]:
    """Read only the header of a NIfTI file and check that it describes one 3D volume the file can hold.

    Checks: not empty, a readable header, exactly three dimensions (a trailing 1 is accepted), at most
    ``max_voxels`` voxels, and a voxel block that fits the file (``.nii``: file size; ``.nii.gz``: the
    gzip trailer's uncompressed size), so a truncated file or a lying header is refused before the
    voxels are read.

    Returns:
        The volume shape (X, Y, Z).

    Raises:
        DataError: the first problem found.
    """
    import nibabel as nib

    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise DataError(f"{path}: the file is empty (0 bytes); re-export or re-copy it.")
    try:
        image = nib.load(str(path))  # lazy: reads the header only
        header = image.header
        shape = tuple(int(s) for s in header.get_data_shape())
        itemsize = int(header.get_data_dtype().itemsize)
        offset = int(getattr(image.dataobj, "offset", 352))  # where the voxels start (vox_offset, after extensions)
    except Exception as err:  # nibabel raises ImageFileError, HeaderDataError, EOFError, gzip errors...
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{path}: not a readable NIfTI header ({reason}); the file is truncated or not NIfTI: re-export it.") from err
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise DataError(
            f"{path}: expected one 3D volume, the header says {len(shape)}D shape {shape}; "
            + ("export the whole 3D series, not one slice." if len(shape) < 3 else
               "split 4D files into one 3D volume per file (e.g. with nibabel or fslsplit).")
        )
    voxels = int(np.prod(shape, dtype=np.int64))
    if voxels == 0:
        raise DataError(f"{path}: the header's shape {shape} holds no voxel; re-export the volume.")
    if voxels > max_voxels:
        raise DataError(f"{path}: the header claims {shape} = {voxels:,} voxels, over the limit of {max_voxels:,}; "
                        "crop or resample the volume (or the header is corrupt).")
    expected = offset + voxels * itemsize
    if path.name.lower().endswith(".gz"):
        _check_gzip_holds(path, size, expected, shape)
    elif size < expected:
        raise DataError(
            f"{path}: the file is truncated or its header is corrupt: the header's shape {shape} needs "
            f"{expected:,} bytes, the file has {size:,}; re-export or re-download it."
        )
    return shape


def check_ct_intensity(low: float, high: float, path: str | os.PathLike, strict: bool = False) -> str | None:
    """Warn (or with ``strict`` refuse) when an image's range does not look like CT in Hounsfield units.

    A CT of the abdomen holds air around the body (about -1000 HU): a volume whose minimum is above
    -500 HU (floats in 0..1, MRI-like 0..4000, raw detector values) or whose maximum is beyond any HU
    scale would be windowed as HU and give a meaningless answer.

    Returns:
        The warning text, or None when the range looks like CT.

    Raises:
        DataError: with ``strict``, instead of the warning.
    """
    if low <= CT_AIR_HU and high <= CT_MAX_HU:
        return None
    message = (f"{path}: intensity range {low:g}..{high:g} does not look like CT in HU (air is about -1000 HU, "
               f"expected a minimum below {CT_AIR_HU:g}); apply the scanner's RescaleSlope/Intercept or convert to HU")
    if strict:
        raise DataError(message + "; refused under --strict.")
    logger.warning("%s; pass --strict to refuse such volumes.", message)
    return message

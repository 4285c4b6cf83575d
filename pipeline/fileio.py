"""Atomic file writes: a crash mid-write leaves the previous file intact and no partial file behind."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same name ending, so writers pick the same format);
    on success it is renamed over ``path``, on failure it is removed.

    Example::

        with atomic_path("out/case_importance.nii.gz") as tmp:
            nib.save(image, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{path.name}")
    try:
        yield tmp
        with open(tmp, "rb+") as stream:  # flush to disk before the rename makes it visible
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(content: Any, path: str | os.PathLike) -> Path:
    """Write ``content`` as indented JSON to ``path`` atomically (non-JSON values via ``str``)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(content, indent=2, default=str))
    return Path(path)


def save_nifti(array: np.ndarray, affine: np.ndarray, path: str | os.PathLike) -> Path:
    """Write a NIfTI with qform = sform = ``affine`` (code 1, scanner) and units mm, atomically.

    Only the voxels and the affine are written: no other header field is carried over from anywhere.
    """
    import nibabel as nib

    image = nib.Nifti1Image(array, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm")
    with atomic_path(path) as tmp:
        nib.save(image, tmp)
    return Path(path)

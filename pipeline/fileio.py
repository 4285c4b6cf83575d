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

FAULT_ENV = "UNOISE_FAULT_KILL"  # fault drills: "last.pt:2" kills this process at the 2nd write of last.pt
_writes: dict[str, int] = {}


def _fault_point(path: Path) -> None:
    """Kill the process with SIGKILL between writing a temporary file and renaming it, when asked.

    ``$UNOISE_FAULT_KILL`` = ``NAME[:N]`` names a file and the write (default the first) at which to die,
    exactly as a power cut or ``kill -9`` would: the drills in ``tests/test_faults.py`` use it to check that
    no half-written file ever appears under a final name and that the next run cleans up and resumes.
    """
    wanted = os.environ.get(FAULT_ENV)
    if not wanted:
        return
    name, _, count = wanted.partition(":")
    if path.name != name:
        return
    _writes[name] = _writes.get(name, 0) + 1
    if _writes[name] == int(count or 1):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def _fsync_folder(folder: Path) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # some file systems do not open folders; the rename is still atomic
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


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
        _fault_point(path)
        os.replace(tmp, path)
        _fsync_folder(path.parent)  # the rename itself survives a power cut: written files keep their order
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(content: Any, path: str | os.PathLike) -> Path:
    """Write ``content`` as indented JSON to ``path`` atomically (non-JSON values via ``str``)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(content, indent=2, default=str))
    return Path(path)


def save_nifti(array: np.ndarray, affine: np.ndarray, path: str | os.PathLike, description: str | None = None,
               aux_file: str | None = None) -> Path:
    """Write a NIfTI with qform = sform = ``affine`` (code 1, scanner) and units mm, atomically.

    Only the voxels, the affine and our own ``description`` / ``aux_file`` (the header's ``descrip``, 80 bytes,
    and ``aux_file``, 24 bytes: provenance) are written: no other header field is carried over from anywhere.
    """
    import nibabel as nib

    image = nib.Nifti1Image(array, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm")
    if description:
        image.header["descrip"] = description.encode("ascii", "replace")[:79]
    if aux_file:
        image.header["aux_file"] = aux_file.encode("ascii", "replace")[:23]
    with atomic_path(path) as tmp:
        nib.save(image, tmp)
    return Path(path)

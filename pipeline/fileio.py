"""Atomic file writes (a crash mid-write leaves the previous file intact and no partial file behind) and the
largest volume any reader accepts."""

from __future__ import annotations

import errno
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import WriteError

MAX_VOXELS = 2**30  # the largest volume any reader accepts: 1.07 G voxels (4.3 GB as float32), far above a CT (0.26 G)

FAULT_ENV = "UNOISE_FAULT_KILL"  # fault drills: "last.pt:2" kills this process at the 2nd write of last.pt
FULL_ENV = "UNOISE_FAULT_FULL"  # "last.pt:2": the disk is full from the 2nd write of last.pt on (every later write fails)
_writes: dict[str, int] = {}
_full = {"from": False}


def _fault_point(path: Path) -> None:
    """Kill the process with SIGKILL between writing a temporary file and renaming it, or fail the write as a full
    disk does (``$UNOISE_FAULT_FULL``, same form), when asked.

    ``$UNOISE_FAULT_KILL`` = ``NAME[:N]`` names a file and the write (default the first) at which to die,
    exactly as a power cut or ``kill -9`` would: the drills in ``tests/test_faults.py`` use it to check that
    no half-written file ever appears under a final name and that the next run cleans up and resumes.
    """
    full = os.environ.get(FULL_ENV)
    if full:
        name, _, count = full.partition(":")
        if path.name == name:
            _writes[f"full:{name}"] = _writes.get(f"full:{name}", 0) + 1
            _full["from"] = _full["from"] or _writes[f"full:{name}"] >= int(count or 1)
        if _full["from"]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
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


# errno values of a write the user can fix, with the cause in words and what to do
_WRITE_FAILURES = {
    errno.ENOSPC: ("no space left on the device", "free space (or write to another folder)"),
    errno.EDQUOT: ("disk quota exceeded", "free space (or write to another folder)"),
    errno.EFBIG: ("the file is too large for this file system", "write to another file system"),
    errno.EACCES: ("permission denied", "make the folder writable (or write to another folder)"),
    errno.EPERM: ("operation not permitted", "make the folder writable (or write to another folder)"),
    errno.EROFS: ("the file system is read-only", "write to another folder"),
}
# what torch.save's C++ writer says when the disk fills mid-write (it raises RuntimeError, not OSError)
_TORCH_WRITE_FAILURES = ("iostream error", "unexpected pos", "PytorchStreamWriter failed", "file write failed")


def write_failure(error: BaseException, path: Path) -> WriteError | None:
    """A :class:`~pipeline.errors.WriteError` naming ``path``, the cause and how to go on, when ``error`` is a failed
    write the user can fix (disk full, quota, permission, read-only); None for anything else (a bug keeps its
    traceback)."""
    number = getattr(error, "errno", None)
    if isinstance(error, OSError) and number in _WRITE_FAILURES:
        cause, fix = _WRITE_FAILURES[number]
    elif isinstance(error, RuntimeError) and any(text in str(error) for text in _TORCH_WRITE_FAILURES):
        try:
            free = shutil.disk_usage(path.parent).free
        except OSError:
            free = None
        cause = "no space left on the device" if free is not None and free < 1 << 20 else f"the write failed ({error})"
        fix = "free space (or write to another folder)"
    else:
        return None
    return WriteError(f"{path}: could not be written: {cause}; {fix}, then run the command again (a training run "
                      "goes on from its last checkpoint with --resume). Files written before are whole.")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same name ending, so writers pick the same format);
    on success it is renamed over ``path``, on failure it is removed.

    A write that fails for a reason the user can fix (disk full, quota, permission, read-only folder) raises
    :class:`~pipeline.errors.WriteError`, one line naming ``path``; the previous file under that name stays.

    Example::

        with atomic_path("out/case_importance.nii.gz") as tmp:
            nib.save(image, tmp)
    """
    path = Path(path)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{path.name}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        with open(tmp, "rb+") as stream:  # flush to disk before the rename makes it visible
            os.fsync(stream.fileno())
        _fault_point(path)
        os.replace(tmp, path)
        _fsync_folder(path.parent)  # the rename itself survives a power cut: written files keep their order
    except (OSError, RuntimeError) as err:
        failure = write_failure(err, path)
        if failure is None:
            raise
        raise failure from err
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # a folder that refused the write may refuse the clean-up too; nothing was created there


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

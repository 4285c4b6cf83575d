"""Run folders that are never mixed: one writer at a time, leftovers of a killed run removed.

A run holds ``RUN_DIR/.lock`` with an exclusive ``flock`` for its whole life; the file records the
owner's pid, host and start time for the messages. A second process finds the lock taken and is refused
while the owner lives. The kernel drops a dead owner's lock (kill -9, power loss), so its file left
behind is stale and is simply taken over, with a log line. Once the lock is held, ``.tmp-*`` files that a
killed writer left (see :func:`pipeline.fileio.atomic_path`) are removed from the folder and its
``checkpoints/``. Locks are released when the run ends, on error too (``atexit``).
"""

from __future__ import annotations

import atexit
import fcntl
import json
import logging
import os
import re
import socket
import time
from pathlib import Path

from pipeline.errors import ConfigError

logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"
TEMPORARY = re.compile(r"^\.tmp-[0-9a-f]{8}-")  # what pipeline.fileio.atomic_path names its files
_held: dict[Path, int] = {}  # folder -> open descriptor holding the flock
_created: dict[Path, tuple[bool, list[Path]]] = {}  # folder -> (created by this process, files it wrote first)


def _read_lock(lock: Path) -> dict:
    try:
        content = json.loads(lock.read_text())
    except (OSError, ValueError):
        return {}
    return content if isinstance(content, dict) else {}


def _owner(lock: Path) -> str:
    owner = _read_lock(lock)
    return f"pid {owner.get('pid', 'unknown')} on {owner.get('host', 'an unknown host')}, since {owner.get('started', '?')}"


def lock_is_held(folder: str | os.PathLike) -> bool:
    """Whether another process holds ``folder/.lock`` now (this process's own lock does not count)."""
    folder = Path(folder)
    lock = folder / LOCK_NAME
    if folder in _held or not lock.is_file():
        return False
    try:
        descriptor = os.open(lock, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(descriptor)  # closing drops a lock taken only to test
    return False


def acquire_lock(folder: str | os.PathLike) -> Path:
    """Take ``folder/.lock`` for this process (an exclusive ``flock``); the folder must exist.

    A lock file whose owner is gone is taken over (logged). Re-taking a lock this process holds succeeds.

    Raises:
        ConfigError: another live process holds the folder (its pid and host are named).
    """
    folder = Path(folder)
    lock = folder / LOCK_NAME
    if folder in _held:
        return lock
    for _ in range(5):
        descriptor = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise ConfigError(f"{folder}: in use by another run ({_owner(lock)}; {lock}); wait for it to finish or choose "
                              "another --output.") from None
        try:  # the file may have been removed and re-created by its owner between our open and flock
            same = os.fstat(descriptor).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(descriptor)
            continue
        previous = _read_lock(lock)
        if previous:
            logger.warning("%s: taking over the stale lock of pid %s, which no longer runs", folder, previous.get("pid", "unknown"))
        os.ftruncate(descriptor, 0)
        os.write(descriptor, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                         "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
        os.fsync(descriptor)
        _held[folder] = descriptor
        return lock
    raise ConfigError(f"{folder}: could not take {lock} (another process keeps replacing it); retry.")


def release_lock(folder: str | os.PathLike) -> None:
    """Remove ``folder/.lock`` and drop the lock, if this process holds it."""
    folder = Path(folder)
    descriptor = _held.pop(folder, None)
    if descriptor is None:
        return
    (folder / LOCK_NAME).unlink(missing_ok=True)  # while still held: a waiter then re-checks the inode
    os.close(descriptor)


def release_all() -> None:
    """Release every lock this process holds (end of a command; registered with ``atexit``)."""
    for folder in list(_held):
        release_lock(folder)


atexit.register(release_all)


def record_created(folder: str | os.PathLike, folder_is_new: bool, files: list[Path]) -> None:
    """Remember what a run created, so that :func:`roll_back` can undo it if the run is refused later."""
    _created[Path(folder)] = (folder_is_new, list(files))


def roll_back() -> list[Path]:
    """Undo what refused runs of this process created (called on a user error).

    A run that wrote no checkpoint and no map (NIfTI or DICOM) yet is undone: a folder it made goes entirely (a
    ``manifest.json`` recording only the refused case with it), otherwise the files it wrote first (``config.json``)
    go. A run that had written results is left as it is.

    Returns:
        The removed paths.
    """
    import shutil

    removed = []
    for folder, (folder_is_new, files) in list(_created.items()):
        _created.pop(folder, None)
        results = [p for p in folder.rglob("*.pt") if "cache" not in p.relative_to(folder).parts]
        nested = [p for p in folder.rglob(LOCK_NAME) if p.parent != folder]
        written = any(folder.rglob("*_importance.nii.gz")) or any(folder.rglob("*.dcm"))
        if not folder.is_dir() or results or nested or written:  # maps, NIfTI or DICOM (a manifest alone is not one)
            continue
        if folder_is_new:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
            continue
        for path in files:
            if path.is_file():
                path.unlink()
                removed.append(path)
    return removed


def forget_created() -> None:
    """The runs of this process ended well: nothing to roll back."""
    _created.clear()


def remove_temporaries(folder: str | os.PathLike, subfolders: tuple[str, ...] = ("checkpoints", "report")) -> list[Path]:
    """Delete the ``.tmp-XXXXXXXX-*`` files a killed writer left in ``folder`` and its ``subfolders``.

    Call it with the folder's lock held. Only those folders are looked at, not the tree below: a nested
    run (its own ``.lock``) or an unrelated file elsewhere is never touched.

    Returns:
        The removed paths.
    """
    removed = []
    for place in (Path(folder), *(Path(folder) / sub for sub in subfolders)):
        if not place.is_dir():
            continue
        for path in place.iterdir():
            if path.is_file() and TEMPORARY.match(path.name):
                path.unlink(missing_ok=True)
                removed.append(path)
    if removed:
        logger.info("%s: removed %d leftover temporary file(s) of an interrupted run", folder, len(removed))
    return removed


def check_run_kind(folder: str | os.PathLike, config: str) -> None:
    """Refuse a folder that holds a run of another kind (its ``config.json`` names another config).

    Raises:
        ConfigError: e.g. ``evaluate --output`` pointed at a training run.
    """
    record = Path(folder) / "config.json"
    if not record.is_file():
        return
    try:
        found = json.loads(record.read_text()).get("config")
    except (OSError, ValueError, AttributeError):
        found = None
    if found is not None and found != config:
        raise ConfigError(f"{folder}: holds a {found} run ({record}), not a {config} one; choose another --output so "
                          "that its files are not overwritten.")

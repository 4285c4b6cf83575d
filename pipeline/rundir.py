"""Run folders that are never mixed: one writer at a time, leftovers of a killed run removed.

A run takes ``RUN_DIR/.lock`` (the owner's pid and host, created with ``O_EXCL``) before it writes
anything. A second process finds the lock and is refused while the owner lives; a lock whose owner is
gone (kill -9, power loss) is stale and is cleared with a log line. Once the lock is held, ``.tmp-*``
files that a killed writer left (see :func:`pipeline.fileio.atomic_path`) are removed. Locks are released
when the run ends, on error too (``atexit``).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import time
from pathlib import Path

from pipeline.errors import ConfigError

logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"
_held: dict[Path, int] = {}
_created: dict[Path, tuple[bool, list[Path]]] = {}  # folder -> (created by this process, files it wrote first)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _read_lock(lock: Path) -> dict:
    try:
        return json.loads(lock.read_text())
    except (OSError, ValueError):
        return {}  # half-written or unreadable: its owner died while writing it


def acquire_lock(folder: str | os.PathLike) -> Path:
    """Take ``folder/.lock`` for this process, clearing a stale one; the folder must exist.

    Re-taking a lock this process already holds (a second run in the same Python session) succeeds.

    Raises:
        ConfigError: another live process holds the folder (its pid and host are named).
    """
    folder = Path(folder)
    lock = folder / LOCK_NAME
    for _ in range(3):
        try:
            descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _read_lock(lock)
            pid, host = int(owner.get("pid", -1) or -1), owner.get("host")
            if pid == os.getpid() and host == socket.gethostname():
                _held[folder] = pid
                return lock
            if host not in (None, socket.gethostname()):
                raise ConfigError(f"{folder}: in use by pid {pid} on host {host} ({lock}); wait for that run, or delete "
                                  "the lock file if no run is active there.") from None
            if pid > 0 and _alive(pid):
                raise ConfigError(f"{folder}: in use by another run (pid {pid}, since {owner.get('started', '?')}; {lock}); "
                                  "wait for it to finish or choose another --output.") from None
            logger.warning("%s: clearing the stale lock of pid %s, which no longer runs", folder, pid if pid > 0 else "unknown")
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(descriptor, "w") as stream:
            json.dump({"pid": os.getpid(), "host": socket.gethostname(),
                       "started": time.strftime("%Y-%m-%d %H:%M:%S")}, stream)
        _held[folder] = os.getpid()
        return lock
    raise ConfigError(f"{folder}: could not take {lock} (another process keeps replacing it); retry.")


def release_lock(folder: str | os.PathLike) -> None:
    """Remove ``folder/.lock`` if this process holds it."""
    folder = Path(folder)
    if _held.pop(folder, None) is None:
        return
    lock = folder / LOCK_NAME
    if _read_lock(lock).get("pid") == os.getpid():
        lock.unlink(missing_ok=True)


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

    A run that wrote no checkpoint and no map yet is undone: a folder it made goes entirely, otherwise the
    files it wrote first (``config.json``) go. A run that had written results is left as it is.

    Returns:
        The removed paths.
    """
    import shutil

    removed = []
    for folder, (folder_is_new, files) in list(_created.items()):
        _created.pop(folder, None)
        if not folder.is_dir() or any(folder.rglob("*.pt")) or any(folder.rglob("*_importance.nii.gz")):
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


def remove_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete ``.tmp-*`` files under ``folder`` that a killed writer left; call with the lock held.

    Returns:
        The removed paths.
    """
    removed = []
    for path in Path(folder).rglob(".tmp-*"):
        if path.is_file():
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

"""Run folders: the mechanisms that keep them unmixed (:mod:`~pipeline.rundir.lock`) and the policy the
commands follow (:mod:`~pipeline.rundir.policy`: refuse, prepare, finish).

The bundle configs name them as ``pipeline.rundir.<name>``.
"""

from __future__ import annotations

from pipeline.rundir.lock import (
    LOCK_NAME,
    TEMPORARY,
    acquire_lock,
    check_run_kind,
    forget_created,
    lock_is_held,
    record_created,
    release_all,
    release_lock,
    remove_temporaries,
    roll_back,
)
from pipeline.rundir.policy import RESUME_DATA_KEYS, check_run_dir, finish_run_dir, prepare_output_dir, prepare_run_dir

__all__ = [
    "LOCK_NAME",
    "RESUME_DATA_KEYS",
    "TEMPORARY",
    "acquire_lock",
    "check_run_dir",
    "check_run_kind",
    "finish_run_dir",
    "forget_created",
    "lock_is_held",
    "prepare_output_dir",
    "prepare_run_dir",
    "record_created",
    "release_all",
    "release_lock",
    "remove_temporaries",
    "roll_back",
]

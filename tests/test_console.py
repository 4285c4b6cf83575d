"""What `unoise` prints: by default one line per epoch or case and the summary, no engine log and no library
warning that says nothing to a user; `-v` brings the full engine log back. Run as a user runs it (a new process)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ENGINE_CHATTER = ("Engine run resuming", "Epoch[1] Metrics", "input summary of monai.bundle", "Setting logging properties")
LIBRARY_WARNINGS = ("FutureWarning", "DeprecationWarning", "parsing config_file", "warnings.warn", "warn_deprecated")


def _unoise(*args: str) -> list[str]:
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, timeout=600,
                            encoding="utf-8", errors="replace")
    assert result.returncode == 0, result.stderr[-2000:]
    return [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]


@pytest.mark.slow
def test_training_prints_a_line_per_epoch_and_verbose_the_engine_log(tiny_pair: dict[str, Path], tmp_path: Path) -> None:
    common = ["--dataset", str(tiny_pair["data"]), "--epochs", "2", "--spatial_size", "32", "--preset", "small",
              "--batch_size", "4", "--val_fraction", "0.34", "--test_fraction", "0", "--device", "cpu"]
    quiet = _unoise("train-utility", "--output", str(tmp_path / "quiet"), *common)
    assert sum("epoch 1/2  loss" in line for line in quiet) == 1 and sum("epoch 2/2  loss" in line for line in quiet) == 1
    assert not [line for line in quiet if any(text in line for text in ENGINE_CHATTER + LIBRARY_WARNINGS)]
    assert len(quiet) <= 8, quiet  # 2 slice counts, 2 epochs, the result and the run folder

    verbose = _unoise("-v", "train-utility", "--output", str(tmp_path / "verbose"), *common)
    assert all(any(text in line for line in verbose) for text in ENGINE_CHATTER)
    assert len(verbose) > 3 * len(quiet)


@pytest.mark.slow
def test_explain_prints_a_line_per_case_and_the_summary(tiny_pair: dict[str, Path], tmp_path: Path) -> None:
    lines = _unoise("explain", "--input", str(tiny_pair["data"] / "imagesTs"), "--output", str(tmp_path / "maps"),
                    "--noise", str(tiny_pair["noise"]), "--utility", str(tiny_pair["utility"]), "--device", "cpu",
                    "--spatial_size", "32")
    assert not [line for line in lines if any(text in line for text in ENGINE_CHATTER + LIBRARY_WARNINGS)]
    assert sum("explained 1 volume(s), 0 skipped (done before), 0 failed" in line for line in lines) == 1
    assert sum(line.split()[1:2] == ["done"] for line in lines) == 1  # the summary table's row
    assert sum(": wrote " in line for line in lines) == 1 and len(lines) <= 4, lines  # + the batch count


def test_the_console_can_be_set_up_again_in_either_direction_in_one_process() -> None:
    import logging
    import warnings

    from pipeline import bundle
    from pipeline.console import ENGINE_LOGGERS, configure_console

    root = logging.getLogger()
    kept = list(root.handlers)  # pytest's capture handlers stay
    try:
        root.addHandler(logging.StreamHandler(sys.stdout))  # what a bundle's logging.conf leaves after a -v command
        with warnings.catch_warnings():
            assert configure_console(False) == "quiet" and bundle.bundle_logging_file(".") is False
            ours = [h for h in root.handlers if h not in kept]
            assert len(ours) == 1 and ours[0].stream is sys.stderr  # the plain stdout handler went, one console stays
            assert all(logging.getLogger(name).level == logging.WARNING for name in ENGINE_LOGGERS)
            with warnings.catch_warnings(record=True) as caught:
                warnings.warn("old", DeprecationWarning)
            assert not caught  # filtered when quiet
            assert configure_console(True) == "full" and bundle.bundle_logging_file(".").endswith("logging.conf")
            assert all(logging.getLogger(name).level == logging.NOTSET for name in ENGINE_LOGGERS)
            stats = logging.getLogger("monai.handlers.StatsHandler")
            assert stats.handlers or stats.propagate  # its lines show again
            with warnings.catch_warnings(record=True) as caught:
                warnings.warn("old", DeprecationWarning)
            assert [str(w.message) for w in caught] == ["old"]  # -v: every warning again
            assert len([h for h in root.handlers if h not in kept]) == 1
    finally:
        for handler in [h for h in root.handlers if h not in kept]:
            root.removeHandler(handler)
        for handler in list(logging.getLogger("monai.handlers.StatsHandler").handlers):
            logging.getLogger("monai.handlers.StatsHandler").removeHandler(handler)
        for name in ENGINE_LOGGERS:
            logging.getLogger(name).setLevel(logging.NOTSET)
        bundle.set_log_mode("full")

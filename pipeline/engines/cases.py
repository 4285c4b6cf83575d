"""Case by case: the dataset and evaluator of ``explain``, where a case that cannot be checked, read, preprocessed
or run becomes a record ("marker") that the exporter writes into the manifest, and the next case runs.

A marker is a plain dict ``{"case", "source", "status", "error", "exception"}``: ``status`` ``skipped`` (done
before with the same models and settings) or ``failed`` (``error`` the one-line reason). :class:`CaseDataset`
returns one in place of a case it cannot load, :class:`CaseEvaluator` in place of the output of a case whose
inference or postprocessing raised; :class:`pipeline.handlers.ImportanceExporter` records them, removes what a
failed case wrote and, with ``on_error`` ``stop``, ends the run there. One case per batch: volumes differ in size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from monai.data import Dataset, list_data_collate
from monai.engines import SupervisedEvaluator

from pipeline.errors import ConfigError, failure_reason, user_error

STATUS = "status"


def is_marker(item: Any) -> bool:
    """True for a case record that stands in for a case's data or output (skipped or failed)."""
    return isinstance(item, dict) and item.get(STATUS) in ("skipped", "failed")


def marker(case: str, source: Any, status: str, err: BaseException | None = None) -> dict[str, Any]:
    """The record of a case that is not written this run; ``err`` (failed) gives the reason. The exception kept is
    ours where ours is inside (it crosses a worker process whole: its message is the one-line reason)."""
    return {"case": str(case), "source": str(source), STATUS: status,
            "error": failure_reason(err) if err is not None else None,
            "exception": (user_error(err) or err) if err is not None else None}


def collate_cases(batch: Sequence[Any]) -> Any:
    """MONAI's ``list_data_collate``, except that a marker goes through as it is (a list of one record)."""
    if any(is_marker(item) for item in batch):
        if len(batch) != 1:
            raise ConfigError(f"explain runs one case per batch (volumes differ in size), got a batch of {len(batch)}.")
        return list(batch)
    return list_data_collate(list(batch))


class CaseDataset(Dataset):
    """A MONAI ``Dataset`` of cases where a case that fails becomes a ``failed`` marker instead of an exception.

    Args:
        data: the datalist entries (``case``, ``image``, ...).
        transform: the preprocessing.
        check: called with each entry before it loads (the input checks of ``explain``); None: no check.
        done: cases done before with the same models and settings: ``skipped`` markers, not loaded.
    """

    def __init__(self, data: Sequence[dict[str, Any]], transform: Callable | None = None,
                 check: Callable[[dict[str, Any]], Any] | None = None, done: Sequence[str] = ()) -> None:
        super().__init__(list(data), transform)
        self.check, self.done = check, {str(case) for case in done}

    def _transform(self, index: int) -> Any:
        entry = self.data[index]
        case, source = str(entry["case"]), entry.get("image")
        if case in self.done:
            return marker(case, source, "skipped")
        try:
            if self.check is not None:
                self.check(entry)
            return super()._transform(index)
        except Exception as err:  # this case only: the exporter records it and the policy decides what follows
            return marker(case, source, "failed", err)


class CaseEvaluator(SupervisedEvaluator):
    """MONAI's ``SupervisedEvaluator`` that passes markers through and turns a case whose inference or
    postprocessing raises into a ``failed`` marker: the handlers decide (record, skip or stop). Takes the
    arguments of ``SupervisedEvaluator``; its data loader must hold one case per batch (:func:`collate_cases`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        batch_size = getattr(self.data_loader, "batch_size", 1)
        if batch_size not in (None, 1):
            raise ConfigError(f"explain runs one case per batch (volumes differ in size); set batch_size 1, got {batch_size}.")

    def _iteration(self, engine: Any, batchdata: Any) -> Any:
        if isinstance(batchdata, list) and batchdata and all(is_marker(item) for item in batchdata):
            return batchdata
        try:
            return super()._iteration(engine, batchdata)
        except Exception as err:  # this case only: the exporter records it and applies the policy
            cases, sources = _cases_of(batchdata)
            return [marker(case, source, "failed", err) for case, source in zip(cases, sources)]


def _cases_of(batchdata: Any) -> tuple[list[str], list[str]]:
    """The case names of a collated batch and the files they were read from (the image's meta)."""
    cases = list(batchdata.get("case", ["?"])) if isinstance(batchdata, dict) else ["?"]
    meta = getattr(batchdata.get("image") if isinstance(batchdata, dict) else None, "meta", {}) or {}
    sources = meta.get("filename_or_obj", "")
    sources = list(sources) if isinstance(sources, (list, tuple)) else [sources] * len(cases)
    return cases, [str(source) for source in sources]


__all__ = ["CaseDataset", "CaseEvaluator", "collate_cases", "is_marker", "marker"]

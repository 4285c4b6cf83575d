"""``manifest.json``, written and read in this one module: per case of an ``explain`` folder its input, outputs,
status, seconds and the provenance of the run that wrote it.

A run keeps the cases of earlier runs into the same folder (other names) with their own provenance; under
``torchrun`` each rank writes ``manifest.rank<r>.json`` and rank 0 merges them at the end
(:func:`pipeline.batch.merge_shards`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from pipeline.fileio import write_json_atomic

logger = logging.getLogger(__name__)
MANIFEST = "manifest.json"


def manifest_parts(output_dir: str | Path) -> list[Path]:
    """The per-rank records ``manifest.rank<r>.json`` of a run under ``torchrun`` (merged into the manifest at its end)."""
    return sorted(Path(output_dir).glob("manifest.rank*.json"))


def read_manifest(path: str | Path) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Each case record of a ``manifest.json`` with the provenance of the run that wrote it ([] when the file is
    missing or not readable JSON)."""
    path = Path(path)
    try:
        manifest = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        logger.warning("%s: not readable JSON; its cases are not counted", path)
        return []
    runs = manifest.get("runs") or ([manifest["run"]] if manifest.get("run") else [])
    return [(case, runs[case["run"]]) for case in manifest.get("cases", [])
            if isinstance(case, dict) and isinstance(case.get("run"), int) and 0 <= case["run"] < len(runs)]


def latest_records(output_dir: str | Path) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Each case's newest record (by its run's ``started`` time) in ``manifest.json`` and the part files a run under
    ``torchrun`` leaves when it is interrupted (a finished run merges and removes them)."""
    records = read_manifest(Path(output_dir) / MANIFEST)
    for part in manifest_parts(output_dir):
        records += read_manifest(part)
    newest: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    for case, run in records:
        name = str(case.get("case"))
        if name not in newest or str(run.get("started", "")) >= str(newest[name][1].get("started", "")):
            newest[name] = (case, run)
    return list(newest.values())


def this_run_cases(output_dir: str | Path) -> list[dict[str, Any]]:
    """The case records the newest run into ``output_dir`` wrote (earlier runs' cases stay listed after them)."""
    manifest = json.loads((Path(output_dir) / MANIFEST).read_text())
    return [case for case in manifest["cases"] if case.get("run", 0) == 0]


def status_counts(cases: list[dict[str, Any]]) -> dict[str, int]:
    """How many of ``cases`` (manifest records) are ``done``, ``skipped`` and ``failed``."""
    return {status: sum(1 for c in cases if c["status"] == status) for status in ("done", "skipped", "failed")}


class Manifest:
    """The case records of one run into ``output_dir`` and the provenance that made them.

    Args:
        output_dir: the run's folder.
        provenance: the run's record (:func:`pipeline.outputs.provenance.run_provenance`).
    """

    def __init__(self, output_dir: str | Path, provenance: dict[str, Any] | None = None) -> None:
        self.output_dir, self.provenance = Path(output_dir), provenance
        self.cases: list[dict[str, Any]] = []
        self._earlier: list[tuple[dict[str, Any], dict[str, Any]]] | None = None

    def record(self, case: str, source: Any, status: str, error: str | None, seconds: float,
               outputs: list[str] | None = None, write: bool = True, note: str | None = None) -> None:
        """One case's record (``done``, ``skipped`` or ``failed``), replacing an earlier one of this run; with
        ``write`` the manifest is rewritten at once, so an interrupted run lists what it finished. ``note``: what a
        done case lacks of what was asked (a DICOM input's DICOM objects under ``both``)."""
        self.cases = [c for c in self.cases if c["case"] != case]
        record = {"case": case, "input": str(source), "outputs": list(outputs or []), "status": status, "error": error,
                  "seconds": round(seconds, 3)}
        self.cases.append({**record, "note": note} if note else record)
        if write:
            self.write()

    def write(self) -> Path:
        """``manifest.json``: the run's provenance and, per case, its input, outputs, status and seconds (atomic).

        Cases an earlier run wrote into the same folder (other names) stay listed, with that run's provenance."""
        from pipeline.distributed import get_rank, get_world_size

        path = self.output_dir / MANIFEST
        if get_world_size() > 1 and get_rank() > 0:  # under torchrun: this rank's cases, merged by rank 0 at the end
            return write_json_atomic({"run": self.provenance or {}, "runs": [self.provenance or {}],
                                      "cases": [{**case, "run": 0} for case in self.cases]},
                                     self.output_dir / f"manifest.rank{get_rank()}.json")
        if self._earlier is None:
            self._earlier = latest_records(self.output_dir)
        current = {c["case"] for c in self.cases}
        kept = [(case, run) for case, run in self._earlier if case.get("case") not in current]
        runs = [self.provenance or {}]
        cases = [{**case, "run": 0} for case in self.cases]
        for case, run in kept:
            if run not in runs:
                runs.append(run)
            cases.append({**case, "run": runs.index(run)})
        return write_json_atomic({"run": runs[0], "runs": runs, "cases": cases}, path)


__all__ = ["MANIFEST", "Manifest", "latest_records", "manifest_parts", "read_manifest", "status_counts",
           "this_run_cases"]

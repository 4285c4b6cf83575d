"""Importance maps and segmentations written as NIfTI in the input's geometry (and PNG overlays).

Each handler has MONAI's shape: ``attach(engine)`` registers it, ``__call__(engine)`` does the work.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from pipeline.display import radiological_view
from pipeline.errors import DataError
from pipeline.fileio import atomic_path, save_nifti, write_json_atomic

logger = logging.getLogger(__name__)
MANIFEST = "manifest.json"


def maps_from_prediction(pred: np.ndarray) -> dict[str, np.ndarray]:
    """The written maps of a (2, ...) prediction (importance, the utility's probability): ``importance`` float32
    clipped to [0, 1] and ``seg`` uint8, 1 where the probability > 0.5."""
    return {"importance": np.clip(pred[0], 0.0, 1.0).astype(np.float32), "seg": (pred[1] > 0.5).astype(np.uint8)}


def write_case_maps(output_dir: str | Path, case: str, maps: dict[str, np.ndarray], affine: np.ndarray,
                    description: str | None = None, aux_file: str | None = None) -> list[Path]:
    """``<case>_<name>.nii.gz`` for each map, atomically, on ``affine``; the written paths."""
    return [save_nifti(array, affine, Path(output_dir) / f"{case}_{name}.nii.gz", description, aux_file)
            for name, array in maps.items()]


def write_case_outputs(output_dir: str | Path, case: str, maps: dict[str, np.ndarray], affine: np.ndarray, source: Any,
                       output_format: str = "nifti", series: str | None = None, provenance: dict[str, Any] | None = None,
                       resampled: bool = False, aux_file: str | None = None) -> list[Path]:
    """One case's maps in ``output_format``: NIfTI (``nifti``), DICOM SEG + Parametric Map of a DICOM series ``source``
    (``dicom``), or both (DICOM where ``source`` is a series). The DICOM objects come first: their checks refuse before
    any file. A series ``resampled`` onto an even grid gets no DICOM objects (refused with ``dicom``; with ``both``
    NIfTI and a warning, as for any DICOM failure). NIfTI headers carry the short ``provenance``; the written paths.
    """
    from pipeline.handlers.dicom import check_dicom_inputs, write_case_dicom
    from pipeline.provenance import short_provenance

    check_dicom_inputs([{"image": source}], output_format)
    written: list[Path] = []
    if resampled and output_format == "dicom":
        raise DataError(f"{source}: the series was resampled onto an even grid (--resample_uneven true), so its maps do "
                        "not lie on the series' own slices, as DICOM SEG and Parametric Map frames must: pass "
                        "--output_format nifti (or both: NIfTI for it, DICOM for the others).")
    if resampled and output_format == "both":
        logger.warning("%s: resampled onto an even grid: NIfTI maps only (no DICOM SEG / Parametric Map)", case)
    elif output_format != "nifti" and isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
        try:
            written += write_case_dicom(output_dir, case, maps, affine, source, series, provenance)
        except DataError as err:
            if output_format == "dicom":
                raise
            logger.warning("%s: NIfTI maps only, no DICOM outputs: %s", case, err)
    if output_format != "dicom":
        description = short_provenance(provenance) if provenance else None
        written = write_case_maps(output_dir, case, maps, affine, description, aux_file) + written
    return written


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


class ImportanceExporter:
    """Write each explained volume as NIfTI in the input's own geometry, beside the utility's segmentation.

    Reads, per item of ``engine.state.output``: ``pred`` (2, X, Y, Z), channel 0 the importance and channel 1
    the utility's pancreas probability, already inverted to the input's voxel grid (MONAI ``Invertd``), and
    ``image`` (the preprocessed volume, whose meta holds the input's ``original_affine`` and
    ``spatial_shape``). The case name comes from ``engine.state.batch[i]["case"]``. Files:

    - ``<case>_importance.nii.gz``: float32 in [0, 1], 1 = most important;
    - ``<case>_seg.nii.gz``: uint8, 1 where the probability > 0.5;
    - ``<case>_overlay.png`` with ``overlay``: CT, importance heat map and pancreas contour on the axial
      slices with the most predicted pancreas (reads ``pred_ras``, the prediction before inversion).

    NIfTI outputs hold only the affine and the voxels: no header field of the input (DICOM patient data
    included) is copied. With ``output_format`` ``dicom`` or ``both``, a case read from a DICOM series also gets
    ``<case>_seg.dcm`` (DICOM SEG) and ``<case>_importance.dcm`` (Parametric Map) on the series' own frames
    (:mod:`pipeline.handlers.dicom`); those carry the source's patient and study modules, as a derived object must.
    Files are written atomically.

    Args:
        output_dir: folder of the outputs (created).
        overlay: also write the PNG overlay.
        overlay_slices: slices in the overlay.
        provenance: the run's record (:func:`pipeline.provenance.run_provenance`); with it ``manifest.json`` is kept.
        output_format: ``nifti``, ``dicom`` (DICOM series inputs only) or ``both`` (DICOM where the input is DICOM).
    """

    def __init__(self, output_dir: str | Path, overlay: bool = False, overlay_slices: int = 3,
                 provenance: dict[str, Any] | None = None, output_format: str = "nifti") -> None:
        from pipeline.handlers.dicom import output_suffixes

        output_suffixes(output_format)  # refuses an unknown format before any case runs
        self.output_format = output_format
        self.output_dir = Path(output_dir)
        self.overlay, self.overlay_slices = overlay, max(1, int(overlay_slices))
        self.provenance = provenance
        self.cases: list[dict[str, Any]] = []
        self._earlier: list[tuple[dict[str, Any], dict[str, Any]]] | None = None
        self._started = time.perf_counter()

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.GET_BATCH_STARTED, self._start_case)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def _start_case(self, engine: Engine) -> None:
        self._started = time.perf_counter()

    def record(self, case: str, source: Any, status: str, error: str | None, seconds: float,
               outputs: list[str] | None = None) -> None:
        """A case that was not written this run: ``failed`` (with the reason) or ``skipped`` (done before; its
        ``outputs`` are the earlier run's files)."""
        self.cases = [c for c in self.cases if c["case"] != case]
        self.cases.append({"case": case, "input": str(source), "outputs": list(outputs or []), "status": status,
                           "error": error, "seconds": round(seconds, 3)})
        if self.provenance is not None:
            self.write_manifest()

    def write_manifest(self) -> Path:
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

    def __call__(self, engine: Engine) -> None:
        batch = engine.state.batch if isinstance(engine.state.batch, list) else [engine.state.batch]
        for item, source in zip(engine.state.output, batch):
            case = str(source["case"])
            meta = item["image"].meta
            affine = np.asarray(meta["original_affine"], dtype=np.float64)
            shape = tuple(int(s) for s in np.asarray(meta["spatial_shape"]).tolist())
            pred = torch.as_tensor(item["pred"]).detach().float().cpu().numpy()  # (2, X, Y, Z)
            if pred.shape[1:] != shape:
                raise RuntimeError(f"{case}: inverted prediction {pred.shape[1:]} does not match the input grid {shape}.")
            source_path = str(meta.get("filename_or_obj", ""))
            written = write_case_outputs(self.output_dir, case, maps_from_prediction(pred), affine, source_path,
                                         self.output_format, source.get("series"), self.provenance,
                                         resampled=meta.get("resampled_from") is not None,
                                         aux_file=MANIFEST if self.provenance else None)
            if self.overlay:
                written.append(self._write_overlay(case, item))
            logger.info("%s: wrote %s", case, ", ".join(p.name for p in written))
            self.cases.append({"case": case, "input": source_path,
                               "outputs": [p.name for p in written], "status": "done", "error": None,
                               "seconds": round(time.perf_counter() - self._started, 3)})
            if self.provenance is not None:
                self.write_manifest()  # after every case: an interrupted run's manifest lists what it finished

    def _write_overlay(self, case: str, item: dict[str, Any]) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        image = torch.as_tensor(item["image"]).float().cpu().numpy()[0]  # (X, Y, Z), RAS, windowed [0, 1]
        pred = torch.as_tensor(item["pred_ras"]).float().cpu().numpy()  # (2, X, Y, Z)
        area = (pred[1] > 0.5).sum(axis=(0, 1))
        slices = sorted(np.argsort(area)[::-1][: self.overlay_slices].tolist())

        figure, axes = plt.subplots(2, len(slices), figsize=(3.6 * len(slices), 7.2), squeeze=False)
        for column, z in enumerate(slices):
            ct_axis, map_axis = axes[0, column], axes[1, column]
            ct_axis.imshow(radiological_view(image[:, :, z]), cmap="gray", vmin=0, vmax=1)
            heat = map_axis.imshow(radiological_view(pred[0, :, :, z]), cmap="inferno", vmin=0, vmax=1)
            if pred[1, :, :, z].max() > 0.5:
                for axis in (ct_axis, map_axis):
                    axis.contour(radiological_view(pred[1, :, :, z]), levels=[0.5], colors="cyan", linewidths=1)
            ct_axis.set_title(f"{case} slice {z}: CT")
            map_axis.set_title("importance (1 - tolerance)")
            for axis in (ct_axis, map_axis):
                axis.axis("off")
        figure.colorbar(heat, ax=axes[1].tolist(), fraction=0.03, label="importance")
        figure.suptitle("U-Noise: CT (top) and importance map (bottom); cyan: utility segmentation; patient right on the left")
        path = self.output_dir / f"{case}_overlay.png"
        with atomic_path(path) as tmp:
            figure.savefig(tmp, dpi=90, format="png")
        plt.close(figure)
        return path


__all__ = ["MANIFEST", "ImportanceExporter", "latest_records", "manifest_parts", "maps_from_prediction", "read_manifest",
           "write_case_maps", "write_case_outputs"]

"""The explain evaluator's handler: each case's maps written as the engine finishes it (NIfTI in the input's
geometry, DICOM objects, PNG overlays), and its record in the run's manifest; a case that failed or was done
before (a marker of :mod:`pipeline.engines.cases`) is recorded, and ``on_error`` decides whether the run goes on.

Each handler has MONAI's shape: ``attach(engine)`` registers it, ``__call__(engine)`` does the work.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from pipeline.display import radiological_view
from pipeline.engines.cases import is_marker, marker
from pipeline.errors import ConfigError, WriteError, user_error
from pipeline.fileio import atomic_path
from pipeline.outputs.manifest import MANIFEST, Manifest, status_counts
from pipeline.outputs.maps import maps_from_prediction, remove_written, write_case_outputs

logger = logging.getLogger(__name__)


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
    (:mod:`pipeline.dicom.write`); those carry the source's patient and study modules, as a derived object must.
    Files are written atomically.

    Args:
        output_dir: folder of the outputs (created).
        overlay: also write the PNG overlay.
        overlay_slices: slices in the overlay.
        provenance: the run's record (:func:`pipeline.outputs.provenance.run_provenance`); with it ``manifest.json`` is kept.
        output_format: ``nifti``, ``dicom`` (DICOM series inputs only) or ``both`` (DICOM where the input is DICOM).
        on_error: a case that fails: ``skip`` (record it, run the next) or ``stop`` (record it, end the run;
            earlier cases stay written). A failed write of the disk itself (:class:`pipeline.errors.WriteError`)
            ends the run either way: every next case would fail the same way.
    """

    def __init__(self, output_dir: str | Path, overlay: bool = False, overlay_slices: int = 3,
                 provenance: dict[str, Any] | None = None, output_format: str = "nifti", on_error: str = "skip") -> None:
        from pipeline.dicom.write import output_suffixes

        self.suffixes = output_suffixes(output_format)  # refuses an unknown format before any case runs
        if on_error not in ("skip", "stop"):
            raise ConfigError(f"on_error must be skip or stop here, got {on_error!r}.")
        self.output_format, self.on_error = output_format, on_error
        self.output_dir = Path(output_dir)
        self.overlay, self.overlay_slices = overlay, max(1, int(overlay_slices))
        self.provenance = provenance
        self.manifest = Manifest(self.output_dir, provenance)
        self._started = time.perf_counter()

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.GET_BATCH_STARTED, self._start_case)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, self._log_counts)

    def _start_case(self, engine: Engine) -> None:
        self._started = time.perf_counter()

    def record(self, case: str, source: Any, status: str, error: str | None, seconds: float,
               outputs: list[str] | None = None) -> None:
        """A case that was not written this run: ``failed`` (with the reason) or ``skipped`` (done before; its
        ``outputs`` are the earlier run's files)."""
        self.manifest.record(case, source, status, error, seconds, outputs, write=self.provenance is not None)

    @property
    def cases(self) -> list[dict[str, Any]]:
        """This run's case records (:class:`pipeline.outputs.manifest.Manifest`)."""
        return self.manifest.cases

    @cases.setter
    def cases(self, cases: list[dict[str, Any]]) -> None:
        self.manifest.cases = cases

    def write_manifest(self) -> Path:
        """``manifest.json`` now (:meth:`pipeline.outputs.manifest.Manifest.write`)."""
        return self.manifest.write()

    def counts(self) -> dict[str, int]:
        """This run's cases by status."""
        return status_counts(self.cases)

    def _log_counts(self, engine: Engine) -> None:
        logger.info("batch: %(done)d done, %(skipped)d skipped (done before), %(failed)d failed", self.counts())

    def __call__(self, engine: Engine) -> None:
        outputs = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
        batch = engine.state.batch if isinstance(engine.state.batch, list) else [engine.state.batch] * len(outputs)
        for item, source in zip(outputs, batch):
            if is_marker(item):
                self._record_marker(item)
                continue
            try:
                self._write(item, source)
            except Exception as err:  # nothing of this case is left (all or none); the record and the policy decide
                self._record_marker(marker(str(source["case"]), item["image"].meta.get("filename_or_obj", ""), "failed", err))

    def _record_marker(self, item: dict[str, Any]) -> None:
        case, source = item["case"], item["source"]
        if item["status"] == "skipped":
            kept = [f"{case}{suffix}" for suffix in self.suffixes if (self.output_dir / f"{case}{suffix}").is_file()]
            self.record(case, source, "skipped", "done before with the same checkpoints and settings", 0.0, kept)
            logger.info("%s: done before with the same models and settings; skipped (--overwrite redoes it)", case)
            return
        seconds, error = time.perf_counter() - self._started, item["exception"]
        if isinstance(user_error(error), WriteError):  # the disk, not the case: every next case would fail the same way
            with contextlib.suppress(WriteError):
                self.record(case, source, "failed", item["error"], seconds)
            raise error
        self.record(case, source, "failed", item["error"], seconds)
        if self.on_error == "stop":
            raise error
        logger.error("%s: failed, skipped: %s", case, item["error"])

    def _write(self, item: dict[str, Any], source: dict[str, Any]) -> None:
        case = str(source["case"])
        meta = item["image"].meta
        affine = np.asarray(meta["original_affine"], dtype=np.float64)
        shape = tuple(int(s) for s in np.asarray(meta["spatial_shape"]).tolist())
        pred = torch.as_tensor(item["pred"]).detach().float().cpu().numpy()  # (2, X, Y, Z)
        if pred.shape[1:] != shape:
            raise RuntimeError(f"{case}: inverted prediction {pred.shape[1:]} does not match the input grid {shape}.")
        source_path, notes = str(meta.get("filename_or_obj", "")), []
        written = write_case_outputs(self.output_dir, case, maps_from_prediction(pred), affine, source_path,
                                     self.output_format, source.get("series"), self.provenance,
                                     resampled=meta.get("resampled_from") is not None,
                                     aux_file=MANIFEST if self.provenance else None, notes=notes)
        if self.overlay:
            try:
                written.append(self._write_overlay(case, item))
            except Exception:  # all of a case or none of it
                remove_written(written)
                raise
        logger.info("%s: wrote %s", case, ", ".join(p.name for p in written))
        # after every case: an interrupted run's manifest lists what it finished
        self.manifest.record(case, source_path, "done", None, time.perf_counter() - self._started,
                             [p.name for p in written], write=self.provenance is not None, note="; ".join(notes) or None)

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


__all__ = ["ImportanceExporter"]

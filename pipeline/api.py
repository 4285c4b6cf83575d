"""A Python API for notebooks and pipelines: the inference config (``inference.json``, with ``inference_3d.json``
for a 3D noise model) as one object, built once and called per volume.

>>> from pipeline.api import Explainer
>>> explainer = Explainer.from_checkpoints("runs/demo/utility/checkpoints/last.pt",
...                                        "runs/demo/noise/checkpoints/best.pt", device="cpu")
>>> importance, segmentation = explainer.explain_volume("data/phantom/imagesTs/pancreas_032.nii.gz")
>>> written = explainer.explain_files(["data/phantom/imagesTs"], "runs/api_maps")

The components are the config's own (``network``, ``inferer``, ``preprocessing``, ``postprocessing``), so the
maps equal ``unoise explain``'s; the checks of ``unoise explain`` on the networks run here too.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose

from pipeline.bundle import bundle_workflow
from pipeline.networks.checkpoints import check_pair, check_spatial_dims, checkpoint_spatial_dims
from pipeline.data import LoadVolumed, collect_inputs
from pipeline.errors import DataError, user_error
from pipeline.outputs.maps import maps_from_prediction, write_case_outputs

logger = logging.getLogger(__name__)


class Explainer:
    """U-Noise importance and the utility's segmentation of CT volumes, in each input's own geometry.

    Build it with :meth:`from_checkpoints`; ``parser`` is the resolved inference config.
    """

    def __init__(self, parser: Any) -> None:
        self.parser = parser
        self.device = parser.get_parsed_content("run_device")
        utility_meta = parser.get_parsed_content("utility_loaded")[1]
        self.noise_meta = parser.get_parsed_content("noise_meta")
        self.spatial_dims = int(parser.get_parsed_content("spatial_dims"))
        noise_path = parser.get_parsed_content("noise_checkpoint")
        check_spatial_dims(self.noise_meta, self.spatial_dims, noise_path, "noise")
        check_pair(utility_meta, self.noise_meta, parser.get_parsed_content("utility_bundle")
                   or parser.get_parsed_content("utility_checkpoint"), noise_path)
        self.network = parser.get_parsed_content("network")
        self.inferer = parser.get_parsed_content("inferer")
        self.preprocessing = parser.get_parsed_content("preprocessing")
        self.postprocessing = parser.get_parsed_content("postprocessing")

    @classmethod
    def from_checkpoints(
        cls,
        utility: str | os.PathLike | None,
        noise: str | os.PathLike,
        device: str = "auto",
        utility_bundle: str | os.PathLike | None = None,
        bundle_root: str | os.PathLike | None = None,
        **overrides: Any,
    ) -> Explainer:
        """An explainer from a utility checkpoint (or TorchScript file, or ``utility_bundle``) and a noise checkpoint.

        Args:
            device: ``auto`` (CUDA when present), ``cpu`` or ``cuda[:N]``.
            overrides: other keys of ``inference.json`` (e.g. ``window``, ``sw_batch_size``, ``target_channel``);
                an unknown key is refused as ``unoise explain`` refuses it.
        """
        dims = checkpoint_spatial_dims(noise)
        values = {"noise_checkpoint": str(noise), "utility_checkpoint": None if utility is None else str(utility),
                  "utility_bundle": None if utility_bundle is None else str(utility_bundle), "device": device, **overrides}
        try:  # explain's own workflow, initialised with the config's imports only: no input is read, no folder made
            workflow = bundle_workflow("inference", values, Path(bundle_root) if bundle_root else None,
                                       ["inference_3d"] if dims == 3 else [], logging_file=False, init_id="imports",
                                       quiet=True)
            return cls(workflow.parser)
        except Exception as err:  # our refusal inside MONAI's "Failed to evaluate" wrappers: raise it as it is
            ours = user_error(err)
            if ours is None:
                raise
            raise ours from None

    def _prepare(self, volume: Any, affine: Any | None) -> dict[str, Any]:
        if isinstance(volume, dict):
            return self.preprocessing(dict(volume))
        if isinstance(volume, (str, os.PathLike)):
            return self.preprocessing({"image": str(volume), "case": Path(volume).name})
        array = torch.as_tensor(np.asarray(volume), dtype=torch.float32)
        if array.ndim != 3:
            raise DataError(f"explain_volume: an array must be one 3D volume (X, Y, Z) in HU, got shape {tuple(array.shape)}.")
        if not torch.isfinite(array).all():
            raise DataError("explain_volume: the array holds NaN or infinite values; fill or crop them first.")
        affine = torch.eye(4, dtype=torch.float64) if affine is None else torch.as_tensor(np.asarray(affine), dtype=torch.float64)
        if tuple(affine.shape) != (4, 4):
            raise DataError(f"explain_volume: affine must be 4 x 4 (voxel to RAS mm), got shape {tuple(affine.shape)}.")
        image = MetaTensor(array[None], affine=affine, meta={"original_affine": affine.clone(),
                                                              "spatial_shape": np.asarray(array.shape)})
        after_loading = [t for t in self.preprocessing.transforms if not isinstance(t, LoadVolumed)]  # it is loaded
        return Compose(after_loading)({"image": image, "case": "array"})

    def explain_volume(self, volume: Any, affine: Any | None = None) -> tuple[MetaTensor, MetaTensor]:
        """Importance (float32 in [0, 1], 1 = most important) and segmentation (uint8) of one volume.

        Args:
            volume: a NIfTI file or DICOM series folder, a datalist entry (``{"image": ...}``), or a 3D array
                (X, Y, Z) in HU with its ``affine`` (voxel to RAS+ mm; default identity).

        Returns:
            Two MetaTensors (1, X, Y, Z) on the input's voxel grid, with its affine.
        """
        data = self._prepare(volume, affine)
        image = data["image"]
        with torch.inference_mode():
            pred = self.inferer(image[None].to(self.device), self.network)[0]
        data["pred"] = pred.detach().cpu() if isinstance(pred, MetaTensor) else MetaTensor(pred.cpu(), meta=image.meta)
        data["image"] = image.cpu()
        inverted = self.postprocessing(data)["pred"]
        affine_out = inverted.affine.clone() if isinstance(inverted, MetaTensor) else image.meta["original_affine"]
        maps = maps_from_prediction(torch.as_tensor(inverted).float().numpy())  # what unoise explain writes
        resampled = {"resampled_from": image.meta["resampled_from"]} if "resampled_from" in image.meta else {}
        importance, segmentation = (MetaTensor(torch.from_numpy(maps[name])[None], affine=affine_out, meta=dict(resampled))
                                    for name in ("importance", "seg"))
        return importance, segmentation

    def explain_files(self, inputs: Sequence[str | os.PathLike] | str | os.PathLike, output_dir: str | os.PathLike,
                      output_format: str = "nifti") -> list[Path]:
        """Explain NIfTI files, DICOM series folders, folders or datalists; write ``<case>_importance.nii.gz`` and
        ``<case>_seg.nii.gz`` per case into ``output_dir`` (atomically) and return the written paths.

        ``output_format`` ``dicom`` writes ``<case>_seg.dcm`` (DICOM SEG) and ``<case>_importance.dcm`` (Parametric
        Map) instead, DICOM series inputs only; ``both`` writes NIfTI, and DICOM where the input is a DICOM series.
        """
        from pipeline.dicom.write import check_dicom_inputs, output_suffixes

        output_suffixes(output_format)
        entries = collect_inputs(inputs)
        check_dicom_inputs(entries, output_format)
        provenance = self.parser.get_parsed_content("provenance")  # the checkpoints' SHA-256, as explain records them
        written: list[Path] = []
        for entry in entries:
            importance, segmentation = self.explain_volume(entry)
            maps = {"importance": importance[0].numpy(), "seg": segmentation[0].numpy()}
            case_files = write_case_outputs(output_dir, entry["case"], maps, np.asarray(importance.affine, dtype=np.float64),
                                            entry["image"], output_format, entry.get("series"), provenance,
                                            resampled="resampled_from" in importance.meta)
            logger.info("%s: wrote %s", entry["case"], ", ".join(p.name for p in case_files))
            written += case_files
        return written


__all__ = ["Explainer"]

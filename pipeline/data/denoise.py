"""Training pairs for a CT denoiser, and a denoiser applied to a volume, slice by slice.

:class:`NoisyPairsd` turns each axial slice of a full-dose scan (HU divided by ``hu_scale``) into what one training
mode sees. The noise is a dose model's (:mod:`pipeline.data.dose`); each slice's realisations are drawn once, seeded,
and kept, as a clinic holds one low-dose scan per patient (two for Noise2Noise), not a fresh one per epoch.

- ``n2c`` (Noise2Clean, the reference): ``image`` a noisy scan, ``label`` the clean slice.
- ``n2n`` (Noise2Noise, Lehtinen et al. 2018): ``image`` and ``label`` two independent noisy scans of the slice.
- ``nes`` (Neural Egg Separation, Halperin et al. 2018): ``image`` = ``label`` = the noisy scan, and ``noise`` a
  noise-only sample (a scan of a water cylinder at the same dose, minus the cylinder; the cylinder as wide as the
  slice's water-equivalent diameter, read from the noisy scan, as projection noise grows with the path through the
  body) drawn afresh at every call from a small pool; the engine adds it to its current estimate of the clean slice (:class:`pipeline.engines.DenoiseStep`).

Each slice gets one dose, drawn (seeded) from ``doses``: the denoiser learns every level it will meet. ``clean``
(the slice itself) is added only with ``with_clean`` (validation metrics), never to a Noise2Noise or NES training set.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import DivisiblePad, MapTransform

from pipeline.engines.denoise import DENOISE_MODES
from pipeline.data.dose import AIR_HU, NoiseModel, case_seed, check_dose, meta_without_affine
from pipeline.data.transforms import BODY_HU
from pipeline.errors import ConfigError

WATER_CYLINDER_MM = 320.0  # the CTDI body phantom's diameter
DIAMETER_STEP_MM = 20.0  # NES's noise-only cylinders: the slice's water-equivalent diameter, to this step


def water_equivalent_diameter(hu: np.ndarray, spacing_mm: Sequence[float]) -> float:
    """The water-equivalent diameter (mm) of a CT slice (AAPM Report 220): ``2 sqrt((1 + mean HU / 1000) A / pi)`` over
    the body (above :data:`~pipeline.data.transforms.BODY_HU`, area ``A``). Read from the scan itself, noisy or not."""
    body = hu > BODY_HU
    if not body.any():
        return 0.0
    area = float(body.sum()) * float(spacing_mm[0]) * float(spacing_mm[1])
    return float(2.0 * np.sqrt(max(0.0, 1.0 + float(hu[body].mean()) / 1000.0) * area / np.pi))


def water_cylinder(shape: Sequence[int], spacing_mm: Sequence[float], diameter_mm: float = WATER_CYLINDER_MM) -> np.ndarray:
    """A slice of a water cylinder (0 HU) in air, centred, on a grid of ``shape`` and ``spacing_mm``."""
    x = (np.arange(shape[0]) - (shape[0] - 1) / 2) * float(spacing_mm[0])
    y = (np.arange(shape[1]) - (shape[1] - 1) / 2) * float(spacing_mm[1])
    inside = (x[:, None] ** 2 + y[None, :] ** 2) <= (diameter_mm / 2) ** 2
    return np.where(inside, 0.0, AIR_HU).astype(np.float32)


class NoisyPairsd(MapTransform):
    """One training mode's view of a clean slice (see the module's docstring).

    Args:
        keys: the slice key, (1, X, Y) in HU / ``hu_scale`` (a :class:`pipeline.data.SliceDataset` item, with
            ``case``, ``slice`` and ``spacing``).
        mode: ``n2c``, ``n2n`` or ``nes``.
        model: the dose noise model.
        doses: the dose fractions (< 1) a slice's dose is drawn from.
        hu_scale: HU per unit of the slice's values.
        seed: seeds every draw (with the case, slice and dose).
        with_clean: also give ``clean`` (the slice; validation).
        pool: noise-only samples kept per grid and dose (``nes``); each call flips or turns one at random.
    """

    def __init__(self, keys: KeysCollection, mode: str, model: NoiseModel, doses: Sequence[float], hu_scale: float = 1000.0,
                 seed: int = 0, with_clean: bool = False, pool: int = 4) -> None:
        super().__init__(keys)
        if mode not in DENOISE_MODES:
            raise ConfigError(f"denoise_mode must be one of {list(DENOISE_MODES)}, got {mode!r}.")
        levels = [check_dose(d, "denoise_doses") for d in doses]
        if not levels or any(d >= 1.0 for d in levels):
            raise ConfigError(f"denoise_doses lists dose fractions below 1 to train on, got {list(doses)}.")
        self.mode, self.model, self.doses, self.hu_scale = mode, model, levels, float(hu_scale)
        self.seed, self.with_clean, self.pool = int(seed), bool(with_clean), max(1, int(pool))
        self._scans: dict[tuple[str, int], tuple[float, list[np.ndarray]]] = {}
        self._noise: dict[tuple[Any, ...], list[np.ndarray]] = {}
        self._rng = np.random.default_rng(self.seed)

    def _draw(self, case: str, index: int, hu: np.ndarray, spacing: Sequence[float]) -> tuple[float, list[np.ndarray]]:
        """The slice's dose and its noisy scans (HU), drawn once and kept."""
        key = (case, index)
        if key not in self._scans:
            picker = case_seed(self.seed, f"{case}#{index}", 1.0, stream=2)
            dose = self.doses[int(picker.integers(len(self.doses)))]
            count = 2 if self.mode == "n2n" else 1
            rng = case_seed(self.seed, f"{case}#{index}", dose)
            self._scans[key] = (dose, [hu + self.model.sample(hu, spacing, dose, rng) for _ in range(count)])
        return self._scans[key]

    def _noise_only(self, shape: tuple[int, ...], spacing: Sequence[float], dose: float, diameter: float) -> np.ndarray:
        key = (shape, tuple(round(float(s), 3) for s in spacing), dose, max(DIAMETER_STEP_MM, round(diameter / DIAMETER_STEP_MM) * DIAMETER_STEP_MM))
        if key not in self._noise:
            cylinder = water_cylinder(shape, spacing, key[3])
            rng = case_seed(self.seed, f"water{shape}{key[1]}", dose, stream=1)
            self._noise[key] = [self.model.sample(cylinder, spacing, dose, rng) for _ in range(self.pool)]
        sample = self._noise[key][int(self._rng.integers(self.pool))]
        sample = np.rot90(sample, int(self._rng.integers(4))) if shape[0] == shape[1] else sample
        return np.ascontiguousarray(sample[::-1] if self._rng.random() < 0.5 else sample)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        key = self.keys[0]
        clean = torch.as_tensor(d[key]).float()  # (1, X, Y)
        hu = clean[0].cpu().numpy() * self.hu_scale
        spacing = [float(s) for s in torch.as_tensor(d.get("spacing", torch.ones(2)))]
        dose, scans = self._draw(str(d.get("case", "")), int(d.get("slice", 0)), hu, spacing)
        as_slice = lambda array: torch.as_tensor(np.asarray(array, np.float32) / self.hu_scale)[None]  # noqa: E731
        d[key] = as_slice(scans[0])
        d["label"] = clean.clone() if self.mode == "n2c" else as_slice(scans[1] if self.mode == "n2n" else scans[0])
        if self.mode == "nes":
            diameter = water_equivalent_diameter(scans[0], spacing)  # of the noisy scan: no clean image needed
            d["noise"] = as_slice(self._noise_only(hu.shape, spacing, dose, diameter))
        if self.with_clean:
            d["clean"] = clean.clone()
        d["dose"] = torch.tensor(dose)
        d.pop("body", None)  # (a mask of the clean slice: no part of any mode's pair)
        return d


class Denoised(MapTransform):
    """Run a 2D denoiser over a CT volume in HU, one axial slice at a time, on the volume's own grid.

    Args:
        keys: the CT key(s), (1, X, Y, Z) in HU.
        denoiser: a 2D network taking and giving (B, 1, X, Y) in HU / ``hu_scale``; None leaves the volume as it is.
        hu_scale: HU per unit of the denoiser's input.
        divisor: slices are padded (edge values) to a multiple of this, as the network's downsamplings need; None:
            the network's own ``divisor`` (:class:`pipeline.networks.ResidualDenoiser`), else 16.
        batch_size: slices per forward pass.
    """

    def __init__(self, keys: KeysCollection, denoiser: Callable[[torch.Tensor], torch.Tensor] | None, hu_scale: float = 1000.0,
                 divisor: int | None = None, batch_size: int = 16, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.denoiser, self.hu_scale = denoiser, float(hu_scale)
        divisor = divisor if divisor is not None else getattr(denoiser, "divisor", 16)
        self.pad, self.batch_size = DivisiblePad(k=int(divisor), mode="replicate", method="end"), int(batch_size)

    @torch.no_grad()
    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.denoiser is None:
            return d
        device = next((p.device for p in getattr(self.denoiser, "parameters", lambda: iter(()))()), torch.device("cpu"))
        for key in self.key_iterator(d):
            image = d[key]
            volume = torch.as_tensor(image.as_tensor() if isinstance(image, MetaTensor) else image).float()  # (1, X, Y, Z)
            if volume.shape[0] != 1:
                raise ConfigError(f"the denoiser takes one CT channel; {key!r} has {volume.shape[0]}.")
            slices = volume[0].permute(2, 0, 1)[:, None] / self.hu_scale  # (Z, 1, X, Y)
            padded = torch.stack([self.pad(s) for s in slices])
            out = torch.cat([self.denoiser(padded[i:i + self.batch_size].to(device)).float().cpu()
                             for i in range(0, len(padded), self.batch_size)])
            out = out[..., :slices.shape[-2], :slices.shape[-1]] * self.hu_scale  # (Z, 1, X, Y)
            result = out[:, 0].permute(1, 2, 0)[None].contiguous()
            d[key] = MetaTensor(result, affine=image.affine.clone(), meta=meta_without_affine(image)) if isinstance(image, MetaTensor) else result
        return d


__all__ = ["DENOISE_MODES", "DIAMETER_STEP_MM", "Denoised", "NoisyPairsd", "WATER_CYLINDER_MM", "water_cylinder", "water_equivalent_diameter"]

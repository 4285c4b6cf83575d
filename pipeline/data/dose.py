"""Lower-dose CT, simulated: noise inserted into a scan so that it reads as the same scan at a fraction of its dose.

Both models are *insertion* models. The input is the full-dose scan (dose 1, left as it is); a dose fraction
``d < 1`` adds the noise that brings its total to that of a scan made with ``d`` times the photons. Quantum
noise variance grows as ``1 / d``, so the inserted variance is ``(1 / d - 1)`` times the full-dose scan's.

- :class:`ImageDomainNoise`: Gaussian noise in HU, std ``full_dose_std * sqrt(1 / d - 1)`` (the total is
  ``full_dose_std / sqrt(d)`` when the scan's own noise is ``full_dose_std``), white or correlated by a Gaussian
  kernel of ``correlation_mm``. Fast; an approximation, as CT noise is neither white nor stationary.
- :class:`ProjectionDomainNoise`: each axial slice is forward-projected (scikit-image's ``radon``) into line
  integrals ``p`` of attenuation (water ``mu_water`` per mm at 0 HU); Poisson counts with ``d * photons * e^-p``
  expected per ray give the sinogram of a dose-``d`` scan, whose noise, scaled by ``sqrt(1 - d)``, is inserted
  (variance ``(1 / d - 1) e^p / photons`` per ray, the insertion of Zeng et al., Med. Phys. 2015) and filtered
  back-projected (``iradon``, ramp filter) into HU. The noise is correlated and streaky, and highest behind
  dense, long paths, as in CT.

Each realisation is drawn from a ``numpy`` generator the caller seeds; :class:`SimulateDosed` seeds it per case and
dose, so a case at a dose is the same volume in every run.
"""

from __future__ import annotations

import hashlib
import math
import zlib
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from scipy import ndimage

from pipeline.errors import ConfigError

AIR_HU = -1000.0


def check_dose(dose: float, name: str = "dose") -> float:
    """A dose fraction in (0, 1]; ``name``: the setting it came from, named in the refusal."""
    if isinstance(dose, bool) or not isinstance(dose, (int, float)) or not 0.0 < float(dose) <= 1.0:
        raise ConfigError(f"{name}: a dose fraction is a number in (0, 1] (1 = the scan as given), got {dose!r}.")
    return float(dose)


def inserted_variance(dose: float) -> float:
    """The inserted noise variance at ``dose``, relative to the full-dose scan's: ``1 / dose - 1`` (0 at dose 1)."""
    return 1.0 / check_dose(dose) - 1.0


class NoiseModel(Protocol):
    """What :class:`SimulateDosed` draws from: the noise (HU) to insert into one axial slice at a dose."""

    def sample(self, hu: np.ndarray, spacing_mm: Sequence[float], dose: float, rng: np.random.Generator) -> np.ndarray: ...


@dataclass(frozen=True)
class ImageDomainNoise:
    """Gaussian noise in HU, inserted: std ``full_dose_std * sqrt(1 / dose - 1)``.

    Args:
        full_dose_std: the noise std (HU) of the scan as given, in a uniform region (the phantoms draw 10..20).
        correlation_mm: std (mm) of the Gaussian kernel that correlates the noise; 0 gives white noise. The
            filtered noise is divided by the kernel's analytic gain (the root of its summed squares), so its std
            is the stated one.
    """

    full_dose_std: float = 15.0
    correlation_mm: float = 0.0

    def __post_init__(self) -> None:
        if not self.full_dose_std > 0 or not math.isfinite(self.full_dose_std):
            raise ConfigError(f"full_dose_std is the scan's noise std in HU (> 0), got {self.full_dose_std!r}.")
        if not self.correlation_mm >= 0:
            raise ConfigError(f"correlation_mm is a kernel std in mm (>= 0), got {self.correlation_mm!r}.")

    def predicted_std(self, dose: float) -> float:
        """The std (HU) of the inserted noise at ``dose``."""
        return self.full_dose_std * math.sqrt(inserted_variance(dose))

    def sample(self, hu: np.ndarray, spacing_mm: Sequence[float], dose: float, rng: np.random.Generator) -> np.ndarray:
        std = self.predicted_std(dose)
        if std == 0.0:
            return np.zeros(hu.shape, np.float32)
        white = rng.standard_normal(hu.shape, dtype=np.float32)
        if self.correlation_mm > 0:
            sigma = [self.correlation_mm / float(s) for s in spacing_mm[:2]]
            white = ndimage.gaussian_filter(white, sigma) / _kernel_gain(sigma)
        return (white * np.float32(std)).astype(np.float32)


def _kernel_gain(sigma: Sequence[float]) -> float:
    """Root of the summed squares of ``ndimage.gaussian_filter``'s kernel: the std of white unit noise it filters."""
    half = [int(math.ceil(4.0 * s)) for s in sigma]
    delta = np.zeros([2 * h + 1 for h in half], np.float64)
    delta[tuple(half)] = 1.0
    return float(np.sqrt((ndimage.gaussian_filter(delta, sigma, mode="constant") ** 2).sum()))


@dataclass(frozen=True)
class ProjectionDomainNoise:
    """Poisson noise in the projection domain, inserted and reconstructed by filtered back-projection.

    Args:
        photons: incident photons per ray of the full-dose scan (a dose ``d`` scan has ``d * photons``).
        views: projection angles over 180 degrees.
        mu_water: linear attenuation of water per mm (0.0193 at about 70 keV); ``mu = mu_water (1 + HU / 1000)``,
            air and below 0.
    """

    photons: float = 2.0e5
    views: int = 180
    mu_water: float = 0.0193

    def __post_init__(self) -> None:
        if not self.photons > 0 or not math.isfinite(self.photons):
            raise ConfigError(f"photons is the full-dose photon count per ray (> 0), got {self.photons!r}.")
        if isinstance(self.views, bool) or not isinstance(self.views, int) or self.views < 8:
            raise ConfigError(f"views is the number of projection angles (an integer >= 8), got {self.views!r}.")
        if not self.mu_water > 0:
            raise ConfigError(f"mu_water is water's attenuation per mm (> 0), got {self.mu_water!r}.")

    def sample(self, hu: np.ndarray, spacing_mm: Sequence[float], dose: float, rng: np.random.Generator) -> np.ndarray:
        from skimage.transform import iradon, radon

        scale = inserted_variance(dose) * dose  # (1 - d): the dose-d scan's noise, scaled to the inserted part
        if scale == 0.0:
            return np.zeros(hu.shape, np.float32)
        spacing = float(np.mean([float(s) for s in spacing_mm[:2]]))
        size = max(hu.shape)
        square = np.full((size, size), AIR_HU, np.float64)
        square[:hu.shape[0], :hu.shape[1]] = hu
        mu = np.clip(self.mu_water * (1.0 + square / 1000.0), 0.0, None)
        theta = np.linspace(0.0, 180.0, self.views, endpoint=False)
        line = radon(mu, theta, circle=False) * spacing  # line integrals of attenuation (dimensionless)
        incident = dose * self.photons
        counts = rng.poisson(incident * np.exp(-line))
        measured = -np.log(np.maximum(counts, 1) / incident)  # the dose-d scan's line integrals
        inserted = math.sqrt(scale) * (measured - line)
        delta_mu = iradon(inserted / spacing, theta, output_size=size, circle=False, filter_name="ramp")
        return (1000.0 * delta_mu / self.mu_water)[:hu.shape[0], :hu.shape[1]].astype(np.float32)


NOISE_MODELS = {"image": ImageDomainNoise, "projection": ProjectionDomainNoise}


def build_noise_model(name: str, **settings: Any) -> NoiseModel:
    """``image`` (:class:`ImageDomainNoise`) or ``projection`` (:class:`ProjectionDomainNoise`) with its settings."""
    if name not in NOISE_MODELS:
        raise ConfigError(f"unknown dose noise model {name!r}; use one of {sorted(NOISE_MODELS)}.")
    fields = NOISE_MODELS[name].__dataclass_fields__
    unknown = sorted(set(settings) - set(fields))
    if unknown:
        raise ConfigError(f"the {name} noise model takes {sorted(fields)}, not {unknown}.")
    return NOISE_MODELS[name](**settings)


def case_seed(seed: int, case: str, dose: float, stream: int = 0) -> np.random.Generator:
    """The generator of one case at one dose: the same case, dose and seed give the same noise in any order."""
    return np.random.default_rng([int(seed), zlib.crc32(str(case).encode()), int(round(check_dose(dose) * 1e6)), int(stream)])


def draw_noise(hu: np.ndarray, spacing_mm: Sequence[float], model: NoiseModel, dose: float,
               rng: np.random.Generator) -> np.ndarray:
    """The dose-``dose`` noise (HU) of each axial slice of ``hu`` (..., X, Y, Z), drawn on its first channel: (X, Y, Z)."""
    first = np.asarray(hu, np.float32).reshape(-1, *np.shape(hu)[-3:])[0]  # (X, Y, Z)
    return np.stack([model.sample(first[..., z], spacing_mm, dose, rng) for z in range(first.shape[-1])], axis=-1)


def insert_noise(hu: np.ndarray, spacing_mm: Sequence[float], model: NoiseModel, dose: float,
                 rng: np.random.Generator) -> np.ndarray:
    """``hu`` (..., X, Y, Z) with dose-``dose`` noise inserted into each axial slice (each channel the same draw)."""
    return np.asarray(hu, np.float32) + draw_noise(hu, spacing_mm, model, dose, rng)


_LAST_DRAW: dict[tuple[Any, ...], np.ndarray] = {}  # SimulateDosed's latest noise volume, by everything it depends on


def _seeded_noise(hu: np.ndarray, spacing_mm: np.ndarray, model: NoiseModel, dose: float, seed: int, case: str,
                  stream: int) -> np.ndarray:
    """:func:`draw_noise` seeded by :func:`case_seed`, the latest volume kept: a noise field is a function of the scan,
    its grid, the model, the dose, the seed and the case, so chains built again for the same case and dose (the dose
    audit runs one per variant) do not project it again."""
    key = (model, dose, seed, str(case), stream, tuple(np.round(spacing_mm, 6)), hu.shape,
           hashlib.blake2b(np.ascontiguousarray(hu).tobytes(), digest_size=16).hexdigest())
    if key not in _LAST_DRAW:
        _LAST_DRAW.clear()
        _LAST_DRAW[key] = draw_noise(hu, spacing_mm, model, dose, case_seed(seed, case, dose, stream))
    return _LAST_DRAW[key]


def meta_without_affine(image: MetaTensor) -> dict[str, Any]:
    """A MetaTensor's meta without its affine (given on its own)."""
    return {k: v for k, v in image.meta.items() if k != "affine"}


class SimulateDosed(MapTransform):
    """Insert the noise of a lower-dose scan into a CT volume in HU (:func:`insert_noise`), seeded per case and dose.

    Place it where the chain still holds HU on the scan's own grid (after loading and orienting, before the window
    and any resize). Dose 1 leaves the volume unchanged.

    Args:
        keys: the CT key(s), (C, X, Y, Z) in HU.
        model: a noise model (:func:`build_noise_model`).
        dose: the dose fraction in (0, 1].
        seed: with the case's name and the dose, seeds the draw (:func:`case_seed`).
        case_key: the data key naming the case (else the image's file name).
    """

    def __init__(self, keys: KeysCollection, model: NoiseModel, dose: float = 1.0, seed: int = 0, case_key: str = "case",
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.model, self.dose, self.seed, self.case_key = model, check_dose(dose), int(seed), case_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.dose == 1.0:
            return d
        for index, key in enumerate(self.key_iterator(d)):
            image = d[key]
            case = d.get(self.case_key) or (image.meta.get("filename_or_obj") if isinstance(image, MetaTensor) else key)
            affine = np.asarray(image.affine if isinstance(image, MetaTensor) else np.eye(4), np.float64)
            spacing = np.linalg.norm(affine[:3, :2], axis=0)
            hu = np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image, np.float32)
            noisy = torch.as_tensor(hu + _seeded_noise(hu, spacing, self.model, self.dose, self.seed, case, index))
            d[key] = MetaTensor(noisy, affine=image.affine.clone(), meta=meta_without_affine(image)) if isinstance(image, MetaTensor) else noisy
        return d


__all__ = [
    "AIR_HU", "NOISE_MODELS", "ImageDomainNoise", "NoiseModel", "ProjectionDomainNoise", "SimulateDosed",
    "build_noise_model", "case_seed", "meta_without_affine", "check_dose", "draw_noise", "insert_noise", "inserted_variance",
]

"""A model that samples, judged against several raters: the ``probabilistic`` block of ``evaluation.json``.

Per case of the evaluated split, on the whole volume (the utility's grid, every slice): the Probabilistic
U-Net's ``samples`` segmentations (one latent draw per slice and sample, as the slice-wise model generates
them), a deterministic utility's one segmentation when one is given, and the raters' masks. Then, per case, the
metrics of :mod:`pipeline.evaluation.ambiguity` (D^2_GED with d = 1 - IoU, two empty masks agreeing; diversity;
Hungarian-matched IoU), summarised with bootstrap intervals over cases, the paired difference of the two models,
and the raters' own spread as the floor (leave-one-out: one rater as a one-sample model judged by the others).

``evaluate`` reaches this through :func:`load_deterministic` and :func:`load_uncertainty_noise` (refusing a wrong
checkpoint before any work), :func:`sampling_block` (``probabilistic``) and :func:`attribution_block`
(``uncertainty_attribution``, :mod:`pipeline.evaluation.attribution`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from pipeline.data import build_volume_transforms, label_paths
from pipeline.errors import ConfigError
from pipeline.evaluation.attribution import evaluate_attribution
from pipeline.evaluation.ambiguity import KEYS, compute_ambiguity, compute_hm_iou, compute_rater_floor, summarise_ambiguity
from pipeline.evaluation.stats import paired_difference
from pipeline.networks.checkpoints import load_network_from_checkpoint
from pipeline.networks.probabilistic import ProbabilisticUNet, UncertaintyView, as_sampler
from pipeline.networks.zoo import load_utility

logger = logging.getLogger(__name__)


def _slices(volume: torch.Tensor) -> torch.Tensor:
    """(C, H, W, Z) -> (Z, C, H, W)."""
    return volume.permute(3, 0, 1, 2)


@torch.no_grad()
def sample_masks(sampler: ProbabilisticUNet, image: torch.Tensor, samples: int, batch_size: int = 16) -> torch.Tensor:
    """``samples`` binary segmentations of a volume, slice by slice: image (1, H, W, Z) -> bool (samples, Z, H, W)."""
    slices = _slices(image)  # (Z, 1, H, W)
    parts = [sampler.sample(slices[i:i + batch_size], samples)[:, :, 0] > 0 for i in range(0, len(slices), batch_size)]
    return torch.cat(parts, dim=1)  # (samples, Z, H, W): logit > 0 is probability > 0.5


@torch.no_grad()
def predict_mask(network: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """A deterministic utility's segmentation of a volume: image (1, H, W, Z) -> bool (1, Z, H, W)."""
    slices = _slices(image)
    parts = [network(slices[i:i + batch_size])[:, 0] > 0 for i in range(0, len(slices), batch_size)]
    return torch.cat(parts)[None]  # (1, Z, H, W)


def _score_case(sampler: ProbabilisticUNet, entry: dict[str, Any], transform: Callable[[dict[str, Any]], dict[str, Any]],
                samples: int, deterministic: Callable[[torch.Tensor], torch.Tensor] | None,
                device: torch.device | str) -> dict[str, Any]:
    """One case's metrics for the sampler (and the deterministic utility) and the raters' own spread."""
    data = transform({"image": entry["image"], "label": entry["label"]})
    image = torch.as_tensor(data["image"]).float().to(device)
    raters = _slices(torch.as_tensor(data["label"])).permute(1, 0, 2, 3) > 0.5  # (R, Z, H, W)
    if raters.shape[0] < 2:
        raise ValueError(f"{entry['image']}: {raters.shape[0]} rater(s); the ambiguity evaluation needs a list of at "
                         "least two raters' labels per case (unoise phantom --raters N writes such a set).")
    drawn = sample_masks(sampler, image, samples).cpu()
    floor = compute_rater_floor(raters)
    loo_hm = float(np.mean([compute_hm_iou(raters[k:k + 1], raters[torch.arange(len(raters)) != k])
                            for k in range(len(raters))]))
    record = {"case": entry.get("case"), "raters": int(raters.shape[0]), "probabilistic": compute_ambiguity(drawn, raters),
              "raters_floor": {"ged": floor["ged_loo"], "diversity": floor["diversity"], "hm_iou": loo_hm}}
    if deterministic is not None:
        record["deterministic"] = compute_ambiguity(predict_mask(deterministic, image).cpu(), raters)
    logger.info("%s: GED %.3f (probabilistic)%s, raters' own %.3f", entry.get("case"), record["probabilistic"]["ged"],
                f", {record['deterministic']['ged']:.3f} (deterministic)" if deterministic is not None else "",
                floor["ged_loo"])
    return record


def evaluate_sampling(
    sampler: ProbabilisticUNet,
    cases: Sequence[dict[str, Any]],
    transform: Callable[[dict[str, Any]], dict[str, Any]],
    samples: int = 16,
    deterministic: Callable[[torch.Tensor], torch.Tensor] | None = None,
    device: torch.device | str = "cpu",
    bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Score the sampler (and a deterministic utility) against every case's raters.

    Args:
        sampler: the Probabilistic U-Net, in eval mode.
        cases: entries with ``image`` and ``label`` (a list of raters' files; one file is one rater).
        transform: the chain to the utility's grid with every rater kept (``rater_mode`` ``all``): ``image``
            (1, H, W, Z) in [0, 1], ``label`` (R, H, W, Z) in {0, 1}.
        samples: segmentations drawn per case (16 in the papers).
        deterministic: a deterministic utility (logits, one channel) to score beside it, or None.
        device: where the networks run.
        bootstrap: bootstrap resamples of the intervals.
        seed: seeds the latent draws and the bootstrap.

    Returns:
        ``{"cases", "samples", "raters_per_case", "distance", "ged" | "diversity" | "hm_iou": {"probabilistic",
        "deterministic", "raters"}: {"mean", "ci95", "n"}, "paired": {"ged" | "hm_iou": probabilistic minus
        deterministic}, "per_case": [...]}``.

    Raises:
        ValueError: a case with fewer than two raters (the floor needs their disagreement).
    """
    with torch.random.fork_rng():  # the latent draws are seeded here; the caller's generator state is left as it was
        torch.manual_seed(seed)
        per_case = [_score_case(sampler, entry, transform, samples, deterministic, device) for entry in cases]
    models = ["probabilistic"] + (["deterministic"] if deterministic is not None else [])
    summaries = {name: summarise_ambiguity([c[name] for c in per_case], bootstrap, seed) for name in models}
    summaries["raters"] = summarise_ambiguity([c["raters_floor"] for c in per_case], bootstrap, seed)
    result: dict[str, Any] = {
        "cases": len(per_case), "samples": int(samples),
        "raters_per_case": sorted({c["raters"] for c in per_case}),
        "distance": "d = 1 - IoU of two binary masks over the whole volume; two empty masks: IoU 1, d 0",
        "raters_note": "the raters' own spread, leave-one-out: one rater as a one-sample model judged by the others "
                       "(ged, hm_iou), and their diversity",
        **{key: {name: summaries[name][key] for name in summaries} for key in KEYS},
        "per_case": per_case,
    }
    if deterministic is not None:
        result["paired"] = {key: paired_difference([c["probabilistic"][key] for c in per_case],
                                                   [c["deterministic"][key] for c in per_case], bootstrap, seed=seed)
                            for key in ("ged", "hm_iou")}
        result["paired"]["note"] = "probabilistic minus deterministic, mean [95% interval] over cases"
    return result


def load_deterministic(path: str | None, utility: torch.nn.Module, utility_meta: dict[str, Any], utility_checkpoint: str,
                        device: Any) -> torch.nn.Module | None:
    """The deterministic utility scored beside a probabilistic one (None without ``path``); refused before any work
    when the utility is not probabilistic or the two were trained on different grids."""
    if not path:
        return None
    if as_sampler(utility) is None:
        raise ConfigError(f"deterministic_utility {path} is scored beside a probabilistic utility; {utility_checkpoint} "
                          "is not one (train one with unoise train-utility --kind probabilistic).")
    deterministic, meta = load_utility(path, device)
    if meta.get("spatial_size") != utility_meta.get("spatial_size") or meta.get("window") != utility_meta.get("window"):
        raise ConfigError(f"{path}: trained at spatial_size {meta.get('spatial_size')} and window {meta.get('window')}, the "
                          f"probabilistic utility at {utility_meta.get('spatial_size')} and {utility_meta.get('window')}; "
                          "score utilities trained on the same grid.")
    return deterministic.to(device).eval()


def load_uncertainty_noise(path: str | None, utility: torch.nn.Module, utility_checkpoint: str,
                            device: Any) -> torch.nn.Module | None:
    """The noise model of a Probabilistic U-Net's uncertainty (None without ``path``), refused before any work when
    the utility does not sample or the model explains something else."""
    if not path:
        return None
    if as_sampler(utility) is None:
        raise ConfigError(f"uncertainty_noise {path} explains a probabilistic utility's uncertainty; {utility_checkpoint} "
                          "is not a Probabilistic U-Net.")
    network, meta = load_network_from_checkpoint(path, device, kind="noise", role="--uncertainty-noise")
    if meta.get("utility_output") != "uncertainty":
        raise ConfigError(f"{path}: explains its utility's {meta.get('utility_output', 'segmentation')}, not its uncertainty; "
                          "train it with --utility-output uncertainty.")
    return network.eval()


def attribution_block(sampler: ProbabilisticUNet, utility_meta: dict[str, Any], cases: Sequence[dict[str, Any]],
                       pancreas_labels: Sequence[int], noise_models: dict[str, torch.nn.Module],
                       uncertainty_net: torch.nn.Module | None, samples: int, device: Any, bootstrap: int,
                       seed: int) -> dict[str, Any]:
    """The ``uncertainty_attribution`` block (:func:`pipeline.evaluation.attribution.evaluate_attribution`)."""
    transform = build_volume_transforms(utility_meta.get("window", "pancreas"), utility_meta.get("spatial_size"),
                                        pancreas_labels, extra_images=("image_nosign",), extra_masks=("sign", "lesion"))
    models = {f"{name} (segmentation)": net.eval() for name, net in noise_models.items()}
    if uncertainty_net is not None:
        models["unoise_uncertainty"] = uncertainty_net
    view = UncertaintyView(sampler.eval(), samples).to(device)
    return evaluate_attribution(view, models, cases, transform, device=device, bootstrap=bootstrap, seed=seed)


def sampling_block(sampler: ProbabilisticUNet, utility_meta: dict[str, Any], cases: Sequence[dict[str, Any]],
                    pancreas_labels: Sequence[int], samples: int, deterministic: torch.nn.Module | None, device: Any,
                    bootstrap: int, seed: int) -> dict[str, Any]:
    """The ``probabilistic`` block (:func:`pipeline.evaluation.sampling.evaluate_sampling`), or why there is none."""
    if any(len(label_paths(entry)) < 2 for entry in cases):
        return {"skipped": "the evaluated cases do not all list two or more raters' labels; GED and HM-IoU need them"}
    transform = build_volume_transforms(utility_meta.get("window", "pancreas"), utility_meta.get("spatial_size"),
                                        pancreas_labels, rater_mode="all")
    return evaluate_sampling(sampler.eval(), cases, transform, samples, deterministic, device, bootstrap, seed)


__all__ = ["attribution_block", "evaluate_sampling", "load_deterministic", "load_uncertainty_noise", "predict_mask",
           "sample_masks", "sampling_block"]

"""The MONAI engines' pieces that are ours: the training schedule's check, the case-by-case evaluation that
``explain`` runs (a bad case becomes a record, not the end of the batch), the Probabilistic U-Net's training step,
and the denoiser's (Noise2Clean, Noise2Noise, Neural Egg Separation)."""

from pipeline.engines.cases import CaseDataset, CaseEvaluator, collate_cases, is_marker
from pipeline.engines.denoise import DenoiseStep, build_denoise_loss, in_window
from pipeline.engines.probabilistic import ProbabilisticStep, draw_rater
from pipeline.engines.schedule import check_schedule

__all__ = ["CaseDataset", "CaseEvaluator", "DenoiseStep", "ProbabilisticStep", "build_denoise_loss", "check_schedule",
           "collate_cases", "draw_rater", "in_window", "is_marker"]

"""The MONAI engines' pieces that are ours: the training schedule's check, and the case-by-case evaluation that
``explain`` runs (a bad case becomes a record, not the end of the batch), and the Probabilistic U-Net's training step."""

from pipeline.engines.cases import CaseDataset, CaseEvaluator, collate_cases, is_marker
from pipeline.engines.probabilistic import ProbabilisticStep, draw_rater
from pipeline.engines.schedule import check_schedule

__all__ = ["CaseDataset", "CaseEvaluator", "ProbabilisticStep", "check_schedule", "collate_cases", "draw_rater", "is_marker"]

"""The MONAI engines' pieces that are ours: the training schedule's check, and the case-by-case evaluation that
``explain`` runs (a bad case becomes a record, not the end of the batch)."""

from pipeline.engines.cases import CaseDataset, CaseEvaluator, collate_cases, is_marker
from pipeline.engines.schedule import check_schedule

__all__ = ["CaseDataset", "CaseEvaluator", "check_schedule", "collate_cases", "is_marker"]

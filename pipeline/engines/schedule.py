"""The training schedule's check: the engines, losses, optimizers and schedulers are ``_target_`` entries in the
JSON configs (torch's and MONAI's own classes); this module holds the check that needs code."""

from __future__ import annotations

from pipeline.errors import ConfigError


def check_schedule(epochs: int, learning_rate: float, min_lr: float) -> None:
    """Refuse a schedule no training can run: the configs' optimizer and scheduler are ``_target_`` entries
    (torch's own classes), checked here first so that the error names the setting."""
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"epochs must be >= 1, got {epochs}.")
    if not learning_rate > 0:
        raise ConfigError(f"learning_rate must be > 0, got {learning_rate}.")
    if not 0 <= min_lr <= learning_rate:
        raise ConfigError(f"min_lr must be in [0, learning_rate {learning_rate}], got {min_lr}.")


__all__ = ["check_schedule"]

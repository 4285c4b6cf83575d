"""How slices are shown: the radiological convention shared by the overlays and the report."""

from __future__ import annotations

import numpy as np


def radiological_view(array: np.ndarray) -> np.ndarray:
    """A RAS (x, y) slice as shown in radiology: patient right on the screen's left, anterior up."""
    return np.fliplr(np.rot90(array))


__all__ = ["radiological_view"]

"""U-Noise: learned noise-tolerance maps that explain a pancreas CT segmentation model.

Modules, in the direction data flows: ``phantom`` / ``data`` -> ``networks`` / ``noise`` -> ``engines`` /
``handlers`` -> ``baselines`` / ``evaluate`` / ``report`` -> ``cli`` and the bundle configs.
Nothing is built at import time.
"""

from __future__ import annotations

__version__ = "0.1.0"

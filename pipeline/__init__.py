"""U-Noise: learned noise-tolerance maps that explain a pancreas CT segmentation model.

Packages, in the direction data flows (docs/architecture.md; ``tests/test_imports.py`` holds the order):
``phantom`` / ``dicom`` -> ``data`` -> ``networks`` / ``noise`` -> ``handlers`` / ``outputs`` -> ``explain``
-> ``evaluation`` / ``benchmark`` -> ``cli`` / ``api`` and the bundle configs. Nothing is built at import time.
"""

from __future__ import annotations

__version__ = "0.1.0"

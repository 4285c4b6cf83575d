"""What ``explain`` leaves for the user besides the checkpoints it read.

Modules: ``maps`` (one case's maps as NIfTI on the input's grid, and DICOM objects through
:mod:`pipeline.dicom.write`), ``manifest`` (``manifest.json``, written and read), ``provenance`` (which
tool, libraries, device and checkpoints made an output).
"""

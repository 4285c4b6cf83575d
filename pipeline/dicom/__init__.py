"""DICOM, read and written in one place.

Modules: ``read`` (a CT series found, chosen, sorted along its normal and read onto the ITK grid),
``write`` (DICOM SEG and Parametric Map of the maps, on the source series' frames; highdicom),
``ct_series`` (a volume written as a CT series: the phantoms' DICOM copies and the fault drills).
"""

"""Calibration: INT8 calibration images for TensorRT, image sets for shared vocabulary/PCA fits."""

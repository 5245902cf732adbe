"""Segmenters: one frame -> boolean segment masks on the feature patch grid.

Every segmenter is called as ``segmenter(image_bgr, feature_map) -> masks [S, h*w] bool``
(``h, w`` = ``feature_map.grid``; a patch belongs to a segment if any of its pixels does).
Chosen by name with :func:`make_segmenter`; each lives in its own module here.
"""
from __future__ import annotations

from pathlib import Path

SEGMENTERS = ("featclust", "grid", "sam")


def make_segmenter(name: str, conf: dict | None = None, engines_dir: str | Path | None = None):
    conf = conf or {}
    if name == "grid":
        from .grid import GridSegmenter
        return GridSegmenter(**conf)
    if name == "featclust":
        from .featclust import FeatureClusterSegmenter
        return FeatureClusterSegmenter(**conf)
    if name == "sam":
        from .sam import SamSegmenter
        return SamSegmenter.from_engines(engines_dir, **conf)
    raise ValueError(f"unknown segmenter {name!r}; choose from {', '.join(SEGMENTERS)}")

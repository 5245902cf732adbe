"""Confidence of an answer: how distinct the best place is, calibrated on the map itself.

The raw measure is the place margin ``(s1 - s2) / s1``: ``s1`` the best map image's score,
``s2`` the best score among map images more than ``window`` positions away from it in map
order (neighbouring frames of a sequence show the same place and are not competitors). At
build time up to ``HELD_BACK`` map images, evenly spread, are held back one at a time and
localised against the rest; their sorted margins go into the bundle (``calib_margins``). A
frame's confidence is the fraction of held-back margins at or below its own: 0.5 means as
distinct as the median revisit inside the map. Below ``NO_MATCH_BELOW`` the answer is "no
confident match". Maps too small to hold any back fall back to the raw margin.

Measured on corridor (448x336 engine, ``python benchmarks/place_recognition.py``): the margin
separates true revisits from frames of noise well, but a frame from an unrelated place often
still has one map image clearly ahead; answers also carry ``similarity`` (the mean best-hit
similarity of the frame's segments) for users who need to reject foreign scenes.
"""
from __future__ import annotations

import numpy as np

HELD_BACK = 200
WINDOW = 2
NO_MATCH_BELOW = 0.1


def place_margin(images: np.ndarray, scores: np.ndarray, window: int = WINDOW) -> float:
    """``images``/``scores``: a ranking, best first -> margin in [0, 1] (0 when there is no hit)."""
    if len(images) == 0 or scores[0] <= 0:
        return 0.0
    rivals = scores[np.abs(images.astype(np.int64) - int(images[0])) > window]
    s2 = float(rivals[0]) if len(rivals) else 0.0
    return float(np.clip((scores[0] - s2) / scores[0], 0.0, 1.0))


def held_back_margins(localizer, n: int = HELD_BACK, window: int = WINDOW) -> np.ndarray:
    """Sorted ``[<=n] float32`` margins of map images localised against the rest of the map
    (their own descriptors, exact search)."""
    counts = localizer.bundle.arrays["segments_per_image"]
    if len(counts) < 2 * window + 3:
        return np.zeros(0, np.float32)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    desc = localizer.bundle.arrays["descriptors"]
    margins = []
    for i in np.unique(np.linspace(0, len(counts) - 1, min(n, len(counts))).round().astype(int)):
        if counts[i] == 0:
            continue
        r = localizer.rank_descriptors(desc[offsets[i]:offsets[i + 1]], top=2 * window + 2, exact=True,
                                       exclude_image=int(i))
        margins.append(place_margin(r.images, r.scores, window))
    return np.sort(np.asarray(margins, np.float32))


def confidence(margin: float, calib: np.ndarray | None) -> float:
    """Margin -> confidence in [0, 1] through the map's held-back margins (or the raw margin)."""
    if calib is None or len(calib) == 0:
        return round(float(margin), 4)
    return round(float(np.searchsorted(calib, margin, side="right")) / len(calib), 4)

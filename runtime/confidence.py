"""Confidence of an answer: is the frame's place in the map at all? Calibrated on the map.

A frame's match score is ``margin x similarity``:

- place margin ``(s1 - s2) / s1``: ``s1`` the best map image's score, ``s2`` the best score
  among map images more than ``window`` positions away from it in map order (neighbouring
  frames of a sequence show the same place and are not competitors);
- similarity: the mean over the frame's SuperSegments of their best hit's similarity.

The reference is what a frame of a place that is *not* in the map scores. At build time up to
``HELD_BACK`` map images, evenly spread, are localised with their own place removed (the image
and its ``window`` neighbours on each side excluded from the ranking); their sorted scores go
into the bundle (``calib_negatives``). A frame's confidence is the fraction of those no-match
scores below its own: 0.9 means it outscores 90% of frames whose place is missing from the map.
Below ``NO_MATCH_BELOW`` the answer is "no confident match". Maps too small to hold a place back
fall back to the raw margin.

Measured with ``python benchmarks/confidence.py`` (448x336 engine, map-fitted maps): at 0.7,
corridor answers 57% of queries whose place is in the map (Recall@1 0.905 among them, 0.784 over
all), 20% of queries whose place was removed from the map and none of 50 gardens frames;
gardens_point_day answers 85% (0.918 vs 0.885), 41% and 8% of 50 corridor frames. At 0.5 it
answers more (70% / 92%) but also 42-57% of place-removed queries and 8-34% of foreign frames.
"""
from __future__ import annotations

import numpy as np

HELD_BACK = 200
WINDOW = 2
NO_MATCH_BELOW = 0.7


def place_margin(images: np.ndarray, scores: np.ndarray, window: int = WINDOW) -> float:
    """``images``/``scores``: a ranking, best first -> margin in [0, 1] (0 when there is no hit)."""
    if len(images) == 0 or scores[0] <= 0:
        return 0.0
    rivals = scores[np.abs(images.astype(np.int64) - int(images[0])) > window]
    s2 = float(rivals[0]) if len(rivals) else 0.0
    return float(np.clip((scores[0] - s2) / scores[0], 0.0, 1.0))


def match_score(ranked, window: int = WINDOW) -> float:
    """``margin x similarity`` of a ranking (runtime.ranking.Ranked), in [0, 1]."""
    return place_margin(ranked.images, ranked.scores, window) * max(float(ranked.match_sim), 0.0)


def held_back_negatives(localizer, n: int = HELD_BACK, window: int = WINDOW) -> np.ndarray:
    """Sorted ``[<=n] float32`` match scores of map images localised with their place removed
    (exact search over the rest of the map)."""
    counts = localizer.bundle.arrays["segments_per_image"]
    if len(counts) < 2 * window + 3:
        return np.zeros(0, np.float32)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    desc = localizer.bundle.arrays["descriptors"]
    scores = []
    for i in np.unique(np.linspace(0, len(counts) - 1, min(n, len(counts))).round().astype(int)):
        if counts[i] == 0:
            continue
        place = range(max(0, i - window), min(len(counts), i + window + 1))
        r = localizer.rank_descriptors(desc[offsets[i]:offsets[i + 1]], top=2 * window + 2, exact=True,
                                       exclude_images=place)
        scores.append(match_score(r, window))
    return np.sort(np.asarray(scores, np.float32))


def confidence(ranked, calib: np.ndarray | None, window: int = WINDOW) -> float:
    """A ranking -> confidence in [0, 1] through the map's no-match scores (the raw margin without them)."""
    if calib is None or len(calib) == 0:
        return round(place_margin(ranked.images, ranked.scores, window), 4)
    return round(float(np.searchsorted(calib, match_score(ranked, window), side="left")) / len(calib), 4)

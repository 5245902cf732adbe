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
RANK_DEPTH = 4 * WINDOW + 2     # images ranked per frame (margin rivals, temporal filter, verification)
MIN_INLIERS = 20                # floor of a map's no-match inlier level
LEVEL_QUANTILE = 0.9
STEEPNESS = 4.0


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


def held_back_negatives(localizer, n: int = HELD_BACK, window: int = WINDOW) -> dict[str, np.ndarray]:
    """What frames of places *not* in the map score: up to ``n`` map images, evenly spread, localised
    with their place (the image and ``window`` neighbours each side) removed, exact search, the
    shortlist verified with the image's own stored patch codes. Returns sorted ``[<=n] float32``
    ``calib_negatives`` (match scores) and, where the map has verification data, ``calib_inliers``
    (the verified inliers of the best answer)."""
    counts = localizer.bundle.arrays["segments_per_image"]
    codes = localizer.bundle.arrays.get("verify_codes")
    out = {"calib_negatives": np.zeros(0, np.float32)}
    if codes is not None:
        out["calib_inliers"] = np.zeros(0, np.float32)
    if len(counts) < 2 * window + 3:
        return out
    offsets = np.concatenate([[0], np.cumsum(counts)])
    desc = localizer.bundle.arrays["descriptors"]
    scores, inliers = [], []
    for i in np.unique(np.linspace(0, len(counts) - 1, min(n, len(counts))).round().astype(int)):
        if counts[i] == 0:
            continue
        place = range(max(0, i - window), min(len(counts), i + window + 1))
        r = localizer.rank_descriptors(desc[offsets[i]:offsets[i + 1]], top=RANK_DEPTH, exact=True,
                                       exclude_images=place)
        scores.append(match_score(r, window))
        if codes is not None:
            v = localizer.verify(r, np.asarray(codes[i]))
            inliers.append(top_inliers(v))
    out["calib_negatives"] = np.sort(np.asarray(scores, np.float32))
    if codes is not None:
        out["calib_inliers"] = np.sort(np.asarray(inliers, np.float32))
    return out


def top_inliers(ranked) -> int:
    """Verified inliers of the best answer of a ranking (0 where it was not verified)."""
    if ranked.inliers is None or len(ranked.inliers) == 0:
        return 0
    return max(int(ranked.inliers[0]), 0)


def no_match_level(calib_inliers: np.ndarray | None) -> float:
    """The map's no-match inlier level: the ``LEVEL_QUANTILE`` quantile of its held-back inliers,
    at least ``MIN_INLIERS``."""
    if calib_inliers is None or len(calib_inliers) == 0:
        return float(MIN_INLIERS)
    return max(float(MIN_INLIERS), float(np.quantile(calib_inliers, LEVEL_QUANTILE)))


def confidence(ranked, calib: np.ndarray | None, window: int = WINDOW, calib_inliers: np.ndarray | None = None) -> float:
    """A ranking -> confidence in [0, 1]. Verified rankings: ``1 / (1 + (level / inliers) ** STEEPNESS)``
    (0.5 at the map's no-match level); others: the share of the map's no-match scores below the
    frame's match score (the raw margin without a calibration)."""
    if ranked.inliers is not None:
        inl = top_inliers(ranked)
        return round(1.0 / (1.0 + (no_match_level(calib_inliers) / inl) ** STEEPNESS), 4) if inl > 0 else 0.0
    if calib is None or len(calib) == 0:
        return round(place_margin(ranked.images, ranked.scores, window), 4)
    return round(float(np.searchsorted(calib, match_score(ranked, window), side="left")) / len(calib), 4)

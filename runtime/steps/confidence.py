"""Confidence of an answer: is the frame's place in the map at all?

Verified maps (the default): the evidence is the number of verified inliers of the answer
(runtime/steps/verification.py), ``confidence = 1 / (1 + a (T / inliers) ** STEEPNESS)``, with ``T =
ANSWER_INLIERS[verify_model]`` the inliers that make ``NO_MATCH_BELOW``. Chance agreement does not grow with
the patch grid: frames of gardens_point_day against a corridor map have 5/6.5/11 inliers on the
224x168 engine (192 patches), as on the 448x336 one (measured with the similarity model), so
``T`` is one number. Measured with ``python -m benchmarks.confidence`` (448x336, affine model,
the three shared sets pooled, ``benchmarks/confidence.log``): the best answer of a frame of a
place in no map has 8/10/13 inliers (p10/p50/p90, 306 frames), an in-map query 11/56/99 (403).
An affine fit's two more degrees of freedom agree by chance more (the foreign p90 was 11 with
the similarity model), so its ``T`` is 18, keeping the margin over the foreign p90 that 16 has
for the similarity model (maps built with it keep 16): no foreign frame and 3% of darkened
frames are answered, against 81% of in-map queries. Inliers cannot tell a place from its
neighbour a few metres on: a query whose correct images were removed from a sequential map
still matches the next ones (70% answered), and of the wrong answers to in-map queries on the
sequences, 23 of 35 lie one or two map images beyond the +-2 the ground truth accepts; a
threshold on the ratio to the best far rival would refuse those at the price of half the in-map
answers, so it is not used.
Held-back calibration (map images localised with their place removed) overestimates the no-match
level on dense sequences for the same reason (corridor: p50 165 inliers), so verified maps use a
fixed level.

Unverified maps (``verify_top`` 0, e.g. ``global``): a frame's match score is ``margin x
similarity`` -- place margin ``(s1 - s2) / s1`` with ``s2`` the best score more than ``window``
map images away from the best, times the mean best-hit similarity of the frame's segments --
compared with what frames of places *not* in the map score: up to ``HELD_BACK`` map images
localised at build time with their place (the image and ``window`` neighbours) removed, sorted
into the bundle (``calib_negatives``). The confidence is the share of those below the frame's.
Below ``NO_MATCH_BELOW`` the answer is "no confident match".
"""
from __future__ import annotations

import numpy as np

HELD_BACK = 200
WINDOW = 2
NO_MATCH_BELOW = 0.7
RANK_DEPTH = 4 * WINDOW + 2     # images ranked per frame (margin rivals, temporal filter, verification)
ANSWER_INLIERS = {"similarity": 16, "affine": 18}   # verified inliers that make NO_MATCH_BELOW, per RANSAC model
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


def held_back_negatives(localizer, n: int = HELD_BACK, window: int = WINDOW) -> np.ndarray:
    """Sorted ``[<=n] float32`` match scores of map images localised with their place removed
    (exact search over the rest of the map): the calibration of unverified maps."""
    counts = localizer.bundle.arrays["segments_per_image"]
    if len(counts) < 2 * window + 3:
        return np.zeros(0, np.float32)
    offsets = localizer.bundle.segment_offsets
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


def top_inliers(ranked) -> int:
    """Verified inliers of the best answer of a ranking (0 where it was not verified)."""
    if ranked.inliers is None or len(ranked.inliers) == 0:
        return 0
    return max(int(ranked.inliers[0]), 0)


def confidence(ranked, calib: np.ndarray | None, model: str, window: int = WINDOW) -> float:
    """A ranking -> confidence in [0, 1]. Verified rankings: ``1 / (1 + a (T / inliers) ** STEEPNESS)``
    with ``T = ANSWER_INLIERS[model]`` (the map's ``verify_model``) and ``a`` such that ``T``
    inliers give ``NO_MATCH_BELOW``;
    others: the share of the map's no-match scores below the frame's match score (the raw margin
    without a calibration)."""
    if ranked.inliers is not None:
        inl = top_inliers(ranked)
        if inl == 0:
            return 0.0
        a = (1 - NO_MATCH_BELOW) / NO_MATCH_BELOW
        return round(1.0 / (1.0 + a * (ANSWER_INLIERS[model] / inl) ** STEEPNESS), 4)
    if calib is None or len(calib) == 0:
        return round(place_margin(ranked.images, ranked.scores, window), 4)
    return round(float(np.searchsorted(calib, match_score(ranked, window), side="left")) / len(calib), 4)

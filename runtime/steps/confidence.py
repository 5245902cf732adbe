"""Confidence of an answer: is the frame's place in the map at all?

Verified maps (the default): two kinds of evidence, the confidence the smaller of the two.

1. Enough inliers: ``1 / (1 + a (T / inliers) ** STEEPNESS)``, with ``T =
   ANSWER_INLIERS[verify_model]`` the inliers of the answer that make ``NO_MATCH_BELOW``. Measured
   with ``python -m benchmarks.confidence`` (448x336, affine model, the three shared sets and
   three fits pooled, ``benchmarks/confidence.log``): the best answer of a frame of a place in no
   map has 8/10/13 inliers (p10/p50/p90, 918 frames), an in-map query 11/54/99 (1209). Chance
   agreement barely grows with the patch grid (``benchmarks/confidence_engines.log``, one fit):
   foreign frames have 7/9/11 on the 224x168 engine (192 patches) and 8/10/13 on the 644x476 one
   (1,564), where in-map queries have 10/32/52 and 12/66/135; so ``T`` is one number per model:
   18 for the affine model, five above the foreign p90 (maps built with the similarity model keep
   their 16).
2. No other place as good: ``1 / (1 + a (RIVAL_RATIO rival / inliers) ** STEEPNESS)``, with
   ``rival`` the most inliers of a verified image of another place (``other_places``: farther than
   the position estimator's agreement radius where the map has positions, else more than
   ``window`` map images away). A frame that two places explain about equally well is ambiguous:
   corridor's repeated structure, or a sequence's frames just past the right ones. Measured with
   the same command: the inlier level alone answers 81% of in-map queries, right 88.3% of the
   time, and 16% of removed-place queries with a map image far from the place; with
   ``RIVAL_RATIO`` 1.05 72%, right 90.6%, and 11% (1.0: 75%, 90.1%; 1.5: 50%, 95.7%). The level
   raised to answer 72% instead leaves 88.8% right and 13% far off: it still answers every
   corridor query (81.1% right) and refuses most of wxbs's day/night and season pairs (8% answered
   against 19%), where the rival answers the ambiguous ones only.

Inliers cannot tell a place from its neighbour a few metres on, so a query whose correct images
were removed from a sequential map is still answered with the next ones.
Held-back calibration (map images localised with their place removed) overestimates the no-match
level on dense sequences for the same reason (queries whose correct images were removed still
have a median of 32 inliers pooled over the three sets, foreign frames 10,
``benchmarks/confidence.log``), so verified maps use a fixed level.

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
RIVAL_RATIO = 1.05      # the answer's inliers over the best other place's that make NO_MATCH_BELOW
STEEPNESS = 4.0


def other_places(images: np.ndarray, window: int = WINDOW, positions=None) -> np.ndarray:
    """``images [N] int`` a ranking, best first -> ``[N] bool``: which show another place than the
    first. With ``positions`` (runtime.steps.position.MapPositions, one concept of "the same place"
    for the position estimate and the confidence): farther from it than the estimator's agreement
    radius (``agree_m``, metres), where both have a position; otherwise, and where the map's
    positions have no spacing, more than ``window`` map images away (map order is capture order
    for a sequential map; a map without positions that passes a place twice counts the second
    pass as another place)."""
    images = np.asarray(images, np.int64)
    if not len(images):
        return np.zeros(0, bool)
    apart = np.abs(images - images[0]) > window
    if positions is not None and positions.agree_m > 0:
        xy = positions.xy[images]
        known = np.isfinite(xy).all(1) & np.isfinite(xy[0]).all()
        apart[known] = np.linalg.norm(xy[known] - xy[0], axis=1) > positions.agree_m
    return apart


def place_margin(images: np.ndarray, scores: np.ndarray, window: int = WINDOW) -> float:
    """``images``/``scores``: a ranking, best first -> margin in [0, 1] (0 when there is no hit)."""
    if len(images) == 0 or scores[0] <= 0:
        return 0.0
    rivals = scores[other_places(images, window)]
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


def best_rival(ranked, window: int = WINDOW, positions=None) -> tuple[int, int]:
    """A verified ranking (runtime.steps.ranking.Ranked, ``inliers [N]``, -1 where not verified) ->
    ``(map image, inliers)`` of the verified image of another place than its first (``other_places``
    with ``positions``, a MapPositions or None) with the most inliers; ``(-1, 0)`` where none has any."""
    if ranked.inliers is None or len(ranked.inliers) == 0:
        return -1, 0
    inl = np.where(other_places(ranked.images, window, positions), ranked.inliers, 0)
    j = int(np.argmax(inl))
    return (int(ranked.images[j]), int(inl[j])) if inl[j] > 0 else (-1, 0)


def verified_confidence(inliers: int, rival: int, model: str, rival_ratio: float = RIVAL_RATIO) -> float:
    """The answer's verified ``inliers`` and the best ``rival`` place's -> confidence in [0, 1]: the
    smaller of ``1 / (1 + a (T / inliers) ** STEEPNESS)``, ``T = ANSWER_INLIERS[model]``, and ``1 / (1 +
    a (rival_ratio * rival / inliers) ** STEEPNESS)``, ``a`` such that ``T`` inliers, or ``rival_ratio``
    times the rival's, give ``NO_MATCH_BELOW`` (``rival_ratio`` 0: inliers alone)."""
    if inliers <= 0:
        return 0.0
    a = (1 - NO_MATCH_BELOW) / NO_MATCH_BELOW
    worst = max(ANSWER_INLIERS[model], rival_ratio * rival) / inliers
    return round(1.0 / (1.0 + a * worst ** STEEPNESS), 4)


def confidence(ranked, calib: np.ndarray | None, model: str, window: int = WINDOW, positions=None,
               rival_ratio: float = RIVAL_RATIO) -> float:
    """A ranking (runtime.steps.ranking.Ranked) -> confidence in [0, 1]. Verified rankings:
    ``verified_confidence`` of the best answer's inliers and its rival's (``best_rival``, another
    place by ``positions``, the map's MapPositions or None; ``rival_ratio`` 0: inliers alone), ``model``
    the map's ``verify_model``;
    others: the share of the map's no-match scores below the frame's match score (the raw margin
    without a calibration)."""
    if ranked.inliers is not None:
        return verified_confidence(top_inliers(ranked), best_rival(ranked, window, positions)[1], model, rival_ratio)
    if calib is None or len(calib) == 0:
        return round(place_margin(ranked.images, ranked.scores, window), 4)
    return round(float(np.searchsorted(calib, match_score(ranked, window), side="left")) / len(calib), 4)

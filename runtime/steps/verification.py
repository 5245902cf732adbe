"""Spatial verification of the shortlist: do the frame's patches and a map image's patches agree
on one 2D transform?

Each map image keeps compact patch codes: its DINOv2 patch features projected by a PCA fitted
on the map's patches (``PatchCoder``, ``[C] -> [d]``, unit norm, float16), one row per patch of
the engine's grid, so the positions are implicit. A frame's codes are matched to a candidate's
by mutual nearest neighbours (cosine, at least ``min_sim``); a RANSAC fit of a 2D model with a
``threshold`` in patch units counts the matches that agree: a full affine
(``cv2.estimateAffine2D``, the default: a scene seen from aside is sheared, not only turned
and scaled) or a similarity (``cv2.estimateAffinePartial2D``: rotation, uniform scale,
translation). The inlier count re-ranks the shortlist -- a candidate overtakes the retrieval's
first only with more than ``gain`` times its inliers: in a sequence the frame a few steps on
often verifies as well as the right one, so a plain re-rank by inliers loses Recall@1 there
(``benchmarks/compare.log``) -- and is the evidence the confidence is made of
(runtime/steps/confidence.py).

Classic retrieval does the same with local features and visual words (Philbin et al., CVPR
2007). The map side is read only for the shortlist, so a bundle stores the codes
memory-mapped (runtime/mapfiles/bundle.py) and only the segment index needs RAM.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

ESTIMATORS = {"similarity": cv2.estimateAffinePartial2D, "affine": cv2.estimateAffine2D}   # the 2D models


class PatchCoder:
    """``mean [C] float32``, ``components [d, C] float32``: ``codes(features [P, C]) -> [P, d] float16`` unit norm."""

    def __init__(self, mean: np.ndarray, components: np.ndarray):
        self.mean = np.asarray(mean, np.float32)
        self.components = np.asarray(components, np.float32)

    @classmethod
    def fit(cls, features: np.ndarray, dims: int) -> "PatchCoder":
        """``features [N, C]`` sampled patch features (N > dims) -> top ``dims`` principal axes."""
        x = np.asarray(features, np.float32)
        if len(x) <= dims:
            raise ValueError(f"a {dims}-dim patch code needs more than {dims} patch features, got {len(x)}")
        mean = x.mean(0)
        _, vecs = np.linalg.eigh(np.cov(x - mean, rowvar=False))
        return cls(mean, vecs[:, ::-1][:, :dims].T.copy())

    def codes(self, features: np.ndarray) -> np.ndarray:
        y = (np.asarray(features, np.float32) - self.mean) @ self.components.T
        y /= np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)
        return y.astype(np.float16)


@dataclass
class Verification:
    """``inliers``: how many mutual matches agree with the fitted model; ``matches``: mutual
    matches found; ``pairs [M, 2] int`` (query patch, map patch) of the inliers."""

    inliers: int
    matches: int
    pairs: np.ndarray


def patch_positions(grid: tuple[int, int]) -> np.ndarray:
    """``[h*w, 2] float32`` (x, y) patch centres in patch units, row-major."""
    h, w = grid
    rr, cc = np.divmod(np.arange(h * w), w)
    return np.stack([cc, rr], axis=1).astype(np.float32)


def mutual_matches(sims: np.ndarray, min_sim: float) -> tuple[np.ndarray, np.ndarray]:
    """``sims [P, P']`` cosine similarities of query vs map patches -> indices ``(qi, mi)`` of
    mutual nearest neighbours with similarity >= ``min_sim`` (a query patch's best map patch has
    no better query patch; a column max, not a column argmax, which numpy does far faster)."""
    best_m = sims.argmax(1)
    best = sims[np.arange(len(sims)), best_m]
    mutual = (best >= sims.max(0)[best_m]) & (best >= min_sim)
    qi = np.flatnonzero(mutual)
    return qi, best_m[qi]


def fit_inliers(qi: np.ndarray, mi: np.ndarray, positions: np.ndarray, model: str, threshold: float,
                min_matches: int = 4) -> Verification:
    """Matched patches ``qi``/``mi`` on the same patch grid (``positions [P, 2]``) -> inliers of a
    RANSAC fit of ``model`` (``threshold`` in patch units; both the map's settings,
    runtime/settings.py; deterministic: OpenCV's fixed seed)."""
    if model not in ESTIMATORS:
        raise ValueError(f"unknown verification model {model!r}; choose from {', '.join(ESTIMATORS)}")
    none = Verification(0, len(qi), np.zeros((0, 2), np.int64))
    if len(qi) < min_matches:
        return none
    estimate = ESTIMATORS[model]
    _, mask = estimate(positions[qi], positions[mi], method=cv2.RANSAC, ransacReprojThreshold=threshold,
                       maxIters=500, confidence=0.99, refineIters=0)
    if mask is None:
        return none
    inl = mask.ravel().astype(bool)
    return Verification(int(inl.sum()), len(qi), np.stack([qi[inl], mi[inl]], axis=1))


def shortlist_matches(q_codes: np.ndarray, map_codes: np.ndarray, candidates,
                      min_sim: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """``q_codes [P, d]``, ``map_codes [I, P, d] float16`` (memory-mapped: only the candidates'
    rows are read) -> the mutual matches ``(qi, mi)`` of cosine >= ``min_sim`` with each candidate
    map image, in order."""
    cand = [int(i) for i in candidates]
    if not cand:
        return []
    q = np.asarray(q_codes, np.float32)
    m = np.asarray(map_codes[cand], np.float32)                     # [N, P, d]
    return [mutual_matches(q @ m[j].T, min_sim) for j in range(len(cand))]


def verify_shortlist(q_codes: np.ndarray, map_codes: np.ndarray, candidates, grid: tuple[int, int], *,
                     model: str, threshold: float, min_sim: float) -> list[Verification]:
    """``shortlist_matches`` -> one Verification per candidate map image index, in the given order."""
    pos = patch_positions(grid)
    return [fit_inliers(qi, mi, pos, model, threshold) for qi, mi in shortlist_matches(q_codes, map_codes, candidates, min_sim)]


def rerank_by_inliers(ranked, checks: list[Verification], gain: float):
    """A ranking (runtime.ranking.Ranked) whose first ``len(checks)`` images were verified ->
    the same ranking with those images ordered by inliers (ties keep their retrieval order), except
    that the retrieval's first image stays first unless another has more than ``gain`` times its
    inliers; ``inliers`` set (``-1`` for images past the shortlist)."""
    from segvlad_edge.runtime.steps.ranking import Ranked

    n = len(checks)
    inl = np.array([c.inliers for c in checks], np.int64)
    head = np.argsort(-inl, kind="stable")
    if n and inl[head[0]] <= gain * inl[0]:
        head = np.concatenate([[0], head[head != 0]])
    order = np.concatenate([head, np.arange(n, len(ranked.images))]).astype(np.int64)
    all_inl = np.concatenate([inl, np.full(len(ranked.images) - n, -1, np.int64)])
    pairs = [ranked.pairs[i] for i in order if i < len(ranked.pairs)]
    return Ranked(ranked.images[order], ranked.scores[order], pairs, ranked.match_sim, all_inl[order],
                  [checks[i] for i in order[:n]])

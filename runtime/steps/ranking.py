"""Ranking map images by the similarity-weighted frequency of their segments among the hits.

Each query SuperSegment brings its top-K' map segments; a hit adds its (normalised)
similarity to the score of the map image that segment belongs to (``bincount`` with weights).
Normalisation: ``"query"`` min-max over this query's hits (usable online), ``(lo, hi)`` a fixed
range (the reference's global min-max over a whole query set), or ``"none"`` raw similarity.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Ranked:
    """``images [N] int`` best first, ``scores [N] float32``; ``pairs[i]``: ``[(query_seg, map_seg, sim)]``
    of image ``images[i]``, best first; ``match_sim``: mean over query segments of their best hit's
    raw similarity (how well the frame matches the map at all); after spatial verification
    (runtime/steps/verification.py) ``inliers [N] int`` (-1: not verified) and ``checks`` (one
    Verification per verified image, in ranking order)."""

    images: np.ndarray
    scores: np.ndarray
    pairs: list = field(default_factory=list)
    match_sim: float = 0.0
    inliers: np.ndarray | None = None
    checks: list = field(default_factory=list)


def without(ranked: Ranked, images) -> Ranked:
    """``ranked`` (before verification) without the map ``images``, e.g. ones whose data failed its checksum."""
    keep = ~np.isin(ranked.images, np.asarray(list(images), np.int64))
    return Ranked(ranked.images[keep], ranked.scores[keep], [p for p, k in zip(ranked.pairs, keep) if k],
                  ranked.match_sim)


def normalise_sims(sims: np.ndarray, norm="query") -> np.ndarray:
    """``sims [Q, K']`` -> hit weights ``[Q, K'] float32`` (0 for missing hits). Min-max maps the
    range ``[lo, hi]`` to ``[0, 1]``; when the range is empty (every hit equally similar, e.g. a map
    whose SuperSegments are all identical) each hit at ``hi`` weighs 1, so equal hits still vote."""
    valid = np.isfinite(sims)
    if norm == "none":
        return np.where(valid, sims, 0).astype(np.float32)
    if norm == "query":
        lo, hi = (sims[valid].min(), sims[valid].max()) if valid.any() else (0.0, 1.0)
    else:
        lo, hi = norm
    if hi - lo <= 1e-12:
        w = (sims >= hi).astype(np.float32)
    else:
        w = np.clip((sims - lo) / (hi - lo), 0, None)
    return np.where(valid, w, 0).astype(np.float32)


def rank(ids: np.ndarray, sims: np.ndarray, segment_image: np.ndarray, n_images: int, top: int = 10,
         norm="query", pairs_per_image: int = 8) -> Ranked:
    """``ids, sims [Q, K']`` hits of the Q query segments; ``segment_image [N_seg] int`` map image of
    each map segment -> the ``top`` images with the highest weighted hit frequency."""
    valid = ids >= 0
    w = normalise_sims(sims, norm)[valid]
    img = segment_image[ids[valid]]
    scores = np.bincount(img, weights=w, minlength=n_images).astype(np.float32)
    order = np.argsort(-scores, kind="stable")[:top]
    order = order[scores[order] > 0] if (scores > 0).any() else order[:0]
    q_idx = np.nonzero(valid)[0]
    pairs = []
    for i in order:
        sel = np.flatnonzero(img == i)
        sel = sel[np.argsort(-sims[valid][sel], kind="stable")]
        seen, chosen = set(), []
        for j in sel:                                  # one pair per query segment, best first
            q = int(q_idx[j])
            if q not in seen:
                seen.add(q)
                chosen.append((q, int(ids[valid][j]), float(sims[valid][j])))
            if len(chosen) == pairs_per_image:
                break
        pairs.append(chosen)
    best = sims[:, 0][np.isfinite(sims[:, 0])] if sims.shape[1] else sims[:, 0]
    return Ranked(order, scores[order], pairs, float(best.mean()) if len(best) else 0.0)

"""SuperSegments: each segment grown to the union of its o-hop neighbours.

Segment centroids -> Delaunay triangulation -> adjacency ``A`` with self-loops ->
``bool(A^o)`` -> SuperSegment ``s`` = union of the segments ``A^o[s]`` reaches.
Degenerate cases: 0 segments give none; 1-2 segments, collinear centroids (a path along the
line) and duplicate centroids (neighbours of each other) are handled without Qhull.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import Delaunay, QhullError


@dataclass
class SuperSegments:
    """``masks [S, P] bool`` on the patch grid, ``centroids [S, 2] float32`` (row, col in patches),
    ``adjacency [S, S] bool`` (with self-loops), ``order`` o."""

    masks: np.ndarray
    centroids: np.ndarray
    adjacency: np.ndarray
    order: int

    @classmethod
    def from_masks(cls, masks: np.ndarray, grid: tuple[int, int], order: int) -> "SuperSegments":
        """``masks [S, h*w] bool``; empty masks are dropped first."""
        masks = np.asarray(masks, bool).reshape(len(masks), grid[0] * grid[1])
        masks = masks[masks.any(1)]
        centroids = segment_centroids(masks, grid)
        adj = delaunay_adjacency(centroids)
        reach = expand(adj, order)
        grown = (reach.astype(np.float32) @ masks.astype(np.float32)) > 0 if len(masks) else masks
        return cls(grown, centroids, adj, order)

    def __len__(self) -> int:
        return len(self.masks)

    def keep_distinct(self, psi: float) -> np.ndarray:
        """Overlap filtering (the reference's storage cut): indices of the SuperSegments kept, see
        ``overlap_filter``."""
        return overlap_filter(self.masks, psi)

    def subset(self, keep: np.ndarray) -> "SuperSegments":
        return SuperSegments(self.masks[keep], self.centroids[keep], self.adjacency[np.ix_(keep, keep)], self.order)


def overlap_filter(masks: np.ndarray, psi: float) -> np.ndarray:
    """``masks [S, P] bool`` -> ``[K] int64`` indices kept: greedily in order, a mask is dropped when
    its intersection over union with an already kept mask exceeds ``psi`` (IoU never exceeds 1, so
    ``psi`` = 1 keeps all; 0.99 drops exact copies; lower drops near-copies too)."""
    if len(masks) == 0:
        return np.zeros(0, np.int64)
    m = masks.astype(np.float32)
    inter = m @ m.T
    area = m.sum(1)
    overlap = inter / np.maximum(area[:, None] + area[None, :] - inter, 1)
    kept: list[int] = []
    for i in range(len(masks)):
        if not kept or overlap[i, kept].max() <= psi:
            kept.append(i)
    return np.asarray(kept, np.int64)


def segment_centroids(masks: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """``masks [S, h*w] bool`` -> ``[S, 2] float32`` mean (row, col) of each segment's patches."""
    h, w = grid
    rr, cc = np.divmod(np.arange(h * w), w)
    area = np.maximum(masks.sum(1), 1)[:, None].astype(np.float32)
    m = masks.astype(np.float32)
    return np.stack([m @ rr, m @ cc], axis=1).astype(np.float32) / area


def delaunay_adjacency(points: np.ndarray) -> np.ndarray:
    """``points [S, 2]`` -> ``[S, S] bool`` Delaunay neighbours plus self-loops."""
    s = len(points)
    adj = np.eye(s, dtype=bool)
    if s < 2:
        return adj
    uniq, inv = np.unique(np.round(points, 6), axis=0, return_inverse=True)
    inv = inv.ravel()
    u = len(uniq)
    uadj = np.eye(u, dtype=bool)
    if u == 2:
        uadj[:] = True
    elif u > 2:
        centred = uniq - uniq.mean(0)
        if np.linalg.matrix_rank(centred, tol=1e-6) < 2:       # collinear: a path along the line
            direction = np.linalg.svd(centred, full_matrices=False)[2][0]
            order = np.argsort(centred @ direction)
            uadj[order[:-1], order[1:]] = uadj[order[1:], order[:-1]] = True
        else:
            try:
                tri = Delaunay(uniq)
                for a, b in ((0, 1), (1, 2), (0, 2)):
                    uadj[tri.simplices[:, a], tri.simplices[:, b]] = True
                    uadj[tri.simplices[:, b], tri.simplices[:, a]] = True
            except QhullError:
                uadj[:] = True
    return uadj[inv][:, inv]


def expand(adj: np.ndarray, order: int) -> np.ndarray:
    """``bool(A^o)``: which segments each segment reaches in at most ``order`` hops."""
    reach = adj.copy()
    a = adj.astype(np.float32)
    for _ in range(order - 1):
        reach = (reach.astype(np.float32) @ a) > 0
    return reach if order > 0 else np.eye(len(adj), dtype=bool)

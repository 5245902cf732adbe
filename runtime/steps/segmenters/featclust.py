"""``featclust`` (weight-free default): k-means on DINOv2 patch features plus patch position,
then 4-connected components of each cluster. Object-like parts without any segmentation
weights, at a few milliseconds per frame (the features are already computed)."""
from __future__ import annotations

import numpy as np
from scipy import ndimage


class FeatureClusterSegmenter:
    """``clusters``: k-means centres per frame, or a list of them (several granularities at once:
    the segments of each clustering, coarse and fine, all kept); ``spatial``: weight of the
    (row, col) position (unit = whole frame) next to unit-norm features; components under
    ``min_patches`` are dropped."""

    def __init__(self, clusters: int | list[int] = 8, spatial: float = 0.5, iters: int = 8, min_patches: int = 3, seed: int = 0):
        self.clusters, self.spatial, self.iters, self.min_patches, self.seed = clusters, spatial, iters, min_patches, seed

    def __call__(self, image_bgr, fmap) -> np.ndarray:
        h, w = fmap.grid
        rr, cc = np.mgrid[0:h, 0:w]
        pos = np.stack([rr.ravel() / max(h, w), cc.ravel() / max(h, w)], axis=1).astype(np.float32)
        x = np.concatenate([fmap.features, self.spatial * pos], axis=1)
        levels = self.clusters if isinstance(self.clusters, (list, tuple)) else [self.clusters]
        masks = [self.components(kmeans_labels(x, min(int(k), len(x)), self.iters, self.seed).reshape(h, w))
                 for k in levels]
        return np.concatenate(masks) if masks else np.zeros((0, h * w), bool)

    def components(self, label: np.ndarray) -> np.ndarray:
        """``label [h, w] int`` cluster map -> ``[S, h*w] bool`` its 4-connected components of at
        least ``min_patches`` patches."""
        h, w = label.shape
        masks = []
        for k in range(label.max() + 1):
            comp, n = ndimage.label(label == k)
            if n == 0:
                continue
            sizes = np.bincount(comp.ravel(), minlength=n + 1)
            keep = np.flatnonzero(sizes[1:] >= self.min_patches) + 1
            masks.append(comp.ravel()[None, :] == keep[:, None])
        return np.concatenate(masks) if masks else np.zeros((0, h * w), bool)


def kmeans_labels(x: np.ndarray, k: int, iters: int, seed: int) -> np.ndarray:
    """Plain Lloyd k-means, k-means++ seeding; ``x [N, D] float32`` -> labels ``[N] int``."""
    rng = np.random.default_rng(seed)
    centres = [x[rng.integers(len(x))]]
    d2 = ((x - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        centres.append(x[rng.choice(len(x), p=d2 / d2.sum()) if d2.sum() > 0 else rng.integers(len(x))])
        d2 = np.minimum(d2, ((x - centres[-1]) ** 2).sum(1))
    c = np.stack(centres)
    sq = (x ** 2).sum(1)
    for _ in range(iters):
        labels = np.argmin(sq[:, None] - 2 * x @ c.T + (c ** 2).sum(1)[None], axis=1)
        onehot = (labels[None, :] == np.arange(k)[:, None]).astype(np.float32)
        counts, sums = onehot.sum(1), onehot @ x
        c = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], c)
    return np.argmin(sq[:, None] - 2 * x @ c.T + (c ** 2).sum(1)[None], axis=1)

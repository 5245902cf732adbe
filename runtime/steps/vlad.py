"""Hard-assignment VLAD over a k-means vocabulary, one descriptor per SuperSegment.

Assignment by cosine to the normalised centres, residuals to the raw centres, summed per
SuperSegment with one dense product per cluster (no loop over segments), then per-cluster
L2 ("intra") and global L2 normalisation; no power normalisation. Computed in float32.
"""
from __future__ import annotations

import numpy as np

from segvlad_edge.runtime.steps.kmeans import kmeans


class Vocabulary:
    """``centers [K, D] float32`` fitted by spherical k-means on unit-norm patch features."""

    def __init__(self, centers: np.ndarray):
        self.centers = np.ascontiguousarray(centers, dtype=np.float32)
        self.unit = self.centers / np.maximum(np.linalg.norm(self.centers, axis=1, keepdims=True), 1e-12)

    @classmethod
    def fit(cls, features: np.ndarray, k: int = 32, iters: int = 30, seed: int = 0) -> "Vocabulary":
        """``features [N, D]`` unit-norm patch features (N >= k) -> cosine k-means centres."""
        if len(features) < k:
            raise ValueError(f"a {k}-word vocabulary needs at least {k} patch features, got {len(features)}")
        centres, _ = kmeans(features, k, iters, seed, spherical=True)
        return cls(centres)

    @property
    def k(self) -> int:
        return len(self.centers)

    def assign(self, features: np.ndarray) -> np.ndarray:
        """``[P, D]`` -> ``[P] int`` nearest centre by cosine."""
        return np.argmax(features @ self.unit.T, axis=1)


class VladAggregator:
    def __init__(self, vocab: Vocabulary):
        self.vocab = vocab

    def __call__(self, features: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """``features [P, D] float32``, ``masks [S, P] bool`` -> ``[S, K*D] float32`` VLAD rows."""
        k, d = self.vocab.centers.shape
        labels = self.vocab.assign(features)
        residual = features - self.vocab.centers[labels]
        m = masks.astype(np.float32)
        out = np.zeros((len(masks), k, d), np.float32)
        for c in np.unique(labels):
            idx = np.flatnonzero(labels == c)
            out[:, c] = m[:, idx] @ residual[idx]
        out /= np.maximum(np.linalg.norm(out, axis=2, keepdims=True), 1e-12)
        out = out.reshape(len(masks), k * d)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

"""PCA of VLAD descriptors: randomized SVD fit, optional whitening, L2-normalised float16 output."""
from __future__ import annotations

import numpy as np


class Pca:
    """``mean [D] float32``, ``components [d, D] float32`` (rows orthonormal), ``scale [d] float32``
    (1 unless whitened: 1/sqrt(eigenvalue + eps))."""

    def __init__(self, mean: np.ndarray, components: np.ndarray, scale: np.ndarray | None = None):
        self.mean = np.asarray(mean, np.float32)
        self.components = np.asarray(components, np.float32)
        self.scale = np.ones(len(self.components), np.float32) if scale is None else np.asarray(scale, np.float32)

    @property
    def whitened(self) -> bool:
        return bool(np.any(self.scale != 1))

    @property
    def dims(self) -> int:
        return len(self.components)

    @classmethod
    def fit(cls, x: np.ndarray, dims: int, whiten: bool = False, seed: int = 0, power_iters: int = 3) -> "Pca":
        """``x [N, D]`` -> top ``min(dims, N - 1, D)`` components by randomized SVD (Halko et al.)."""
        x = np.asarray(x, np.float32)
        n, d_in = x.shape
        dims = min(dims, n - 1, d_in)
        if dims < 1:
            raise ValueError(f"PCA needs at least 2 samples, got {n}")
        mean = x.mean(0)
        xc = x - mean
        rng = np.random.default_rng(seed)
        q = np.linalg.qr(xc @ rng.standard_normal((d_in, min(dims + 16, n)), dtype=np.float32))[0]
        for _ in range(power_iters):
            q = np.linalg.qr(xc @ (xc.T @ q))[0]
        _, s, vt = np.linalg.svd(q.T @ xc, full_matrices=False)
        comps = vt[:dims]
        scale = 1 / np.sqrt(s[:dims] ** 2 / max(n - 1, 1) + 1e-6) if whiten else None
        return cls(mean, comps, scale)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """``[N, D] float32`` -> ``[N, d] float16``, unit L2 norm per row."""
        y = ((np.asarray(x, np.float32) - self.mean) @ self.components.T) * self.scale
        y /= np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)
        return y.astype(np.float16)

"""SegmentIndex: inner-product search over all map SuperSegment descriptors.

HNSW (hnswlib) for the online path, an exact numpy path to measure the HNSW index's recall.
Bundles hold float16 descriptors (float32 is accepted, to measure what float16 costs); search
runs in float32 (numpy has no fast float16 matmul).
"""
from __future__ import annotations

import numpy as np


class SegmentIndex:
    """``descriptors [N, d] float16 or float32`` (unit norm). ``search(q [M, d], k) -> ids [M, k] int64,
    sims [M, k] float32`` best first; ids past N (k > N) are -1 with sim -inf."""

    def __init__(self, descriptors: np.ndarray, m: int = 32, ef_construction: int = 200, ef: int = 256,
                 seed: int = 100, threads: int = -1):
        d = np.asarray(descriptors)
        self.descriptors = np.ascontiguousarray(d, d.dtype if d.dtype in (np.float16, np.float32) else np.float16)
        self.m, self.ef_construction, self.ef, self.seed, self.threads = m, ef_construction, ef, seed, threads
        self._hnsw = None

    def __len__(self) -> int:
        return len(self.descriptors)

    @property
    def dim(self) -> int:
        return self.descriptors.shape[1]

    def hnsw(self):
        """Build the HNSW graph on first use (a few seconds per 10k segments)."""
        if self._hnsw is None:
            import hnswlib

            idx = hnswlib.Index(space="ip", dim=self.dim)
            idx.init_index(max_elements=max(len(self), 1), ef_construction=self.ef_construction, M=self.m,
                           random_seed=self.seed)
            if len(self):
                idx.add_items(self.descriptors.astype(np.float32), np.arange(len(self)), num_threads=self.threads)
            self._hnsw = idx
        return self._hnsw

    def search(self, queries: np.ndarray, k: int, exact: bool = False) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(queries, np.float32)
        kk = min(k, len(self))
        ids = np.full((len(q), k), -1, np.int64)
        sims = np.full((len(q), k), -np.inf, np.float32)
        if kk == 0 or len(q) == 0:
            return ids, sims
        if exact:
            s = q @ self.descriptors.astype(np.float32).T
            top = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
            order = np.argsort(-np.take_along_axis(s, top, 1), axis=1, kind="stable")
            ids[:, :kk] = np.take_along_axis(top, order, 1)
            sims[:, :kk] = np.take_along_axis(s, ids[:, :kk], 1)
        else:
            idx = self.hnsw()
            idx.set_ef(max(self.ef, kk))
            labels, dist = idx.knn_query(q, k=kk, num_threads=self.threads)
            ids[:, :kk] = labels
            sims[:, :kk] = 1 - dist          # hnswlib "ip" distance is 1 - <a, b>
        return ids, sims

    def recall(self, queries: np.ndarray, k: int, tol: float = 1e-4) -> float:
        """Top-k recall of HNSW against exact search (mean over queries), tie-aware: an HNSW hit
        counts when its similarity reaches the exact k-th similarity, so of several identical
        descriptors (SuperSegments that grew into the same region) any may fill the last places."""
        _, exact = self.search(queries, k, exact=True)
        _, approx = self.search(queries, k)
        kk = min(k, len(self))
        if kk == 0 or len(queries) == 0:
            return 1.0
        kth = exact[:, kk - 1:kk]
        return float(np.mean(np.minimum((approx[:, :kk] >= kth - tol).sum(1), kk) / kk))

"""k-means, one implementation for the whole package: faiss's (k-means++ seeding, Lloyd
iterations, Euclidean or spherical), used by the VLAD vocabulary (``runtime/steps/vlad.py``)
and the ``featclust`` segmenter (``runtime/steps/segmenters/featclust.py``).

It replaced two hand-written numpy versions; side by side on cached real DINOv2 patch
features (3 seeds, 1 thread) it was as good or better and faster: the 32-word spherical
vocabulary on 100k patches fitted in 1.95 s instead of 2.67 s at a lower cosine cost (1 - cos
to the nearest centre 0.2982 vs 0.2987 on the fitted patches, 0.3024 vs 0.3035 on held-out
images); featclust's 8 iterations on a 768-patch frame, best of 2 seeded runs, reached a lower
squared error per patch (k=8: 0.3720 vs 0.3754; k=32: 0.2044 vs 0.2059) in 3.2 ms instead of
4.1 ms (k=8) and 6.8 ms instead of 11.1 ms (k=32). scipy's ``kmeans2(minit='++')`` gave the old
featclust result exactly, 1.7-5x slower, and took 6-13x as long for the vocabulary.
"""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np

# Points up to which a k-means runs on one OpenMP thread. featclust clusters one frame's 768
# patches per frame: on an idle machine one thread takes 3.4-3.5 ms and two 3.4-9.9 ms, but while
# other processes use the cores (a robot's other nodes) faiss's two threads wait on each other at
# every step: 519-552 ms against 3.6-7.5 ms on one (``python -m benchmarks.kmeans_threads``, two
# busy-looping processes beside it, this 2-core machine). The vocabulary fit (100k patches) keeps
# every thread.
ONE_THREAD_UP_TO = 20_000


def kmeans(x: np.ndarray, k: int, iters: int, seed: int, spherical: bool = False,
           restarts: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``x [N, D] float32`` (1 <= k <= N) -> ``(centres [k, D] float32, labels [N] int64)``:
    Lloyd's k-means from k-means++ seeds, ``iters`` iterations, the best of ``restarts`` runs.
    ``spherical``: unit-norm centres and cosine assignment (for unit-norm ``x``), else squared
    Euclidean distance. Deterministic for a given ``seed``, whatever the number of threads.
    Every point is used (no subsampling)."""
    import faiss       # imported on use: it costs 0.2 s at start-up, and most commands never cluster

    x = np.ascontiguousarray(x, np.float32)
    n, d = x.shape
    if not 1 <= k <= n:
        raise ValueError(f"k-means with {k} centres needs at least {k} points, got {n}")
    km = faiss.Kmeans(d, k, niter=iters, nredo=restarts, seed=seed, spherical=spherical, verbose=False,
                      init_method=faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS,
                      min_points_per_centroid=1, max_points_per_centroid=-(-n // k))
    with omp_threads(faiss, 1 if n <= ONE_THREAD_UP_TO else None):
        km.train(x)
        return km.centroids, km.index.search(x, 1)[1][:, 0]


@contextmanager
def omp_threads(faiss, n: int | None):
    """faiss's OpenMP threads (the calling thread's setting) set to ``n`` inside the block (None:
    left as they are), restored after; also used by the index search (runtime/steps/index.py)."""
    before = faiss.omp_get_max_threads()
    if n is not None:
        faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)

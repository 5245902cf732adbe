"""A frame's k-means on one OpenMP thread or on several, on an idle machine and on a busy one.

    python -m benchmarks.kmeans_threads [--frames 30] [--busy 2] [--threads 2]

featclust clusters each frame's patches (768 at 448x336: DINOv2 features + position, 386
dims; random here, which does not change the threading) with k = 8, 8 iterations, best of 2
(runtime/steps/segmenters/featclust.py). The product runs a k-means of up to
``ONE_THREAD_UP_TO`` points on one faiss OpenMP thread (runtime/steps/kmeans.py); this times
that against ``--threads`` threads, first alone, then with ``--busy`` busy-looping processes
started beside it, as a robot's other nodes would be. Printed: median ms per frame.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import time

import numpy as np

from segvlad_edge.runtime.steps import kmeans as K


def spin() -> None:
    while True:
        pass


def per_frame_ms(x: np.ndarray, frames: int, threads: int) -> float:
    """Median ms of ``frames`` k-means fits of one frame with ``threads`` OpenMP threads."""
    import faiss

    limit = K.ONE_THREAD_UP_TO
    K.ONE_THREAD_UP_TO = len(x) if threads == 1 else 0        # which path the product's rule takes
    try:
        with K.omp_threads(faiss, threads):
            K.kmeans(x, 8, 8, seed=0, restarts=2)               # warm-up
            times = []
            for seed in range(frames):
                t = time.perf_counter()
                K.kmeans(x, 8, 8, seed=seed, restarts=2)
                times.append(1e3 * (time.perf_counter() - t))
        return float(np.median(times))
    finally:
        K.ONE_THREAD_UP_TO = limit


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--busy", type=int, default=2, help="busy-looping processes beside it in the second run")
    ap.add_argument("--threads", type=int, default=2, help="OpenMP threads to compare one thread with")
    a = ap.parse_args()
    x = np.random.default_rng(0).standard_normal((768, 386)).astype(np.float32)
    for label, busy in (("idle", 0), (f"{a.busy} busy processes", a.busy)):
        procs = [mp.Process(target=spin, daemon=True) for _ in range(busy)]
        for p in procs:
            p.start()
        try:
            one, many = per_frame_ms(x, a.frames, 1), per_frame_ms(x, a.frames, a.threads)
        finally:
            for p in procs:
                p.terminate()
                p.join()
        print(f"{label:18s} 1 thread {one:8.1f} ms   {a.threads} threads {many:8.1f} ms per frame", flush=True)


if __name__ == "__main__":
    main()

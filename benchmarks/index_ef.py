"""Recall and CPU cost of a map's stored HNSW-SQ index against its search beam ``ef``.

    nice -n 10 python benchmarks/index_ef.py MAP [--ef 400 800 1600 3200] [--real N]

Queries: 60 of the map's first ``--real`` segments (in a ``benchmarks/scale.py`` map, the real
images' segments), each perturbed by Gaussian noise (sigma 0.03 per dimension) and re-normalised.
Prints the share of the exact top 50 that lies in those first rows, then per ``ef``: top-50
recall against exact search (tie-aware, as ``SegmentIndex.recall``) and process CPU ms per 20
query segments (about one frame), one thread.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from segvlad_edge.runtime.mapfiles.bundle import MapBundle
from segvlad_edge.runtime.steps.index import open_index

K = 50


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("map")
    ap.add_argument("--ef", type=int, nargs="+", default=[400, 800, 1600, 3200])
    ap.add_argument("--real", type=int, default=7189, help="rows the queries are drawn from (default: scale.py's real segments)")
    a = ap.parse_args()
    index = open_index(MapBundle.read(a.map), threads=1)
    if index.kind != "hnswsq":
        raise SystemExit(f"{a.map}: its index is {index.kind}, not hnswsq")
    d = index.descriptors
    rng = np.random.default_rng(0)
    q = np.asarray(d[rng.choice(min(a.real, len(d)), 60, replace=False)], np.float32)
    q += 0.03 * rng.standard_normal(q.shape).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    ids, exact = index.search(q, K, exact=True)
    print(f"{a.map}: {len(d)} segments; share of the exact top {K} in the first {a.real} rows: {np.mean(ids < a.real):.3f}")
    for ef in a.ef:
        index.params["ef"] = ef
        t = time.process_time()
        _, sims = index.search(q, K)
        ms = 1e3 * (time.process_time() - t) / len(q) * 20
        recall = np.mean(np.minimum((sims >= exact[:, -1:] - 1e-4).sum(1), K) / K)
        print(f"ef {ef:5d}: recall {recall:.4f}, {ms:6.1f} ms CPU per 20 query segments")


if __name__ == "__main__":
    main()

"""The accuracy / size / speed table: dataset x method, through the product's own eval path.

    python benchmarks/place_recognition.py [--datasets ../shared/datasets] [--threads 2]

For each labelled set and each method (SegVLAD with the default segmenter, SegVLAD-grid,
AnyLoc-style global VLAD; same engine) it builds the map bundle, localises every query with
HNSW search, and prints Recall@1/5, segments and bytes per image, and the median per-stage
milliseconds of a query. "overhead" is all per-frame work after the DINOv2 forward pass as a
fraction of that pass, measured in the same run. Then the HNSW index's top-K' recall against
exact search on each SegVLAD map, and Recall@1 pooled over all queries.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from segvlad_edge.engines.manifest import default_engines_dir, find_engine
from segvlad_edge.runtime import evaluate
from segvlad_edge.runtime.bundle import MapBundle
from segvlad_edge.runtime.datasets import load_dataset
from segvlad_edge.runtime.features import DenseFeatureExtractor
from segvlad_edge.runtime.index import SegmentIndex
from segvlad_edge.runtime.pipeline import CONFS, FramePipeline

SETS = ("gardens_point_day", "corridor", "wxbs")
METHODS = ("segvlad", "grid", "global")
STAGES = ("features", "segments", "supersegments", "vlad", "pca", "search", "rank")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", default=str(Path(__file__).resolve().parents[2] / "shared" / "datasets"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sets", nargs="+", default=list(SETS))
    a = ap.parse_args()
    manifest = find_engine(default_engines_dir(), "dinov2")
    print(f"engine {manifest.file}; defaults: {CONFS['segvlad']}")
    head = (f"{'dataset':18s} {'method':8s} {'R@1':>6s} {'R@5':>6s} {'seg/img':>7s} {'KiB/img':>7s} {'desc KiB/img':>12s} "
            + " ".join(f"{s[:6]:>6s}" for s in STAGES) + f" {'overhead':>8s}")
    print(head)
    pooled = {m: [] for m in METHODS}
    recalls = {}
    for name in a.sets:
        ds = load_dataset(Path(a.datasets) / name)
        for method in METHODS:
            with tempfile.TemporaryDirectory() as tmp:
                pipe = FramePipeline(DenseFeatureExtractor(manifest, threads=a.threads), CONFS[method])
                r = evaluate.main(pipe, ds, tmp, progress=False)
                if method == "segvlad":
                    b = MapBundle.read(Path(tmp) / "map.segmap")
                    d = b.arrays["descriptors"]
                    q = d[np.random.default_rng(0).choice(len(d), min(500, len(d)), replace=False)]
                    recalls[name] = SegmentIndex(d).recall(q, CONFS[method]["top_k"])
            ms = r["query_ms"] or r["map_build_ms"]
            over = sum(ms.get(s, 0) for s in STAGES[1:]) / ms["features"]
            pooled[method] += r["hits"]
            print(f"{name:18s} {method:8s} {r['recall@1']:6.3f} {r['recall@5']:6.3f} {r['segments_per_image']:7.1f} "
                  f"{r['bytes_per_image'] / 1024:7.1f} {r['descriptor_bytes_per_image'] / 1024:12.1f} "
                  + " ".join(f"{ms.get(s, 0):6.1f}" for s in STAGES) + f" {over:8.1%}", flush=True)
    print("HNSW top-K' recall vs exact (500 map segments as queries): "
          + ", ".join(f"{k} {v:.4f}" for k, v in recalls.items()))
    print("pooled Recall@1: " + ", ".join(f"{m} {np.mean(h):.3f} ({len(h)} queries)" for m, h in pooled.items()))


if __name__ == "__main__":
    main()

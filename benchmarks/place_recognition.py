"""The accuracy / size / speed table: dataset x method, through the product's own eval path.

    python benchmarks/place_recognition.py [--datasets ../shared/datasets] [--threads 2]

For each labelled set and each method -- SegVLAD with the default segmenter, SegVLAD-grid and
AnyLoc-style global VLAD, same engine, vocabulary/PCA fitted on the map (what ``build-map``
does by default for maps of 50 images or more) -- it builds the map bundle, localises every
query with HNSW search and prints Recall@1/5, Recall@1 with the temporal filter (sequential
sets), the share of queries answered with a confident match and their Recall@1, segments and
bytes per image, and the median per-stage milliseconds of a query. A last row per set runs
SegVLAD with a domain fit made on images of the *other* sets (leave-one-dataset-out, at most
--domain-images of them, plus toy_unlabelled): the small-bundle option. "overhead" is all
per-frame work after the DINOv2 forward pass as a fraction of that pass, measured in the same
run. Then the HNSW index's top-K' recall against exact search on each SegVLAD map (tie-aware),
and Recall@1 pooled over all queries.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from segvlad_edge.engines.manifest import default_engines_dir, find_engine
from segvlad_edge.runtime import evaluate
from segvlad_edge.runtime.build_domain import build_domain
from segvlad_edge.runtime.mapfiles.bundle import MapBundle
from segvlad_edge.runtime.inputs.datasets import load_dataset
from segvlad_edge.runtime.steps.features import DenseFeatureExtractor
from segvlad_edge.runtime.inputs.images import list_images
from segvlad_edge.runtime.steps.index import SegmentIndex
from segvlad_edge.runtime.pipeline import make_pipeline
from segvlad_edge.runtime.settings import CONFS

SETS = ("gardens_point_day", "corridor", "wxbs")
METHODS = (("segvlad", "map"), ("grid", "map"), ("global", "map"), ("segvlad", "domain"))
STAGES = ("features", "segments", "supersegments", "vlad", "pca", "search", "rank", "verify")


def domain_images(root: Path, exclude: str, n: int) -> list[tuple[str, Path]]:
    """Up to ``n`` images evenly spread over the labelled sets other than ``exclude``, plus toy_unlabelled."""
    others = [p for s in SETS if s != exclude for p in list_images(root / s)]
    pick = [others[i] for i in np.unique(np.linspace(0, len(others) - 1, n).astype(int))]
    pick += list_images(root / "toy_unlabelled")
    return [(p.relative_to(root).as_posix(), p) for p in pick]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", default=str(Path(__file__).resolve().parents[2] / "shared" / "datasets"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sets", nargs="+", default=list(SETS))
    ap.add_argument("--domain-images", type=int, default=150)
    a = ap.parse_args()
    root = Path(a.datasets)
    manifest = find_engine(default_engines_dir(), "dinov2")
    extractor = DenseFeatureExtractor(manifest, threads=a.threads)
    print(f"engine {manifest.file}; defaults: {CONFS['segvlad']}")
    head = (f"{'dataset':18s} {'method':8s} {'fit':6s} {'R@1':>6s} {'R@5':>6s} {'R@1 filt':>8s} {'answered':>8s} "
            f"{'R@1 ans':>7s} {'seg/img':>7s} {'KiB/img':>7s} {'desc KiB':>8s} {'ver KiB':>7s} "
            + " ".join(f"{s[:6]:>6s}" for s in STAGES) + f" {'overhead':>8s}")
    print(head)
    pooled = {f"{m}/{f}": [] for m, f in METHODS}
    recalls = {}
    for name in a.sets:
        ds = load_dataset(root / name)
        with tempfile.TemporaryDirectory() as tmp:
            domains = {}
            for method in {m for m, f in METHODS if f == "domain"}:
                pipe = make_pipeline(CONFS[method], extractor=extractor)
                domains[method], *_ = build_domain(domain_images(root, name, a.domain_images), pipe,
                                                   Path(tmp) / f"work-{method}", [f"not {name}"], progress=False,
                                                   out=Path(tmp) / f"{method}.domain")
            for method, fit in METHODS:
                pipe = make_pipeline(CONFS[method], extractor=extractor)
                work = Path(tmp) / f"{method}-{fit}"
                work.mkdir()
                r = evaluate.evaluate(pipe, ds, work, progress=False, fit=fit,
                                  domain=domains[method] if fit == "domain" else None)
                if method == "segvlad" and fit == "map":
                    d = MapBundle.read(work / "map.segmap").arrays["descriptors"]
                    q = d[np.random.default_rng(0).choice(len(d), min(500, len(d)), replace=False)]
                    recalls[name] = SegmentIndex(d).recall(q, CONFS[method]["top_k"])
                ms = r["query_ms"] or r["map_build_ms"]
                over = sum(ms.get(s, 0) for s in STAGES[1:]) / ms["features"]
                pooled[f"{method}/{fit}"] += r["hits"]
                filt = f"{r['recall@1_filtered']:8.3f}" if "recall@1_filtered" in r else f"{'-':>8s}"
                ans = (f"{r['answered']:8.3f} {r['recall@1_answered'] or 0:7.3f}" if "answered" in r
                       else f"{'-':>8s} {'-':>7s}")
                print(f"{name:18s} {method:8s} {fit:6s} {r['recall@1']:6.3f} {r['recall@5']:6.3f} {filt} {ans} "
                      f"{r['segments_per_image']:7.1f} {r['bytes_per_image'] / 1024:7.1f} "
                      f"{r['descriptor_bytes_per_image'] / 1024:8.1f} {r['verification_bytes_per_image'] / 1024:7.1f} "
                      + " ".join(f"{ms.get(s, 0):6.1f}" for s in STAGES) + f" {over:8.1%}", flush=True)
    print("HNSW top-K' recall vs exact, tie-aware (500 map segments as queries): "
          + ", ".join(f"{k} {v:.4f}" for k, v in recalls.items()))
    print("pooled Recall@1: " + ", ".join(f"{m} {np.mean(h):.3f} ({len(h)} queries)" for m, h in pooled.items()))


if __name__ == "__main__":
    main()

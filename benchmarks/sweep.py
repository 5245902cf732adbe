"""Sweep SegVLAD settings on the labelled sets, features computed once per image.

    python benchmarks/sweep.py [--datasets ../shared/datasets] [--size 448x336]

Prints Recall@1 per dataset and setting (exact search, map-fitted vocabulary/PCA), pooled over
all queries. Used to choose the defaults in runtime/pipeline.py.
"""
from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import numpy as np

from segvlad_edge.engines.manifest import default_engines_dir, find_engine
from segvlad_edge.runtime.inputs.datasets import load_dataset
from segvlad_edge.runtime.steps.features import DenseFeatureExtractor
from segvlad_edge.runtime.inputs.images import load_image
from segvlad_edge.runtime.localizer import Localizer
from segvlad_edge.runtime.fitting import fit_models
from segvlad_edge.runtime.mapping import make_bundle
from segvlad_edge.runtime.pipeline import make_pipeline

SETS = ("corridor", "gardens_point_day", "wxbs")


def recall_at_1(ds, feats, conf, extractor):
    """Map frames -> vocabulary/PCA fit -> in-memory bundle -> Localizer, all the product's own code;
    ``conf["fp32"]`` keeps descriptors in float32 without PCA (the accuracy reference)."""
    pipe = make_pipeline(conf, extractor=extractor)
    frames = {p: pipe.segment(None, fm) for p, fm in feats.items()}
    maps = ds.map_images
    pipe = pipe.with_models(fit_models(pipe.conf, lambda: (frames[p] for p in maps), len(maps), np.random.default_rng(0)))
    desc = {p: pipe.vlad(f) if conf.get("fp32") else pipe.describe(f) for p, f in frames.items()}
    bundle = make_bundle(pipe, [ds.name(p) for p in maps], [desc[p] for p in maps],
                         [len(desc[p]) for p in maps], [frames[p].label_map() for p in maps], {},
                         {"source": "map", "images": len(maps)})
    loc = Localizer(bundle, pipe)
    hits = []
    for qi, q in enumerate(ds.queries):
        r = loc.rank_descriptors(desc[q], top=1, exact=True, exclude_images=ds.own_map_images(qi))
        hits.append(len(r.images) > 0 and int(r.images[0]) in ds.positives[qi])
    return float(np.mean(hits)), np.mean([len(desc[p]) for p in maps]), len(hits)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", default="../shared/datasets")
    ap.add_argument("--size", default="448x336")
    ap.add_argument("--sets", nargs="+", default=list(SETS))
    a = ap.parse_args()
    w, h = map(int, a.size.split("x"))
    ext = DenseFeatureExtractor(find_engine(default_engines_dir(), "dinov2", (w, h)))
    base = {"order": 1, "vocab_k": 32, "pca_dims": 128, "whiten": False, "top_k": 50, "norm": "query",
            "segmenter_conf": {}}
    confs = {"global": {**base, "segmenter": "whole", "order": 0, "pca_dims": None, "norm": "none"}}
    for seg, o in itertools.product(["featclust", "grid"], [0, 1, 2, 3]):
        confs[f"{seg} o={o}"] = {**base, "segmenter": seg, "order": o}
    for k in (6, 12):
        confs[f"featclust k={k} o=1"] = {**base, "segmenter": "featclust", "segmenter_conf": {"clusters": k}}
    for d in (64, 256, 512):
        confs[f"featclust o=1 pca{d}"] = {**base, "segmenter": "featclust", "pca_dims": d}
    confs["featclust o=1 nopca fp32"] = {**base, "segmenter": "featclust", "pca_dims": None, "fp32": True}
    confs["featclust o=1 pca128 whiten"] = {**base, "segmenter": "featclust", "whiten": True}
    results = {}
    for name in a.sets:
        ds = load_dataset(Path(a.datasets) / name)
        t = time.perf_counter()
        feats = {p: ext(load_image(p)) for p in sorted(set(ds.map_images) | set(ds.queries))}
        print(f"# {name}: {len(feats)} images featurised in {time.perf_counter() - t:.0f} s", flush=True)
        for cname, conf in confs.items():
            r1, spi, nq = recall_at_1(ds, feats, conf, ext)
            results[(name, cname)] = (r1, nq)
            print(f"{name:18s} {cname:28s} R@1 {r1:.3f}  seg/img {spi:5.1f}", flush=True)
    print("\npooled R@1 over all queries:")
    for cname in confs:
        hits = sum(results[(n, cname)][0] * results[(n, cname)][1] for n in a.sets)
        total = sum(results[(n, cname)][1] for n in a.sets)
        print(f"  {cname:28s} {hits / total:.3f}")


if __name__ == "__main__":
    main()

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
from segvlad_edge.runtime.datasets import load_dataset
from segvlad_edge.runtime.features import DenseFeatureExtractor
from segvlad_edge.runtime.images import load_image
from segvlad_edge.runtime.index import SegmentIndex
from segvlad_edge.runtime.pca import Pca
from segvlad_edge.runtime.pipeline import FrameSegments, WholeImage
from segvlad_edge.runtime.ranking import rank
from segvlad_edge.runtime.segmenters import make_segmenter
from segvlad_edge.runtime.supersegments import SuperSegments
from segvlad_edge.runtime.vlad import VladAggregator, Vocabulary

SETS = ("corridor", "gardens_point_day", "wxbs")


def recall_at_1(ds, feats, conf):
    seg = WholeImage() if conf["segmenter"] == "whole" else make_segmenter(conf["segmenter"], conf.get("segmenter_conf"))
    frames = {}
    for p, fm in feats.items():
        masks = seg(None, fm)
        masks = masks[masks.any(1)]
        frames[p] = FrameSegments(fm, masks, SuperSegments.from_masks(masks, fm.grid, conf["order"]))
    maps = ds.map_images
    rng = np.random.default_rng(0)
    vocab = Vocabulary.fit(np.concatenate([feats[p].features[rng.choice(len(feats[p].features), 200, replace=False)]
                                           for p in maps]), 32)
    agg = VladAggregator(vocab)
    vl = {p: agg(f.fmap.features, f.supersegments.masks) for p, f in frames.items()}
    pca = Pca.fit(np.concatenate([vl[p] for p in maps]), conf["pca_dims"], conf.get("whiten", False)) if conf["pca_dims"] else None
    proj = (lambda v: pca(v)) if pca else (lambda v: v.astype(np.float16) if conf.get("fp16", True) else v)
    desc = {p: proj(v) for p, v in vl.items()}
    counts = np.array([len(desc[p]) for p in maps])
    seg_img = np.repeat(np.arange(len(maps)), counts)
    index = SegmentIndex(np.concatenate([desc[p] for p in maps]))
    index.descriptors = np.concatenate([desc[p] for p in maps])  # keep dtype for fp32 runs
    hits = []
    for qi, q in enumerate(ds.queries):
        ids, sims = index.search(desc[q], conf["top_k"] + (counts[ds.query_map_index[qi]] if ds.query_map_index else 0), exact=True)
        if ds.query_map_index is not None:
            b = ds.query_map_index[qi]
            keep = seg_img[ids] != b
            ids, sims = np.where(keep, ids, -1), np.where(keep, sims, -np.inf)
        r = rank(ids, sims, seg_img, len(maps), 1, conf["norm"])
        hits.append(len(r.images) > 0 and int(r.images[0]) in ds.positives[qi])
    return float(np.mean(hits)), counts.mean(), len(hits)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", default="../shared/datasets")
    ap.add_argument("--size", default="448x336")
    ap.add_argument("--grid", default="small", choices=["small", "full"])
    a = ap.parse_args()
    w, h = map(int, a.size.split("x"))
    ext = DenseFeatureExtractor(find_engine(default_engines_dir(), "dinov2", (w, h)))
    base = {"order": 1, "pca_dims": 128, "top_k": 50, "norm": "query", "segmenter_conf": {}}
    confs = {"global": {**base, "segmenter": "whole", "order": 0, "pca_dims": None, "norm": "none"}}
    for seg, o in itertools.product(["featclust", "grid"], [0, 1, 2, 3]):
        confs[f"{seg} o={o}"] = {**base, "segmenter": seg, "order": o}
    for k in (6, 12):
        confs[f"featclust k={k} o=1"] = {**base, "segmenter": "featclust", "segmenter_conf": {"clusters": k}}
    for d in (64, 256, 512):
        confs[f"featclust o=1 pca{d}"] = {**base, "segmenter": "featclust", "pca_dims": d}
    confs["featclust o=1 nopca fp32"] = {**base, "segmenter": "featclust", "pca_dims": None, "fp16": False}
    confs["featclust o=1 pca128 whiten"] = {**base, "segmenter": "featclust", "whiten": True}
    results = {}
    for name in SETS:
        ds = load_dataset(Path(a.datasets) / name)
        t = time.perf_counter()
        feats = {p: ext(load_image(p)) for p in sorted(set(ds.map_images) | set(ds.queries))}
        print(f"# {name}: {len(feats)} images featurised in {time.perf_counter() - t:.0f} s", flush=True)
        for cname, conf in confs.items():
            r1, spi, nq = recall_at_1(ds, feats, conf)
            results[(name, cname)] = (r1, nq)
            print(f"{name:18s} {cname:28s} R@1 {r1:.3f}  seg/img {spi:5.1f}", flush=True)
    print("\npooled R@1 over all queries:")
    for cname in confs:
        hits = sum(results[(n, cname)][0] * results[(n, cname)][1] for n in SETS)
        total = sum(results[(n, cname)][1] for n in SETS)
        print(f"  {cname:28s} {hits / total:.3f}")


if __name__ == "__main__":
    main()

"""How well "no confident match" separates frames whose place is in the map from those whose place is not.

    python benchmarks/confidence.py [--datasets ../shared/datasets] [--threads 2]

For corridor and gardens_point_day (map-fitted bundle of the map images, default settings) it
localises every query three ways and prints, per confidence threshold, the share answered with a
match: (a) as is -- the place is in the map; (b) with the query's correct map images removed from
the ranking -- the place is not in the map, same environment; (c) 50 images of the *other*
dataset -- a foreign scene. Recall@1 of the answered (a) queries shows what a threshold buys.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from segvlad_edge.engines.manifest import default_engines_dir, find_engine
from segvlad_edge.runtime import mapping
from segvlad_edge.runtime.bundle import MapBundle
from segvlad_edge.runtime.confidence import NO_MATCH_BELOW, confidence
from segvlad_edge.runtime.datasets import load_dataset
from segvlad_edge.runtime.features import DenseFeatureExtractor
from segvlad_edge.runtime.images import load_image
from segvlad_edge.runtime.localizer import RANK_DEPTH, Localizer
from segvlad_edge.runtime.pipeline import CONFS, FramePipeline

SETS = ("corridor", "gardens_point_day")
THRESHOLDS = (0.3, NO_MATCH_BELOW, 0.7, 0.9)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", default=str(Path(__file__).resolve().parents[2] / "shared" / "datasets"))
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    extractor = DenseFeatureExtractor(find_engine(default_engines_dir(), "dinov2"), threads=a.threads)
    print(f"{'map':18s} {'threshold':>9s} {'in map':>7s} {'R@1 ans':>7s} {'removed':>7s} {'foreign':>7s}")
    for name, other in zip(SETS, SETS[::-1]):
        ds, foreign_ds = load_dataset(Path(a.datasets) / name), load_dataset(Path(a.datasets) / other)
        pipe = FramePipeline(extractor, dict(CONFS["segvlad"]))
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "map.segmap"
            mapping.main([(ds.name(p), p) for p in ds.map_images], out, pipe, progress=False, fit="map")
            loc = Localizer(MapBundle.read(out), pipe)
        index_of = {n: i for i, n in enumerate(loc.names)}
        present, right, removed = [], [], []
        for qi, q in enumerate(ds.queries):
            frame = pipe.segment(load_image(q))
            desc = pipe.describe(frame)
            positives = [index_of[ds.name(ds.map_images[j])] for j in ds.positives[qi]]
            r = loc.rank_descriptors(desc, RANK_DEPTH)
            present.append(confidence(r, loc.calib))
            right.append(len(r.images) > 0 and int(r.images[0]) in positives)
            removed.append(confidence(loc.rank_descriptors(desc, RANK_DEPTH, exclude_images=positives), loc.calib))
        picks = np.linspace(0, len(foreign_ds.map_images) - 1, 50).astype(int)
        foreign = [loc.localize(load_image(foreign_ds.map_images[i])).confidence for i in picks]
        present, right, removed, foreign = map(np.asarray, (present, right, removed, foreign))
        for t in THRESHOLDS:
            ans = present >= t
            print(f"{name:18s} {t:9.2f} {ans.mean():7.2f} {right[ans].mean() if ans.any() else 0:7.3f} "
                  f"{np.mean(removed >= t):7.2f} {np.mean(foreign >= t):7.2f}", flush=True)
        print(f"{name:18s} {'all':>9s} {1:7.2f} {right.mean():7.3f}")


if __name__ == "__main__":
    main()

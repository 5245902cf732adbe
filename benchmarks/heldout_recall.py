"""Top-K' recall of a map's stored index on real frames the search settings were not chosen on.

    python benchmarks/heldout_recall.py MAP [--frames 40]

``benchmarks/index_sweep.py --bundle`` and ``benchmarks/scale.py`` measure recall over the same 10
real query frames (``scale.QUERIES``); this takes ``--frames`` others from the same query folders,
localises each with the product's ``Localizer`` and prints the mean over frames of
``SegmentIndex.recall`` (top-K' against exact search, tie-aware) with a 95% bootstrap interval
over frames.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scale  # noqa: E402

from segvlad_edge.runtime.inputs.images import list_images, load_image  # noqa: E402
from segvlad_edge.runtime.localizer import Localizer  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("map", help="a bundle written by benchmarks/scale.py (or any map)")
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    paths = [p for d in scale.QUERY_DIRS for p in list_images(scale.SHARED / d)]
    chosen_on = set(np.linspace(0, len(paths) - 1, scale.QUERIES).astype(int).tolist())
    others = [i for i in range(len(paths)) if i not in chosen_on]
    picks = [others[i] for i in np.linspace(0, len(others) - 1, a.frames).astype(int)]
    loc = Localizer.from_bundle(a.map, threads=a.threads)
    recall = []
    for i in picks:
        answer = loc.localize(load_image(paths[i]))
        if answer.segments:
            recall.append(loc.index.recall(np.asarray(loc.pipeline.describe(answer.frame), np.float32), loc.top_k))
    recall = np.asarray(recall)
    means = recall[np.random.default_rng(0).integers(0, len(recall), (2000, len(recall)))].mean(1)
    print(f"{a.map}: {len(recall)} held-out frames, top-{loc.top_k} recall {recall.mean():.4f} "
          f"[{np.percentile(means, 2.5):.4f}, {np.percentile(means, 97.5):.4f}] (95% bootstrap over frames); "
          f"frames under 0.99: {int((recall < 0.99).sum())}, lowest {recall.min():.3f}")


if __name__ == "__main__":
    main()

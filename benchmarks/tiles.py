"""A map folder (build-map --tile-m) against the single bundle it was split from.

    python -m benchmarks.tiles [--set corridor] [--spacing-m 50] [--tile-m 1000] [--near-m 500]

The set's map is built with the product's code from cached DINOv2 features (as in
benchmarks/compare.py: default ``segvlad`` settings, seed 0), given synthetic GPS positions
(map image i at i x ``--spacing-m`` metres north of 45 N, 9 E), written as one bundle and split
into tiles of ``--tile-m`` (runtime/tiling.py). For each query's descriptors (no verification):
the tie-aware top-K' recall against exact search of the single bundle's stored HNSW graph and of
the tiles' graphs merged (runtime/tiled.py), whether the best map image equals exact search's,
Recall@1, and search + ranking milliseconds: single bundle, all tiles, and only the tiles within
``--near-m`` of the query's true place (``--near``). Also the time to open each map (the
engine session aside).
"""
from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):   # small matmuls: threads only contend
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import math
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.compare import build_map
from benchmarks.featcache import DEFAULT_CACHE, cached_features
from segvlad_edge.engines.manifest import default_engines_dir, find_engine
from segvlad_edge.runtime.inputs.datasets import load_dataset
from segvlad_edge.runtime.localizer import Localizer
from segvlad_edge.runtime.mapfiles.bundle import MapBundle
from segvlad_edge.runtime.mapfiles.tiles import read_index
from segvlad_edge.runtime.settings import CONFS
from segvlad_edge.runtime.steps.features import DenseFeatureExtractor
from segvlad_edge.runtime.steps.position import EARTH_RADIUS_M
from segvlad_edge.runtime.tiled import TiledLocalizer
from segvlad_edge.runtime.tiling import split_map


def recall(sims: np.ndarray, exact: np.ndarray, tol: float = 1e-4) -> float:
    """Tie-aware top-k recall of ``sims [Q, k]`` against ``exact [Q, k]`` (as SegmentIndex.recall)."""
    kth = exact[:, -1:]
    return float(np.mean(np.minimum((sims >= kth - tol).sum(1), sims.shape[1]) / sims.shape[1]))


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, 1e3 * (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", default=str(Path(__file__).resolve().parents[2] / "shared" / "datasets"))
    ap.add_argument("--set", default="corridor")
    ap.add_argument("--spacing-m", type=float, default=50.0)
    ap.add_argument("--tile-m", type=float, default=1000.0)
    ap.add_argument("--near-m", type=float, default=500.0)
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    a = ap.parse_args()
    ext = DenseFeatureExtractor(find_engine(default_engines_dir(), "dinov2"), threads=2)
    ds = load_dataset(Path(a.datasets) / a.set)
    feats = cached_features(ext, sorted(set(ds.map_images) | set(ds.queries)), a.cache, progress=False)
    loc, _, desc = build_map(ds, feats, dict(CONFS["segvlad"]), 0, ext, verify=True)
    lat = [45 + math.degrees(i * a.spacing_m / EARTH_RADIUS_M) for i in range(len(ds.map_images))]
    for i, img in enumerate(loc.bundle.images):
        img["meta"] = {"gps": [lat[i], 9.0]}
    with tempfile.TemporaryDirectory(prefix="segvlad-tiles-") as tmp:
        path = Path(tmp) / "single.segmap"
        loc.bundle.write(path)
        single, open_single = timed(lambda: Localizer(MapBundle.read(path), loc.pipeline))
        doc = split_map(MapBundle.read(path), loc.pipeline, Path(tmp) / "folder", a.tile_m)
        tiled, open_tiled = timed(lambda: TiledLocalizer(Path(tmp) / "folder", read_index(Path(tmp) / "folder"),
                                                         loc.pipeline))
        sizes = [t["images"] for t in doc["tiles"]]
        print(f"engine {ext.manifest.file}; {a.set}: {len(lat)} map images {a.spacing_m:g} m apart, {len(ds.queries)} "
              f"queries; {len(sizes)} tiles of {a.tile_m:g} m ({min(sizes)}-{max(sizes)} images); K' {single.top_k}")
        k, rows = single.top_k, {n: {"recall": [], "same": [], "r1": [], "ms": []} for n in ("single", "tiles", "near")}
        load_ms = []
        for qi, q in enumerate(ds.queries):
            d = desc[q]
            if not len(d):
                continue
            _, exact = single.index.search(d, k, exact=True)
            best = single.rank_descriptors(d, 1, exact=True).images[:1].tolist()
            truth = sorted(ds.positives[qi])
            tiled.region = None
            if qi == 0:
                _, ms = timed(lambda: tiled.rank_descriptors(d, 10))         # first frame: every tile loaded
                load_ms.append(ms)
            for name, loc_n in (("single", single), ("tiles", tiled), ("near", tiled)):
                if name == "near":
                    if not truth:
                        continue
                    tiled.region = (lat[truth[0]], 9.0, a.near_m)
                r, ms = timed(lambda: loc_n.rank_descriptors(d, 10))
                sims = loc_n.hits(d, k)[1]
                rows[name]["recall"].append(recall(sims, exact))
                rows[name]["same"].append(r.images[:1].tolist() == best)
                rows[name]["r1"].append(bool(len(r.images)) and int(r.images[0]) in ds.positives[qi])
                rows[name]["ms"].append(ms)
            rows["near"].setdefault("tiles", []).append(len(tiled.selected()))
    print(f"open: single bundle {open_single:.0f} ms, map folder {open_tiled:.0f} ms (no tile read) + "
          f"{load_ms[0]:.0f} ms to load all {len(sizes)} tiles in the first frame")
    print(f"{'search':8s} {'tiles/frame':>11s} {'top-K recall':>12s} {'best = exact':>12s} {'R@1':>6s} "
          f"{'search+rank ms (median)':>24s}")
    for name, r in rows.items():
        per = f"{np.mean(r['tiles']):.1f}" if "tiles" in r else ("1 bundle" if name == "single" else f"{len(sizes)}")
        print(f"{name:8s} {per:>11s} {np.mean(r['recall']):12.4f} {np.mean(r['same']):12.3f} {np.mean(r['r1']):6.3f} "
              f"{np.median(r['ms']):24.2f}")


if __name__ == "__main__":
    main()

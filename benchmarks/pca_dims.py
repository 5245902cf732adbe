"""Does a lower-dimensional PCA keep Recall@1 within 1 point of the default? (issue 13, item 5)

    python -m benchmarks.pca_dims [--dims 256 128 64] [--seeds 3] [--sets corridor gardens_point_day wxbs]

The PCA matrix is a map's fixed cost (``[d, 32 x 384]`` float16: 6 MiB at d = 256), shared by a
map folder's tiles; the descriptors cost ``2 d`` bytes per segment. Same maps and queries as
``benchmarks/compare.py`` (cached DINOv2 features, the product's pipeline, fitting, bundle and
Localizer, exact search, vocabulary/PCA refitted per seed on a different sample), for the default
``segvlad`` settings at each ``--dims``. Printed per set and pooled: Recall@1 without and with
verification (top 10; mean over seeds) and the paired per-query difference to the first
``--dims`` (the baseline) with its 95% bootstrap interval over queries.
"""
from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):   # small matmuls: threads only contend
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import time
from pathlib import Path

import numpy as np

from benchmarks.compare import DEPTH, SETS, boot_ci, run_variant
from benchmarks.featcache import DEFAULT_CACHE, cached_features
from segvlad_edge.engines.manifest import default_engines_dir, find_engine
from segvlad_edge.runtime.inputs.datasets import load_dataset
from segvlad_edge.runtime.settings import CONFS
from segvlad_edge.runtime.steps.features import DenseFeatureExtractor


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", default=str(Path(__file__).resolve().parents[2] / "shared" / "datasets"))
    ap.add_argument("--sets", nargs="+", default=list(SETS))
    ap.add_argument("--dims", nargs="+", type=int, default=[256, 128, 64])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    a = ap.parse_args()
    ext = DenseFeatureExtractor(find_engine(default_engines_dir(), "dinov2"), threads=2)
    print(f"engine {ext.manifest.file}; seeds {a.seeds}; verify top {DEPTH}; baseline PCA {a.dims[0]}")
    first = {}                     # (set, dims, verified) -> [seeds, Q] rank of the first correct image
    sizes = {}
    for s in a.sets:
        ds = load_dataset(Path(a.datasets) / s)
        feats = cached_features(ext, sorted(set(ds.map_images) | set(ds.queries)), a.cache, progress=False)
        for d in a.dims:
            t0 = time.perf_counter()
            conf = {**CONFS["segvlad"], "pca_dims": d}
            res = run_variant(ds, feats, conf, range(a.seeds), DEPTH, ext)
            for k in (0, DEPTH):
                first[(s, d, k)] = np.stack([r["first"][k] for r in res])
            sizes[(s, d)] = res[0]["desc_kib"]
            print(f"# {s} PCA {d}: {time.perf_counter() - t0:.0f} s", flush=True)
    rng = np.random.default_rng(0)
    base = a.dims[0]
    print(f"\n{'set':18s} {'PCA':>4s} {'PCA MiB':>7s} {'desc KiB':>8s} {'R@1':>6s} {'d vs base':>9s} {'95% CI':>17s} "
          f"{'R@1+v':>6s} {'d vs base':>9s} {'95% CI':>17s}")
    for s in a.sets + ["pooled"]:
        names = a.sets if s == "pooled" else [s]
        for d in a.dims:
            line = f"{s:18s} {d:4d} {d * 32 * 384 * 2 / 2**20:7.2f} {np.mean([sizes[(x, d)] for x in names]):8.2f}"
            for k in (0, DEPTH):
                r1 = np.concatenate([(first[(x, d, k)] == 0).astype(float) for x in names], axis=1).mean(0)
                b1 = np.concatenate([(first[(x, base, k)] == 0).astype(float) for x in names], axis=1).mean(0)
                lo, hi = boot_ci(r1 - b1, rng)
                line += f" {r1.mean():6.3f} {(r1 - b1).mean():+9.3f} [{lo:+.3f},{hi:+.3f}]"
            print(line, flush=True)


if __name__ == "__main__":
    main()

"""The product's k-means (runtime/steps/kmeans.py, faiss) against scipy's ``kmeans2(minit='++')``,
side by side on real DINOv2 patch features (benchmarks/featcache.py cache), over seeds.

    python -m benchmarks.kmeans [--sets corridor gardens_point_day wxbs] [--seeds 3]

Vocabulary: 32 words, 30 iterations on 100k unit-norm patches sampled from the images (map and
query) of the sets; cost = mean (1 - cosine to the nearest unit centre) on those patches and on
all patches of 1 image in 10, held out of the fit. featclust: 8 iterations per frame on
features + 0.5 x position (as the segmenter clusters them) of 60 images, k = 8 and 32; cost =
mean squared distance to the nearest centre. scipy's kmeans2 with k-means++ seeds gives what
the hand-written featclust k-means (replaced by the product's) gave, exactly. One thread each; times are per fit.
"""
from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import time
import warnings
from pathlib import Path

import numpy as np
from scipy.cluster.vq import kmeans2

from benchmarks.featcache import DEFAULT_CACHE, cached_features
from segvlad_edge.engines.manifest import default_engines_dir, find_engine
from segvlad_edge.runtime.inputs.datasets import load_dataset
from segvlad_edge.runtime.steps.features import DenseFeatureExtractor
from segvlad_edge.runtime.steps.kmeans import kmeans
from segvlad_edge.runtime.steps.segmenters.featclust import RESTARTS

VOCAB_PATCHES, VOCAB_K, VOCAB_ITERS = 100_000, 32, 30
FRAMES, FRAME_ITERS, SPATIAL = 60, 8, 0.5


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def scipy_kmeans(x: np.ndarray, k: int, iters: int, seed: int) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                  # "One of the clusters is empty"
        return kmeans2(x, k, iter=iters, minit="++", seed=np.random.default_rng(seed))[0]


def cos_cost(x: np.ndarray, c: np.ndarray) -> float:
    return float(np.mean(1 - np.max(x @ unit(c).T, axis=1)))


def sq_cost(x: np.ndarray, c: np.ndarray) -> float:
    d = (x ** 2).sum(1)[:, None] - 2 * x @ c.T + (c ** 2).sum(1)[None]
    return float(np.mean(np.maximum(d.min(1), 0)))


def timed(f, *args):
    t = time.perf_counter()
    out = f(*args)
    return out, time.perf_counter() - t


def vocabulary(fit_on: list[np.ndarray], held_out: np.ndarray, seeds: int) -> None:
    """``fit_on``: ``[P, C]`` features per image, sampled to VOCAB_PATCHES; ``held_out [N, C]`` unit rows."""
    rng = np.random.default_rng(0)
    per = max(1, VOCAB_PATCHES // len(fit_on))
    x = unit(np.concatenate([f[rng.choice(len(f), min(per, len(f)), replace=False)] for f in fit_on]))
    print(f"vocabulary: {len(x)} patches x {x.shape[1]}, k={VOCAB_K}, {VOCAB_ITERS} iterations; "
          f"held-out {len(held_out)} patches")
    fits = {"product (faiss, spherical)": lambda s: kmeans(x, VOCAB_K, VOCAB_ITERS, s, spherical=True)[0],
            "scipy kmeans2 ++": lambda s: scipy_kmeans(x, VOCAB_K, VOCAB_ITERS, s)}
    rows = {n: [] for n in fits}
    for s in range(seeds):
        for n, f in fits.items():                        # interleaved: both see the same load
            c, t = timed(f, s)
            rows[n].append((cos_cost(x, c), cos_cost(held_out, c), t))
    for n, r in rows.items():
        r = np.asarray(r)
        print(f"  {n:28s} 1-cos fitted {r[:, 0].mean():.5f} ± {r[:, 0].std():.5f}  held-out {r[:, 1].mean():.5f} "
              f"± {r[:, 1].std():.5f}  {r[:, 2].mean():.2f} s")


def frames(feats: list[np.ndarray], grid: tuple[int, int], seeds: int) -> None:
    h, w = grid
    rr, cc = np.mgrid[0:h, 0:w]
    pos = np.stack([rr.ravel() / max(h, w), cc.ravel() / max(h, w)], axis=1).astype(np.float32)
    xs = [np.concatenate([f, SPATIAL * pos], axis=1) for f in feats]
    for k in (8, 32):
        fits = {f"product (faiss, best of {RESTARTS})":
                lambda x, s: kmeans(x, k, FRAME_ITERS, s, restarts=RESTARTS)[0],
                "scipy kmeans2 ++": lambda x, s: scipy_kmeans(x, k, FRAME_ITERS, s)}
        rows = {n: [] for n in fits}
        for s in range(seeds):
            for x in xs:
                for n, f in fits.items():
                    c, t = timed(f, x, s)
                    rows[n].append((sq_cost(x, c), t))
        print(f"featclust: {len(xs)} frames x {xs[0].shape}, k={k}, {FRAME_ITERS} iterations")
        for n, r in rows.items():
            r = np.asarray(r)
            per_seed = r[:, 0].reshape(seeds, -1).mean(1)
            print(f"  {n:28s} squared error/patch {r[:, 0].mean():.5f} (seed sd {per_seed.std():.5f})  "
                  f"{1e3 * r[:, 1].mean():.2f} ms/frame")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", default=str(Path(__file__).resolve().parents[2] / "shared" / "datasets"))
    ap.add_argument("--sets", nargs="+", default=["corridor", "gardens_point_day", "wxbs"])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    a = ap.parse_args()
    ext = DenseFeatureExtractor(find_engine(default_engines_dir(), "dinov2"), threads=2)
    images = []
    for s in a.sets:
        ds = load_dataset(Path(a.datasets) / s)
        feats = cached_features(ext, sorted(set(ds.map_images) | set(ds.queries)), a.cache, progress=False)
        images += [f.features for f in feats.values()]
    print(f"engine {ext.manifest.file}; sets {' '.join(a.sets)}; {len(images)} images; seeds {a.seeds}")
    held = np.arange(len(images)) % 10 == 9
    vocabulary([f for f, h in zip(images, held) if not h], unit(np.concatenate([f for f, h in zip(images, held) if h])),
               a.seeds)
    pick = np.random.default_rng(1).choice(len(images), min(FRAMES, len(images)), replace=False)
    frames([images[i] for i in pick], ext.grid, a.seeds)


if __name__ == "__main__":
    main()

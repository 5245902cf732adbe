"""Choose the verification settings with statistics: model x threshold x overtaking rule, on cached features.

    python -m benchmarks.verify_sweep [--sets corridor gardens_point_day wxbs] [--seeds 3]
        [--models similarity affine] [--thresholds 1.5 2.0 2.5] [--gains 1.0 1.15 1.25 1.35 1.5 2.0]

For each labelled set and seed the default ``segvlad`` map and the ``global`` map are built in
memory with the product's code (``benchmarks.compare.build_map``); every query's segvlad
shortlist (the top ``verify_top`` images) is matched once (mutual nearest neighbours of the
product's patch codes), and each variant is the product's RANSAC fit (``fit_inliers``) and
re-ranking (``rerank_by_inliers``) of those matches. Printed per variant: Recall@1 pooled over
the sets and seeds, per set, and the paired difference to ``global`` with its bootstrap 95%
interval; then an honest estimate of choosing by this table: the best variant chosen on one half
of each set's queries (even / odd) and scored on the other half, both ways.
"""
from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):   # small matmuls: threads only contend
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import itertools
from pathlib import Path

import numpy as np
from tqdm import tqdm

from benchmarks.compare import SETS, boot_ci, build_map
from benchmarks.featcache import DEFAULT_CACHE, cached_features
from segvlad_edge.engines.manifest import default_engines_dir, find_engine
from segvlad_edge.runtime.inputs.datasets import load_dataset
from segvlad_edge.runtime.settings import CONFS
from segvlad_edge.runtime.steps.features import DenseFeatureExtractor
from segvlad_edge.runtime.steps.verification import fit_inliers, mutual_matches, patch_positions, rerank_by_inliers


def shortlists(ds, feats, seed, ext) -> tuple[list, np.ndarray]:
    """One set and seed -> per query ``(segvlad ranking, positives, [(qi, mi)] per shortlisted
    image)``, and ``[Q]`` whether global VLAD's first image is right."""
    conf = CONFS["segvlad"]
    loc, frames, desc = build_map(ds, feats, conf, seed, ext)
    gloc, _, gdesc = build_map(ds, feats, CONFS["global"], seed, ext, verify=False)
    top, min_sim = conf.verify_top, conf.verify_min_sim
    out, glob = [], []
    for qi, q in enumerate(ds.queries):
        exclude = [ds.query_map_index[qi]] if ds.query_map_index is not None else None
        ranked = loc.rank_descriptors(desc[q], top=top, exact=True, exclude_images=exclude)
        codes = loc.patch_codes(frames[q].fmap.features).astype(np.float32)
        pairs = [mutual_matches(codes @ np.asarray(loc.map_codes[int(i)], np.float32).T, min_sim)
                 for i in ranked.images[:top]]
        out.append((ranked, ds.positives[qi], pairs))
        g = gloc.rank_descriptors(gdesc[q], top=1, exact=True, exclude_images=exclude).images
        glob.append(len(g) > 0 and int(g[0]) in ds.positives[qi])
    return out, np.asarray(glob, float)


def score(rows, positions, model, threshold, gain) -> np.ndarray:
    """``[Q]`` whether the re-ranked first image is right, for one variant."""
    right = []
    for ranked, positives, pairs in rows:
        checks = [fit_inliers(qi, mi, positions, model, threshold) for qi, mi in pairs]
        first = rerank_by_inliers(ranked, checks, gain).images if len(ranked.images) else []
        right.append(len(first) > 0 and int(first[0]) in positives)
    return np.asarray(right, float)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", default=str(Path(__file__).resolve().parents[2] / "shared" / "datasets"))
    ap.add_argument("--sets", nargs="+", default=list(SETS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--models", nargs="+", default=["similarity", "affine"])
    ap.add_argument("--thresholds", nargs="+", type=float, default=[1.5, 2.0, 2.5])
    ap.add_argument("--gains", nargs="+", type=float, default=[1.0, 1.15, 1.25, 1.35, 1.5, 2.0])
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    a = ap.parse_args()
    ext = DenseFeatureExtractor(find_engine(default_engines_dir(), "dinov2"), threads=2)
    variants = list(itertools.product(a.models, a.thresholds, a.gains))
    right = {v: [] for v in variants}          # per variant: [Q_all] over sets and seeds, in one order
    glob, sets, half = [], [], []
    for s in a.sets:
        ds = load_dataset(Path(a.datasets) / s)
        feats = cached_features(ext, sorted(set(ds.map_images) | set(ds.queries)), a.cache, progress=False)
        for seed in tqdm(range(a.seeds), desc=s, unit="seed"):
            rows, g = shortlists(ds, feats, seed, ext)
            positions = patch_positions(feats[ds.queries[0]].grid)
            for v in variants:
                right[v].append(score(rows, positions, *v))
            glob.append(g)
            sets += [s] * len(g)
            half += [i % 2 for i in range(len(g))]
    right = {v: np.concatenate(r) for v, r in right.items()}
    glob, sets, half = np.concatenate(glob), np.asarray(sets), np.asarray(half)
    report(right, glob, sets, half, a.sets)


def report(right: dict, glob: np.ndarray, sets: np.ndarray, half: np.ndarray, names: list[str]) -> None:
    rng = np.random.default_rng(0)
    print(f"global (no verification): R@1 {glob.mean():.3f}")
    print(f"{'model':10s} {'thr':>4s} {'gain':>5s} {'R@1':>6s} {'ratio':>6s} {'d vs global':>11s} {'95% CI':>15s}  per set")
    for v in sorted(right, key=lambda v: -right[v].mean()):
        d = right[v] - glob
        lo, hi = boot_ci(d, rng)
        per = " ".join(f"{n[:8]} {right[v][sets == n].mean():.3f}" for n in names)
        print(f"{v[0]:10s} {v[1]:4.1f} {v[2]:5.2f} {right[v].mean():6.3f} x{right[v].mean() / glob.mean():5.3f} "
              f"{d.mean():+11.3f} [{lo:+.3f},{hi:+.3f}]  {per}")
    held = []
    for h in (0, 1):
        best = max(right, key=lambda v: right[v][half == h].mean())
        test = half != h
        held.append(right[best][test])
        print(f"chosen on half {h}: {best[0]} {best[1]} {best[2]} (R@1 {right[best][half == h].mean():.3f} there); "
              f"on the other half {right[best][test].mean():.3f}, global {glob[test].mean():.3f}")
    cv = np.concatenate(held).mean()
    print(f"choosing by this table, scored on queries it was not chosen on: R@1 {cv:.3f} (x{cv / glob.mean():.3f} global)")


if __name__ == "__main__":
    main()

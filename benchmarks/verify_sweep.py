"""Choose the verification settings with statistics: model x threshold x overtaking rule, on cached features.

    python -m benchmarks.verify_sweep [--sets corridor gardens_point_day wxbs] [--seeds 3]
        [--models similarity affine] [--thresholds 1.5 2.0 2.5] [--gains 1.0 1.15 1.25 1.35 1.5 2.0]
        [--baseline similarity 1.5 1.5]

For each labelled set and seed the default ``segvlad`` map and the ``global`` map are built in
memory with the product's code (``benchmarks.compare.build_map``); every query's segvlad
shortlist (the top ``verify_top`` images) is matched once (mutual nearest neighbours of the
product's patch codes), and each variant is the product's RANSAC fit (``fit_inliers``) and
re-ranking (``rerank_by_inliers``) of those matches. Printed per variant: Recall@1 pooled over
the sets (each query's mean over the seeds), per set, and the paired differences to ``global``
and to ``--baseline`` (the previous default) with bootstrap 95% intervals over queries. Then an
estimate of what choosing by this table is worth on queries it was not chosen on: the best
variant chosen on the first half of each set's queries and scored on the second, and the other
way round (halves, not alternate frames, so that neighbouring frames of a sequence do not sit
on both sides).
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
from segvlad_edge.runtime.steps.verification import (ESTIMATORS, fit_inliers, patch_positions, rerank_by_inliers,
                                                     shortlist_matches)


def shortlists(ds, feats, seed, ext, frames=None) -> tuple[list, np.ndarray, dict]:
    """One set and seed -> per query ``(segvlad ranking, positives, [(qi, mi)] per shortlisted
    image)``, ``[Q]`` whether global VLAD's first image is right, and the images' segments (they
    do not depend on the seed: pass them back for the next seed)."""
    conf = CONFS["segvlad"]
    loc, frames, desc = build_map(ds, feats, conf, seed, ext, frames=frames)
    gloc, _, gdesc = build_map(ds, feats, CONFS["global"], seed, ext, verify=False)
    out, glob = [], []
    for qi, q in enumerate(ds.queries):
        exclude = ds.own_map_images(qi)
        ranked = loc.rank_descriptors(desc[q], top=conf.verify_top, exact=True, exclude_images=exclude)
        pairs = shortlist_matches(loc.patch_codes(frames[q].fmap.features), loc.map_codes,
                                  ranked.images[:conf.verify_top], conf.verify_min_sim)
        out.append((ranked, ds.positives[qi], pairs))
        g = gloc.rank_descriptors(gdesc[q], top=1, exact=True, exclude_images=exclude).images
        glob.append(len(g) > 0 and int(g[0]) in ds.positives[qi])
    return out, np.asarray(glob, float), frames


def score(rows, positions, model, threshold, gains) -> dict[float, np.ndarray]:
    """``{gain: [Q]}`` whether the re-ranked first image is right, for one model and threshold."""
    right = {g: [] for g in gains}
    for ranked, positives, pairs in rows:
        checks = [fit_inliers(qi, mi, positions, model, threshold) for qi, mi in pairs]
        for g in gains:
            first = rerank_by_inliers(ranked, checks, g).images if len(ranked.images) else []
            right[g].append(len(first) > 0 and int(first[0]) in positives)
    return {g: np.asarray(r, float) for g, r in right.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", default=str(Path(__file__).resolve().parents[2] / "shared" / "datasets"))
    ap.add_argument("--sets", nargs="+", default=list(SETS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--models", nargs="+", choices=list(ESTIMATORS), default=list(ESTIMATORS))
    ap.add_argument("--thresholds", nargs="+", type=float, default=[1.5, 2.0, 2.5])
    ap.add_argument("--gains", nargs="+", type=float, default=[1.0, 1.15, 1.25, 1.35, 1.5, 2.0])
    ap.add_argument("--baseline", nargs=3, default=["similarity", "1.5", "1.5"], metavar=("MODEL", "THR", "GAIN"),
                    help="the variant every other is also compared with, paired (default: the previous default)")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    a = ap.parse_args()
    variants = list(itertools.product(a.models, a.thresholds, a.gains))
    base = (a.baseline[0], float(a.baseline[1]), float(a.baseline[2]))
    if base not in variants:
        raise SystemExit(f"error: the baseline {' '.join(a.baseline)} is not among the variants swept")
    ext = DenseFeatureExtractor(find_engine(default_engines_dir(), "dinov2"), threads=2)
    right = {v: [] for v in variants}          # per variant: [Q] over the sets, each query's mean over seeds
    glob, sets, half = [], [], []
    for s in a.sets:
        ds = load_dataset(Path(a.datasets) / s)
        feats = cached_features(ext, sorted(set(ds.map_images) | set(ds.queries)), a.cache, progress=False)
        positions = patch_positions(feats[ds.queries[0]].grid)
        per_seed = {v: [] for v in variants}
        g, frames = [], None
        for seed in tqdm(range(a.seeds), desc=s, unit="seed"):
            rows, first, frames = shortlists(ds, feats, seed, ext, frames)
            for model, thr in itertools.product(a.models, a.thresholds):
                for gain, r in score(rows, positions, model, thr, a.gains).items():
                    per_seed[(model, thr, gain)].append(r)
            g.append(first)
        for v in variants:
            right[v].append(np.mean(per_seed[v], axis=0))
        glob.append(np.mean(g, axis=0))
        n = len(ds.queries)
        sets += [s] * n
        half += [int(i >= n // 2) for i in range(n)]       # first and second half: neighbouring frames stay together
    right = {v: np.concatenate(r) for v, r in right.items()}
    glob, sets, half = np.concatenate(glob), np.asarray(sets), np.asarray(half)
    report(right, glob, sets, half, a.sets, base)


def report(right: dict, glob: np.ndarray, sets: np.ndarray, half: np.ndarray, names: list[str], base) -> None:
    rng = np.random.default_rng(0)
    print(f"global (no verification): R@1 {glob.mean():.3f}; baseline {base[0]} {base[1]} {base[2]}")
    print(f"{'model':10s} {'thr':>4s} {'gain':>5s} {'R@1':>6s} {'ratio':>6s} {'d vs global':>11s} {'95% CI':>15s} "
          f"{'d vs base':>9s} {'95% CI':>15s}  per set")
    for v in sorted(right, key=lambda v: -right[v].mean()):
        d, db = right[v] - glob, right[v] - right[base]
        (lo, hi), (blo, bhi) = boot_ci(d, rng), boot_ci(db, rng)
        per = " ".join(f"{n[:8]} {right[v][sets == n].mean():.3f}" for n in names)
        print(f"{v[0]:10s} {v[1]:4.1f} {v[2]:5.2f} {right[v].mean():6.3f} x{right[v].mean() / glob.mean():5.3f} "
              f"{d.mean():+11.3f} [{lo:+.3f},{hi:+.3f}] {db.mean():+9.3f} [{blo:+.3f},{bhi:+.3f}]  {per}")
    held, held_base = [], []
    for h in (0, 1):
        best = max(right, key=lambda v: right[v][half == h].mean())
        test = half != h
        held.append(right[best][test])
        held_base.append(right[base][test])
        print(f"chosen on half {h}: {best[0]} {best[1]} {best[2]} (R@1 {right[best][half == h].mean():.3f} there); "
              f"on the other half {right[best][test].mean():.3f}, baseline {right[base][test].mean():.3f}, "
              f"global {glob[test].mean():.3f}")
    cv, cvb = np.concatenate(held), np.concatenate(held_base)
    lo, hi = boot_ci(cv - cvb, rng)
    print(f"choosing by this table, scored on queries it was not chosen on: R@1 {cv.mean():.3f} "
          f"(x{cv.mean() / glob.mean():.3f} global), {cv.mean() - cvb.mean():+.3f} [{lo:+.3f},{hi:+.3f}] vs the baseline")


if __name__ == "__main__":
    main()

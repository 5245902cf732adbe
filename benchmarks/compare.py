"""Decide with statistics: methods and settings on cached features, with and without verification.

    python -m benchmarks.compare [--sets corridor gardens_point_day wxbs] [--seeds 3] [--verify 10]
        [--variant NAME='{"base": "segvlad", "order": 1, ...}' ...] [--methods global segvlad grid]

DINOv2 features come from the on-disk cache (benchmarks/featcache.py: computed once per image
and engine). For each labelled set, variant and seed (the seed draws the patches and
SuperSegments the vocabulary and PCA are fitted on) the map is built in memory with the
product's own code (pipeline, fitting, make_bundle, Localizer, exact search) and every query
is ranked; ``+v`` rows re-rank the top ``--verify`` map images by verified inliers
(runtime/steps/verification.py). Printed per set and pooled: Recall@1/5 (mean over seeds) with a
bootstrap 95% interval over queries, the spread over seeds, segments and bytes per image, and
the paired per-query difference in Recall@1 to ``global`` (no verification) with its bootstrap
95% interval.
"""
from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):   # small matmuls: threads only contend
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.featcache import DEFAULT_CACHE, cached_features
from segvlad_edge.engines.manifest import default_engines_dir, find_engine
from segvlad_edge.runtime.inputs.datasets import load_dataset
from segvlad_edge.runtime.steps.features import DenseFeatureExtractor
from segvlad_edge.runtime.fitting import fit_models
from segvlad_edge.runtime.localizer import Localizer
from segvlad_edge.runtime.mapping import make_bundle, verification_arrays
from segvlad_edge.runtime.pipeline import make_pipeline
from segvlad_edge.runtime.settings import CONFS

SETS = ("corridor", "gardens_point_day", "wxbs")
DEPTH = 10
BOOT = 2000


def boot_ci(x: np.ndarray, rng: np.random.Generator, n: int = BOOT) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean of ``x [Q]`` (resampling queries)."""
    idx = rng.integers(0, len(x), (n, len(x)))
    m = x[idx].mean(1)
    return float(np.percentile(m, 2.5)), float(np.percentile(m, 97.5))


def build_map(ds, feats, conf, seed, ext, verify: bool = True, frames: dict | None = None):
    """An in-memory map of ``ds.map_images`` from cached features, with the product's code ->
    ``(localizer, frames {path: FrameSegments}, desc {path: [S, d] float16})`` for every image in ``feats``.
    ``frames``: the images' segments where already made (they do not depend on the seed)."""
    pipe = make_pipeline(conf, extractor=ext)
    if frames is None:
        frames = {p: pipe.segment(None, feats[p]) for p in feats}
    maps = ds.map_images
    rng = np.random.default_rng(seed)
    pipe = pipe.with_models(fit_models(pipe.conf, lambda: (frames[p] for p in maps), len(maps), rng))
    desc = {p: pipe.describe(f) for p, f in frames.items()}
    bundle = make_bundle(pipe, [ds.name(p) for p in maps], [desc[p] for p in maps], [len(desc[p]) for p in maps],
                         [frames[p].label_map() for p in maps], {}, {"source": "map", "images": len(maps)})
    if verify:
        with verification_arrays(lambda: (frames[p].fmap.features for p in maps), bundle.arrays["segment_labels"].shape,
                                 conf, rng, tempfile.gettempdir()) as verify:        # codes stay mapped after the block
            bundle.arrays.update(verify)
    return Localizer(bundle, pipe), frames, desc


def run_variant(ds, feats, conf, seeds, verify_n, ext) -> list[dict]:
    """One result per seed: ``first [Q]`` rank of the first correct image (-1: not in the top
    DEPTH), without and with verification, plus sizes. The images are segmented once."""
    frames = None
    out = []
    for seed in seeds:
        loc, frames, desc = build_map(ds, feats, conf, seed, ext, verify=bool(verify_n), frames=frames)
        out.append(score_map(ds, loc, frames, desc, verify_n))
    return out


def score_map(ds, loc, frames, desc, verify_n) -> dict:
    """One built map (``build_map``): every query ranked, without and with verification."""
    bundle, maps = loc.bundle, ds.map_images
    first = {0: [], verify_n: []}
    ms = []
    for qi, q in enumerate(ds.queries):
        exclude = ds.own_map_images(qi)
        r = loc.rank_descriptors(desc[q], top=max(DEPTH, verify_n), exact=True, exclude_images=exclude)
        tops = {0: list(r.images[:DEPTH])}
        if verify_n:
            t = time.perf_counter()
            vr = loc.verify(r, loc.patch_codes(frames[q].fmap.features), verify_n)
            ms.append(1e3 * (time.perf_counter() - t))
            tops[verify_n] = list(vr.images[:DEPTH])
        for k, top in tops.items():
            ok = [i for i, m in enumerate(top) if m in ds.positives[qi]]
            first[k].append(ok[0] if ok else -1)
    n_img = len(maps)
    codes = bundle.arrays.get("verify_codes")
    return {"first": {k: np.asarray(v) for k, v in first.items()},
            "seg_per_img": len(bundle.arrays["descriptors"]) / n_img,
            "desc_kib": bundle.arrays["descriptors"].nbytes / n_img / 1024,
            "verify_kib": codes.nbytes / n_img / 1024 if codes is not None else 0.0,
            "verify_ms": float(np.median(ms)) if ms else 0.0}


def variants(a) -> dict[str, dict]:
    out = {m: dict(CONFS[m]) for m in a.methods}
    for v in a.variant:
        name, spec = v.split("=", 1)
        spec = json.loads(spec)
        out[name] = {**CONFS[spec.pop("base", "segvlad")], **spec}
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", default=str(Path(__file__).resolve().parents[2] / "shared" / "datasets"))
    ap.add_argument("--sets", nargs="+", default=list(SETS))
    ap.add_argument("--methods", nargs="*", default=["global", "segvlad", "grid"])
    ap.add_argument("--variant", action="append", default=[], help='NAME=JSON settings over a "base" method')
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--verify", type=int, default=DEPTH, help="shortlist verified (0: none)")
    ap.add_argument("--every", type=int, default=1, help="use every n-th query (exploration only)")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    a = ap.parse_args()
    ext = DenseFeatureExtractor(find_engine(default_engines_dir(), "dinov2"), threads=2)
    confs = variants(a)
    print(f"engine {ext.manifest.file}; seeds {a.seeds}; verify top {a.verify}; every {a.every}. query")
    rows = {}                       # (set, name) -> {"r1": [seeds, Q], "r5": ..., sizes}
    for s in a.sets:
        ds = load_dataset(Path(a.datasets) / s)
        if a.every > 1:
            keep = list(range(0, len(ds.queries), a.every))
            ds.queries = [ds.queries[i] for i in keep]
            ds.positives = [ds.positives[i] for i in keep]
            if ds.query_map_index is not None:
                ds.query_map_index = [ds.query_map_index[i] for i in keep]
        feats = cached_features(ext, sorted(set(ds.map_images) | set(ds.queries)), a.cache, progress=False)
        for name, conf in confs.items():
            t0 = time.perf_counter()
            res = run_variant(ds, feats, conf, range(a.seeds), a.verify, ext)
            for k in sorted(res[0]["first"]):
                f = np.stack([r["first"][k] for r in res])
                rows[(s, name + ("+v" if k else ""))] = {
                    "r1": (f == 0).astype(float), "r5": ((f >= 0) & (f < 5)).astype(float),
                    "seg": res[0]["seg_per_img"], "desc_kib": res[0]["desc_kib"],
                    "verify_kib": res[0]["verify_kib"] if k else 0.0,
                    "verify_ms": np.mean([r["verify_ms"] for r in res]) if k else 0.0}
            print(f"# {s} {name}: {time.perf_counter() - t0:.0f} s", flush=True)
    report(rows, a.sets, list(dict.fromkeys(n for _, n in rows)))


def report(rows: dict, sets: list[str], names: list[str]) -> None:
    rng = np.random.default_rng(0)
    print(f"\n{'set':18s} {'method':24s} {'R@1':>6s} {'95% CI':>13s} {'seed sd':>7s} {'R@5':>6s} "
          f"{'seg/img':>7s} {'desc KiB':>8s} {'ver KiB':>7s} {'ver ms':>6s} {'d R@1 vs global':>16s} {'95% CI':>15s}")
    for s in sets + ["pooled"]:
        for n in names:
            keys = [(x, n) for x in sets] if s == "pooled" else [(s, n)]
            if not all(k in rows for k in keys):
                continue
            r1 = np.concatenate([rows[k]["r1"] for k in keys], axis=1)
            r5 = np.concatenate([rows[k]["r5"] for k in keys], axis=1)
            q1 = r1.mean(0)
            lo, hi = boot_ci(q1, rng)
            line = (f"{s:18s} {n:24s} {q1.mean():6.3f} [{lo:.3f},{hi:.3f}] {r1.mean(1).std():7.3f} "
                    f"{r5.mean():6.3f} {np.mean([rows[k]['seg'] for k in keys]):7.1f} "
                    f"{np.mean([rows[k]['desc_kib'] for k in keys]):8.2f} "
                    f"{np.mean([rows[k]['verify_kib'] for k in keys]):7.1f} "
                    f"{np.mean([rows[k]['verify_ms'] for k in keys]):6.1f}")
            gkeys = [(x, "global") for x in ([k[0] for k in keys])]
            if n != "global" and all(k in rows for k in gkeys):
                g = np.concatenate([rows[k]["r1"] for k in gkeys], axis=1).mean(0)
                d = q1 - g
                dlo, dhi = boot_ci(d, rng)
                line += f" {d.mean():+16.3f} [{dlo:+.3f},{dhi:+.3f}]  x{q1.mean() / max(g.mean(), 1e-9):.3f}"
            print(line, flush=True)


if __name__ == "__main__":
    main()

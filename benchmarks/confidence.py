"""Does "no match" hold? Frames whose place is in the map vs frames whose place is not.

    python -m benchmarks.confidence [--sets corridor gardens_point_day wxbs] [--seeds 3] [--positions]

For each labelled set a map of its map images is built in memory from cached DINOv2 features
(benchmarks/featcache.py) with the default settings, and frames are localised the product's
way (segment search, verification of the shortlist, confidence):

- ``in map``: every query, its place in the map (Recall@1 among the answered is printed);
- ``removed``: every query with its correct map images removed -- a place not in the map, in
  the same environment; ``rem far``: those answered with a map image more than WINDOW frames
  beyond the removed place (on sequences the frames just past it show much of the same scene;
  on wxbs every answer counts);
- ``foreign``: 40 frames of each other shared set and every toy_unlabelled image;
- ``blurred`` / ``dark``: 30 in-map queries with horizontal motion blur (21 px) / at 25%
  brightness and gamma 1.5 (answered share and Recall@1 among the answered).

Printed per set, seed (vocabulary, PCA and coder fits) and threshold: the share answered; then
the default threshold's row pooled over the sets and seeds, the same pooled row for other values
of the rival ratio (runtime/steps/confidence.py: 0 = the inlier level alone) and for the inlier
level alone at the threshold that answers as many in-map queries as the default, the ratio picked
on random halves of the queries and measured on the other halves (``split_half``), the quantiles of
the verified inliers of each kind of frame, and how far (in map images) the wrong answers to
in-map queries of the sequences lie from the nearest correct image (sets whose queries are not
map images -- corridor and gardens_point_day -- are taken as sequences, their map images in
capture order).
"""
from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):   # small matmuls: threads only contend
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
from pathlib import Path

import cv2
import numpy as np

from benchmarks.compare import build_map
from benchmarks.featcache import DEFAULT_CACHE, cached_features
from segvlad_edge.engines.manifest import default_engines_dir, find_engine
from segvlad_edge.runtime.steps.confidence import (NO_MATCH_BELOW, RANK_DEPTH, RIVAL_RATIO, WINDOW,
                                                   held_back_negatives, top_inliers, verified_confidence)
from segvlad_edge.runtime.inputs.datasets import load_dataset
from segvlad_edge.runtime.steps.features import DenseFeatureExtractor
from segvlad_edge.runtime.inputs.images import list_images
from segvlad_edge.runtime.settings import CONFS
from segvlad_edge.runtime.steps.position import MapPositions

SETS = ("corridor", "gardens_point_day", "wxbs")
THRESHOLDS = (0.3, 0.5, NO_MATCH_BELOW, 0.9)
KINDS = ("in map", "removed", "rem far", "foreign", "blurred", "dark")
RIVAL_RATIOS = (0.0, 1.0, RIVAL_RATIO, 1.1, 1.25, 1.5)
BLOCK = 10              # consecutive queries kept on one side of a split-half


def motion_blur(image: np.ndarray, length: int = 21) -> np.ndarray:
    return cv2.filter2D(image, -1, np.full((1, length), 1.0 / length, np.float32))


def dark(image: np.ndarray) -> np.ndarray:
    return (255 * (image.astype(np.float32) * 0.25 / 255) ** 1.5).astype(np.uint8)


def evidence(loc, fmap, desc, exclude) -> tuple[float, int, int, int]:
    """One frame -> (confidence, top map image, its verified inliers, the best other place's), the
    localizer's own path."""
    ranked = loc.verify(loc.rank_descriptors(desc, RANK_DEPTH, exact=True, exclude_images=exclude),
                        loc.patch_codes(fmap.features))
    ans = loc.answer(ranked, {}, len(desc), 1)
    if not len(ranked.images) or ranked.inliers is None:
        return ans.confidence, -1, 0, 0
    return ans.confidence, int(ranked.images[0]), top_inliers(ranked), ans.rival["inliers"] if ans.rival else 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", default=str(Path(__file__).resolve().parents[2] / "shared" / "datasets"))
    ap.add_argument("--sets", nargs="+", default=list(SETS))
    ap.add_argument("--seeds", type=int, default=3, help="fits per set (seeds 0..N-1), pooled")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--save", type=Path, default=None, help="write the per-frame evidence (.npz)")
    ap.add_argument("--positions", action="store_true",
                    help="give the sequences' maps positions (x = map index, one unit a frame), so that another "
                         "place is judged by the agreement radius as on maps with positions")
    a = ap.parse_args()
    root = Path(a.datasets)
    ext = DenseFeatureExtractor(find_engine(default_engines_dir(), "dinov2"), threads=2)
    conf = dict(CONFS["segvlad"])
    print(f"engine {ext.manifest.file}; settings {conf}")
    print(f"{'map, seed':21s} {'threshold':>9s} " + " ".join(f"{k:>8s}" for k in KINDS) + f" {'R@1 ans':>7s} {'R@1 all':>7s}")
    pooled = {k: [] for k in KINDS}
    queries = []    # which query each pooled in-map row is: (set, query index), for the bootstrap
    saved = {}
    beyond = []     # wrong answers to in-map queries on the sequences: how far from the nearest correct image
    for name in a.sets:
        ds = load_dataset(root / name)
        others = [p for s in SETS if s != name for p in list_images(root / s)
                  if p.suffix.lower() in (".jpg", ".jpeg", ".png")]
        foreign = [others[i] for i in np.linspace(0, len(others) - 1, 80).astype(int)]
        foreign += list_images(root / "toy_unlabelled")
        feats = cached_features(ext, sorted(set(ds.map_images) | set(ds.queries) | set(foreign)), a.cache, False)
        picks = [int(i) for i in np.linspace(0, len(ds.queries) - 1, 30).astype(int)]
        variants = {"blurred": cached_features(ext, [ds.queries[i] for i in picks], a.cache, False, motion_blur, "blur21"),
                    "dark": cached_features(ext, [ds.queries[i] for i in picks], a.cache, False, dark, "dark25g15")}
        frames = None
        for seed in range(a.seeds):
            loc, frames, desc = build_map(ds, feats, conf, seed, ext, frames=frames)
            if a.positions and ds.query_map_index is None:
                loc.positions = sequence_positions(len(ds.map_images))
            loc.calib = loc.bundle.arrays["calib_negatives"] = held_back_negatives(loc)   # what mapping.main stores
            rows, far = frame_rows(ds, loc, frames, desc, foreign, variants, picks)
            beyond += far
            queries += [(name, qi) for qi in range(len(ds.queries))]
            for k in KINDS:
                pooled[k] += rows[k]
                saved[f"{name}/{seed}/{k}"] = np.asarray(rows[k], np.float64)
            table(f"{name} {seed}", rows)
    table("pooled", pooled, [NO_MATCH_BELOW])
    per_seed = [np.concatenate([saved[f"{n}/{seed}/in map"] for n in a.sets]) for seed in range(a.seeds)]
    print("pooled per seed, in map answered / R@1 among answered: " + ", ".join(
        "{:.3f} / {:.3f}".format(*answer_rate(rows[:, 0] >= NO_MATCH_BELOW, rows[:, 1] > 0)) for rows in per_seed))
    by_ratio = {ratio: answers(pooled, conf["verify_model"], ratio) for ratio in RIVAL_RATIOS}
    rival_sweep(pooled, by_ratio, queries, conf["verify_model"])
    split_half(pooled, by_ratio, queries)
    print("\nverified inliers of the top answer, p10/p50/p90 (pooled):")
    for k in KINDS:
        if k != "rem far":
            inl = np.asarray([r[2] for r in pooled[k]])
            print(f"  {k:8s} " + "/".join(f"{np.percentile(inl, p):.0f}" for p in (10, 50, 90)) + f"  ({len(inl)} frames)")
    bins = [(1, 1), (2, 2), (3, 3), (4, 9), (10, None)]
    counts = [sum(lo <= b and (hi is None or b <= hi) for b in beyond) for lo, hi in bins]
    print("\nwrong in-map answers (default threshold) on the sequences, map images from the nearest correct one: "
          + ", ".join(f"{lo}{'' if hi == lo else '+' if hi is None else f'-{hi}'}: {n}" for (lo, hi), n in zip(bins, counts))
          + f" ({len(beyond)} answers over {a.seeds} seeds)")
    if a.save:
        np.savez(a.save, **saved)


def sequence_positions(n: int) -> MapPositions:
    """Positions of a sequential map's ``n`` images: x = map index (as benchmarks/position.py gives them)."""
    xy = np.stack([np.arange(n, dtype=np.float64), np.zeros(n)], 1)
    return MapPositions("local", xy, np.zeros(n), spacing_m=1.0)


def answer_rate(answered: np.ndarray, right: np.ndarray) -> tuple[float, float]:
    """In-map frames ``answered [N] bool``, ``right [N] bool`` (top answer correct) -> (share
    answered, Recall@1 among the answered; NaN where none is)."""
    return float(answered.mean()), float(right[answered].mean()) if answered.any() else float("nan")


def frame_rows(ds, loc, frames, desc, foreign, variants, picks) -> tuple[dict, list]:
    """One map's frames of every kind -> ``({kind: [(confidence, right, inliers, rival inliers)]},
    beyond)``; a "rem far" row is all zeros where the answer lies within WINDOW of the removed
    place; ``beyond``: how many map images the wrong confident in-map answers on a sequence lie
    from the nearest correct one."""
    rows = {k: [] for k in KINDS}
    beyond = []
    for qi, q in enumerate(ds.queries):
        own = ds.own_map_images(qi)
        pos = sorted(ds.positives[qi])
        c, top, inl, rival = evidence(loc, frames[q].fmap, desc[q], own)
        rows["in map"].append((c, top in ds.positives[qi], inl, rival))
        if ds.query_map_index is None and c >= NO_MATCH_BELOW and top not in ds.positives[qi]:
            beyond.append(min(abs(top - p) for p in pos))
        c, top, inl, rival = evidence(loc, frames[q].fmap, desc[q], own + pos)
        rows["removed"].append((c, False, inl, rival))
        near = ds.query_map_index is None and top >= 0 and min(abs(top - p) for p in pos) <= WINDOW
        rows["rem far"].append((0.0, False, 0, 0) if near else (c, False, inl, rival))
    for p in foreign:
        c, top, inl, rival = evidence(loc, frames[p].fmap, desc[p], [])
        rows["foreign"].append((c, False, inl, rival))
    for kind, fm in variants.items():
        for qi in picks:
            q = ds.queries[qi]
            own = ds.own_map_images(qi)
            f = loc.pipeline.segment(None, fm[q])
            c, top, inl, rival = evidence(loc, f.fmap, loc.pipeline.describe(f), own)
            rows[kind].append((c, top in ds.positives[qi], inl, rival))
    return rows, beyond


def answers(pooled: dict, model: str, ratio: float, threshold: float = NO_MATCH_BELOW) -> dict:
    """The pooled rows of every kind -> ``{kind: [N] bool}``: answered at ``threshold`` with the rival
    ratio ``ratio`` (0: the inlier level alone)."""
    return {k: np.array([verified_confidence(r[2], r[3], model, ratio) for r in rows]) >= threshold
            for k, rows in pooled.items()}


def rival_sweep(pooled: dict, by_ratio: dict, queries: list, model: str) -> None:
    """The pooled default-threshold row for each rival ratio (``by_ratio``: ``answers`` per ratio of
    RIVAL_RATIOS; 0: the inlier level alone), and for the inlier level alone at the threshold that
    answers as many in-map queries as the default ratio; then the default's right and wrong answers
    per in-map query against each of those two, paired, with bootstrap intervals over queries
    (``queries``: the pooled in-map rows' (set, query); a query's seeds are averaged first)."""
    right = np.asarray([r[1] for r in pooled["in map"]], bool)

    def row(label: str, ans: dict) -> np.ndarray:
        print(f"{label:28s} " + " ".join(f"{ans[k].mean():8.3f}" for k in KINDS)
              + f" {answer_rate(ans['in map'], right)[1]:7.3f}")
        return ans["in map"]

    print(f"\n{f'rival ratio (pooled, {NO_MATCH_BELOW})':28s} " + " ".join(f"{k:>8s}" for k in KINDS) + f" {'R@1 ans':>7s}")
    answered = {ratio: row(f"{ratio:.2f}" + (" (default)" if ratio == RIVAL_RATIO else " (inliers alone)" if ratio == 0 else ""),
                           ans) for ratio, ans in by_ratio.items()}
    alone = np.sort([verified_confidence(r[2], r[3], model, 0.0) for r in pooled["in map"]])[::-1]
    t = float(alone[max(int(round(answered[RIVAL_RATIO].mean() * len(alone))) - 1, 0)])
    raised = row(f"inliers alone >= {t:.4f}", answers(pooled, model, 0.0, t))
    keys, which = index_of(queries)
    per_query = lambda x: np.bincount(which, x, len(keys)) / np.bincount(which, minlength=len(keys))  # noqa: E731
    picks = np.random.default_rng(0).integers(0, len(keys), (2000, len(keys)))
    for other, label in ((answered[0.0], "inliers alone"), (raised, f"inliers alone >= {t:.4f}")):
        for what, keep in (("right", right), ("wrong", ~right)):
            d = per_query((answered[RIVAL_RATIO] & keep).astype(float) - (other & keep).astype(float))
            lo, hi = np.percentile(d[picks].mean(1), [2.5, 97.5])
            print(f"  {what} answers per in-map query, default - {label}: {d.mean():+.3f} [{lo:+.3f}, {hi:+.3f}]")
    print(f"  (bootstrap 95% intervals over the {len(keys)} queries, each the mean over its seeds)")
    sets = np.array([q[0] for q in queries])
    for name in dict.fromkeys(sets):
        here = sets == name
        print(f"  {name}: in map answered / R@1 among answered, default "
              + "{:.3f} / {:.3f}".format(*answer_rate(answered[RIVAL_RATIO][here], right[here]))
              + f", inliers alone >= {t:.4f} " + "{:.3f} / {:.3f}".format(*answer_rate(raised[here], right[here])))


def index_of(keys: list) -> tuple[list, np.ndarray]:
    """``keys [N]`` hashable, one per pooled row -> (the distinct keys sorted, ``[N] int`` each row's
    position among them)."""
    distinct = sorted(set(keys))
    at = {k: i for i, k in enumerate(distinct)}
    return distinct, np.array([at[k] for k in keys])


def split_half(pooled: dict, by_ratio: dict, queries: list, splits: int = 500, min_answered: float = 0.70) -> None:
    """Is the rival ratio's choice fitted to these queries? The default was picked as the largest
    ratio of RIVAL_RATIOS that answers at least ``min_answered`` of the in-map queries. Here it is
    picked so on each of ``splits`` random halves of them (blocks of BLOCK consecutive queries of a
    set, so a sequence frame's near twin is on its side; a query's seeds together), the smallest
    where none does, and both halves are measured: in-map answered, Recall@1 among the answered,
    removed places answered far off (mean, and p5..p95 for the other half); ``by_ratio`` as for
    ``rival_sweep``."""
    assert len(queries) == len(pooled["in map"]) == len(pooled["rem far"])     # one row of each per query and seed
    ans = {k: np.stack([by_ratio[g][k] for g in RIVAL_RATIOS]) for k in ("in map", "rem far")}    # [ratios, rows]
    right = np.asarray([r[1] for r in pooled["in map"]], bool)
    blocks, which = index_of([(name, qi // BLOCK) for name, qi in queries])
    rng = np.random.default_rng(0)
    picked, halves = [], {"picking": [], "other": []}
    for _ in range(splits):
        side = np.isin(which, rng.permutation(len(blocks))[: len(blocks) // 2])
        ok = np.flatnonzero(ans["in map"][:, side].mean(1) >= min_answered)
        j = ok.max() if len(ok) else 0
        picked.append(RIVAL_RATIOS[j])
        for half, rows in (("picking", side), ("other", ~side)):
            halves[half].append((*answer_rate(ans["in map"][j, rows], right[rows]), ans["rem far"][j, rows].mean()))
    print(f"\nsplit-half choice of the rival ratio ({splits} random halves of the {len(blocks)} blocks of {BLOCK} "
          f"consecutive queries), the largest answering >= {min_answered:.0%} of one half picked: "
          + ", ".join(f"{g:.2f} {np.mean(np.asarray(picked) == g):.0%}" for g in RIVAL_RATIOS if g in picked))
    names = ("in map answered", "R@1 among answered", "rem far")
    print("  mean over the halves (p5..p95 for the other half):")
    for half, rows in halves.items():
        rows = np.asarray(rows)
        print(f"  {half + ' half':13s} " + ", ".join(
            f"{n} {np.nanmean(rows[:, c]):.3f}" + (f" ({np.nanpercentile(rows[:, c], 5):.3f}..{np.nanpercentile(rows[:, c], 95):.3f})"
                                              if half == "other" else "") for c, n in enumerate(names)))


def table(name: str, rows: dict, thresholds=THRESHOLDS) -> None:
    conf = {k: np.asarray([r[0] for r in v]) for k, v in rows.items()}
    right = {k: np.asarray([r[1] for r in v], bool) for k, v in rows.items()}
    for t in thresholds:
        ans = {k: conf[k] >= t for k in KINDS}
        r1 = answer_rate(ans["in map"], right["in map"])[1]
        print(f"{name:21s} {t:9.2f} " + " ".join(f"{ans[k].mean():8.3f}" for k in KINDS) + f" {r1:7.3f} "
              f"{right['in map'].mean():7.3f}", flush=True)


if __name__ == "__main__":
    main()

"""Position error of `localize`'s estimate on the shared sequential sets, in frames.

    python benchmarks/position.py [--datasets ../shared/datasets] [--threads 2] [--cache /work/cache/position]

No shared set carries GPS, but corridor and gardens_point_day are sequences whose query i shows
the place of map image i: the map is built by the product (``mapping.main``, default engine and
settings) with position x = map index (``pose [i, 0, 0]``, one unit = one frame), every query is
localised as ``localize`` does, and the error is ``|x - i|`` in frames. Printed per set: the
share of queries answered (confident match, which is when a position is given), the median /
90th percentile error of the estimate over them, the same for the best match's own position
(top-1, the baseline the estimator must beat, on the same queries), a paired bootstrap 95%
interval of the mean error difference (estimate - top-1; below 0 = the estimator is better),
how often the error is within 2 sigma_m, and the temporal filter's position (``--filter``) over
all queries in order, told which were answered as ``localize`` tells it (its error where it gives
a position, and the share of queries on which it is lost and withholds one). Maps and rankings
are cached (``--cache``, under a tag of the default settings and answer levels, so a change of
either builds afresh), so the closing sweep of the
estimator's two settings (agreement radius in map spacings, candidates) over both sets costs no
engine time.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
from pathlib import Path

import numpy as np

from segvlad_edge.apps.stream import filtered_position
from segvlad_edge.runtime import mapping
from segvlad_edge.runtime.steps import position
from segvlad_edge.runtime.inputs.images import list_images, load_image
from segvlad_edge.runtime.localizer import RANK_DEPTH, Localizer
from segvlad_edge.runtime.pipeline import make_pipeline
from segvlad_edge.runtime.settings import CONFS
from segvlad_edge.runtime.steps.confidence import ANSWER_INLIERS, NO_MATCH_BELOW, RIVAL_RATIO, WINDOW
from segvlad_edge.runtime.steps.temporal import SequenceFilter

SETS = {"corridor": ("ref", "query"), "gardens_point_day": ("day_left", "day_right")}
KEEP = RANK_DEPTH                           # ranked images cached per query: the whole ranking
TAG = hashlib.sha256(json.dumps([CONFS["segvlad"].to_json(), ANSWER_INLIERS, NO_MATCH_BELOW, RIVAL_RATIO, WINDOW,
                                 position.AGREE_SPACINGS],
                                sort_keys=True).encode()).hexdigest()[:12]   # what the cached maps and rankings depend on


def number(name: str) -> int:
    return int(re.findall(r"\d+", Path(name).stem)[-1])


def build(root: Path, map_dir: str, out: Path, threads: int) -> Path:
    if out.exists():
        return out
    files = list_images(root / map_dir)
    images = [(p.name, p) for p in files]
    meta = {p.name: {"pose": [float(number(p.name)), 0.0, 0.0]} for p in files}
    pipe = make_pipeline(CONFS["segvlad"], threads=threads)
    out.parent.mkdir(parents=True, exist_ok=True)
    mapping.build_map(images, out, pipe, meta, progress=True, fit="map", images_root=str(root / map_dir))
    return out


def rankings(name: str, root: Path, cache: Path, threads: int) -> tuple[Localizer, dict]:
    """Per query in order (frames with a ranking): truth, confident?, the ranked images/scores (all
    ``RANK_DEPTH`` <= KEEP of them, -1 / 0 padded: what the temporal filter sees)."""
    map_dir, query_dir = SETS[name]
    loc = Localizer.from_bundle(build(root, map_dir, cache / f"{name}-{TAG}.segmap", threads), threads=threads)
    path = cache / f"{name}-{TAG}.rankings.npz"
    if path.exists():
        return loc, dict(np.load(path))
    rows = {"truth": [], "confident": [], "images": [], "scores": []}
    for p in list_images(root / query_dir):
        ans = loc.localize(load_image(p))
        if ans.ranked is None:
            continue
        truth = number(p.name)
        images = np.full(KEEP, -1, np.int64)
        scores = np.zeros(KEEP, np.float64)
        images[:len(ans.ranked.images[:KEEP])] = ans.ranked.images[:KEEP]
        scores[:len(ans.ranked.scores[:KEEP])] = ans.ranked.scores[:KEEP]
        rows["truth"].append(truth)
        rows["confident"].append(ans.match is not None)
        rows["images"].append(images)
        rows["scores"].append(scores)
    data = {k: np.asarray(v) for k, v in rows.items()}
    np.savez(path, **data)
    return loc, data


def errors(loc: Localizer, d: dict, agree: float, candidates: int) -> tuple[np.ndarray, np.ndarray]:
    """Estimate errors and sigmas of the confident queries with the estimator set to ``agree`` map
    spacings and ``candidates`` candidates (the product's: AGREE_SPACINGS, CANDIDATES)."""
    pos = loc.positions
    err, sig = [], []
    for truth, ok, images, scores in zip(d["truth"], d["confident"], d["images"], d["scores"]):
        if not ok:
            continue
        keep = (images >= 0)[:candidates]
        mean, sigma, _ = position.estimate(pos.xy[images[:candidates][keep]], scores[:candidates][keep],
                                           agree * pos.spacing_m, pos.spacing_m / 2)
        err.append(abs(mean[0] - truth))
        sig.append(sigma)
    return np.asarray(err), np.asarray(sig)


def filtered_errors(loc: Localizer, d: dict) -> tuple[np.ndarray, float]:
    """The temporal filter (``--filter``) over all queries in order, told which were answered, as
    ``localize`` does -> (errors of its position on the frames it gives one, share of frames it is
    lost on and withholds it)."""
    filt, err, lost = SequenceFilter(len(loc.names)), [], 0
    for truth, ok, images, scores in zip(d["truth"], d["confident"], d["images"], d["scores"]):
        keep = images >= 0
        filt.update(images[keep], scores[keep].astype(np.float32), bool(ok))
        if filt.lost:
            lost += 1
        else:
            err.append(abs(filtered_position(loc, filt.belief)["x"] - truth))
    return np.asarray(err), lost / len(d["truth"])


def bootstrap_mean(d: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), (n, len(d)))].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "datasets")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", type=Path, default=Path("/work/cache/position"))
    args = ap.parse_args()
    runs = {name: rankings(name, args.datasets / name, args.cache, args.threads) for name in SETS}
    default = (position.AGREE_SPACINGS, position.CANDIDATES)
    print("errors in frames (map images); est = position estimate, top1 = best match's own position, "
          "filt = --filter's position over all queries (lost: share of them it withholds one on)")
    print(f"{'dataset':18s} {'answered':>8s} {'est med':>8s} {'est p90':>8s} {'top1 med':>8s} {'top1 p90':>8s}  "
          f"{'mean(est-top1) 95% CI':>21s} {'<=2sigma':>8s} {'filt med':>8s} {'filt p90':>8s} {'lost':>5s}")
    for name, (loc, d) in runs.items():
        e, s = errors(loc, d, *default)
        t, _ = errors(loc, d, 0.0, 1)                       # the best match alone
        f, lost = filtered_errors(loc, d)
        lo, hi = bootstrap_mean(e - t)
        print(f"{name:18s} {d['confident'].mean():8.2f} {np.median(e):8.2f} {np.percentile(e, 90):8.2f} "
              f"{np.median(t):8.2f} {np.percentile(t, 90):8.2f}  [{lo:+7.2f}, {hi:+7.2f}]  {np.mean(e <= 2 * s):8.2f} "
              f"{np.median(f):8.2f} {np.percentile(f, 90):8.2f} {lost:5.2f}")
    print(f"sweep, pooled confident queries; diff = mean error minus the default's {default}, paired bootstrap 95% CI")
    base = np.concatenate([errors(loc, d, *default)[0] for loc, d in runs.values()])
    for agree in (1.5, 2.5, 4.0):
        for candidates in (3, 5, 10):
            e = np.concatenate([errors(loc, d, agree, candidates)[0] for loc, d in runs.values()])
            lo, hi = bootstrap_mean(e - base)
            print(f"  agree {agree:3.1f} spacings, {candidates:2d} candidates: median {np.median(e):5.2f} "
                  f"p90 {np.percentile(e, 90):5.2f}  diff [{lo:+.3f}, {hi:+.3f}]")


if __name__ == "__main__":
    main()

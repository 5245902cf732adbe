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
all queries in order.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np

from segvlad_edge.engines.manifest import default_engines_dir, find_engine
from segvlad_edge.runtime import mapping
from segvlad_edge.runtime.features import DenseFeatureExtractor
from segvlad_edge.runtime.images import list_images, load_image
from segvlad_edge.runtime.localizer import Localizer
from segvlad_edge.runtime.pipeline import CONFS, FramePipeline
from segvlad_edge.runtime.position import CANDIDATES
from segvlad_edge.runtime.temporal import SequenceFilter

SETS = {"corridor": ("ref", "query"), "gardens_point_day": ("day_left", "day_right")}


def number(name: str) -> int:
    return int(re.findall(r"\d+", Path(name).stem)[-1])


def build(root: Path, map_dir: str, out: Path, threads: int) -> Path:
    if out.exists():
        return out
    files = list_images(root / map_dir)
    images = [(p.name, p) for p in files]
    meta = {p.name: {"pose": [float(number(p.name)), 0.0, 0.0]} for p in files}
    pipe = FramePipeline(DenseFeatureExtractor(find_engine(default_engines_dir(), "dinov2"), threads=threads),
                         CONFS["segvlad"])
    out.parent.mkdir(parents=True, exist_ok=True)
    mapping.main(images, out, pipe, meta, progress=True, fit="map", images_root=str(root / map_dir))
    return out


def bootstrap_mean(d: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), (n, len(d)))].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def run(name: str, root: Path, cache: Path, threads: int) -> None:
    map_dir, query_dir = SETS[name]
    loc = Localizer.from_bundle(build(root, map_dir, cache / f"{name}.segmap", threads), threads=threads)
    filt = SequenceFilter(len(loc.names))
    est, top1, sig, filtered = [], [], [], []
    for p in list_images(root / query_dir):
        truth = number(p.name)
        ans = loc.localize(load_image(p))
        if ans.ranked is not None:
            best, _ = filt.update(ans.ranked.images, ans.ranked.scores)
            order = np.argsort(-filt.belief, kind="stable")[:CANDIDATES]
            pos = loc.positions.estimate(order, filt.belief[order])
            filtered.append(abs(pos["x"] - truth))
        if ans.position is not None:
            est.append(abs(ans.position["x"] - truth))
            top1.append(abs(number(ans.match["name"]) - truth))
            sig.append(ans.position["sigma_m"])
    n = len(list_images(root / query_dir))
    e, t, s, f = map(np.asarray, (est, top1, sig, filtered))
    lo, hi = bootstrap_mean(e - t)
    print(f"{name:18s} {len(e) / n:8.2f} {np.median(e):8.2f} {np.percentile(e, 90):8.2f} {np.median(t):8.2f} "
          f"{np.percentile(t, 90):8.2f}   [{lo:+.2f}, {hi:+.2f}] {np.mean(e <= 2 * s):8.2f} {np.median(f):8.2f} "
          f"{np.percentile(f, 90):8.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "datasets")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", type=Path, default=Path("/work/cache/position"))
    args = ap.parse_args()
    print("errors in frames (map images); est = position estimate, top1 = best match's own position, "
          "filt = --filter's position over all queries")
    print(f"{'dataset':18s} {'answered':>8s} {'est med':>8s} {'est p90':>8s} {'top1 med':>8s} {'top1 p90':>8s}   "
          f"{'mean(est-top1) 95% CI':>20s} {'<=2sigma':>8s} {'filt med':>8s} {'filt p90':>8s}")
    for name in SETS:
        run(name, args.datasets / name, args.cache, args.threads)


if __name__ == "__main__":
    main()

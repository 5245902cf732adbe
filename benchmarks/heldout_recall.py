"""Top-K' recall of maps' stored indexes on real frames the search settings were not chosen on.

    python benchmarks/heldout_recall.py MAP [MAP ...] [--frames 40]

``benchmarks/index_sweep.py --bundle`` and ``benchmarks/scale.py`` measure recall over the same 10
real query frames (``scale.QUERIES``); this takes ``--frames`` others from the same query folders,
none within ``NEIGHBOURS`` frames of those 10, localises each with the product's ``Localizer``
and prints per map the mean over frames of ``SegmentIndex.recall`` (top-K' against exact search,
tie-aware; a mean over frames, where the scale table's is over segments) with a 95% bootstrap
interval over frames, and for each further map its paired difference to the first.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))      # the checkout: benchmarks.* as modules
from benchmarks import scale  # noqa: E402
from benchmarks.compare import boot_ci  # noqa: E402
from segvlad_edge.runtime.inputs.images import list_images, load_image  # noqa: E402
from segvlad_edge.runtime.localizer import Localizer  # noqa: E402

NEIGHBOURS = 2          # frames this close to one the settings were chosen on are not held out


def held_out_frames(n: int) -> list[Path]:
    """``n`` real query frames spread over the query folders, none near scale.py's 10."""
    paths = [p for d in scale.QUERY_DIRS for p in list_images(scale.SHARED / d)]
    chosen_on = np.linspace(0, len(paths) - 1, scale.QUERIES).astype(int)
    others = [i for i in range(len(paths)) if np.abs(chosen_on - i).min() > NEIGHBOURS]
    if not 1 <= n <= len(others):
        sys.exit(f"--frames {n}: choose 1 to {len(others)}")
    return [paths[others[i]] for i in np.linspace(0, len(others) - 1, n).astype(int)]


def frame_recalls(map_path: str, frames: list[Path], threads: int) -> np.ndarray:
    """``[F]`` recall of the map's index per frame (NaN for a frame without segments)."""
    loc = Localizer.from_bundle(map_path, threads=threads)
    out = []
    for path in frames:
        answer = loc.localize(load_image(path))
        desc = np.asarray(loc.pipeline.describe(answer.frame), np.float32) if answer.segments else None
        out.append(loc.index.recall(desc, loc.top_k) if desc is not None else np.nan)
    return np.asarray(out)


def interval(x: np.ndarray, sign: str = "") -> str:
    """Mean of ``x [F]`` with its 95% bootstrap interval over frames (``compare.boot_ci``)."""
    lo, hi = boot_ci(x, np.random.default_rng(0))
    return f"{x.mean():{sign}.4f} [{lo:{sign}.4f}, {hi:{sign}.4f}]"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("maps", nargs="+", help="bundles written by benchmarks/scale.py (or any maps)")
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    frames = held_out_frames(a.frames)
    recalls = [frame_recalls(m, frames, a.threads) for m in a.maps]
    both = np.all([np.isfinite(r) for r in recalls], axis=0)
    print(f"{int(both.sum())} held-out frames with segments (95% bootstrap intervals over frames)")
    for i, (m, r) in enumerate(zip(a.maps, recalls)):
        print(f"{m}: recall {interval(r[both])}; frames under 0.99: {int((r[both] < 0.99).sum())}, "
              f"lowest {r[both].min():.3f}")
        if i:
            print(f"  paired difference to {a.maps[0]}: {interval(r[both] - recalls[0][both], '+')}")


if __name__ == "__main__":
    main()

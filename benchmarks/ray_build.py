"""Map building on Ray vs the local build: images/s, identical output, per-image cost.

    nice -n 10 python benchmarks/ray_build.py [--images 48] [--cpus 2]

Builds the same map (the first --images map images of gardens_point_day, default engine and
settings, vocabulary/PCA fitted on the map) locally and with ``--ray`` on a local Ray instance of
--cpus CPUs (onnxruntime with 1 thread per task, the local build with --cpus threads), checks
that descriptors, segment tables and label maps are identical when both use the same thread
count, and prints images/s and the measured per-image cost of each pass. The estimate for N
workers follows from those costs: pass 1 and pass 3 divide by N, the driver's fit and writer do not.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from segvlad_edge.runtime import mapping
from segvlad_edge.runtime.mapfiles.bundle import MapBundle
from segvlad_edge.runtime.inputs.images import list_images
from segvlad_edge.runtime.pipeline import make_pipeline
from segvlad_edge.runtime.settings import CONFS
from segvlad_edge.runtime.ray_build import RayConf

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def build(images, out: Path, threads: int, ray: RayConf | None) -> tuple[float, mapping.BuildSummary]:
    pipe = make_pipeline(CONFS["segvlad"], threads=threads)
    t = time.perf_counter()
    s = mapping.build_map(images, out, pipe, progress=False, fit="map", ray=ray)
    return time.perf_counter() - t, s


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--cpus", type=int, default=2)
    a = ap.parse_args()
    import ray

    images = [(p.name, p) for p in list_images(SHARED / "gardens_point_day" / "day_left")[:a.images]]
    ray.init(num_cpus=a.cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    with tempfile.TemporaryDirectory(prefix="segvlad-raybench-") as tmp:
        tmp = Path(tmp)
        rows = [("local", *build(images, tmp / "local.segmap", a.cpus, None)),
                (f"ray {a.cpus} workers", *build(images, tmp / "ray.segmap", 1, RayConf(threads=1, chunk=4))),
                ("local, 1 thread", *build(images, tmp / "local1.segmap", 1, None))]
        same = all(np.array_equal(np.asarray(MapBundle.read(tmp / "ray.segmap").arrays[k]),
                                  np.asarray(MapBundle.read(tmp / "local1.segmap").arrays[k]))
                   for k in ("descriptors", "segments_per_image", "segment_labels"))
    ray.shutdown()
    print(f"{'build':18s} {'seconds':>8s} {'images/s':>9s} {'pass-1 ms/img':>13s} {'pass-3 ms/img':>13s}")
    for name, sec, s in rows:
        p1 = sum(s.stage_ms.get(k, 0) for k in ("features", "segments", "supersegments"))
        p3 = sum(s.stage_ms.get(k, 0) for k in ("vlad", "pca"))
        print(f"{name:18s} {sec:8.1f} {s.images / sec:9.2f} {p1:13.0f} {p3:13.1f}")
    print(f"ray (1 thread per task) == local (1 thread): descriptors, segment tables, label maps identical: {same}")
    _, sec1, s1 = rows[2]
    p1 = sum(s1.stage_ms.get(k, 0) for k in ("features", "segments", "supersegments")) / 1e3
    fixed = sec1 - p1 * s1.images                     # fit, pass 3, calibration, index, writer
    for n in (8, 32, 128):
        print(f"estimate, {n:3d} single-thread workers: {s1.images / (p1 * s1.images / n + fixed):.1f} images/s "
              f"for {s1.images} images (pass 1 {p1:.2f} s/img split {n} ways + {fixed:.0f} s on the driver)")


if __name__ == "__main__":
    main()

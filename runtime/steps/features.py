"""Dense DINOv2 features of one frame through an engine (no torch).

``DenseFeatureExtractor(manifest)(image_bgr) -> FeatureMap``: the frame is resized to the
engine's fixed input size (aspect not kept: map and queries are treated alike), normalised
with the manifest's mean/std and run; the engine returns per-patch L2-normalised features.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from segvlad_edge.engines.manifest import EngineError, EngineManifest
from segvlad_edge.runtime.backends import Backend, open_engine


@dataclass
class FeatureMap:
    """``features [h*w, C] float32`` (rows in row-major patch order, unit L2 norm), ``grid (h, w)``."""

    features: np.ndarray
    grid: tuple[int, int]


def normalise(image_bgr: np.ndarray, size: tuple[int, int], mean, std, scale: float) -> np.ndarray:
    """``[H, W, 3] uint8`` BGR -> ``[1, 3, size[1], size[0]] float32`` RGB, (x*scale - mean) / std."""
    interp = cv2.INTER_AREA if image_bgr.shape[1] > size[0] else cv2.INTER_LINEAR
    rgb = cv2.cvtColor(cv2.resize(image_bgr, size, interpolation=interp), cv2.COLOR_BGR2RGB)
    x = (rgb.astype(np.float32) * scale - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


class DenseFeatureExtractor:
    def __init__(self, manifest: EngineManifest, backend: Backend | None = None, providers=("cpu",), threads=None):
        if manifest.kind != "dinov2":
            raise EngineError(f"{manifest.file} is a {manifest.kind} engine, not dinov2")
        self.manifest = manifest
        self.backend = backend or open_engine(manifest, providers, threads)
        self.size = tuple(manifest.input_size)
        self.grid = tuple(manifest.model["patch_grid"])
        graph = self.backend.inputs.get("image")
        want = [1, 3, self.size[1], self.size[0]]
        if graph is None or len(graph) != 4 or any(g is not None and g != w for g, w in zip(graph, want)):
            raise EngineError(f"{manifest.file}: the graph takes image {graph}, its manifest says {want} "
                              "(input_size); rebuild the engine with `segvlad-edge build-engines --force`")

    def preprocess(self, image_bgr: np.ndarray) -> np.ndarray:
        return normalise(image_bgr, self.size, self.manifest.model["mean"], self.manifest.model["std"], 1 / 255)

    def __call__(self, image_bgr: np.ndarray) -> FeatureMap:
        feats = self.backend.run({"image": self.preprocess(image_bgr)})["features"][0]
        return FeatureMap(np.ascontiguousarray(feats, dtype=np.float32), self.grid)

"""The per-frame data path, shared by map building and localisation:

    image -> features (DINOv2 engine) -> segments (segmenter) -> SuperSegments (A^o)
          -> VLAD per SuperSegment -> PCA -> [S, d] float16 descriptors

Named configurations (``CONFS``, typed ``Settings`` from ``runtime/settings.py``): ``segvlad``
is the product default, ``grid`` and ``global`` are the paper's / AnyLoc's baselines on the same
engine; ``make_pipeline`` is the one way to assemble a pipeline from settings and an engine. The
defaults (featclust segments, o = 3, PCA unwhitened, 128 dims since ``benchmarks/pca_dims.py``) were chosen by ``benchmarks/sweep.py`` and
re-checked against denser segments (featclust at 12-32 clusters or 8 + 32 at once, an 8x8 grid,
o = 1-2), top-K', voting and PCA size by ``benchmarks/compare.py`` (``benchmarks/compare_segments.log``):
none beat them on Recall@1 pooled over corridor, gardens_point_day and wxbs. ``overlap_psi``
(None: off) drops SuperSegments overlapping a kept one (runtime/steps/supersegments.py); the
``verify_*`` settings set the spatial verification (runtime/steps/verification.py).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np

from segvlad_edge.engines.manifest import EngineManifest, default_engines_dir, find_engine
from segvlad_edge.runtime.steps.features import DenseFeatureExtractor, FeatureMap
from segvlad_edge.runtime.models import Models
from segvlad_edge.runtime.steps.segmenters import make_segmenter
from segvlad_edge.runtime.settings import Settings
from segvlad_edge.runtime.steps.supersegments import SuperSegments
from segvlad_edge.runtime.steps.vlad import VladAggregator

NO_SEGMENT = 255


def grow(masks: np.ndarray, grid: tuple[int, int], conf: Settings) -> tuple[SuperSegments, np.ndarray | None]:
    """Base ``masks [S, P] bool`` (non-empty) -> their SuperSegments at ``conf.order`` and, when
    ``conf.overlap_psi`` is set, only those kept by overlap filtering, with ``kept [K] int``
    (their base segments; None: all kept)."""
    ss = SuperSegments.from_masks(masks, grid, conf.order)
    if conf.overlap_psi is None:
        return ss, None
    kept = ss.keep_distinct(conf.overlap_psi)
    return ss.subset(kept), kept


@dataclass
class FrameSegments:
    """One frame before aggregation: features, base ``masks [S, P] bool``, the SuperSegments
    described and ``kept [K] int``: the base segment of each SuperSegment (None: SuperSegment s
    grew from base segment s)."""

    fmap: FeatureMap
    masks: np.ndarray
    supersegments: SuperSegments
    ms: dict = field(default_factory=dict)
    kept: np.ndarray | None = None

    def label_map(self) -> np.ndarray:
        """``[P] uint8``: the SuperSegment whose base segment is the smallest covering each patch
        (NO_SEGMENT where none)."""
        labels = np.full(self.masks.shape[1], NO_SEGMENT, np.uint8)
        base = np.arange(len(self.masks)) if self.kept is None else self.kept
        if len(base):
            area = self.masks[base].sum(1)
            for s in np.argsort(-area)[-(NO_SEGMENT - 1):]:      # large first, small overwrite
                labels[self.masks[base[s]]] = min(s, NO_SEGMENT - 1)
        return labels


class WholeImage:
    """``whole``: one segment covering every patch (global VLAD)."""

    def __call__(self, image_bgr, fmap) -> np.ndarray:
        return np.ones((1, fmap.grid[0] * fmap.grid[1]), bool)


class FramePipeline:
    """``segment(image) -> FrameSegments``; ``describe(frame) -> [S, d] float16`` with the fitted
    ``models`` (None: segmenting only, as pass 1 of a build before the models are fitted).
    ``conf``: Settings (a dict is checked into Settings)."""

    def __init__(self, extractor: DenseFeatureExtractor, conf: Settings | dict, engines_dir=None,
                 models: Models | None = None):
        self.extractor, self.conf, self.models = extractor, Settings.of(conf), models
        name = self.conf.segmenter
        self.segmenter = WholeImage() if name == "whole" else make_segmenter(name, dict(self.conf.segmenter_conf),
                                                                             engines_dir)

    def with_models(self, models: Models) -> "FramePipeline":
        """This pipeline (same engine session and segmenter) describing with ``models``."""
        pipe = copy.copy(self)
        pipe.models = models
        return pipe

    def segment(self, image_bgr: np.ndarray | None, fmap: FeatureMap | None = None) -> FrameSegments:
        """Features (unless ``fmap`` is given, e.g. cached), segments and SuperSegments of one frame."""
        t0 = time.perf_counter()
        fmap = self.extractor(image_bgr) if fmap is None else fmap
        t1 = time.perf_counter()
        masks = self.segmenter(image_bgr, fmap)
        masks = masks[masks.any(1)]
        t2 = time.perf_counter()
        ss, kept = grow(masks, fmap.grid, self.conf)
        t3 = time.perf_counter()
        return FrameSegments(fmap, masks, ss, {"features": 1e3 * (t1 - t0), "segments": 1e3 * (t2 - t1),
                                                "supersegments": 1e3 * (t3 - t2)}, kept)

    def vlad(self, frame: FrameSegments) -> np.ndarray:
        """``[S, K*D] float32`` VLAD of each SuperSegment."""
        t0 = time.perf_counter()
        v = VladAggregator(self.models.vocab)(frame.fmap.features, frame.supersegments.masks)
        frame.ms["vlad"] = 1e3 * (time.perf_counter() - t0)
        return v

    def project(self, vlad: np.ndarray, frame: FrameSegments | None = None) -> np.ndarray:
        """``[S, K*D] float32`` VLADs -> ``[S, d] float16`` descriptors (PCA where the models have one)."""
        t0 = time.perf_counter()
        pca = self.models.pca
        out = pca(vlad) if pca is not None else vlad.astype(np.float16)
        if frame is not None:
            frame.ms["pca"] = 1e3 * (time.perf_counter() - t0)
        return out

    def describe(self, frame: FrameSegments) -> np.ndarray:
        return self.project(self.vlad(frame), frame)


def make_pipeline(settings: Settings | dict, engines_dir=None, size: tuple[int, int] | None = None,
                  threads: int | None = None, extractor: DenseFeatureExtractor | None = None,
                  manifest: EngineManifest | None = None, providers=("cpu",),
                  models: Models | None = None) -> FramePipeline:
    """The one way to assemble a pipeline: ``settings`` and the fitted ``models`` (None: not fitted
    yet) on a DINOv2 engine session, which is ``extractor`` (already open), else opened on
    ``manifest``, else on the engine of ``size`` ([w, h], None: any) in ``engines_dir`` (default:
    where build-engines puts them)."""
    if extractor is None:
        manifest = manifest or find_engine(engines_dir or default_engines_dir(), "dinov2", size)
        extractor = DenseFeatureExtractor(manifest, providers=providers, threads=threads)
    return FramePipeline(extractor, settings, engines_dir, models)

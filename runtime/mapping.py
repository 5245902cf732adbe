"""Step: a folder of map images -> one MapBundle file.

``main(images, out, pipeline)`` runs in three streamed passes, so memory holds one
image's features at a time plus the fitting samples and the final descriptors:

1. each image -> features + base segments, written to a work folder beside the output
   (``.<name>.work/``, one ``.npz`` per image, atomically) -- a killed build resumes here;
2. the vocabulary (k-means on sampled patch features) and the PCA (on sampled SuperSegment
   VLADs) are fitted on the map;
3. each image -> SuperSegment descriptors, then the bundle is written atomically and the work
   folder removed. Unreadable images are skipped with a one-line reason.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from segvlad_edge import __version__
from segvlad_edge.runtime.bundle import FORMAT_VERSION, MapBundle
from segvlad_edge.runtime.features import FeatureMap
from segvlad_edge.runtime.images import ImageError, load_image
from segvlad_edge.runtime.pca import Pca
from segvlad_edge.runtime.pipeline import FramePipeline, FrameSegments
from segvlad_edge.runtime.supersegments import SuperSegments
from segvlad_edge.runtime.vlad import Vocabulary

log = logging.getLogger(__name__)

MAX_VOCAB_PATCHES = 100_000
MAX_PCA_ROWS = 20_000


class MapBuildError(RuntimeError):
    """The map cannot be built (no usable images, unwritable target, ...)."""


@dataclass
class BuildSummary:
    images: int
    segments: int
    bytes: int
    seconds: float
    skipped: list = field(default_factory=list)     # [(name, reason)]
    stage_ms: dict = field(default_factory=dict)     # mean ms per image per stage


def _work_file(work: Path, name: str) -> Path:
    return work / (hashlib.sha1(name.encode()).hexdigest()[:20] + ".npz")


def _load_frame(path: Path, order: int) -> FrameSegments:
    with np.load(path, allow_pickle=False) as z:
        feats, masks, grid = z["features"].astype(np.float32), z["masks"], tuple(int(g) for g in z["grid"])
    return FrameSegments(FeatureMap(feats, grid), masks, SuperSegments.from_masks(masks, grid, order))


def _save_frame(path: Path, frame: FrameSegments) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, features=frame.fmap.features.astype(np.float16), masks=frame.masks,
             grid=np.asarray(frame.fmap.grid, np.int32))
    os.replace(tmp, path)


def main(images: list[tuple[str, Path]], out: str | os.PathLike, pipeline: FramePipeline,
         metadata: dict[str, dict] | None = None, keep_work: bool = False, progress: bool = True) -> BuildSummary:
    """``images``: [(name stored in the bundle, file path)]; ``metadata``: name -> {gps, pose, label, ...}."""
    t_start = time.perf_counter()
    out = Path(out)
    if not images:
        raise MapBuildError("no images to build a map from")
    if not out.parent.is_dir():
        raise MapBuildError(f"output folder {out.parent} does not exist")
    work = out.parent / f".{out.name}.work"
    work.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    order = pipeline.conf["order"]
    kept, skipped, stage_ms = [], [], {}

    # 1. features + segments per image (resumable)
    for name, path in tqdm(images, desc="features+segments", unit="img", disable=not progress):
        wf = _work_file(work, name)
        if wf.is_file():
            kept.append((name, wf))
            continue
        try:
            image = load_image(path)
        except ImageError as e:
            skipped.append((name, str(e)))
            continue
        frame = pipeline.segment(image)
        for k, v in frame.ms.items():
            stage_ms[k] = stage_ms.get(k, 0.0) + v
        _save_frame(wf, frame)
        kept.append((name, wf))
    if not kept:
        raise MapBuildError(f"none of the {len(images)} images could be read: " + "; ".join(r for _, r in skipped[:3]))

    # 2. vocabulary and PCA, fitted on the map
    fit_models(pipeline, lambda: (_load_frame(wf, order) for _, wf in kept), len(kept), rng, progress)

    # 3. descriptors
    descs, counts, labels = [], [], []
    for _, wf in tqdm(kept, desc="descriptors", unit="img", disable=not progress):
        frame = _load_frame(wf, order)
        d = pipeline.describe(frame)
        for k in ("vlad", "pca"):
            stage_ms[k] = stage_ms.get(k, 0.0) + frame.ms[k]
        descs.append(d)
        counts.append(len(d))
        labels.append(frame.label_map())
    bundle = make_bundle(pipeline, [n for n, _ in kept], descs, counts, labels, metadata or {})
    size = bundle.write(out)
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)
    n = len(kept)
    return BuildSummary(n, int(sum(counts)), size, time.perf_counter() - t_start, skipped,
                        {k: v / n for k, v in stage_ms.items()})


def _sample_rows(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return x[rng.choice(len(x), min(n, len(x)), replace=False)] if len(x) else x


def fit_models(pipeline: FramePipeline, frames: Callable[[], Iterable[FrameSegments]], n_images: int,
               rng: np.random.Generator, progress: bool = False) -> None:
    """Set ``pipeline.vocab`` (k-means on at most MAX_VOCAB_PATCHES sampled patch features) and,
    unless ``pipeline.conf["pca_dims"]`` is None, ``pipeline.pca`` (on at most MAX_PCA_ROWS sampled
    SuperSegment VLADs). ``frames()`` streams the map's frames; it is called once per fit."""
    conf = pipeline.conf
    per_image = max(1, MAX_VOCAB_PATCHES // n_images)
    sample = [_sample_rows(f.fmap.features, per_image, rng) for f in frames()]
    pipeline.vocab = Vocabulary.fit(np.concatenate(sample), conf["vocab_k"])
    del sample
    if conf["pca_dims"]:
        per_image = max(1, MAX_PCA_ROWS // n_images)
        rows = [_sample_rows(pipeline.vlad(f), per_image, rng)
                for f in tqdm(frames(), total=n_images, desc="fit PCA", unit="img", disable=not progress)]
        pipeline.pca = Pca.fit(np.concatenate(rows), conf["pca_dims"], whiten=conf["whiten"])


def make_bundle(pipeline: FramePipeline, names: list[str], descs: list[np.ndarray], counts: list[int],
                labels: list[np.ndarray], metadata: dict[str, dict]) -> MapBundle:
    conf, m = pipeline.conf, pipeline.extractor.manifest
    dims = pipeline.pca.dims if pipeline.pca is not None else pipeline.vocab.centers.size
    arrays = {
        "descriptors": np.concatenate(descs) if descs else np.zeros((0, dims), np.float16),
        "segments_per_image": np.asarray(counts, np.int32),
        "segment_labels": np.stack(labels).astype(np.uint8),
        "vocab_centers": pipeline.vocab.centers,
    }
    if pipeline.pca is not None:
        arrays.update(pca_mean=pipeline.pca.mean, pca_components=pipeline.pca.components.astype(np.float16),
                      pca_scale=pipeline.pca.scale)
    meta = {
        "format": "segvlad-edge map", "format_version": FORMAT_VERSION, "created_by": f"segvlad-edge {__version__}",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "engine": {**m.feature_signature(), "patch_grid": list(m.model["patch_grid"]), "file": m.file,
                   "source_name": m.source.get("name")},
        "settings": {**{k: v for k, v in conf.items() if k != "pca_dims"}, "pca_dims": int(dims),
                     "pca": pipeline.pca is not None},
        "fit": {"source": "map", "images": len(names)},
        "images": [{"name": n, **({"meta": metadata[n]} if n in metadata else {})} for n in names],
    }
    return MapBundle(meta, arrays)

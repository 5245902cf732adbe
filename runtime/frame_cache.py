"""Frame caching for map and domain builds (pass 1): each image's features and base segments in a
work file, ``<work>/<sha256 of image bytes + frame key>.npz`` (``features [P, C] float16``,
``masks [S, P] bool``, ``grid [2] int32``), written atomically so that a killed build resumes
with the work files it finished.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from segvlad_edge.files import atomic_write
from segvlad_edge.runtime.steps.features import FeatureMap
from segvlad_edge.runtime.fitting import FitError
from segvlad_edge.runtime.inputs.images import ImageError, decode_image, read_image_bytes
from segvlad_edge.runtime.pipeline import FramePipeline, FrameSegments, grow

def frame_key(pipeline: FramePipeline) -> bytes:
    """What a frame's features and segments depend on besides the image: the engine's feature
    signature and the segmenter settings."""
    c = pipeline.conf
    facts = {"engine": pipeline.extractor.manifest.feature_signature(), "segmenter": c.segmenter,
             "segmenter_conf": c.segmenter_conf}
    return json.dumps(facts, sort_keys=True).encode()


def work_file(work: Path, image: bytes, key: bytes) -> Path:
    """Work file of one image: named by the sha256 of its contents and of ``key``, so a work
    folder left by another build (other images under the same names, another engine or
    segmenter) is never reused for this one."""
    return work / (hashlib.sha256(key + b"\0" + image).hexdigest()[:32] + ".npz")


def _read_work_file(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """``features [P, C] float32``, ``masks [S, P] bool``, ``grid (h, w)`` of one work file; raises
    ValueError/OSError (and zipfile's errors) if it is truncated or malformed."""
    with np.load(path, allow_pickle=False) as z:
        feats, masks, grid = z["features"].astype(np.float32), z["masks"], tuple(int(g) for g in z["grid"])
    if len(grid) != 2 or feats.ndim != 2 or feats.shape[0] != grid[0] * grid[1] or masks.dtype != bool \
            or masks.ndim != 2 or masks.shape[1] != feats.shape[0]:
        raise ValueError(f"{getattr(path, 'name', 'work file')}: malformed work file")
    return feats, masks, grid


def load_features(path: Path) -> np.ndarray:
    """``[P, C] float32`` patch features of one work file."""
    with np.load(path, allow_pickle=False) as z:
        return z["features"].astype(np.float32)


def load_frame(path: Path, conf) -> FrameSegments:
    """A work file -> the frame with its SuperSegments grown by the settings ``conf``."""
    feats, masks, grid = _read_work_file(path)
    ss, kept = grow(masks, grid, conf)
    return FrameSegments(FeatureMap(feats, grid), masks, ss, kept=kept)


def reusable(path: Path) -> bool:
    """A work file from an earlier run that reads back whole (a truncated one is redone)."""
    if not path.is_file():
        return False
    try:
        _read_work_file(path)
        return True
    except Exception:              # any way a cut or garbled .npz fails to read: redo it
        path.unlink(missing_ok=True)
        return False


def save_frame(path: Path, frame: FrameSegments) -> None:
    """Write ``frame``'s features (as float16), base masks and grid to the work file ``path``, atomically."""
    with atomic_write(path) as f:
        np.savez(f, features=frame.fmap.features.astype(np.float16), masks=frame.masks,
                 grid=np.asarray(frame.fmap.grid, np.int32))


def extract_frames(images: list[tuple[str, Path]], work: Path, pipeline: FramePipeline, progress: bool = True):
    """Features + segments of each image into ``work/`` (reusing the work files of an earlier,
    interrupted run of the same images, engine and segmenter). Returns ``kept [(name, work
    file)]``, ``skipped [(name, reason)]``, ``stage_ms {stage: total ms}``."""
    kept, skipped, stage_ms = [], [], {}
    work.mkdir(parents=True, exist_ok=True)
    key = frame_key(pipeline)
    for name, path in tqdm(images, desc="features+segments", unit="img", disable=not progress):
        try:
            data = read_image_bytes(path)
            wf = work_file(work, data, key)
            if reusable(wf):
                kept.append((name, wf))
                continue
            image = decode_image(data, name)
        except ImageError as e:
            skipped.append((name, str(e)))
            continue
        frame = pipeline.segment(image)
        for k, v in frame.ms.items():
            stage_ms[k] = stage_ms.get(k, 0.0) + v
        save_frame(wf, frame)
        kept.append((name, wf))
    if not kept:
        raise FitError(f"none of the {len(images)} images could be read: " + "; ".join(r for _, r in skipped[:3]))
    return kept, skipped, stage_ms

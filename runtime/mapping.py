"""Step: a folder of map images -> one MapBundle file.

``build_map(images, out, pipeline)`` runs in three streamed passes, so memory holds one
image's features at a time plus the fitting samples and the final descriptors (the spatial
verification codes, 96 KiB per image, go to a temporary file and are streamed into the bundle):

1. each image -> features + base segments, written to a work folder beside the output
   (``.<name>.work/``, one ``.npz`` per image, atomically; ``runtime/frame_cache.py``) -- a
   killed build resumes here;
2. the models (vocabulary and PCA, ``runtime/models.py``): fitted on the map, or the domain fit
   beside the engine (``fit="domain"``, or ``"auto"`` for maps under 50 images; ``runtime/fitting.py``);
   the pipeline describes with them from here on;
3. each image -> SuperSegment descriptors; map images localised with their place held back
   calibrate the confidence (runtime/steps/confidence.py); the search index is built and stored in the
   bundle (runtime/steps/index.py); the bundle is written atomically and the work folder removed.
   Unreadable images are skipped with a one-line reason.

Passes 1 and 3 run as Ray tasks with ``ray=RayConf(...)`` (runtime/ray_build.py); appending to or
removing from an existing map is runtime/map_edit.py.
"""
from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from segvlad_edge import __version__
from segvlad_edge.files import check_output
from segvlad_edge.runtime import ray_build
from segvlad_edge.runtime.mapfiles.bundle import FORMAT_VERSION, MapBundle, check_name, rows_on_disk
from segvlad_edge.runtime.steps.confidence import held_back_negatives
from segvlad_edge.runtime.fitting import FitError, fit_models, resolve_fit
from segvlad_edge.runtime.frame_cache import extract_frames, load_features, load_frame
from segvlad_edge.runtime.steps.index import store_index
from segvlad_edge.runtime.localizer import Localizer
from segvlad_edge.runtime.models import Models
from segvlad_edge.runtime.pipeline import FramePipeline
from segvlad_edge.runtime.steps.verification import PatchCoder

MAX_CODER_PATCHES = 50_000


class MapBuildError(FitError):
    """The map cannot be built (no usable images, unwritable target, ...)."""


@dataclass
class BuildSummary:
    images: int
    segments: int
    bytes: int
    seconds: float
    skipped: list = field(default_factory=list)     # [(name, reason)]
    stage_ms: dict = field(default_factory=dict)     # mean ms per image per stage
    fit: dict = field(default_factory=dict)          # the bundle's "fit" record
    models: Models | None = None                     # the models the map was described with


def build_map(images: list[tuple[str, Path]], out: str | os.PathLike, pipeline: FramePipeline,
         metadata: dict[str, dict] | None = None, keep_work: bool = False, progress: bool = True,
         fit: str = "auto", domain: Path | None = None, images_root: str | None = None,
         inputs: tuple = (), ray: ray_build.RayConf | None = None, index_kind: str = "auto") -> BuildSummary:
    """``images``: [(name stored in the bundle, file path)]; ``metadata``: name -> {gps, pose, label, ...};
    ``fit``: "auto" | "map" | "domain" (where the vocabulary and PCA come from); ``domain``: a
    domain file other than the one beside the engine; ``images_root``: the map images' folder,
    recorded so that explanations can show them; ``inputs``: other files the build reads (a
    metadata CSV). ``out`` may not be any input: checked before any work. ``ray``: run the
    per-image passes as Ray tasks (runtime/ray_build.py). ``index_kind``: the stored search index
    (runtime/steps/index.py; "auto" chooses by map size)."""
    t_start = time.perf_counter()
    out = Path(out)
    if not images:
        raise MapBuildError("no images to build a map from")
    for name, _ in images:
        check_name(name, "build-map")
    if not out.parent.is_dir():
        raise MapBuildError(f"output folder {out.parent} does not exist")
    if out.is_dir():
        raise MapBuildError(f"{out} is a folder; give a file name for the bundle")
    inputs = [p for _, p in images] + [p for p in (domain, *inputs) if p is not None]
    check_output(out, inputs)
    found = resolve_fit(pipeline.extractor.manifest, pipeline.conf, fit, domain, len(images))
    work = out.parent / f".{out.name}.work"
    work.mkdir(exist_ok=True)

    kept, skipped, stage_ms = (extract_frames(images, work, pipeline, progress) if ray is None            # 1
                               else ray_build.extract_frames(images, work, pipeline, ray, progress))
    if found is None:                                                                          # 2
        found = (fit_models(pipeline.conf, lambda: (load_frame(wf, pipeline.conf) for _, wf in kept), len(kept),
                            np.random.default_rng(0), progress), {"source": "map", "images": len(kept)})
    models, fit_ref = found
    pipeline = pipeline.with_models(models)
    descs, counts, labels, ms = (describe_frames(kept, pipeline, progress) if ray is None                 # 3
                                 else ray_build.describe_frames(kept, pipeline, ray, progress))
    stage_ms.update(ms)
    bundle = make_bundle(pipeline, [n for n, _ in kept], descs, counts, labels, metadata or {}, fit_ref, index_kind)
    if images_root:
        bundle.meta["images_root"] = str(images_root)
    with verification_arrays(lambda: (load_features(wf) for _, wf in kept), bundle.arrays["segment_labels"].shape,
                             pipeline.conf, np.random.default_rng(0), work) as verify:
        bundle.arrays.update(verify)
        bundle.arrays["calib_negatives"] = held_back_negatives(Localizer(bundle, pipeline))
        size = bundle.write(out, inputs)
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)
    n = len(kept)
    return BuildSummary(n, int(sum(counts)), size, time.perf_counter() - t_start, skipped,
                        {k: v / n for k, v in stage_ms.items()}, fit_ref, models)


@contextmanager
def verification_arrays(features: Callable[[], Iterable[np.ndarray]], shape: tuple[int, int], conf: dict,
                        rng: np.random.Generator, folder: str | os.PathLike) -> Iterator[dict[str, np.ndarray]]:
    """``features()`` streams the ``[P, C] float32`` patch features of each of ``shape = (I, P)``
    map images (called twice) -> the bundle's spatial verification data: ``verify_mean [C]``,
    ``verify_components [d, C]`` float32 (the patch coder, fitted on at most MAX_CODER_PATCHES
    sampled patches) and ``verify_codes [I, P, d] float16`` (runtime/steps/verification.py),
    coded image by image into a nameless temporary file in ``folder`` (``rows_on_disk``: about
    96 KiB per image, 9.4 GB at 100k images, never all in RAM), freed once the block has ended
    and the codes are no longer used."""
    per_image = max(1, MAX_CODER_PATCHES // max(shape[0], 1))
    sample = np.concatenate([f[rng.choice(len(f), min(per_image, len(f)), replace=False)] for f in features()])
    coder = PatchCoder.fit(sample, min(int(conf["verify_dims"]), sample.shape[1] - 1))
    codes = (coder.codes(f)[None] for f in features())
    with rows_on_disk(folder, codes, (shape[1], len(coder.components)), np.float16) as stored:
        yield {"verify_mean": coder.mean, "verify_components": coder.components, "verify_codes": stored}


def describe_frames(kept: list[tuple[str, Path]], pipeline: FramePipeline, progress: bool = True):
    """Pass 3: each work file -> ``descs [[S_i, d] float16]``, ``counts [S_i]``, ``labels [[P] uint8]``,
    ``stage_ms {vlad, pca: total ms}``, in the order of ``kept``."""
    descs, counts, labels, stage_ms = [], [], [], {}
    for _, wf in tqdm(kept, desc="descriptors", unit="img", disable=not progress):
        frame = load_frame(wf, pipeline.conf)
        d = pipeline.describe(frame)
        for k in ("vlad", "pca"):
            stage_ms[k] = stage_ms.get(k, 0.0) + frame.ms[k]
        descs.append(d)
        counts.append(len(d))
        labels.append(frame.label_map())
    return descs, counts, labels, stage_ms


def make_bundle(pipeline: FramePipeline, names: list[str], descs: list[np.ndarray], counts: list[int],
                labels: list[np.ndarray], metadata: dict[str, dict], fit_ref: dict, index_kind: str = "auto") -> MapBundle:
    """The bundle of a map's descriptors; it holds the vocabulary/PCA only when fitted on the map, and
    the search index of ``index_kind``."""
    conf, m = pipeline.conf, pipeline.extractor.manifest
    arrays = {
        "descriptors": np.concatenate(descs) if descs else np.zeros((0, pipeline.models.dims), np.float16),
        "segments_per_image": np.asarray(counts, np.int32),
        "segment_labels": np.stack(labels).astype(np.uint8),
    }
    if fit_ref["source"] == "map":
        arrays.update(pipeline.models.to_arrays())
    meta = {
        "format": "segvlad-edge map", "format_version": FORMAT_VERSION, "created_by": f"segvlad-edge {__version__}",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "engine": {**m.feature_signature(), "patch_grid": list(m.model["patch_grid"]), "file": m.file,
                   "source_name": m.source.get("name")},
        "settings": conf.to_json(),
        "fit": fit_ref,
        "images": [{"name": n, **({"meta": metadata[n]} if n in metadata else {})} for n in names],
    }
    bundle = MapBundle(meta, arrays)
    store_index(bundle, index_kind)     # the search structure goes into the bundle: loading reads it
    return bundle

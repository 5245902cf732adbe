"""Map building on Ray: the per-image passes of ``runtime/mapping.py`` as Ray tasks.

``build-map ... --ray [ADDRESS]`` runs pass 1 (features + segments) and pass 3 (SuperSegment
descriptors) as Ray tasks over chunks of ``RayConf.chunk`` images; the vocabulary/PCA fit
(pass 2) and the bundle writer stay on the driver. Results stream back as tasks finish
(``ray.wait``, at most ``2 x cluster CPUs`` chunks in flight), so the driver holds a bounded
number of chunks; pass 1 results go into the same per-image work files as a local build (a
killed build resumes from them, locally or on Ray). Workers receive image *bytes* and work-file
bytes from the driver (no shared image storage needed); the engines folder must be at the same
path on every node (its manifest and sha256 are checked there). Descriptors equal the local
build's bit for bit: the same engine, settings, thread count and code run on each image.

Needs the ``[ray]`` extra; ADDRESS is anything ``ray.init`` takes ("auto" for the cluster this
machine belongs to, ``ray://HOST:10001`` for a remote one); without it a local Ray instance is
started for the build.
"""
from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from segvlad_edge.errors import require
from segvlad_edge.runtime.steps.features import FeatureMap
from segvlad_edge.runtime.fitting import FitError
from segvlad_edge.runtime.frame_cache import frame_key, load_frame, reusable, save_frame, work_file
from segvlad_edge.runtime.inputs.images import ImageError, decode_image, read_image_bytes
from segvlad_edge.runtime.models import Models
from segvlad_edge.runtime.pipeline import FramePipeline, FrameSegments, make_pipeline

_PIPELINES: dict[str, FramePipeline] = {}          # per Ray worker process: engine sessions are reused


@dataclass
class RayConf:
    """``address``: None = start a local instance; ``threads``: onnxruntime threads per task (the
    local build's, so that features match); ``chunk``: images per task; ``num_cpus``: the local
    instance's CPUs (None: all)."""

    address: str | None = None
    threads: int | None = None
    chunk: int = 16
    num_cpus: int | None = None


def _ray():
    return require("ray", "ray", "build-map --ray", FitError)


def _init(conf: RayConf):
    ray = _ray()
    if not ray.is_initialized():
        kw = {"address": conf.address} if conf.address else {"num_cpus": conf.num_cpus, "include_dashboard": False}
        ray.init(**kw, log_to_driver=False, configure_logging=False)
    return ray


def _worker_pipeline(key: str) -> FramePipeline:
    """The pipeline described by ``key`` (manifest path, settings, threads), made once per worker."""
    if key not in _PIPELINES:
        from segvlad_edge.engines.manifest import load_manifest

        spec = json.loads(key)
        m = load_manifest(spec["manifest"])
        _PIPELINES[key] = make_pipeline(spec["conf"], m.path.parent, threads=spec["threads"], manifest=m)
    return _PIPELINES[key]


def _segment_chunk(key: str, items: list[tuple[str, str, bytes]]) -> list[tuple]:
    """Pass 1 on a worker: ``[(name, file name, image bytes)]`` -> ``[(name, (features [P, C] float16,
    masks [S, P] bool, grid) | None, ms | reason)]``."""
    pipe = _worker_pipeline(key)
    out = []
    for name, file_name, data in items:
        try:
            image = decode_image(data, file_name)
        except ImageError as e:
            out.append((name, None, str(e)))
            continue
        frame = pipe.segment(image)
        out.append((name, (frame.fmap.features.astype(np.float16), frame.masks, frame.fmap.grid), frame.ms))
    return out


def _describe_chunk(key: str, models: Models, items: list[bytes]) -> list[tuple]:
    """Pass 3 on a worker: work-file bytes -> ``[(descriptors [S, d] float16, labels [P] uint8, ms)]``
    with the driver's ``models`` exactly as it projects with them (float32 PCA, where the bundle
    stores float16)."""
    pipe = _worker_pipeline(key).with_models(models)
    out = []
    for data in items:
        frame = load_frame(io.BytesIO(data), pipe.conf)
        d = pipe.describe(frame)
        out.append((d, frame.label_map(), {k: frame.ms[k] for k in ("vlad", "pca")}))
    return out


def blas_threads() -> str:
    """This process's BLAS thread count as OpenBLAS/OpenMP read it (environment, else all cores)."""
    return os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS") or str(os.cpu_count() or 1)


def _stream(ray, fn, chunks: list, args: tuple, progress: bool, desc: str, total: int):
    """Submit ``fn(*args, chunk)`` per chunk, at most 2 x cluster CPUs in flight; yield
    ``(chunk index, result)`` as each finishes. Tasks run numpy's BLAS with the driver's thread
    count (Ray's default is 1): matrix products split by thread count round differently."""
    n = blas_threads()
    remote = ray.remote(fn).options(runtime_env={"env_vars": {"OPENBLAS_NUM_THREADS": n, "OMP_NUM_THREADS": n,
                                                              "MKL_NUM_THREADS": n}})
    limit = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
    pending, queue = {}, list(enumerate(chunks))
    with tqdm(total=total, desc=desc, unit="img", disable=not progress) as bar:
        while queue or pending:
            while queue and len(pending) < limit:
                i, chunk = queue.pop(0)
                pending[remote.remote(*args, chunk)] = (i, len(chunk))
            done, _ = ray.wait(list(pending), num_returns=1)
            i, n = pending.pop(done[0])
            yield i, ray.get(done[0])
            bar.update(n)


def _key(pipeline: FramePipeline, conf: RayConf) -> str:
    return json.dumps({"manifest": str(pipeline.extractor.manifest.path), "conf": pipeline.conf.to_json(),
                       "threads": conf.threads}, sort_keys=True)


def extract_frames(images: list[tuple[str, Path]], work: Path, pipeline: FramePipeline, conf: RayConf,
                   progress: bool = True):
    """Pass 1 on Ray; same contract as ``frame_cache.extract_frames`` (work files, kept, skipped, stage_ms)."""
    ray = _init(conf)
    work.mkdir(parents=True, exist_ok=True)
    todo, skipped, stage_ms, files, key = [], {}, {}, {}, frame_key(pipeline)
    for name, path in images:                   # work files keyed by content + engine + segmenter, as locally
        try:
            data = read_image_bytes(path)
        except ImageError as e:
            skipped[name] = str(e)
            continue
        files[name] = work_file(work, data, key)
        if not reusable(files[name]):
            todo.append((name, Path(path).name, data))
    chunks = [todo[i:i + conf.chunk] for i in range(0, len(todo), conf.chunk)]
    for _, result in _stream(ray, _segment_chunk, chunks, (ray.put(_key(pipeline, conf)),), progress,
                             "features+segments (ray)", len(todo)):
        for name, data, info in result:
            if data is None:
                skipped[name] = info
                continue
            feats, masks, grid = data
            save_frame(files[name], FrameSegments(FeatureMap(feats, tuple(grid)), masks, None))
            for k, v in info.items():
                stage_ms[k] = stage_ms.get(k, 0.0) + v
    kept = [(n, files[n]) for n, _ in images if n not in skipped]
    if not kept:
        raise FitError(f"none of the {len(images)} images could be read: " + "; ".join(list(skipped.values())[:3]))
    return kept, [(n, skipped[n]) for n, _ in images if n in skipped], stage_ms


def describe_frames(kept: list[tuple[str, Path]], pipeline: FramePipeline, conf: RayConf, progress: bool = True):
    """Pass 3 on Ray; same contract as ``mapping.describe_frames`` (descs, counts, labels, stage_ms),
    in the order of ``kept``."""
    ray = _init(conf)
    chunks = [kept[i:i + conf.chunk] for i in range(0, len(kept), conf.chunk)]
    args = (ray.put(_key(pipeline, conf)), ray.put(pipeline.models))
    results = [None] * len(chunks)
    for i, result in _stream(ray, _describe_chunk, [[wf.read_bytes() for _, wf in c] for c in chunks], args,
                             progress, "descriptors (ray)", len(kept)):
        results[i] = result
    descs, counts, labels, stage_ms = [], [], [], {}
    for d, lab, ms in (r for chunk in results for r in chunk):
        descs.append(d)
        counts.append(len(d))
        labels.append(lab)
        for k, v in ms.items():
            stage_ms[k] = stage_ms.get(k, 0.0) + v
    return descs, counts, labels, stage_ms

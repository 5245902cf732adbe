"""Vocabulary and PCA: fitted on the map itself, or once on a broad image set (a domain fit).

A domain fit is the AnyLoc way of shipping vocabularies: ``build-domain`` fits the k-means
vocabulary and the PCA on a broad image set once and keeps them beside the engine as
``<engine file>.<settings tag>.domain`` (the map-bundle container, format "segvlad-edge
domain"). Bundles built with it store only a reference (file name + sha256 of its arrays),
which keeps them small and lets a 20-image map use a vocabulary fitted on many more segments.
``resolve_fit`` decides per build: ``auto`` fits on the map when it has at least
``MIN_MAP_FIT_IMAGES`` images (measured: a map-fitted vocabulary/PCA beats a domain fit from
other image sets by 2-20 points of Recall@1, ``benchmarks/place_recognition.py``) and uses the
domain fit for smaller maps when one exists for the engine and settings.

Shared by map building and domain fitting: ``extract_frames`` (pass 1, per-image work files so
a killed build resumes) and ``fit_models`` (streamed fitting).
"""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from segvlad_edge import __version__
from segvlad_edge.errors import SegvladError
from segvlad_edge.files import atomic_write, check_output
from segvlad_edge.runtime.bundle import BundleError, check_models, read_arrays, write_arrays
from segvlad_edge.runtime.features import FeatureMap
from segvlad_edge.runtime.images import ImageError, decode_image, read_image_bytes
from segvlad_edge.runtime.pca import Pca
from segvlad_edge.runtime.pipeline import FramePipeline, FrameSegments, grow
from segvlad_edge.runtime.vlad import Vocabulary

DOMAIN_FORMAT = "segvlad-edge domain"
FIT_CHOICES = ("auto", "map", "domain")
MIN_MAP_FIT_IMAGES = 50
MAX_VOCAB_PATCHES = 100_000
MAX_PCA_ROWS = 20_000


class FitError(SegvladError, RuntimeError):
    """No usable images, or no domain fit where one was asked for."""


# ---------------------------------------------------------------------- pass 1: frames
def frame_key(pipeline: FramePipeline) -> bytes:
    """What a frame's features and segments depend on besides the image: the engine's feature
    signature and the segmenter settings."""
    c = pipeline.conf
    facts = {"engine": pipeline.extractor.manifest.feature_signature(), "segmenter": c.segmenter,
             "segmenter_conf": c.segmenter_conf}
    return json.dumps(facts, sort_keys=True).encode()


def _work_file(work: Path, image: bytes, key: bytes) -> Path:
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


def _reusable(path: Path) -> bool:
    """A work file from an earlier run that reads back whole (a truncated one is redone)."""
    if not path.is_file():
        return False
    try:
        _read_work_file(path)
        return True
    except Exception:              # any way a cut or garbled .npz fails to read: redo it
        path.unlink(missing_ok=True)
        return False


def _save_frame(path: Path, frame: FrameSegments) -> None:
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
            wf = _work_file(work, data, key)
            if _reusable(wf):
                kept.append((name, wf))
                continue
            image = decode_image(data, name)
        except ImageError as e:
            skipped.append((name, str(e)))
            continue
        frame = pipeline.segment(image)
        for k, v in frame.ms.items():
            stage_ms[k] = stage_ms.get(k, 0.0) + v
        _save_frame(wf, frame)
        kept.append((name, wf))
    if not kept:
        raise FitError(f"none of the {len(images)} images could be read: " + "; ".join(r for _, r in skipped[:3]))
    return kept, skipped, stage_ms


# ---------------------------------------------------------------------- fitting
def _sample_rows(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return x[rng.choice(len(x), min(n, len(x)), replace=False)] if len(x) else x


def fit_models(pipeline: FramePipeline, frames: Callable[[], Iterable[FrameSegments]], n_images: int,
               rng: np.random.Generator, progress: bool = False) -> None:
    """Set ``pipeline.vocab`` (k-means on at most MAX_VOCAB_PATCHES sampled patch features) and,
    unless ``pipeline.conf.pca_dims`` is None, ``pipeline.pca`` (on at most MAX_PCA_ROWS sampled
    SuperSegment VLADs). ``frames()`` streams the frames; it is called once per fit. Raises
    FitError when the frames hold too few patches or SuperSegments to fit on."""
    conf = pipeline.conf
    per_image = max(1, MAX_VOCAB_PATCHES // n_images)
    sample = np.concatenate([_sample_rows(f.fmap.features, per_image, rng) for f in frames()])
    if len(sample) < conf.vocab_k:
        raise FitError(f"{len(sample)} patch features are too few for a {conf.vocab_k}-word vocabulary; "
                       "use more images or a domain fit")
    pipeline.vocab = Vocabulary.fit(sample, conf.vocab_k)
    del sample
    if conf.pca_dims:
        per_image = max(1, MAX_PCA_ROWS // n_images)
        rows = np.concatenate([_sample_rows(pipeline.vlad(f), per_image, rng)
                               for f in tqdm(frames(), total=n_images, desc="fit PCA", unit="img",
                                             disable=not progress)])
        if len(rows) < 2:
            raise FitError(f"{len(rows)} SuperSegment(s) are too few to fit a PCA; use more images, a domain fit "
                           "or --pca-dims 0")
        pipeline.pca = Pca.fit(rows, conf.pca_dims, whiten=conf.whiten)


def model_arrays(pipeline: FramePipeline) -> dict[str, np.ndarray]:
    """The fitted vocabulary (and PCA) as the arrays a bundle or domain file stores."""
    arrays = {"vocab_centers": pipeline.vocab.centers}
    if pipeline.pca is not None:
        p = pipeline.pca
        arrays.update(pca_mean=p.mean, pca_components=p.components.astype(np.float16), pca_scale=p.scale)
    return arrays


def set_models(pipeline: FramePipeline, arrays: dict[str, np.ndarray], with_pca: bool) -> None:
    pipeline.vocab = Vocabulary(arrays["vocab_centers"])
    pipeline.pca = Pca(arrays["pca_mean"], arrays["pca_components"], arrays["pca_scale"]) if with_pca else None


def models_sha256(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        h.update(name.encode() + b"\0" + np.ascontiguousarray(arrays[name]).tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------- domain files
def domain_path(pipeline: FramePipeline) -> Path:
    """Where the domain fit for this pipeline's engine and settings lives (beside the engine)."""
    c = pipeline.conf
    tag = f"{c.segmenter}-o{c.order}-k{c.vocab_k}-pca{c.pca_dims or 0}{'w' if c.whiten else ''}"
    m = pipeline.extractor.manifest
    return m.engine_path.parent / f"{m.file}.{tag}.domain"


def save_domain(pipeline: FramePipeline, sources: list[str], images: int, path: Path | None = None,
                inputs=()) -> tuple[Path, int]:
    """Write the pipeline's fitted vocabulary/PCA as the domain fit for its engine and settings
    (at ``path``, default: beside the engine; never over one of ``inputs``)."""
    path = Path(path or domain_path(pipeline))
    arrays = model_arrays(pipeline)
    meta = {"format": DOMAIN_FORMAT, "created_by": f"segvlad-edge {__version__}",
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "engine": pipeline.extractor.manifest.feature_signature(), "settings": pipeline.conf.fit_part(),
            "pca": pipeline.pca is not None, "images": images, "sources": sources, "sha256": models_sha256(arrays)}
    return path, write_arrays(path, meta, arrays, inputs)


def load_domain(pipeline: FramePipeline, expect_sha256: str | None = None, path: Path | None = None) -> dict | None:
    """Set the pipeline's vocabulary/PCA from its domain file; returns the bundle's ``fit``
    reference, or None where no domain file exists. Raises BundleError if the file is corrupted,
    fitted for another engine or settings, or (``expect_sha256``) not the one a map was built with."""
    path = path or domain_path(pipeline)
    if not path.is_file():
        return None
    meta, arrays = read_arrays(path, "domain fit")
    if meta.get("format") != DOMAIN_FORMAT:
        raise BundleError(f"{path}: a {meta.get('format')!r} file, not a domain fit")
    if meta.get("engine") != pipeline.extractor.manifest.feature_signature():
        raise BundleError(f"{path}: fitted on features of another engine; rebuild it with `segvlad-edge build-domain`")
    if meta.get("settings") != pipeline.conf.fit_part():
        raise BundleError(f"{path}: fitted for settings {meta.get('settings')}, not {pipeline.conf.fit_part()}")
    with_pca = pipeline.conf.pca_dims is not None
    if meta.get("pca") is not with_pca:
        raise BundleError(f"{path}: PCA flag {meta.get('pca')!r} disagrees with its settings")
    check_models(arrays, pipeline.conf, None, path)
    sha = models_sha256(arrays)
    if sha != meta.get("sha256"):
        raise BundleError(f"{path}: contents do not match its recorded sha256: corrupted")
    if expect_sha256 is not None and sha != expect_sha256:
        raise BundleError(f"{path}: not the domain fit this map was built with (sha256 {sha[:12]} vs "
                          f"{expect_sha256[:12]}); copy the map's domain file beside the engine or rebuild the map")
    set_models(pipeline, arrays, with_pca)
    return {"source": "domain", "file": path.name, "sha256": sha, "settings": meta["settings"],
            "images": meta.get("images"), "sources": meta.get("sources")}


def resolve_fit(pipeline: FramePipeline, fit: str, domain: Path | None = None, n_images: int = 0) -> dict | None:
    """``fit`` in FIT_CHOICES -> the domain reference (models set on the pipeline), or None when
    the models are to be fitted on the map. ``domain``: a domain file other than the one beside
    the engine (used whatever the map's size); ``n_images``: the map's size, for ``auto``."""
    if fit not in FIT_CHOICES:
        raise FitError(f"unknown fit {fit!r}; choose one of {', '.join(FIT_CHOICES)}")
    if fit == "map" or (fit == "auto" and domain is None and n_images >= MIN_MAP_FIT_IMAGES):
        return None
    path = Path(domain or domain_path(pipeline))
    ref = load_domain(pipeline, path=path)
    if ref is None and (fit == "domain" or domain is not None):
        raise FitError(f"no domain fit at {path}; make one with `segvlad-edge build-domain DIR ...` "
                       "or fit on the map (--fit map)")
    return ref


def build_domain(images: list[tuple[str, Path]], pipeline: FramePipeline, work: Path, sources: list[str],
         progress: bool = True, out: Path | None = None) -> tuple[Path, int, int, list]:
    """Step ``build-domain``: fit the vocabulary/PCA on ``images`` and write the domain file
    (``out``, default beside the engine). Returns (path, bytes, images used, skipped)."""
    if not images:
        raise FitError("no images to fit a domain vocabulary on")
    if out is not None:
        check_output(out, [p for _, p in images])
    kept, skipped, _ = extract_frames(images, work, pipeline, progress)
    fit_models(pipeline, lambda: (load_frame(wf, pipeline.conf) for _, wf in kept), len(kept), np.random.default_rng(0),
               progress)
    path, size = save_domain(pipeline, sources, len(kept), out, inputs=[p for _, p in images])
    return path, size, len(kept), skipped

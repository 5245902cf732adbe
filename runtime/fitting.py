"""Vocabulary and PCA: fitted on the map itself, or taken from a domain fit (``runtime/mapfiles/domain.py``).

``resolve_fit`` decides per build: ``auto`` fits on the map when it has at least
``MIN_MAP_FIT_IMAGES`` images (measured: a map-fitted vocabulary/PCA beats a domain fit from
other image sets by 2-20 points of Recall@1, ``benchmarks/place_recognition.py``) and uses the
domain fit for smaller maps when one exists for the engine and settings. ``fit_models`` is the
streamed fitting, shared by map building and ``build-domain``.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from segvlad_edge.engines.manifest import EngineManifest
from segvlad_edge.errors import SegvladError
from segvlad_edge.runtime.mapfiles.domain import domain_path, load_domain
from segvlad_edge.runtime.models import Models
from segvlad_edge.runtime.steps.pca import Pca
from segvlad_edge.runtime.pipeline import FrameSegments
from segvlad_edge.runtime.settings import Settings
from segvlad_edge.runtime.steps.vlad import VladAggregator, Vocabulary

FIT_CHOICES = ("auto", "map", "domain")
MIN_MAP_FIT_IMAGES = 50
MAX_VOCAB_PATCHES = 100_000
MAX_PCA_ROWS = 20_000


class FitError(SegvladError, RuntimeError):
    """No usable images, or no domain fit where one was asked for."""


def _sample_rows(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return x[rng.choice(len(x), min(n, len(x)), replace=False)] if len(x) else x


def fit_models(settings: Settings, frames: Callable[[], Iterable[FrameSegments]], n_images: int,
               rng: np.random.Generator, progress: bool = False) -> Models:
    """The vocabulary (k-means on at most MAX_VOCAB_PATCHES sampled ``[P, C] float32`` patch
    features) and, unless ``settings.pca_dims`` is None, the PCA (on at most MAX_PCA_ROWS sampled
    ``[S, K*C] float32`` SuperSegment VLADs). ``frames()`` streams the frames; it is called once
    per fit; ``rng`` draws the samples and the k-means seed. Raises FitError when the frames hold too few patches or SuperSegments to fit on."""
    per_image = max(1, MAX_VOCAB_PATCHES // n_images)
    sample = np.concatenate([_sample_rows(f.fmap.features, per_image, rng) for f in frames()])
    if len(sample) < settings.vocab_k:
        raise FitError(f"{len(sample)} patch features are too few for a {settings.vocab_k}-word vocabulary; "
                       "use more images or a domain fit")
    vocab = Vocabulary.fit(sample, settings.vocab_k, seed=int(rng.integers(2 ** 31)))     # k-means seeds from rng too
    del sample
    if not settings.pca_dims:
        return Models(vocab)
    per_image = max(1, MAX_PCA_ROWS // n_images)
    vlad = VladAggregator(vocab)
    rows = np.concatenate([_sample_rows(vlad(f.fmap.features, f.supersegments.masks), per_image, rng)
                           for f in tqdm(frames(), total=n_images, desc="fit PCA", unit="img", disable=not progress)])
    if len(rows) < 2:
        raise FitError(f"{len(rows)} SuperSegment(s) are too few to fit a PCA; use more images, a domain fit "
                       "or --pca-dims 0")
    return Models(vocab, Pca.fit(rows, settings.pca_dims, whiten=settings.whiten))


def resolve_fit(manifest: EngineManifest, settings: Settings, fit: str, domain: Path | None = None,
                n_images: int = 0) -> tuple[Models, dict] | None:
    """``fit`` in FIT_CHOICES -> the domain fit's models and the bundle's reference to it, or
    None when the models are to be fitted on the map. ``domain``: a domain file other than the
    one beside the engine (used whatever the map's size); ``n_images``: the map's size, for ``auto``."""
    if fit not in FIT_CHOICES:
        raise FitError(f"unknown fit {fit!r}; choose one of {', '.join(FIT_CHOICES)}")
    if fit == "map" or (fit == "auto" and domain is None and n_images >= MIN_MAP_FIT_IMAGES):
        return None
    path = Path(domain or domain_path(manifest, settings))
    found = load_domain(manifest, settings, path=path)
    if found is None and (fit == "domain" or domain is not None):
        raise FitError(f"no domain fit at {path}; make one with `segvlad-edge build-domain DIR ...` "
                       "or fit on the map (--fit map)")
    return found

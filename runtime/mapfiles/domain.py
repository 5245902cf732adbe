"""Domain files: a vocabulary/PCA fitted once on a broad image set, kept beside the engine.

The AnyLoc way of shipping vocabularies: ``build-domain`` (``runtime/build_domain.py``) fits the
models on a broad image set once and writes them as ``<engine file>.<settings tag>.domain`` (the
map-bundle container, format "segvlad-edge domain"). Bundles built with one store only a
reference (file name + sha256 of its arrays), which keeps them small and lets a 20-image map use
a vocabulary fitted on many more segments.
"""
from __future__ import annotations

import time
from pathlib import Path

from segvlad_edge import __version__
from segvlad_edge.engines.manifest import EngineManifest
from segvlad_edge.runtime.mapfiles.bundle import BundleError, check_models, read_arrays, write_arrays
from segvlad_edge.runtime.models import Models, arrays_sha256
from segvlad_edge.runtime.settings import Settings

DOMAIN_FORMAT = "segvlad-edge domain"


def domain_path(manifest: EngineManifest, settings: Settings) -> Path:
    """Where the domain fit for this engine and settings lives (beside the engine)."""
    c = settings
    tag = f"{c.segmenter}-o{c.order}-k{c.vocab_k}-pca{c.pca_dims or 0}{'w' if c.whiten else ''}"
    return manifest.engine_path.parent / f"{manifest.file}.{tag}.domain"


def save_domain(models: Models, manifest: EngineManifest, settings: Settings, sources: list[str], images: int,
                path: Path | None = None, inputs=()) -> tuple[Path, int]:
    """Write ``models`` as the domain fit for this engine and settings (at ``path``, default:
    beside the engine; never over one of ``inputs``). Returns (path, bytes written)."""
    path = Path(path or domain_path(manifest, settings))
    arrays = models.to_arrays()
    meta = {"format": DOMAIN_FORMAT, "created_by": f"segvlad-edge {__version__}",
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "engine": manifest.feature_signature(), "settings": settings.fit_part(),
            "pca": models.pca is not None, "images": images, "sources": sources, "sha256": arrays_sha256(arrays)}
    return path, write_arrays(path, meta, arrays, inputs)


def load_domain(manifest: EngineManifest, settings: Settings, expect_sha256: str | None = None,
                path: Path | None = None) -> tuple[Models, dict] | None:
    """The models of the domain file (default: beside the engine) and the bundle's ``fit``
    reference to it, or None where no domain file exists. Raises BundleError if the file is
    corrupted, fitted for another engine or settings, or (``expect_sha256``) not the one a map
    was built with."""
    path = path or domain_path(manifest, settings)
    if not path.is_file():
        return None
    meta, arrays = read_arrays(path, "domain fit")
    if meta.get("format") != DOMAIN_FORMAT:
        raise BundleError(f"{path}: a {meta.get('format')!r} file, not a domain fit")
    if meta.get("engine") != manifest.feature_signature():
        raise BundleError(f"{path}: fitted on features of another engine; rebuild it with `segvlad-edge build-domain`")
    if meta.get("settings") != settings.fit_part():
        raise BundleError(f"{path}: fitted for settings {meta.get('settings')}, not {settings.fit_part()}")
    if meta.get("pca") is not (settings.pca_dims is not None):
        raise BundleError(f"{path}: PCA flag {meta.get('pca')!r} disagrees with its settings")
    check_models(arrays, settings, None, path)
    sha = arrays_sha256(arrays)
    if sha != meta.get("sha256"):
        raise BundleError(f"{path}: contents do not match its recorded sha256: corrupted")
    if expect_sha256 is not None and sha != expect_sha256:
        raise BundleError(f"{path}: not the domain fit this map was built with (sha256 {sha[:12]} vs "
                          f"{expect_sha256[:12]}); copy the map's domain file beside the engine or rebuild the map")
    return Models.from_arrays(arrays, settings), {
        "source": "domain", "file": path.name, "sha256": sha, "settings": meta["settings"],
        "images": meta.get("images"), "sources": meta.get("sources")}

"""Step: a map with positions -> a map folder of tiles that share one vocabulary/PCA fit.

``build_tiled_map(images, out, pipeline, tile_m, metadata)`` builds the whole map once
(``runtime/mapping.py``: one fit, one calibration, resumable after a kill in ``.<out>.tiling/``
beside the output) and splits it with ``split_map``: every image goes to the square of
``tile_m`` metres that holds its GPS position (east/north on the tangent plane at the map's mean
position, squares from the south-west corner of the map's extent), each square with images becomes one domain-fitted bundle, and the fit is written once
as the folder's ``fit.domain``. Each tile keeps the whole map's verification coder, and the
tile index keeps the whole map's position frame and confidence calibration, so a localizer
searching all tiles answers as the single bundle does (``runtime/tiled.py``). The folder is filled
under a temporary name and renamed into place (``files.atomic_folder``): a killed build never
leaves a folder that loads. Images without a lat/lon position are refused before any work.
"""
from __future__ import annotations

import os
import shutil
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from segvlad_edge import __version__
from segvlad_edge.files import atomic_folder, sha256_file
from segvlad_edge.runtime.map_edit import select_images
from segvlad_edge.runtime.mapfiles.bundle import CheckedRows, MapBundle
from segvlad_edge.runtime.mapfiles.domain import save_domain
from segvlad_edge.runtime.mapfiles.tiles import FIT_NAME, FOLDER_FORMAT, FOLDER_VERSION, bbox_of, write_index
from segvlad_edge.runtime.mapping import BuildSummary, MapBuildError, build_map
from segvlad_edge.runtime.pipeline import FramePipeline
from segvlad_edge.runtime.steps.index import store_index
from segvlad_edge.runtime.steps.position import MapPositions, latlon_of


def check_positions(names: list[str], metadata: dict[str, dict]) -> None:
    """Every image needs a lat/lon position (``meta.gps``, read as the position estimate reads it,
    in range) to be tiled; raises MapBuildError naming the first without."""
    latlon = latlon_of([{"meta": metadata.get(n)} for n in names])
    with np.errstate(invalid="ignore"):
        valid = (np.abs(latlon[:, 0]) <= 90) & (np.abs(latlon[:, 1]) <= 180)       # NaN: no position
    missing = [n for n, ok in zip(names, valid) if not ok]
    if missing:
        raise MapBuildError(f"--tile-m needs a lat/lon position for every image; {len(missing)} of {len(names)} have "
                            f"none (e.g. {missing[0]!r}): give them by EXIF GPS, @-style names or --metadata CSV "
                            "lat,lon columns")


def tile_keys(en: np.ndarray, tile_m: float) -> np.ndarray:
    """``en [I, 2]`` (east, north) metres (``MapPositions.xy``) -> ``[I, 2] int64`` index of each
    image's tile square; the squares start at the south-west corner of the images' extent."""
    return np.floor((en - en.min(0)) / tile_m).astype(np.int64)


def build_tiled_map(images: list[tuple[str, Path]], out: str | os.PathLike, pipeline: FramePipeline, tile_m: float,
                    metadata: dict[str, dict] | None = None, index_kind: str = "auto",
                    **build: object) -> tuple[BuildSummary, dict]:
    """``build_map``'s arguments (``build``: fit, domain, keep_work, progress, images_root, inputs,
    ray) plus ``tile_m`` and the tiles' ``index_kind`` (runtime/steps/index.py) -> (the whole map's
    build summary, the tile index). ``out``: a new folder (or an empty one)."""
    out = Path(out)
    metadata = metadata or {}
    check_positions([n for n, _ in images], metadata)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MapBuildError(f"{out}: exists and is not an empty folder; give a new folder name for the tiled map")
    if not out.parent.is_dir():
        raise MapBuildError(f"output folder {out.parent} does not exist")
    stage = out.parent / f".{out.name}.tiling"
    stage.mkdir(exist_ok=True)
    whole = stage / "whole.segmap"
    summary = build_map(images, whole, pipeline, metadata, **{**build, "keep_work": True})   # a rerun resumes
    index = split_map(MapBundle.read(whole), pipeline.with_models(summary.models), out, tile_m, index_kind)
    if not build.get("keep_work"):
        shutil.rmtree(stage, ignore_errors=True)
    return summary, index


def split_map(bundle: MapBundle, pipeline: FramePipeline, out: str | os.PathLike, tile_m: float,
              index_kind: str = "auto") -> dict:
    """Split ``bundle`` (every image with a GPS position) into the map folder ``out``;
    ``pipeline``: the bundle's engine, settings and models; ``index_kind``: each tile's search
    index (``store_index``). Returns the tile index written."""
    names = [img["name"] for img in bundle.images]
    check_positions(names, {img["name"]: img.get("meta") for img in bundle.images})
    codes = bundle.arrays.get("verify_codes")
    if isinstance(codes, CheckedRows):               # a corrupted block fails now, not after the first tiles
        codes.check_all()
    positions = MapPositions.from_images(bundle.images)          # every image has GPS: xy on the GPS plane
    latlon = latlon_of(bundle.images)
    keys = tile_keys(positions.xy, tile_m)
    groups = defaultdict(list)
    for i, key in enumerate(map(tuple, keys)):
        groups[key].append(i)
    settings, manifest = bundle.settings, pipeline.extractor.manifest
    with atomic_folder(out) as tmp:
        save_domain(pipeline.models, manifest, settings, [str(bundle.path or "map")], len(names), tmp / FIT_NAME)
        fit_ref = {"source": "domain", "file": FIT_NAME, "sha256": pipeline.models.sha256,
                   "settings": settings.fit_part(), "images": len(names)}
        tiles = []
        for key in sorted(groups):
            keep = np.zeros(len(names), bool)
            keep[groups[key]] = True
            path = tmp / f"tile_e{key[0]:04d}_n{key[1]:04d}.segmap"
            sealed = _write_tile(bundle, keep, fit_ref, path, index_kind)
            tiles.append({"file": path.name, "sha256": sha256_file(path), "header_sha256": sealed,
                          "images": int(keep.sum()),
                          "bbox": bbox_of(latlon[keep]), "fit_sha256": fit_ref["sha256"]})
        doc = {"format": FOLDER_FORMAT, "version": FOLDER_VERSION, "created_by": f"segvlad-edge {__version__}",
               "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "tile_m": float(tile_m),
               "engine": bundle.meta["engine"], "settings": bundle.meta["settings"],
               "fit": {"file": FIT_NAME, "sha256": sha256_file(tmp / FIT_NAME), "models_sha256": fit_ref["sha256"]},
               "positions": {"origin": list(positions.origin), "spacing_m": positions.spacing_m},
               "verify": "verify_codes" in bundle.arrays, "images": len(names), "tiles": tiles,
               "calib_negatives": [float(v) for v in bundle.arrays.get("calib_negatives", [])]}
        doc = write_index(tmp, doc)
    return doc


def _write_tile(bundle: MapBundle, keep: np.ndarray, fit_ref: dict, path: Path, index_kind: str) -> str:
    """The kept images as a bundle on the shared fit (no vocabulary/PCA of its own), with its own
    search index and the whole map's verification coder (the calibration is in the tile index);
    returns its sealed header's sha256."""
    with select_images(bundle, keep, path.parent) as (images, arrays):          # codes via a temporary file
        arrays = {k: v for k, v in arrays.items()
                  if not k.startswith("index_") and k not in ("vocab_centers", "pca_mean", "pca_components",
                                                              "pca_scale", "calib_negatives")}
        tile = MapBundle({**bundle.meta, "images": images, "fit": fit_ref}, arrays)
        store_index(tile, index_kind)
        tile.write(path)
    return tile.header_sha256

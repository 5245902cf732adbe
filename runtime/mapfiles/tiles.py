"""A map folder: one map split into tiles by position, sharing one vocabulary/PCA fit.

Written by ``build-map --tile-m METRES`` (``runtime/tiling.py``), read by the tiled localizer
(``runtime/tiled.py``)::

    FOLDER/
      tiles.json                 the tile index (below), checksummed
      fit.domain                 the shared vocabulary/PCA (the domain-fit container, runtime/mapfiles/domain.py)
      tile_e0000_n0001.segmap    one map bundle per tile, domain-fitted on fit.domain

The tile index is JSON: ``format``, ``version`` (FOLDER_VERSION), ``engine`` and ``settings`` (as
in every tile's header), ``fit`` (``file``, ``sha256`` of the file, ``models_sha256`` of its
arrays: what each tile records), ``positions`` (``origin`` [lat, lon] degrees and ``spacing_m``
of the whole map, so positions equal the single bundle's), ``verify`` (tiles carry verification
data), ``calib_negatives`` (the whole map's confidence calibration, sorted; runtime/steps/confidence.py),
``images`` (the map's total), ``tile_m``, and per tile ``file``, ``sha256`` of the tile
file, ``header_sha256`` of its sealed header (from version 2: a tile loaded on the way is checked
by it and by the bundle's own array and block checksums, not by hashing the whole file, which
holds about 94 KiB of verification codes per image), ``images``, ``bbox`` [lat_min, lon_min,
lat_max, lon_max] of its images and ``fit_sha256``;
``checksum``: the sha256 of the index's canonical JSON without it. The map's image order is the
tiles' in index order, each tile's images in their bundle order.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np

from segvlad_edge.errors import printable
from segvlad_edge.files import atomic_write, read_regular
from segvlad_edge.runtime.mapfiles.bundle import ENGINE, HEX64, MAX_IMAGES, BundleError
from segvlad_edge.runtime.settings import Settings
from segvlad_edge.runtime.steps.position import to_plane
from segvlad_edge.schema import FILE_NAME, Bool, Float, Int, Json, List, Obj, SchemaError, Str

INDEX_NAME = "tiles.json"
FIT_NAME = "fit.domain"
FOLDER_FORMAT = "segvlad-edge map folder"
FOLDER_VERSION = 2              # 2: tiles carry header_sha256
MAX_TILES = 1_000_000
MAX_INDEX_BYTES = 256 << 20
BBOX = List(Float(-180.0, 180.0), 4, 4)
TILE = Obj({"file": FILE_NAME, "sha256": HEX64, "header_sha256": HEX64, "images": Int(1, MAX_IMAGES), "bbox": BBOX,
            "fit_sha256": HEX64}, optional=("header_sha256",))
INDEX = Obj({"format": Str((FOLDER_FORMAT,)), "version": Int(1, FOLDER_VERSION),
             "created": Str(max_len=64), "created_by": Str(max_len=256), "tile_m": Float(1.0, 1e7),
             "engine": ENGINE, "settings": Json(),
             "fit": Obj({"file": FILE_NAME, "sha256": HEX64, "models_sha256": HEX64}),
             "positions": Obj({"origin": List(Float(-180.0, 180.0), 2, 2), "spacing_m": Float(0.0, 1e7)}),
             "verify": Bool(), "images": Int(1, MAX_IMAGES), "tiles": List(TILE, 1, MAX_TILES),
             "calib_negatives": List(Float(0.0, 1.0)), "checksum": HEX64})


class TileIndexError(BundleError):
    """A map folder's tile index is missing, corrupted, malformed or inconsistent."""


def checksum(doc: dict) -> str:
    """sha256 (hex) of ``doc``'s canonical JSON (sorted keys, no spaces) without its ``checksum``."""
    body = {k: v for k, v in doc.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()).hexdigest()


def write_index(folder: Path, doc: dict) -> dict:
    """Write ``doc`` (without ``checksum``) as the folder's tile index, sealed with its checksum,
    atomically; returns the sealed index."""
    doc = {**doc, "checksum": checksum(doc)}
    check_index(doc, folder)
    with atomic_write(folder / INDEX_NAME, text=True) as f:
        json.dump(doc, f, sort_keys=True, indent=1, allow_nan=False)
    return doc


def read_index(folder: str | os.PathLike) -> dict:
    """The checked tile index of the map folder ``folder``; raises TileIndexError naming the problem."""
    folder = Path(folder)
    path = folder / INDEX_NAME
    if not path.is_file():
        raise TileIndexError(f"{printable(folder)}: a folder without {INDEX_NAME}, not a map folder "
                             "(give a map bundle file or a folder written by build-map --tile-m)")
    try:
        doc = json.loads(read_regular(path, MAX_INDEX_BYTES, "tile index"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError) as e:
        raise TileIndexError(f"{printable(path)}: not JSON ({e})") from None
    if not isinstance(doc, dict):
        raise TileIndexError(f"{printable(path)}: not a tile index (not a JSON object)")
    version = doc.get("version")
    if doc.get("format") == FOLDER_FORMAT and isinstance(version, int) and version > FOLDER_VERSION:
        raise TileIndexError(f"{printable(path)}: map folder format {version} is newer than this segvlad-edge's "
                             f"({FOLDER_VERSION}); use a matching segvlad-edge")
    if doc.get("checksum") != checksum(doc):
        raise TileIndexError(f"{printable(path)}: checksum mismatch: the tile index was changed or corrupted")
    check_index(doc, folder)
    check_tile_sizes(doc, folder)
    return doc


def check_tile_sizes(doc: dict, folder: Path) -> None:
    """Every tile file is there (a folder is used whole: a robot learns of a missing tile before it
    sets off, not when it reaches that tile) and large enough for the images the index claims for
    it (per image a bundle holds at least its label map, one byte per patch, and its segment count):
    a tampered count is refused here, before anything is sized by it."""
    min_bytes = int(np.prod(doc["engine"]["patch_grid"])) + 4
    for t in doc["tiles"]:
        path = folder / t["file"]
        if not path.is_file():
            raise TileIndexError(f"{printable(path)}: a tile of the map folder is missing (copy the whole folder)")
        if t["images"] * min_bytes > path.stat().st_size:
            raise TileIndexError(f"{printable(path)}: the tile index claims {t['images']} images, more than the "
                                 "file can hold")


def check_index(doc: dict, where) -> None:
    """``doc`` against INDEX and itself: settings parse, bounding boxes ordered and in range, image
    counts add up, tile files distinct and not the index or the fit file, every tile on the fit."""
    try:
        INDEX.check(doc)
        Settings.parse(doc["settings"])
    except SchemaError as e:
        raise TileIndexError(f"{printable(where)}: tile index: {e}") from None
    tiles = doc["tiles"]
    if any(("header_sha256" in t) != (doc["version"] >= 2) for t in tiles):
        raise TileIndexError(f"{printable(where)}: tile index: header_sha256 is required from version 2 "
                             "and unknown before it")
    files = [t["file"] for t in tiles]
    if len(set(files)) != len(files) or {INDEX_NAME, doc["fit"]["file"]} & set(files):
        raise TileIndexError(f"{printable(where)}: tile index names a file twice")
    if sum(t["images"] for t in tiles) != doc["images"]:
        raise TileIndexError(f"{printable(where)}: tile index: the tiles' image counts do not add up to {doc['images']}")
    for t in tiles:
        lat0, lon0, lat1, lon1 = t["bbox"]
        if not (-90 <= lat0 <= lat1 <= 90 and lon0 <= lon1):
            raise TileIndexError(f"{printable(where)}: tile index: {t['file']}: bounding box {t['bbox']} is not "
                                 "[lat_min, lon_min, lat_max, lon_max]")
        if t["fit_sha256"] != doc["fit"]["models_sha256"]:
            raise TileIndexError(f"{printable(where)}: tile index: {t['file']} is not on the folder's shared fit")
    if np.any(np.diff(doc["calib_negatives"]) < 0):
        raise TileIndexError(f"{printable(where)}: tile index: calib_negatives is not sorted")
    if not -90 <= doc["positions"]["origin"][0] <= 90:
        raise TileIndexError(f"{printable(where)}: tile index: positions.origin latitude out of range")


def bbox_of(latlon: np.ndarray) -> list[float]:
    """``latlon [N, 2]`` degrees -> ``[lat_min, lon_min, lat_max, lon_max]``."""
    lo, hi = latlon.min(0), latlon.max(0)
    return [float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])]


def bbox_distance_m(bboxes: np.ndarray, lat: float, lon: float) -> np.ndarray:
    """``bboxes [T, 4]`` ([lat_min, lon_min, lat_max, lon_max] degrees) -> ``[T] float64`` metres from
    the point (``lat``, ``lon``) to each box's nearest point (0 inside), on the tangent plane at
    the point (exact to centimetres over a few km)."""
    b = np.asarray(bboxes, np.float64).reshape(-1, 4)
    lon = lon - 360.0 * np.round((lon - (b[:, 1] + b[:, 3]) / 2) / 360.0)    # the box's side of the antimeridian
    near = np.stack([np.clip(lat, b[:, 0], b[:, 2]), np.clip(lon, b[:, 1], b[:, 3])], 1)
    return np.linalg.norm(to_plane(near, (lat, lon)), axis=1)


def parse_near(text: str, default_radius_m: float) -> tuple[float, float, float]:
    """``"LAT,LON[,RADIUS_M]"`` -> (lat, lon, radius_m); raises ValueError with the reason."""
    parts = text.split(",")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"{text!r} is not LAT,LON[,RADIUS_M]") from None
    if len(values) not in (2, 3) or not all(math.isfinite(v) for v in values):
        raise ValueError(f"{text!r} is not LAT,LON[,RADIUS_M]")
    lat, lon, radius = (*values, default_radius_m)[:3]
    if not (-90 <= lat <= 90 and -180 <= lon <= 180 and radius > 0):
        raise ValueError(f"{text!r}: latitude -90..90, longitude -180..180, radius above 0 metres")
    return lat, lon, radius


def _no_constant(name: str):
    raise ValueError(f"non-finite number {name}")

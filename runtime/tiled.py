"""TiledLocalizer: a map folder (runtime/mapfiles/tiles.py) searched tile by tile.

It is the Localizer (runtime/localizer.py) with the map read through tiles: the pipeline is made
once from the folder's shared fit; per frame the selected tiles are searched, each for its
top-K' segments per query segment, and the hits are merged by similarity into the global top-K'
before the one ranking (runtime/steps/ranking.py) votes (tiles under EXACT_BELOW segments are
searched exactly, which is cheaper than going through their small HNSW graphs). Every segment of the global top-K' is
in its own tile's top-K', so with all tiles selected the hits, ranking, verification,
confidence and position equal those of the single bundle the folder was split from (exact
search; the tiles' HNSW graphs are approximate as the bundle's is).

Which tiles: all of them, or with ``near=(lat, lon, radius_m)`` those whose images' bounding box
lies within ``radius_m`` of the point; with ``follow`` (a stream), each confident answer with a
position moves that circle to the answer's position (radius: ``near``'s, else DEFAULT_NEAR_M),
and after LOST_AFTER frames in a row without a confident match the selection goes back to the
start (``near``, else all tiles). Tiles are loaded on first use (sha256 against the tile index,
then the bundle's own checks) and kept in an LRU of ``capacity`` tiles beyond those a frame needs.
Map image ``i`` of the folder is image ``i - first[t]`` of tile ``t`` (tiles in index order).
"""
from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segvlad_edge.files import sha256_file
from segvlad_edge.runtime.localizer import Answer, Localizer, bundle_sizes, engine_for
from segvlad_edge.runtime.mapfiles.bundle import MapBundle
from segvlad_edge.runtime.mapfiles.domain import load_domain
from segvlad_edge.runtime.mapfiles.tiles import INDEX_NAME, TileIndexError, bbox_distance_m, read_index
from segvlad_edge.runtime.pipeline import FramePipeline, make_pipeline
from segvlad_edge.runtime.settings import Settings
from segvlad_edge.runtime.steps.index import SegmentIndex, open_index, search_threads
from segvlad_edge.runtime.steps.position import MapPositions, latlon_of
from segvlad_edge.runtime.steps.verification import PatchCoder

DEFAULT_NEAR_M = 500.0
CACHE_TILES = 16
LOST_AFTER = 3
EXACT_BELOW = 1000      # segments: a smaller tile is searched exactly, cheaper than through its HNSW graph


def open_map(path: str | os.PathLike, engines_dir=None, backend: str | None = None, providers=("cpu",),
             threads: int | None = None, domain: Path | None = None,
             near: tuple[float, float, float] | None = None, follow: bool = False) -> Localizer:
    """The localizer of a map bundle file or a map folder (``near``, ``follow``: a folder's tile
    selection, see the module docstring; refused for a single bundle)."""
    if Path(path).is_dir():
        return TiledLocalizer.open(path, engines_dir, backend, providers, threads, near, follow)
    if near is not None:
        raise TileIndexError(f"{path}: --near selects the tiles of a map folder; this is a single map bundle")
    return Localizer.from_bundle(path, engines_dir, backend, providers, threads, domain)


@dataclass
class Tile:
    """A loaded tile: its bundle, search index, and ``segment_image [N_t] int64`` in folder image numbers."""
    bundle: MapBundle
    index: SegmentIndex
    segment_image: np.ndarray


class TiledLocalizer(Localizer):
    """``doc``: the folder's checked tile index; ``pipeline``: on its engine, settings and shared fit."""

    def __init__(self, folder: Path, doc: dict, pipeline: FramePipeline, near=None, follow: bool = False,
                 capacity: int = CACHE_TILES, threads: int | None = None):
        self.bundle, self.pipeline, self.path, self.doc = None, pipeline, Path(folder), doc
        self.threads = threads                          # CPU threads, as Localizer's: each tile's search takes its share
        self.meta = {"engine": doc["engine"], "settings": doc["settings"]}
        s = Settings.parse(doc["settings"])
        self.top_k, self.norm = s.top_k, s.norm
        self.first = np.concatenate([[0], np.cumsum([t["images"] for t in doc["tiles"]])]).astype(np.int64)
        self.bboxes = np.array([t["bbox"] for t in doc["tiles"]], np.float64)
        self.names = _Names(self)
        self.calib = np.asarray(doc["calib_negatives"], np.float32)
        self.coder = None                               # the whole map's, in every tile: set by the first loaded
        n, pos = doc["images"], doc["positions"]
        self.positions = MapPositions("gps", np.full((n, 2), np.nan), np.full(n, np.nan), tuple(pos["origin"]),
                                      pos["spacing_m"])
        self.map_codes = _Codes(self) if doc["verify"] else None
        self.corrupt: set[int] = set()
        self.start = self.region = near
        self.follow, self.misses, self.capacity = follow, 0, capacity
        self.loaded: OrderedDict[int, Tile] = OrderedDict()
        self.keep: list[int] = []                       # the tiles the current frame searched

    @classmethod
    def open(cls, folder: str | os.PathLike, engines_dir=None, backend: str | None = None, providers=("cpu",),
             threads: int | None = None, near=None, follow: bool = False) -> "TiledLocalizer":
        folder = Path(folder)
        doc = read_index(folder)
        manifest = engine_for(doc["engine"], folder, engines_dir, backend)
        s, fit = Settings.parse(doc["settings"]), doc["fit"]
        path = folder / fit["file"]
        if not path.is_file() or sha256_file(path) != fit["sha256"]:
            raise TileIndexError(f"{path}: the shared fit is missing or differs from the tile index's checksum")
        models, _ = load_domain(manifest, s, fit["models_sha256"], path)
        return cls(folder, doc, make_pipeline(s, engines_dir, manifest=manifest, threads=threads, providers=providers,
                                              models=models), near, follow, threads=threads)

    # ------------------------------------------------------------------ tiles
    def selected(self) -> list[int]:
        """Tiles searched now: all, or those within the current circle."""
        if self.region is None:
            return list(range(len(self.first) - 1))
        lat, lon, radius = self.region
        return np.flatnonzero(bbox_distance_m(self.bboxes, lat, lon) <= radius).tolist()

    def tile(self, t: int, keep=()) -> Tile:
        """Tile ``t``, loaded and checked on first use; the least recently used tiles beyond
        ``capacity`` (other than ``keep``) are dropped."""
        if t in self.loaded:
            self.loaded.move_to_end(t)
            return self.loaded[t]
        tile = self.load_tile(t)
        self.loaded[t] = tile
        for old in [u for u in self.loaded if u not in keep and u != t][:max(len(self.loaded) - self.capacity, 0)]:
            del self.loaded[old]
        return tile

    def files(self) -> list[Path]:
        """Every file of the map folder (tile index, shared fit, tiles): inputs no output may replace."""
        return [self.path / INDEX_NAME, self.path / self.doc["fit"]["file"]] + \
            [self.path / t["file"] for t in self.doc["tiles"]]

    def load_tile(self, t: int) -> Tile:
        """Tile ``t`` read and checked against the tile index (header sha256, or the file's for a
        version-1 index; images, engine, settings, fit, verification coder, positions inside its
        bounding box); TileIndexError where it disagrees."""
        rec, doc = self.doc["tiles"][t], self.doc
        path = self.path / rec["file"]
        changed = TileIndexError(f"{path}: missing, or its sha256 differs from the tile index's: changed or corrupted")
        if not path.is_file() or ("header_sha256" not in rec and sha256_file(path) != rec["sha256"]):
            raise changed
        b = MapBundle.read(path)
        if "header_sha256" in rec and b.header_sha256 != rec["header_sha256"]:
            raise changed
        a = b.arrays
        if (len(b.images) != rec["images"] or b.meta["engine"] != doc["engine"] or b.meta["settings"] != doc["settings"]
                or b.meta["fit"].get("sha256") != doc["fit"]["models_sha256"] or ("verify_codes" in a) != doc["verify"]):
            raise TileIndexError(f"{path}: disagrees with the tile index (images, engine, settings, fit or verification)")
        if doc["verify"]:
            coder = PatchCoder(a["verify_mean"], a["verify_components"])
            if self.coder is None:
                self.coder = coder
            elif not (np.array_equal(coder.mean, self.coder.mean)
                      and np.array_equal(coder.components, self.coder.components)):
                raise TileIndexError(f"{path}: its verification coder differs from the other tiles'")
        gps = latlon_of(b.images)
        lat0, lon0, lat1, lon1 = rec["bbox"]
        if not (np.isfinite(gps).all() and (gps[:, 0] >= lat0).all() and (gps[:, 0] <= lat1).all()
                and (gps[:, 1] >= lon0).all() and (gps[:, 1] <= lon1).all()):
            raise TileIndexError(f"{path}: its images' positions lie outside the tile index's bounding box")
        self.positions.fill(int(self.first[t]), b.images)
        if len(b.segment_image) < EXACT_BELOW:          # searched exactly: its stored graph is not read into RAM
            index = SegmentIndex(b.arrays["descriptors"])
        else:
            index = open_index(b, search_threads(self.threads))
            index.prepare()
        return Tile(b, index, b.segment_image + self.first[t])

    def tile_of(self, i: int) -> tuple[int, int]:
        """Folder image ``i`` -> (tile, image within the tile)."""
        t = int(np.searchsorted(self.first, i, side="right")) - 1
        return t, int(i - self.first[t])

    # ------------------------------------------------------------------ the Localizer's map access
    def hits(self, desc: np.ndarray, k: int, exact: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each selected tile's top-``k`` per query segment, merged by similarity into the top-``k``;
        ids number the selected tiles' segments one after another (``segment_image`` maps them)."""
        sel = self.keep = self.selected()
        ids_all, sims_all, seg_image = [np.full((len(desc), k), -1, np.int64)], [np.full((len(desc), k), -np.inf,
                                                                                        np.float32)], []
        base = 0
        for t in sel:
            tile = self.tile(t, keep=sel)
            ids, sims = tile.index.search(desc, k, exact=exact or len(tile.segment_image) < EXACT_BELOW)
            ids_all.append(np.where(ids >= 0, ids + base, -1))
            sims_all.append(sims)
            seg_image.append(tile.segment_image)
            base += len(tile.segment_image)
        ids, sims = np.concatenate(ids_all, 1), np.concatenate(sims_all, 1)
        order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        return (np.take_along_axis(ids, order, 1), np.take_along_axis(sims, order, 1),
                np.concatenate(seg_image) if seg_image else np.zeros(0, np.int64))

    def image(self, i: int) -> dict:
        t, j = self.tile_of(i)
        return self.tile(t, keep=self.keep).bundle.images[j]

    def map_sizes(self) -> dict:
        """``Localizer.map_sizes`` summed over every tile (each loaded in turn); ``file_bytes``
        includes the tile index and the shared fit, ``index`` names the kinds the tiles use ("exact":
        a tile searched without its graph, whose descriptors are then the search data)."""
        parts = []
        for t in range(len(self.doc["tiles"])):
            tile = self.tile(t)
            exact = len(tile.segment_image) < EXACT_BELOW
            parts.append(bundle_sizes(tile.bundle, tile.bundle.arrays["descriptors"].nbytes if exact
                                      else tile.index.resident_bytes(), "exact" if exact else tile.index.kind))
        out = {k: sum(p[k] for p in parts) for k in ("segments", "file_bytes", "search_bytes", "verify_bytes")}
        out["file_bytes"] += sum(f.stat().st_size for f in self.files()[:2])
        out["index"] = "+".join(dict.fromkeys(p["index"] for p in parts))
        out["fit"] = "map folder's shared fit"
        return out

    def rank_descriptors(self, desc, top=10, exact=False, exclude_images=None, ms=None):
        if exclude_images:
            raise TileIndexError(f"{self.path}: leaving map images out needs a single map bundle")
        return super().rank_descriptors(desc, top, exact, None, ms)

    def localize(self, image_bgr: np.ndarray, top: int = 5, exact: bool = False) -> Answer:
        ans = super().localize(image_bgr, top, exact)
        if self.follow:
            if ans.match is not None and ans.position is not None:
                radius = self.start[2] if self.start else DEFAULT_NEAR_M
                self.region, self.misses = (ans.position["lat"], ans.position["lon"], radius), 0
            elif ans.match is None:
                self.misses += 1
                if self.misses >= LOST_AFTER:
                    self.region = self.start
        return ans


class _Names:
    """The folder's image names by folder image number (read from the tiles, loaded on demand)."""

    def __init__(self, loc: TiledLocalizer):
        self.loc = loc

    def __len__(self) -> int:
        return int(self.loc.first[-1])

    def __getitem__(self, i: int) -> str:
        if not 0 <= int(i) < len(self):
            raise IndexError(i)
        return self.loc.image(int(i))["name"]

    def __iter__(self):
        return (self[i] for i in range(len(self)))


class _Codes:
    """``codes[[i, ...]] -> [N, P, d] float16``: the verification codes of folder images, from their
    tiles; ``block(i)``: the folder images checked together with image ``i`` (as ``CheckedRows.block``)."""

    def __init__(self, loc: TiledLocalizer):
        self.loc = loc

    def _of(self, i: int):
        """Folder image ``i`` -> (its tile's first folder image, its tile's codes, its row there)."""
        t, j = self.loc.tile_of(int(i))
        return int(self.loc.first[t]), self.loc.tile(t, keep=self.loc.keep).bundle.arrays["verify_codes"], j

    def __getitem__(self, images) -> np.ndarray:
        rows = []
        for i in images:
            _, codes, j = self._of(i)
            rows.append(np.asarray(codes[j]))
        return np.stack(rows)

    def block(self, i: int) -> range:
        first, codes, j = self._of(i)
        block = codes.block(j)
        return range(first + block.start, first + block.stop)

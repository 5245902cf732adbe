"""Place-recognition datasets with ground truth, in the layouts users have:

* ``gt.json``: query path -> list of correct map paths (relative to the folder);
  the map is every image named in those lists;
* ``places.json``: image -> place id; every image is a query against all the others;
* VPR-Bench: ``ref/``, ``query/``, ``ground_truth_new.npy`` (a pickled object array, read
  with a restricted unpickler that accepts numbers, lists and numpy arrays only, of at most
  ``MAX_GT_ITEMS`` items; rows ``(query index, positive index or list of them)``);
* VPR-methods-evaluation: ``database/`` + ``queries/`` with UTM in file names
  (``@utm_east@utm_north@...``), positives within 25 m.
"""
from __future__ import annotations

import ast
import io
import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segvlad_edge.errors import SegvladError, printable
from segvlad_edge.files import read_regular
from segvlad_edge.runtime.inputs.images import list_images
from segvlad_edge.runtime.mapfiles.metadata import from_name

UTM_RADIUS_M = 25.0
MAX_GT_BYTES = 64 << 20         # a ground-truth file larger than this is not one
MAX_GT_ITEMS = 10_000_000       # most array items the restricted unpickler builds


class DatasetError(SegvladError, ValueError):
    """A dataset folder has no ground truth in a known layout, or it is malformed."""


@dataclass
class Dataset:
    """``map_images``/``queries``: paths; ``positives[q]``: indices into ``map_images``;
    ``leave_one_out``: query q is map image ``query_map_index[q]`` and must be excluded."""

    root: Path
    layout: str
    map_images: list[Path]
    queries: list[Path]
    positives: list[set[int]]
    query_map_index: list[int] | None = None

    def own_map_images(self, q: int) -> list[int]:
        """The map images that are query ``q`` itself, to leave out of its ranking: ``[query_map_index[q]]``
        for leave-one-out sets, else ``[]``."""
        return [self.query_map_index[q]] if self.query_map_index is not None else []

    def name(self, path: Path) -> str:
        """The path relative to the dataset folder (as given where it is not inside it: map images
        named by a bundle)."""
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return path.as_posix()


def _inside(root: Path, rel: str) -> Path:
    if not isinstance(rel, str) or not rel:
        raise DatasetError(f"{root}: ground-truth path {printable(repr(rel))} is not a file name")
    p = (root / rel).resolve()
    if root.resolve() not in p.parents:
        raise DatasetError(f"{root}: ground-truth path {rel!r} points outside the dataset")
    if not p.is_file():
        raise DatasetError(f"{root}: ground-truth image {printable(rel)} does not exist")
    return root / rel


def _read_json(path: Path):
    try:
        return json.loads(read_regular(path, MAX_GT_BYTES, "ground-truth file"))
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: unreadable ({printable(e)})") from None


def _from_gt_json(root: Path) -> Dataset:
    gt = _read_json(root / "gt.json")
    if not isinstance(gt, dict) or not all(isinstance(v, list) and all(isinstance(m, str) for m in v)
                                           for v in gt.values()):
        raise DatasetError(f"{root / 'gt.json'}: expected {{query path: [map paths]}}")
    map_names = sorted({m for v in gt.values() for m in v})
    index = {n: i for i, n in enumerate(map_names)}
    maps = [_inside(root, n) for n in map_names]
    queries = [_inside(root, q) for q in gt]
    return Dataset(root, "gt.json", maps, queries, [{index[m] for m in v} for v in gt.values()])


def _from_places(root: Path) -> Dataset:
    places = _read_json(root / "places.json")
    if not isinstance(places, dict) or not all(isinstance(v, (str, int)) and not isinstance(v, bool)
                                               for v in places.values()):
        raise DatasetError(f"{root / 'places.json'}: expected {{image path: place id (a string or an integer)}}")
    names = sorted(places)
    maps = [_inside(root, n) for n in names]
    by_place: dict[str, set[int]] = {}
    for i, n in enumerate(names):
        by_place.setdefault(str(places[n]), set()).add(i)
    positives = [by_place[str(places[n])] - {i} for i, n in enumerate(names)]
    keep = [i for i, p in enumerate(positives) if p]
    if not keep:
        raise DatasetError(f"{root / 'places.json'}: no two images share a place, so no image can be a query")
    return Dataset(root, "places.json", maps, [maps[i] for i in keep], [positives[i] for i in keep], keep)


def _check_shape(shape) -> None:
    shape = (shape,) if isinstance(shape, int) else shape
    if not isinstance(shape, tuple) or not all(isinstance(n, int) and n >= 0 for n in shape) \
            or int(np.prod(shape, dtype=object)) > MAX_GT_ITEMS:
        raise DatasetError(f"ground-truth pickle asks for an array of shape {printable(repr(shape))[:60]}: refused "
                           f"(at most {MAX_GT_ITEMS} items)")


class _BoundedArray(np.ndarray):
    """``np.ndarray`` as the unpickler hands it out: constructing one checks the shape first."""

    def __new__(cls, shape, *args, **kwargs):
        _check_shape(shape)
        return super().__new__(cls, shape, *args, **kwargs)


def _bounded_reconstruct(subtype, shape, dtype):
    from numpy._core.multiarray import _reconstruct

    _check_shape(shape)
    return _reconstruct(subtype, shape, dtype)


class _GroundTruthUnpickler(pickle.Unpickler):
    """Only what a numpy object array of numbers and lists needs, of at most MAX_GT_ITEMS items;
    anything else is refused."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise DatasetError(f"ground-truth pickle wants {printable(module)}.{printable(name)}: refused "
                               "(only numbers and lists are allowed)")
        return {"_reconstruct": _bounded_reconstruct, "ndarray": _BoundedArray}.get(name, np.dtype)


def load_object_npy(path: Path) -> np.ndarray:
    """Read a ``.npy`` (a pickled object array or a plain one) without executing arbitrary code
    and without allocating more than MAX_GT_ITEMS items."""
    try:
        data = read_regular(path, MAX_GT_BYTES, "ground-truth file")
    except OSError as e:
        raise DatasetError(f"{path}: unreadable ({printable(e)})") from None
    if not data.startswith(b"\x93NUMPY") or len(data) < 12:
        raise DatasetError(f"{path}: not a .npy file")
    hlen_size = 2 if data[6] == 1 else 4
    hlen = int.from_bytes(data[8:8 + hlen_size], "little")
    start = 8 + hlen_size + hlen
    try:
        header = ast.literal_eval(data[8 + hlen_size:start].decode("latin1"))
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        header = None
    if not isinstance(header, dict) or not isinstance(header.get("descr"), str):
        raise DatasetError(f"{path}: malformed .npy header")
    if header.get("descr") != "|O":
        try:
            arr = np.load(io.BytesIO(data), allow_pickle=False)
        except ValueError as e:
            raise DatasetError(f"{path}: unreadable .npy ({printable(e)})") from None
        if arr.dtype.kind not in "iu":
            raise DatasetError(f"{path}: ground truth of {arr.dtype} is not integers")
        return arr
    try:
        arr = _GroundTruthUnpickler(io.BytesIO(data[start:])).load()
    except DatasetError:
        raise
    except Exception as e:
        raise DatasetError(f"{path}: unreadable ground truth ({type(e).__name__})") from None
    if not isinstance(arr, np.ndarray):
        raise DatasetError(f"{path}: ground truth is not an array")
    arr = np.asarray(arr)
    for v in arr.ravel():
        items = v if isinstance(v, (list, np.ndarray)) else [v]
        if not all(isinstance(x, (int, np.integer)) for x in np.ravel(np.asarray(items, dtype=object))):
            raise DatasetError(f"{path}: ground truth holds something other than integers and lists")
    return arr


def _from_vpr_bench(root: Path) -> Dataset:
    refs, queries = list_images(root / "ref"), list_images(root / "query")
    arr = load_object_npy(root / "ground_truth_new.npy")
    if arr.ndim != 2 or arr.shape[1] != 2 or not len(arr):
        raise DatasetError(f"{root}: ground_truth_new.npy should be [queries, 2] (query index, positives)")
    qs, pos = [], []
    for q, p in arr:
        p = np.ravel(np.asarray(p, dtype=object))        # one positive or a list of them
        if np.ndim(q) or not 0 <= int(q) < len(queries) or any(not 0 <= int(i) < len(refs) for i in p):
            raise DatasetError(f"{root}: ground truth refers to images that do not exist")
        qs.append(queries[int(q)])
        pos.append({int(i) for i in p})
    return Dataset(root, "vpr-bench", refs, qs, pos)


def _from_utm_names(root: Path) -> Dataset:
    maps, queries = list_images(root / "database"), list_images(root / "queries")

    def utm(paths):
        out = []
        for p in paths:
            east_north = from_name(p.name).get("utm")
            if east_north is None:
                raise DatasetError(f"{root}: {p.name} has no @east@north@ UTM coordinates: no ground truth "
                                   "(this layout needs UTM in the file names)")
            out.append(east_north)
        return np.asarray(out)

    dm, dq = utm(maps), utm(queries)
    dist = np.linalg.norm(dq[:, None] - dm[None], axis=2)
    return Dataset(root, "utm", maps, queries, [set(np.flatnonzero(r <= UTM_RADIUS_M).tolist()) for r in dist])


def _metres(metas: list[dict], what: str) -> np.ndarray:
    """``[N, 2]`` positions in metres from UTM (``utm``) or, where every image has GPS, ``gps``
    lat/lon projected equirectangularly around their mean."""
    if all("utm" in m for m in metas):
        return np.asarray([m["utm"][:2] for m in metas], np.float64)
    if all("gps" in m for m in metas):
        ll = np.radians(np.asarray([m["gps"][:2] for m in metas], np.float64))
        r = 6_371_000.0
        return np.stack([r * ll[:, 1] * np.cos(ll[:, 0].mean()), r * ll[:, 0]], axis=1)
    raise DatasetError(f"{what}: not every image has a position (@utm@ in its name, or lat/lon in a CSV)")


def from_positions(root: Path, map_names: list[str], map_meta: list[dict], queries: list[Path],
                   query_meta: list[dict], radius_m: float = UTM_RADIUS_M) -> Dataset:
    """Ground truth from positions: a map image is correct for a query within ``radius_m`` metres.
    Map and queries must both carry UTM, or both GPS."""
    if not queries:
        raise DatasetError(f"{root}: no query images")
    both = map_meta + query_meta
    kind = "utm" if all("utm" in m for m in both) else "gps"
    pos = _metres(both, f"{root} and the map")         # one frame (and one projection) for both
    pm, pq = pos[:len(map_meta)], pos[len(map_meta):]
    dist = np.linalg.norm(pq[:, None] - pm[None], axis=2)
    return Dataset(root, kind, [Path(n) for n in map_names], list(queries),
                   [set(np.flatnonzero(r <= radius_m).tolist()) for r in dist])


def load_dataset(root: str | Path) -> Dataset:
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder")
    ds = _load(root)
    if not ds.queries or not ds.map_images:
        raise DatasetError(f"{root} [{ds.layout}]: no queries or no map images in the ground truth")
    return ds


def _load(root: Path) -> Dataset:
    if (root / "gt.json").is_file():
        return _from_gt_json(root)
    if (root / "places.json").is_file():
        return _from_places(root)
    if (root / "ground_truth_new.npy").is_file() and (root / "ref").is_dir() and (root / "query").is_dir():
        return _from_vpr_bench(root)
    if (root / "database").is_dir() and (root / "queries").is_dir():
        return _from_utm_names(root)
    raise DatasetError(f"{root}: no ground truth found (gt.json, places.json, VPR-Bench ref/ query/ "
                       "ground_truth_new.npy, or database/ + queries/ with UTM names)")

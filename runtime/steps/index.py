"""SegmentIndex: inner-product search over all map SuperSegment descriptors, stored in the bundle.

Three kinds, chosen by map size (``choose_kind``), each built once by ``build-map`` and stored in
the bundle as checksummed arrays, so loading a map reads them instead of rebuilding:

- ``"hnsw"`` (hnswlib, maps under ``HNSWSQ_FROM`` segments): the graph's links are stored; the
  float32 vectors hnswlib keeps beside them are refilled from the float16 descriptors at load, so
  the file holds each vector once. RAM: about 1.3 KiB per segment at 256 dims.
- ``"hnswsq"`` (faiss HNSW over 8-bit scalar-quantised codes, from ``HNSWSQ_FROM`` segments): the
  graph finds ``rerank x k`` candidates by the codes' approximate similarity; they are re-scored
  exactly against the float16 descriptors (memory-mapped in the bundle, only those rows read).
  The serialized index is read zero-copy from the bundle. RAM: about 530 bytes per segment at 256
  dims (one code byte per dimension; 8.1 KiB per image on corridor at the default 128).
- ``"ivfpq"`` (faiss IVF-PQ fast-scan, from ``IVFPQ_FROM`` segments): ``nlist`` (about N/512)
  inverted lists, found by scoring every centroid (up to FLAT_QUANTIZER_LISTS lists) or by an HNSW
  graph over them (``quantizer``, ``ivf_quantizer``); ``nprobe`` lists are
  scanned with 64-byte codes of each vector's residual to its centroid (128 x 4 bits at 128
  dims), the best ``refine_factor x rerank x k`` re-ordered by an 8-bit scalar-quantised copy
  (faiss IndexRefine, ``refine``) and the best ``rerank x k`` of those re-scored exactly the same
  way. RAM: about 200 bytes per segment (4.5 KiB per image at 22 segments per image). Maps
  stored before the HNSW quantiser and the refine stage (flat quantiser, 1,481 lists, no refine)
  load as built: the structure is read from the stored index, only the search parameters from
  the bundle's record, each checked by type and range.

Measured by ``benchmarks/scale.py`` (README, "Large maps", PCA 128): at 22k and 0.22M segments
IVF-PQ's top-50 recall is 1.000 (HNSW-SQ: 1.000, 0.996; on synthetic queries 1.000 and 1.000
against 0.992 and 0.949) in half HNSW-SQ's RAM and no more CPU, so IVF-PQ takes over from
``IVFPQ_FROM`` = 20k segments (under that, down to 1,000, HNSW-SQ stays: not measured against
it). At 2.2M segments (synthetic) HNSW-SQ recalled 0.54 (PCA 256, 24 min to build).
``benchmarks/index_sweep.py`` chose the IVF-PQ structure there: residual codes (codes of the
vectors themselves recall less), an SQ8 refine stage, lists of about 512 vectors (``ivf_lists``:
16,384 lists of 137 cost more per probed list than they save); its ``--bundle`` mode chose the
search settings through this class's own search: with a flat quantiser, nprobe 256, refine 4,
rerank 2 recall 0.991 of the real frames' top 50 (synthetic queries 0.964) for 12.7 ms of CPU per
frame of 22 segments on one thread; 2,193 lists of 1,024 gave 0.987 (0.977) at nprobe 192 for
14.6 ms. On 40 real frames the settings were not chosen on (``benchmarks/heldout_recall.py``,
paired): 0.9987 [0.9971, 1.0000] against 0.9941 [0.9872, 0.9991] for the previous 2,193 lists
at nprobe 128, for about 1 ms more per frame.

A frame's query rows are searched once each: SuperSegments grown into the same region share a
descriptor (33% of the rows of the scale benchmark's real map, ``segvlad-edge inspect``), and every copy gets the
answer its row gets.

An exact (chunked numpy) path measures each kind's recall. Search runs in float32 (numpy has
no fast float16 matmul).
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np

from segvlad_edge.errors import require
from segvlad_edge.runtime.mapfiles.bundle import BundleError
from segvlad_edge.runtime.steps.kmeans import omp_threads

KINDS = ("hnsw", "hnswsq", "ivfpq")
KIND_NAMES = {"hnsw": "HNSW", "hnswsq": "HNSW-SQ", "ivfpq": "IVF-PQ"}     # as messages and reports name them
HNSWSQ_FROM = 1_000             # segments (about 50 images): from here HNSW-SQ8, below hnswlib
IVFPQ_FROM = 20_000             # segments (about 900 images): from here IVF-PQ (benchmarks/scale.py)
HNSW = {"m": 32, "ef_construction": 200, "ef": 256, "seed": 100}
HNSWSQ = {"m": 32, "ef_construction": 40, "ef": 400, "rerank": 4, "qtype": "QT_8bit", "train_max": 100_000, "seed": 0}
IVFPQ = {"pq_m": 128, "nprobe": 256, "rerank": 2, "train_max": 300_000, "seed": 0,
         "quantizer": "auto", "quantizer_m": 32, "quantizer_ef": 64, "by_residual": True,
         "refine": "sq8", "refine_factor": 4}
SQ_TYPES = ("QT_8bit", "QT_6bit", "QT_4bit", "QT_fp16")     # faiss scalar quantisers an "hnswsq" index may use
SEARCH_THREADS = 2              # faiss threads of a search at most: at 100k images 9.6 ms warm per frame against
                                # 15.4 on one, for 4% more CPU (benchmarks/scale.log, this 2-core machine, idle)
FLAT_QUANTIZER_LISTS = 8192     # IVF-PQ: lists up to which every centroid is scored (about 4M segments; measured
                                # at 4,386 lists only, where it is the faster; its cost grows linearly beyond)
MAX_CANDIDATE_FACTOR = 1024    # IVF-PQ: rerank x refine_factor candidates per result at most (bounds a search's memory)
EXACT_CHUNK = 65_536            # rows per exact-search block (bounds its float32 temporary)


class StoredIndexError(BundleError):
    """A stored index is malformed, does not match the descriptors, or needs a missing library."""


def search_threads(threads: int | None) -> int:
    """A localizer's CPU threads (``--threads``; None: not limited) -> its index's: at most
    SEARCH_THREADS; -1 when not limited (SEARCH_THREADS for faiss, all cores for hnswlib)."""
    return -1 if threads is None else max(1, min(int(threads), SEARCH_THREADS))


def choose_kind(n_segments: int) -> str:
    """``"hnsw"`` (hnswlib) under HNSWSQ_FROM segments, ``"hnswsq"`` under IVFPQ_FROM, else ``"ivfpq"``."""
    return "ivfpq" if n_segments >= IVFPQ_FROM else "hnswsq" if n_segments >= HNSWSQ_FROM else "hnsw"


def ivf_quantizer(nlist: int) -> str:
    """How an IVF index of ``nlist`` lists finds the lists to probe: ``"flat"`` (every centroid
    scored, exactly) up to FLAT_QUANTIZER_LISTS lists, ``"hnsw"`` beyond. At 4,386 lists, 18 rows,
    2 threads: 0.7 ms per frame flat against 1.2 ms for the HNSW graph at ef 256 (a throw-away
    timing, README "Large maps"); ``quantizer_m`` and ``quantizer_ef`` matter only to "hnsw"."""
    return "flat" if nlist <= FLAT_QUANTIZER_LISTS else "hnsw"


def ivf_lists(n_segments: int) -> int:
    """Inverted lists for an IVF index of ``n_segments`` vectors: about 512 vectors a list, in [16,
    65536] (at 2.2M segments 8,773 lists cost more per probed list than they save; against 2,193
    lists: README, "Large maps")."""
    return int(np.clip(n_segments // 512, 16, 65536))


class SegmentIndex:
    """``descriptors [N, d] float16 or float32`` (unit norm; may be a memory map). ``search(q [M, d], k)
    -> ids [M, k] int64, sims [M, k] float32`` best first; ids past N (k > N) are -1 with sim -inf.
    ``kind``: one of KINDS ("hnsw", "hnswsq", "ivfpq") or "auto" (``choose_kind``); the structure is built on first use unless
    ``stored`` (``to_arrays()`` of an earlier build, with its ``meta``) is given. ``threads``: of a
    build and a search; -1: the library's default to build, SEARCH_THREADS for a faiss search
    (hnswlib's: all cores)."""

    def __init__(self, descriptors: np.ndarray, kind: str = "auto", threads: int = -1,
                 meta: dict | None = None, stored: dict[str, np.ndarray] | None = None):
        d = descriptors if isinstance(descriptors, np.ndarray) else np.asarray(descriptors)   # memmaps stay mapped
        if d.dtype not in (np.float16, np.float32):
            d = d.astype(np.float16)
        self.descriptors = d
        self.kind = choose_kind(len(d)) if kind == "auto" else kind
        if self.kind not in KINDS:
            raise StoredIndexError(f"unknown index kind {self.kind!r}")
        self.threads = threads
        self.params = {**_KIND[self.kind].params, **(meta or {}).get("params", {})}
        self._impl = None
        self._blob = None               # a faiss index's serialized bytes: it reads them in place (zero-copy)
        self._hnsw_upper = None         # bytes of a loaded hnswlib graph's upper-level links
        if stored is not None:
            self._impl = _KIND[self.kind].load(self, meta, stored)

    def __len__(self) -> int:
        return len(self.descriptors)

    @property
    def dim(self) -> int:
        return self.descriptors.shape[1]

    # ------------------------------------------------------------------ build / store
    def prepare(self):
        """The search structure, built now if it was not stored (seconds per 10k segments)."""
        if self._impl is None:
            self._impl = _KIND[self.kind].build(self)
        return self._impl

    def to_arrays(self) -> tuple[dict, dict[str, np.ndarray]]:
        """``(meta, arrays)`` to store in a bundle: meta ``{"kind", "params", ...}`` (JSON), arrays
        named ``index_*``."""
        impl = self.prepare()
        return _KIND[self.kind].store(self, impl)

    def resident_bytes(self) -> int:
        """Bytes of search data the index holds in RAM beyond the memory-mapped float16 descriptors
        (of which a search reads only the rows it re-scores): hnswlib's float32 vectors, labels and
        links; a faiss index's serialized size (codes + graph or lists)."""
        impl = self.prepare()
        if self.kind != "hnsw":
            return int(self._blob.nbytes if self._blob is not None else _faiss().serialize_index(impl).nbytes)
        p = impl.M                                            # hnswlib: level 0 holds 2M links per element,
        upper = self._hnsw_upper if self._hnsw_upper is not None else \
            len(impl.__getstate__()[0]["link_lists"])         # upper levels M each (their bytes are stored)
        return int(len(self) * (4 + 8 * p + 4 * self.dim + 8) + upper)

    # ------------------------------------------------------------------ search
    def search(self, queries: np.ndarray, k: int, exact: bool = False) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(queries, np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"queries of shape {q.shape}: the index holds {self.dim}-dim descriptors")
        as_bytes = q.view(np.dtype((np.void, q.itemsize * self.dim))).reshape(-1)     # each row as one value,
        _, first, inverse = np.unique(as_bytes, return_index=True, return_inverse=True)  # 25x faster than axis=0
        if len(first) < len(q):         # SuperSegments grown into the same region share a descriptor: search it once
            ids, sims = self.search(q[first], k, exact)
            return ids[inverse], sims[inverse]
        kk = min(k, len(self))
        ids = np.full((len(q), k), -1, np.int64)
        sims = np.full((len(q), k), -np.inf, np.float32)
        if kk == 0 or len(q) == 0:
            return ids, sims
        if exact:
            ids[:, :kk], sims[:, :kk] = self._exact(q, kk)
        elif self.kind == "hnsw":
            idx = self.prepare()
            idx.set_ef(max(self.params["ef"], kk))
            labels, dist = idx.knn_query(q, k=kk, num_threads=self.threads)
            ids[:, :kk] = labels
            sims[:, :kk] = 1 - dist          # hnswlib "ip" distance is 1 - <a, b>
        else:
            ids[:, :kk], sims[:, :kk] = self._rescored_search(q, kk)
        return ids, sims

    def _exact(self, q: np.ndarray, k: int, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k of ``q [M, d] float32`` over all descriptors (or over ``rows [M, C]`` per query,
        -1 = none), in blocks of EXACT_CHUNK rows."""
        if rows is not None:
            valid = rows >= 0
            union, where = np.unique(np.where(valid, rows, 0), return_inverse=True)
            if 2 * len(union) <= rows.size:     # shared candidates (a small map): read once, one product
                s = np.take_along_axis(q @ np.asarray(self.descriptors[union], np.float32).T,
                                       where.reshape(rows.shape), 1)
            else:                               # each query against its own candidates' rows
                cand = np.asarray(self.descriptors[np.where(valid, rows, 0).ravel()], np.float32)
                s = np.matmul(cand.reshape(*rows.shape, -1), q[:, :, None])[..., 0]
            s = np.where(valid, s, -np.inf).astype(np.float32)
            top = np.argsort(-s, axis=1, kind="stable")[:, :k]
            return np.where(np.take_along_axis(valid, top, 1), np.take_along_axis(rows, top, 1), -1), \
                np.take_along_axis(s, top, 1)
        best_i = np.zeros((len(q), 0), np.int64)
        best_s = np.zeros((len(q), 0), np.float32)
        for start in range(0, len(self), EXACT_CHUNK):
            block = np.asarray(self.descriptors[start:start + EXACT_CHUNK], np.float32)
            s = np.concatenate([best_s, q @ block.T], axis=1)
            i = np.concatenate([best_i, np.broadcast_to(np.arange(start, start + len(block)), (len(q), len(block)))], 1)
            kk = min(k, s.shape[1])
            top = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
            best_s, best_i = np.take_along_axis(s, top, 1), np.take_along_axis(i, top, 1)
        order = np.argsort(-best_s, axis=1, kind="stable")
        return np.take_along_axis(best_i, order, 1), np.take_along_axis(best_s, order, 1)

    def _rescored_search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """A faiss kind: ``rerank x k`` candidates by the compressed codes, re-scored exactly."""
        idx = self.prepare()
        # the search's threads, given back after it (as a build's are), so later faiss work keeps the caller's
        with omp_threads(_faiss(), self.threads if self.threads > 0 else SEARCH_THREADS):
            cand = self._candidates(idx, q, k)
        return self._exact(q, k, rows=cand)

    def _candidates(self, idx, q: np.ndarray, k: int) -> np.ndarray:
        """``[M, rerank x k] int64`` candidate rows of a faiss index for ``q`` (-1: none)."""
        p = self.params
        n_cand = min(len(self), int(p["rerank"]) * k)
        if self.kind == "ivfpq":
            ivf = _faiss().extract_index_ivf(idx)
            ivf.nprobe = min(int(p["nprobe"]), ivf.nlist)
            if p["quantizer"] == "hnsw":
                _faiss().downcast_index(ivf.quantizer).hnsw.efSearch = max(int(p["quantizer_ef"]), ivf.nprobe)
            if p["refine"]:
                idx.k_factor = float(p["refine_factor"])
        else:
            idx.hnsw.efSearch = max(int(p["ef"]), n_cand)
        _, cand = idx.search(q, n_cand)
        return np.where((cand >= 0) & (cand < len(self)), cand, -1).astype(np.int64)

    def recall(self, queries: np.ndarray, k: int, tol: float = 1e-4) -> float:
        """Top-k recall of the stored index against exact search (mean over queries), tie-aware: a
        hit counts when its similarity reaches the exact k-th similarity, so of several identical
        descriptors (SuperSegments that grew into the same region) any may fill the last places."""
        _, exact = self.search(queries, k, exact=True)
        _, approx = self.search(queries, k)
        kk = min(k, len(self))
        if kk == 0 or len(queries) == 0:
            return 1.0
        kth = exact[:, kk - 1:kk]
        return float(np.mean(np.minimum((approx[:, :kk] >= kth - tol).sum(1), kk) / kk))


# ---------------------------------------------------------------------- hnswlib
def _build_hnsw(index: SegmentIndex):
    import hnswlib

    p = index.params
    idx = hnswlib.Index(space="ip", dim=index.dim)
    idx.init_index(max_elements=max(len(index), 1), ef_construction=p["ef_construction"], M=p["m"],
                   random_seed=p["seed"])
    for start in range(0, len(index), EXACT_CHUNK):      # float32 copies one block at a time
        block = np.asarray(index.descriptors[start:start + EXACT_CHUNK], np.float32)
        idx.add_items(block, np.arange(start, start + len(block)), num_threads=index.threads)
    return idx


HNSW_SCALARS = ("max_M", "max_M0", "mult", "max_level", "enterpoint_node")


def _hnsw_to_arrays(index: SegmentIndex, idx) -> tuple[dict, dict]:
    """hnswlib's state without its float32 vector copies: level-0 links ``[N, 4 + 4 max_M0] uint8``,
    the label of each internal element ``[N] int32``, element levels ``[N] int32`` and the upper
    levels' link lists ``[L] uint8``."""
    (s,) = idx.__getstate__()
    n = int(s["cur_element_count"])
    level0 = s["data_level0"].view(np.uint8)[:n * s["size_data_per_element"]].reshape(n, s["size_data_per_element"])
    labels = np.ascontiguousarray(level0[:, s["label_offset"]:s["label_offset"] + 8]).view(np.uint64).ravel()
    meta = {"kind": "hnsw", "params": index.params, "count": n, **{k: s[k] for k in HNSW_SCALARS}}
    meta["mult"] = float(meta["mult"])
    return meta, {"index_links0": np.ascontiguousarray(level0[:, :s["offset_data"]]),
                  "index_labels": labels.astype(np.int32),
                  "index_levels": s["element_levels"].astype(np.int32),
                  "index_upper": s["link_lists"].view(np.uint8)}


def _check_links(links: np.ndarray, max_links: int, n: int, what: str) -> None:
    """``links [R, 1 + max_links] uint32`` rows of (count, ids...): counts and ids in range."""
    count = links[:, 0] & 0xFFFF
    if (count > max_links).any():
        raise StoredIndexError(f"stored HNSW {what} links: a list is longer than M allows")
    used = np.arange(max_links)[None, :] < count[:, None]
    if (links[:, 1:][used] >= n).any():
        raise StoredIndexError(f"stored HNSW {what} links point past the {n} segments")


def _hnsw_from_arrays(index: SegmentIndex, meta: dict, a: dict):
    """hnswlib index from stored arrays, refilled with the float32 vectors; every link, level and
    label is checked first (hnswlib trusts its state)."""
    import hnswlib

    n, dim = len(index), index.dim
    try:
        max_m, max_m0, max_level, entry = (int(meta[k]) for k in ("max_M", "max_M0", "max_level", "enterpoint_node"))
        mult, count = float(meta["mult"]), int(meta["count"])
        links0, labels, levels, upper = a["index_links0"], a["index_labels"], a["index_levels"], a["index_upper"]
    except (KeyError, TypeError, ValueError) as e:
        raise StoredIndexError(f"stored HNSW index is incomplete ({e})") from None
    off = 4 + 4 * max_m0
    per_upper = 4 + 4 * max_m
    if count != n or links0.shape != (n, off) or labels.shape != (n,) or levels.shape != (n,) \
            or not (0 < max_m <= 1024 and max_m0 <= 2048) or links0.dtype != np.uint8 or upper.dtype != np.uint8:
        raise StoredIndexError(f"stored HNSW index does not match the {n} descriptors")
    if n and (np.sort(labels) != np.arange(n)).any():
        raise StoredIndexError("stored HNSW labels are not a permutation of the segments")
    if (levels < 0).any() or (n and (int(levels.max()) != max_level or not 0 <= entry < n)) \
            or int(levels.sum(dtype=np.int64)) * per_upper != len(upper):
        raise StoredIndexError("stored HNSW levels disagree with the link lists")
    _check_links(np.ascontiguousarray(links0).view(np.uint32), max_m0, n, "level-0")
    _check_links(np.frombuffer(upper.tobytes(), np.uint32).reshape(-1, 1 + max_m), max_m, n, "upper-level")
    size = off + 4 * dim + 8
    data = np.empty((n, size), np.uint8)
    data[:, :off] = links0
    for start in range(0, n, EXACT_CHUNK):
        sl = slice(start, start + EXACT_CHUNK)
        data[sl, off:off + 4 * dim] = np.asarray(index.descriptors[labels[sl]], np.float32).view(np.uint8)
    data[:, off + 4 * dim:] = labels.astype(np.uint64)[:, None].view(np.uint8)
    p = index.params
    state = {"ser_version": 1, "space": "ip", "dim": dim, "index_inited": True, "ep_added": True,
             "normalize": False, "num_threads": index.threads if index.threads > 0 else 1, "seed": p["seed"],
             "offset_level0": 0, "max_elements": max(n, 1), "cur_element_count": n, "size_data_per_element": size,
             "label_offset": off + 4 * dim, "offset_data": off, "max_level": max_level, "enterpoint_node": entry,
             "max_M": max_m, "max_M0": max_m0, "M": p["m"], "mult": mult, "ef_construction": p["ef_construction"],
             "ef": p["ef"], "has_deletions": False, "size_links_per_element": per_upper,
             "allow_replace_deleted": False, "label_lookup_external": labels.astype(np.uint64),
             "label_lookup_internal": np.arange(n, dtype=np.uint32), "element_levels": levels.astype(np.int32),
             "data_level0": data.view(np.int8).ravel(), "link_lists": np.asarray(upper).view(np.int8)}
    idx = hnswlib.Index.__new__(hnswlib.Index)
    idx.__setstate__((state,))
    index._hnsw_upper = len(upper)
    return idx


# ---------------------------------------------------------------------- faiss (IVF-PQ, HNSW-SQ)
def _faiss():
    return require("faiss", None, "this map's index", StoredIndexError, how="`pip install faiss-cpu`")


def _training_rows(index: SegmentIndex) -> np.ndarray:
    """``[T, d] float32``: at most ``train_max`` descriptors drawn with the params' seed."""
    p, n = index.params, len(index)
    rng = np.random.default_rng(p["seed"])
    return np.asarray(index.descriptors[np.sort(rng.choice(n, min(n, int(p["train_max"])), replace=False))], np.float32)


def _add_all(index: SegmentIndex, idx) -> None:
    for start in range(0, len(index), EXACT_CHUNK):        # float32 copies one block at a time
        idx.add(np.asarray(index.descriptors[start:start + EXACT_CHUNK], np.float32))


def _build_ivfpq(index: SegmentIndex):
    """faiss IVF-PQ fast-scan: ``nlist`` inverted lists found by scoring all their centroids
    (``quantizer`` "flat") or by an HNSW graph over them ("hnsw"; "auto": ``ivf_quantizer``), 4-bit
    codes of ``pq_m`` sub-vectors of each vector's residual to its list centroid (``by_residual``;
    False codes the vectors themselves: one lookup table per query, cheaper per list but less
    accurate), and with ``refine`` "sq8" an 8-bit scalar-quantised copy (faiss IndexRefine) that
    re-orders the ``refine_factor x`` candidates of the fast scan before the exact re-scoring."""
    faiss = _faiss()
    p, n, dim = index.params, len(index), index.dim
    p["nlist"] = nlist = int(p.get("nlist") or ivf_lists(n))
    p["nprobe"] = min(int(p["nprobe"]), nlist)
    p["pq_m"] = math.gcd(int(p["pq_m"]), dim)          # sub-quantizers must divide the dimension
    if p["quantizer"] == "auto":
        p["quantizer"] = ivf_quantizer(nlist)
    if p["quantizer"] not in ("flat", "hnsw"):
        raise ValueError(f"IVF-PQ quantizer {p['quantizer']!r}: choose auto, flat or hnsw")
    if p["quantizer"] == "hnsw":
        quantizer = faiss.IndexHNSWFlat(dim, int(p["quantizer_m"]), faiss.METRIC_INNER_PRODUCT)
        quantizer.hnsw.efConstruction = 40
    else:
        quantizer = faiss.IndexFlatIP(dim)
    ivf = faiss.IndexIVFPQFastScan(quantizer, dim, nlist, int(p["pq_m"]), 4, faiss.METRIC_INNER_PRODUCT)
    ivf.by_residual = bool(p["by_residual"])
    ivf.cp.seed = int(p["seed"])
    ivf.cp.min_points_per_centroid = 5                 # train_max rows train up to train_max / 5 lists (60k at
                                                       # 300k rows: maps under 30M segments; faiss warns beyond)
    ivf.pq.cp.seed = int(p["seed"])
    idx = ivf
    if p["refine"] == "sq8":
        idx = faiss.IndexRefine(ivf, faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit,
                                                                faiss.METRIC_INNER_PRODUCT))
        idx.k_factor = float(p["refine_factor"])
    _train_and_add(index, idx)
    return idx


def _build_hnswsq(index: SegmentIndex):
    """faiss ``IndexHNSWSQ``: per-dimension 8-bit codes (ranges trained on ``train_max`` rows), inner
    product, ``m`` links per node (2m on level 0)."""
    faiss = _faiss()
    p = index.params
    if p["qtype"] not in SQ_TYPES or len(index) == 0:
        raise StoredIndexError(f"an HNSW-SQ index needs segments and a quantiser of {SQ_TYPES}, not {p['qtype']!r}")
    idx = faiss.IndexHNSWSQ(index.dim, getattr(faiss.ScalarQuantizer, p["qtype"]), int(p["m"]),
                            faiss.METRIC_INNER_PRODUCT)
    idx.hnsw.efConstruction = int(p["ef_construction"])
    _train_and_add(index, idx)
    return idx


def _train_and_add(index: SegmentIndex, idx) -> None:
    """Train a faiss index on ``_training_rows`` and add every descriptor, on the index's threads
    (restored after, like the search's)."""
    with omp_threads(_faiss(), index.threads if index.threads > 0 else None):
        idx.train(_training_rows(index))
        _add_all(index, idx)


def _faiss_to_arrays(index: SegmentIndex, idx) -> tuple[dict, dict]:
    return {"kind": index.kind, "params": index.params, "count": int(idx.ntotal)}, \
        {"index_faiss": _faiss().serialize_index(idx)}


def _faiss_from_arrays(index: SegmentIndex, meta: dict, a: dict):
    """The stored faiss index, read in place from the (memory-mapped) bundle array: its codes and
    links are the bundle's pages, not a copy. Type, size, dimension and metric are checked, an
    HNSW graph's links and levels (faiss trusts them) and the search parameters before any search."""
    faiss = _faiss()
    name = KIND_NAMES[index.kind]
    blob = a.get("index_faiss")
    if blob is None or blob.dtype != np.uint8 or blob.ndim != 1 or not blob.flags.c_contiguous:
        raise StoredIndexError(f"stored {name} index is missing or malformed")
    try:
        reader = faiss.ZeroCopyIOReader(faiss.cast_integer_to_uint8_ptr(blob.ctypes.data), blob.nbytes)
        idx = faiss.read_index(reader)          # already of its own class; codes and links are views of blob
    except RuntimeError as e:
        raise StoredIndexError(f"stored {name} index is unreadable ({str(e).strip().splitlines()[0]})") from None
    cls = {"ivfpq": (faiss.IndexIVFPQFastScan, faiss.IndexRefine), "hnswsq": (faiss.IndexHNSWSQ,)}[index.kind]
    if not isinstance(idx, cls) or idx.ntotal != len(index) or idx.d != index.dim \
            or idx.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise StoredIndexError(f"stored {name} index holds {idx.ntotal}x{idx.d} ({type(idx).__name__}), "
                               f"not the {len(index)}x{index.dim} descriptors")
    if index.kind == "hnswsq":
        _check_faiss_hnsw(faiss, idx.hnsw, len(index), name)
        _check_params(index.params, name, rerank=(1, 1000), ef=(1, 1 << 16))
    else:
        _check_ivf(faiss, idx, index)
    index._blob = blob                  # the index reads these bytes: they live as long as it does
    return idx


def _check_params(params: dict, name: str, **ranges: tuple[int, int]) -> None:
    """Search parameters stored with an index: each an integer within its range."""
    for key, (lo, hi) in ranges.items():
        v = params.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise StoredIndexError(f"stored {name} index: {key} is not an integer in [{lo}, {hi}]")


def _check_ivf(faiss, idx, index: SegmentIndex) -> None:
    """A stored IVF-PQ index (a fast-scan IVF, optionally inside an IndexRefine with an 8-bit
    scalar-quantised copy): its structure is read from the index into ``index.params`` (maps
    written before the HNSW quantiser and the refine stage load as they were built), and the
    stored search parameters are checked against it."""
    p, n = index.params, len(index)
    refine = None
    if isinstance(idx, faiss.IndexRefine):
        refine = faiss.downcast_index(idx.refine_index)
        base = faiss.downcast_index(idx.base_index)
        if not isinstance(base, faiss.IndexIVFPQFastScan) or not isinstance(refine, faiss.IndexScalarQuantizer) \
                or refine.sq.qtype != faiss.ScalarQuantizer.QT_8bit or refine.ntotal != n or base.ntotal != n \
                or refine.d != index.dim or base.d != index.dim or refine.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise StoredIndexError("stored IVF-PQ index: its refine stage is not an IVF-PQ fast scan over an "
                                   f"8-bit scalar-quantised copy of the {n} descriptors")
        idx = base
    quantizer = faiss.downcast_index(idx.quantizer)
    if quantizer.ntotal != idx.nlist or quantizer.d != index.dim \
            or not isinstance(quantizer, (faiss.IndexFlatIP, faiss.IndexHNSWFlat)):
        raise StoredIndexError(f"stored IVF-PQ index: its quantiser ({type(quantizer).__name__}) does not hold "
                               f"the {idx.nlist} list centroids")
    if isinstance(quantizer, faiss.IndexHNSWFlat):
        _check_faiss_hnsw(faiss, quantizer.hnsw, idx.nlist, "IVF-PQ quantiser")
    p.update(nlist=int(idx.nlist), pq_m=int(idx.M), by_residual=bool(idx.by_residual),
             quantizer="hnsw" if isinstance(quantizer, faiss.IndexHNSWFlat) else "flat",
             refine="sq8" if refine is not None else None)
    _check_params(p, "IVF-PQ", nprobe=(1, idx.nlist), rerank=(1, 1000), quantizer_ef=(1, 1 << 16),
                  refine_factor=(1, 1000))
    if p["rerank"] * p["refine_factor"] > MAX_CANDIDATE_FACTOR:
        raise StoredIndexError(f"stored IVF-PQ index: rerank x refine_factor is over {MAX_CANDIDATE_FACTOR} "
                               "candidates per result")
    _check_list_ids(faiss, idx, n)


def _check_list_ids(faiss, ivf, n: int) -> None:
    """The ids in an IVF index's inverted lists: each of the ``n`` descriptors exactly once."""
    inv = ivf.invlists
    sizes = [inv.list_size(lst) for lst in range(ivf.nlist)]
    ids = np.concatenate([faiss.rev_swig_ptr(inv.get_ids(lst), size).astype(np.int64)
                          for lst, size in enumerate(sizes) if size] or [np.zeros(0, np.int64)])
    if len(ids) != n or (n and (ids.min() < 0 or ids.max() >= n or np.bincount(ids, minlength=n).max() != 1)):
        raise StoredIndexError(f"stored IVF-PQ index: its inverted lists do not hold each of the {n} descriptors once")


def _check_faiss_hnsw(faiss, h, n: int, name: str) -> None:
    """A faiss HNSW graph over ``n`` nodes (``name``: the index, for messages): per-node levels and
    neighbour offsets agree, every link is -1 (none) or a node, the entry point is a node on the
    top level."""
    levels = faiss.vector_to_array(h.levels)
    offsets = faiss.vector_to_array(h.offsets).astype(np.int64)
    size = h.neighbors.size()
    links = faiss.rev_swig_ptr(h.neighbors.data(), size) if size else np.zeros(0, np.int32)
    cum = faiss.vector_to_array(h.cum_nneighbor_per_level).astype(np.int64)
    if len(levels) != n or len(offsets) != n + 1 or (n and ((levels < 1).any() or levels.max() > len(cum) - 1)):
        raise StoredIndexError(f"stored {name} graph does not match its {n} nodes")
    if offsets[0] != 0 or (np.diff(offsets) != cum[levels]).any() or offsets[-1] != size:
        raise StoredIndexError(f"stored {name} levels disagree with the link lists")
    if n and not (0 <= h.entry_point < n and levels[h.entry_point] - 1 == h.max_level == levels.max() - 1):
        raise StoredIndexError(f"stored {name} entry point is not a node of the top level")
    for start in range(0, size, 1 << 24):
        block = links[start:start + (1 << 24)]
        if ((block < -1) | (block >= n)).any():
            raise StoredIndexError(f"stored {name} links point past the {n} nodes")


class _Kind(NamedTuple):
    """A kind's default params and its build, store (``to_arrays``) and load (stored arrays) steps."""
    params: dict
    build: Callable
    store: Callable
    load: Callable


_KIND = {"hnsw": _Kind(HNSW, _build_hnsw, _hnsw_to_arrays, _hnsw_from_arrays),
         "hnswsq": _Kind(HNSWSQ, _build_hnswsq, _faiss_to_arrays, _faiss_from_arrays),
         "ivfpq": _Kind(IVFPQ, _build_ivfpq, _faiss_to_arrays, _faiss_from_arrays)}


# ---------------------------------------------------------------------- bundles
def store_index(bundle, kind: str = "auto", threads: int = -1) -> SegmentIndex:
    """Build the search structure over ``bundle.arrays["descriptors"]`` and store it in the bundle
    (``meta["index"]``, ``arrays["index_*"]``), replacing any earlier one. Returns the index."""
    for name in [n for n in bundle.arrays if n.startswith("index_")]:
        del bundle.arrays[name]
    index = SegmentIndex(bundle.arrays["descriptors"], kind, threads)
    bundle.meta["index"], stored = index.to_arrays()
    bundle.arrays.update(stored)
    return index


def open_index(bundle, threads: int = -1) -> SegmentIndex:
    """The bundle's stored search structure (checked, not rebuilt), or, for a bundle without one, an
    HNSW index built on first use."""
    meta = bundle.meta.get("index")
    if meta is None:
        return SegmentIndex(bundle.arrays["descriptors"], "hnsw", threads)
    stored = {n: a for n, a in bundle.arrays.items() if n.startswith("index_")}
    return SegmentIndex(bundle.arrays["descriptors"], meta["kind"], threads, meta, stored)

"""MapBundle: one self-describing, checksummed file a user copies to a robot. No pickle.

The container (also used for domain fits, ``runtime/mapfiles/domain.py``) is, little-endian::

    magic        16 bytes  b"SEGVLAD-MAP\\r\\n\\x1a\\n\\x00"
    version       u32      FORMAT_VERSION
    header_len    u64      bytes of the JSON header
    header_sha256 32 bytes sha256 of the JSON header
    header        JSON     {"meta": {...}, "arrays": {name: {dtype, shape, offset, nbytes, sha256}}}
    arrays        raw      each at a 64-byte aligned offset

``meta["format"]`` says what the file is ("segvlad-edge map" or "segvlad-edge domain"). A map's
header is checked against one schema (``META``, ``runtime/settings.py``, ``ARRAYS``): types,
ranges, finiteness, safe names; its models (vocabulary, PCA, descriptors, calibration) are
checked to be finite and non-degenerate.

Every size is checked against the file before anything is allocated, every array against
its sha256, and the arrays against each other, before a bundle is used. Arrays of MMAP_FROM
bytes or more (descriptors, label maps, the stored index) are hashed by streaming the file and
then memory-mapped read-only, so a large map costs RAM only for the pages a search touches.
The spatial verification codes (``LAZY_ARRAYS``: 96 KiB per image, 9.4 GB at 100k images, read
only for the few shortlisted images of a frame) carry, from format 4 on, a sha256 per block of
``block_rows`` leading rows (about BLOCK_BYTES) in their header entry: they are memory-mapped
without a full hash and each block is hashed and checked for finite values when first read
(``CheckedRows``), so no unchecked byte is used and loading does not read them. Format 3 files
(one sha256 per array) still load, their codes hashed in full. Writes are atomic
(``files.atomic_write``) and streamed block by block (``write_arrays``), so memory-mapped arrays
of any size (the codes a build gathers on disk, ``rows_on_disk``) are written in bounded memory.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from segvlad_edge.errors import FileSafetyError, SegvladError, printable
from segvlad_edge.files import atomic_write, open_regular
from segvlad_edge.runtime.settings import Settings
from segvlad_edge.schema import FILE_NAME, Int, Json, List, Obj, Optional, SchemaError, Str

MAGIC = b"SEGVLAD-MAP\r\n\x1a\n\x00"
FORMAT_VERSION = 4          # 3: typed settings (pca_dims = the PCA asked for), header checked by one schema,
                            # spatial verification data (verify_*), confidence in verified inliers;
                            # 4: per-block sha256 of the LAZY_ARRAYS, checked on first read
OLDEST_VERSION = 3          # the oldest format this version reads
PREFIX = struct.Struct("<16sIQ32s")
ALIGN = 64
MAX_HEADER_BYTES = 64 << 20
MAX_IMAGES = 100_000_000
DTYPES = {"float16", "float32", "int32", "uint8"}
ARRAYS = {   # name: (dtype, rank, required); one line per array a map bundle may hold
    "descriptors": ("float16", 2, True), "segments_per_image": ("int32", 1, True),
    "segment_labels": ("uint8", 2, True), "vocab_centers": ("float32", 2, False),
    "pca_mean": ("float32", 1, False), "pca_components": ("float16", 2, False), "pca_scale": ("float32", 1, False),
    "calib_negatives": ("float32", 1, False),
    "verify_mean": ("float32", 1, False), "verify_components": ("float32", 2, False),
    "verify_codes": ("float16", 3, False),
    "index_links0": ("uint8", 2, False), "index_labels": ("int32", 1, False),        # stored search index
    "index_levels": ("int32", 1, False), "index_upper": ("uint8", 1, False),         # (runtime/steps/index.py)
    "index_faiss": ("uint8", 1, False),
}
VERIFY_ARRAYS = ("verify_mean", "verify_components", "verify_codes")   # spatial verification: all or none
ROW_CHECKED = {"descriptors", "vocab_centers", "pca_components"}   # finite and non-zero row by row (_finite_rows)
MMAP_ARRAYS = {"verify_codes"}        # read per shortlist: memory-mapped, not held in RAM, at any size
MMAP_FROM = 1 << 20                   # arrays of this many bytes or more are memory-mapped, not read
LAZY_ARRAYS = {"verify_codes"}        # format 4: checked block by block on first read, not at load
BLOCK_BYTES = 4 << 20                 # a LAZY_ARRAYS block: whole leading rows, about this many bytes when written
MAX_BLOCK_BYTES = 256 << 20           # a block a reader accepts (a whole block is hashed at once)
MAX_ARRAY_BYTES = 1 << 40             # no dimension of an array's shape, zero-sized or not, may imply more
HASH_CHUNK = 8 << 20
HEX64 = Str(pattern=r"[0-9a-f]{64}")
GRID = List(Int(1, 1024), 2, 2)
ENGINE = Obj({"source_sha256": HEX64, "input_size": List(Int(14, 16384), 2, 2), "patch_size": Int(1, 64),
              "block": Int(0, 255), "facet": Str(("query", "key", "value", "token")), "dim": Int(1, 16384),
              "patch_grid": GRID, "file": FILE_NAME, "source_name": Optional(Str(max_len=256))})
FITS = {"map": Obj({"source": Str(("map",)), "images": Int(0, MAX_IMAGES)}),
        "domain": Obj({"source": Str(("domain",)), "file": FILE_NAME, "sha256": HEX64, "settings": Json(),
                       "images": Optional(Int(0, MAX_IMAGES)), "sources": Optional(List(Str()))},
                      optional=("images", "sources"))}
IMAGE = Obj({"name": Str(max_len=4096), "meta": Json(), "root": Str(max_len=4096)}, optional=("meta", "root"))
META = Obj({"format": Str(("segvlad-edge map",)), "format_version": Int(OLDEST_VERSION, FORMAT_VERSION),
            "created": Str(max_len=64), "created_by": Str(max_len=256), "engine": ENGINE, "settings": Json(),
            "fit": Json(), "images": List(IMAGE, 1, MAX_IMAGES), "images_root": Str(), "modified": Str(max_len=64),
            "index": Json()},                 # the stored search structure: runtime/steps/index.py checks its fields
           optional=("images_root", "modified", "index"))


class BundleError(SegvladError, ValueError):
    """A map bundle is unreadable, corrupted, inconsistent or not for this engine."""


def check_name(name, where="image") -> str:
    """An image name a bundle may store: relative, POSIX, no ``..``, no backslash, no control
    characters. Raises BundleError naming it escaped."""
    p = PurePosixPath(name) if isinstance(name, str) else None
    if p is None or not name or p.is_absolute() or ".." in p.parts or "\\" in name \
            or any(not c.isprintable() for c in name):
        raise BundleError(f"{where}: unsafe or invalid image name {printable(repr(name))}")
    return name


@dataclass
class MapBundle:
    """``meta``: JSON-able facts (format, engine signature, settings, image table with metadata);
    ``arrays`` (``ARRAYS``): ``descriptors [N, d] float16``, ``segments_per_image [I] int32``,
    ``segment_labels [I, h*w] uint8`` (base segment of each patch, 255 = none) and, when
    ``meta["fit"]["source"] == "map"``, ``vocab_centers [K, D] float32``, ``pca_mean [K*D]``,
    ``pca_components [d, K*D] float16``, ``pca_scale [d]`` (d <= settings.pca_dims); a
    domain-fitted bundle instead names the domain file kept beside the engines and its sha256 in
    ``meta["fit"]``; ``calib_negatives [<=I] float32`` (sorted, in [0, 1]) calibrates the
    confidence (runtime/steps/confidence.py); spatial verification (runtime/steps/verification.py):
    ``verify_mean [C] float32``, ``verify_components [d, C] float32`` and ``verify_codes
    [I, h*w, d] float16`` (memory-mapped on read); ``meta["index"]`` and the ``index_*`` arrays
    hold the stored search structure (runtime/steps/index.py; maps written by ``build-map`` always carry
    one, a bundle without one gets an HNSW graph built at load). ``header_sha256``: hex sha256 of
    the sealed header the bundle was read or last written with (it holds every array's sha256: the
    content's id); None for one only made in memory."""

    meta: dict
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    path: Path | None = None
    header_sha256: str | None = None

    # ------------------------------------------------------------------ derived views
    @property
    def images(self) -> list[dict]:
        return self.meta["images"]

    @property
    def settings(self) -> Settings:
        return Settings.parse(self.meta["settings"])

    @property
    def segment_image(self) -> np.ndarray:
        """``[N] int64`` map image of each segment."""
        counts = self.arrays["segments_per_image"]
        return np.repeat(np.arange(len(counts)), counts)

    @property
    def segment_offsets(self) -> np.ndarray:
        """``[I + 1] int64``: image ``i``'s segments are rows ``offsets[i]:offsets[i + 1]``."""
        return np.concatenate([[0], np.cumsum(self.arrays["segments_per_image"], dtype=np.int64)])

    # ------------------------------------------------------------------ write / read
    def write(self, path: str | os.PathLike, inputs=()) -> int:
        """Write atomically (never over one of ``inputs``); returns the file size in bytes."""
        self.validate()
        self.meta["format_version"] = FORMAT_VERSION        # an edited older map is written in this format
        size = write_arrays(path, self.meta, self.arrays, inputs)
        self.path, self.header_sha256 = Path(path), header_sha256(path)
        return size

    @classmethod
    def read(cls, path: str | os.PathLike) -> "MapBundle":
        meta, arrays, sealed = _read_file(path, "map bundle")
        if meta.get("format") != "segvlad-edge map":
            raise BundleError(f"{path}: a {printable(repr(meta.get('format')))} file, not a map bundle")
        bundle = cls(meta, arrays, Path(path), sealed)
        bundle.validate()
        return bundle

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """The header against the schema, the arrays against ``ARRAYS`` and each other, the
        models for finiteness; raises BundleError naming the first problem."""
        where = self.path or "bundle"
        try:
            META.check(self.meta)
            settings = Settings.parse(self.meta["settings"])
            fit = self.meta["fit"]
            FITS[Str(tuple(FITS)).check(fit.get("source") if isinstance(fit, dict) else fit, "fit.source")].check(
                fit, "fit")
        except SchemaError as e:
            raise BundleError(f"{where}: header: {e}") from None
        for img in self.images:
            check_name(img["name"], where)
        self._check_arrays(where)
        a, m = self.arrays, self.meta
        desc, counts, labels = a["descriptors"], a["segments_per_image"], a["segment_labels"]
        n_img = len(self.images)
        if len(counts) != n_img or len(labels) != n_img:
            raise BundleError(f"{where}: segment table has {len(counts)} images, image table {n_img}")
        if (counts < 0).any() or int(counts.sum(dtype=np.int64)) != len(desc):
            raise BundleError(f"{where}: segment table points past the descriptors ({int(counts.sum())} vs {len(desc)})")
        used = labels != 255
        top_label = np.where(used, labels, 0).max(1, initial=0)
        if (used.any(1) & (top_label >= np.minimum(counts, 255))).any():
            raise BundleError(f"{where}: segment labels point past their image's segments (segment table out of order)")
        e = m["engine"]
        grid = list(e["patch_grid"])
        if grid != [e["input_size"][1] // e["patch_size"], e["input_size"][0] // e["patch_size"]]:
            raise BundleError(f"{where}: patch grid {grid} does not fit input {e['input_size']} / patch {e['patch_size']}")
        if labels.shape[1] != grid[0] * grid[1]:
            raise BundleError(f"{where}: segment label maps do not match the engine's patch grid {grid}")
        if not _finite_rows(desc).all():
            raise BundleError(f"{where}: descriptors that are NaN, infinite or all zero")
        calib = a.get("calib_negatives")
        if calib is not None and (len(calib) > n_img or not np.all((calib >= 0) & (calib <= 1))
                                  or np.any(np.diff(calib) < 0)):
            raise BundleError(f"{where}: confidence calibration table is malformed (not sorted in [0, 1])")
        self._validate_verification(where, settings)
        index = m.get("index")
        if index is not None and (not isinstance(index, dict) or index.get("kind") not in ("hnsw", "hnswsq", "ivfpq")
                                  or not isinstance(index.get("params"), dict)):
            raise BundleError(f"{where}: the stored search index record is malformed")
        if m["fit"]["source"] == "domain":
            if m["fit"]["settings"] != settings.fit_part():
                raise BundleError(f"{where}: domain fit settings {m['fit']['settings']} disagree with the map's")
            if any(n in a for n in ("vocab_centers", "pca_mean", "pca_components", "pca_scale")):
                raise BundleError(f"{where}: a domain-fitted bundle holds its own vocabulary/PCA")
            return
        check_models(a, settings, desc.shape[1], where)

    def _check_arrays(self, where) -> None:
        """Known names, dtypes and ranks, required arrays present; float arrays finite, except the
        ``ROW_CHECKED`` ones, which ``validate`` / ``check_models`` scan once for finite, non-zero rows,
        and the ``CheckedRows`` ones, checked block by block when read."""
        for name, arr in self.arrays.items():
            if name not in ARRAYS:
                raise BundleError(f"{where}: unknown array {printable(repr(name))}")
            dtype, rank, _ = ARRAYS[name]
            if arr.dtype.name != dtype or arr.ndim != rank:
                raise BundleError(f"{where}: array {name!r} is {arr.dtype.name} rank {arr.ndim}, expected {dtype} "
                                  f"rank {rank}")
            if arr.dtype.kind == "f" and name not in ROW_CHECKED and not isinstance(arr, CheckedRows) \
                    and not all(np.isfinite(block).all() for block in row_blocks(arr)):
                raise BundleError(f"{where}: array {name!r} holds NaN or infinite values")
        missing = [n for n, (_, _, required) in ARRAYS.items() if required and n not in self.arrays]
        if missing:
            raise BundleError(f"{where}: array {missing[0]!r} is missing")

    def _validate_verification(self, where, settings: Settings) -> None:
        """The verification arrays come all together (and with ``verify_top`` > 0), agree with each
        other, the image table and the patch grid (dtypes and ranks: ``_check_arrays``)."""
        a, grid = self.arrays, self.meta["engine"]["patch_grid"]
        present = [n for n in VERIFY_ARRAYS if n in a]
        if not present:
            return
        if len(present) != len(VERIFY_ARRAYS):
            raise BundleError(f"{where}: spatial verification arrays are incomplete ({', '.join(present)})")
        d, c = a["verify_components"].shape
        if a["verify_mean"].shape != (c,) or a["verify_codes"].shape != (len(self.images), grid[0] * grid[1], d):
            raise BundleError(f"{where}: spatial verification arrays disagree with each other, the image table "
                              "or the patch grid")


def row_blocks(x, rows: int | None = None):
    """``x`` (an array, ``np.memmap`` or ``CheckedRows``) in blocks of ``rows`` leading rows
    (default ``block_rows``: about BLOCK_BYTES, bounded temporaries on memory-mapped arrays; a
    ``CheckedRows`` block is checked as it is read); at least one block, empty for an empty
    ``x``; a 0-d ``x`` whole."""
    if not x.ndim:
        return (x,)
    rows = rows or block_rows(x.shape, x.dtype.itemsize)
    return (x[i:i + rows] for i in range(0, max(len(x), 1), rows))


def _finite_rows(x: np.ndarray) -> np.ndarray:
    """``[N] bool``: rows that are finite and not all zero (computed block by block)."""
    out = []
    for b in row_blocks(x):
        b = np.asarray(b, np.float32)                   # one float32 copy per block
        out.append(np.isfinite(b).all(1) & (np.abs(b).max(1, initial=0) > 0))
    return np.concatenate(out) if out else np.zeros(0, bool)


def check_models(a: dict, settings: Settings, dims: int | None, where) -> None:
    """Vocabulary and PCA arrays: finite, non-degenerate (no zero centre, component or scale),
    agreeing with each other, with ``settings`` (vocabulary size; PCA asked for or not, at most
    its dimension) and with the descriptor dimension ``dims`` (None: no descriptors, as in a
    domain file)."""
    v = a.get("vocab_centers")
    if v is None or v.ndim != 2 or v.dtype != np.float32 or not v.size:
        raise BundleError(f"{where}: vocabulary is missing or malformed")
    k, d = v.shape
    if k != settings.vocab_k:
        raise BundleError(f"{where}: vocabulary has {k} words, settings say {settings.vocab_k}")
    if not _finite_rows(v).all():
        raise BundleError(f"{where}: vocabulary centres that are NaN, infinite or all zero")
    pca = [n for n in ("pca_mean", "pca_components", "pca_scale") if n in a]
    if settings.pca_dims is None:
        if pca:
            raise BundleError(f"{where}: PCA arrays in a bundle whose settings ask for no PCA")
        if dims is not None and dims != k * d:
            raise BundleError(f"{where}: descriptors have {dims} dims, the vocabulary gives {k * d}")
        return
    if len(pca) != 3:
        raise BundleError(f"{where}: PCA array {({'pca_mean', 'pca_components', 'pca_scale'} - set(pca)).pop()!r} "
                          "is missing")
    comps, mean, scale = a["pca_components"], a["pca_mean"], a["pca_scale"]
    dims = comps.shape[0] if dims is None else dims
    if comps.shape != (dims, k * d) or mean.shape != (k * d,) or scale.shape != (dims,) \
            or not 1 <= dims <= settings.pca_dims:
        raise BundleError(f"{where}: PCA shapes disagree with the vocabulary, the settings (PCA {settings.pca_dims}) "
                          "and the descriptor dimension")
    if not np.isfinite(mean).all() or not _finite_rows(comps).all() or not (scale > 0).all():
        raise BundleError(f"{where}: PCA is degenerate (NaN or infinite values, a zero component or a zero scale)")


# ---------------------------------------------------------------------- the container
def write_arrays(path: str | os.PathLike, meta: dict, arrays: dict[str, np.ndarray], inputs=()) -> int:
    """Write ``meta`` + ``arrays`` in the container layout above, atomically (files.atomic_write:
    temporary file, fsync, rename; never over one of ``inputs`` or a special file). Returns the
    file size in bytes.

    The arrays (numpy arrays, ``np.memmap`` or ``CheckedRows``) are streamed in blocks of
    ``block_rows`` leading rows (about BLOCK_BYTES; one copy of a block in RAM at a time, so a
    memory-mapped array of any size is written in bounded memory): each block is written at its
    place after the header and hashed as it is written. The header's length does not depend on
    the hashes (64 hex digits each), so it is laid out first with placeholders, which fixes where
    the data starts, and written, sealed, once every array is through."""
    arrays = {name: arr if isinstance(arr, (np.ndarray, CheckedRows)) else np.asarray(arr)
              for name, arr in arrays.items()}
    odd = [name for name, arr in arrays.items() if not arr.dtype.isnative]
    if odd:
        raise BundleError(f"array {odd[0]!r} is not in this machine's byte order; convert it before writing")
    entries, end = _layout(arrays)
    header = _header(meta, entries, end)                # placeholders: the same length as the sealed one
    start = data_start(len(header))
    with atomic_write(path, inputs) as f:
        for name, arr in arrays.items():
            f.seek(start + entries[name]["offset"])
            entries[name].update(_write_array(f, arr, name in LAZY_ARRAYS and arr.ndim > 0))
        sealed = _header(meta, entries, end)
        if len(sealed) != len(header):                  # the data would not start where it was written
            raise BundleError(f"{path}: internal error: the sealed header's length moved; nothing written")
        f.seek(0)
        f.write(PREFIX.pack(MAGIC, FORMAT_VERSION, len(sealed), hashlib.sha256(sealed).digest()))
        f.write(sealed)
        f.truncate(start + end)
    return Path(path).stat().st_size


def data_start(header_len: int) -> int:
    """Byte offset of the arrays' data in a container file whose header is ``header_len`` bytes:
    after the prefix and the header, at the next multiple of ALIGN."""
    return -(-(PREFIX.size + header_len) // ALIGN) * ALIGN


def _layout(arrays: dict) -> tuple[dict, int]:
    """``({name: header entry with placeholder hashes}, data bytes)``: each array at a multiple of
    ALIGN after the previous one, in order."""
    entries, offset, end = {}, 0, 0
    placeholder = "0" * 64
    for name, arr in arrays.items():
        nbytes = int(arr.nbytes)
        entries[name] = {"dtype": arr.dtype.name, "shape": list(arr.shape), "offset": offset, "nbytes": nbytes,
                         "sha256": placeholder}
        if name in LAZY_ARRAYS and arr.ndim:
            rows = block_rows(arr.shape, arr.dtype.itemsize)
            entries[name].update(block_rows=rows, block_sha256=[placeholder] * -(-arr.shape[0] // rows))
        end = offset + nbytes
        offset += -(-nbytes // ALIGN) * ALIGN
    return entries, end


def _header(meta: dict, entries: dict, end: int) -> bytes:
    """The JSON header (raises ValueError for a non-finite number in ``meta``)."""
    return json.dumps({"meta": meta, "arrays": entries, "data_bytes": end}, sort_keys=True, allow_nan=False).encode()


def _write_array(f, arr, per_block: bool) -> dict:
    """Write ``arr``'s bytes (C order) at ``f``'s position block by block (``row_blocks``); returns its
    ``{"sha256"}`` and, with ``per_block``, ``{"block_sha256": [hex per block]}``."""
    whole, blocks = hashlib.sha256(), []
    for block in row_blocks(arr):
        data = memoryview(np.ascontiguousarray(block).reshape(-1).view(np.uint8))
        f.write(data)
        whole.update(data)
        if per_block and len(block):
            blocks.append(hashlib.sha256(data).hexdigest())
    return {"sha256": whole.hexdigest(), **({"block_sha256": blocks} if per_block else {})}


@contextmanager
def rows_on_disk(folder: str | os.PathLike, parts: Iterable[np.ndarray], row_shape: tuple, dtype) -> Iterator[np.ndarray]:
    """``parts`` (arrays of whole rows ``[n_j, *row_shape]``, in order) gathered into one read-only
    ``np.memmap [sum n_j, *row_shape]`` of ``dtype``, written part by part to a nameless temporary
    file in ``folder`` (beside the output it is for: disk, not RAM). The file has no name to clean
    up: it is freed when the block has ended and the memmap is no longer used, or when the process
    dies. For arrays too large for RAM (the verification codes) that ``write_arrays`` then streams."""
    row_shape, dtype = tuple(row_shape), np.dtype(dtype)
    with tempfile.TemporaryFile(dir=folder) as f:
        rows = 0
        for part in parts:
            part = np.ascontiguousarray(part, dtype)
            if part.shape[1:] != row_shape:
                raise ValueError(f"rows of shape {part.shape[1:]} among rows of shape {row_shape}")
            f.write(memoryview(part.reshape(-1).view(np.uint8)))
            rows += len(part)
        f.flush()
        shape = (rows, *row_shape)
        yield np.memmap(f, dtype, "r", shape=shape) if f.tell() else np.zeros(shape, dtype)     # mmap: not of 0 bytes


def block_rows(shape, itemsize: int) -> int:
    """Leading rows per checksummed block of an array of ``shape`` and ``itemsize``: about
    BLOCK_BYTES, at least 1."""
    row = int(np.prod(shape[1:], dtype=np.int64)) * itemsize
    return max(1, BLOCK_BYTES // max(row, 1))


def read_arrays(path: str | os.PathLike, what: str = "map bundle") -> tuple[dict, dict[str, np.ndarray]]:
    """``(meta, arrays)`` of a container file; every size is checked before allocation and every
    checksum after reading. ``what`` names the file kind in error messages."""
    return _read_file(path, what)[:2]


def _read_file(path: str | os.PathLike, what: str) -> tuple[dict, dict[str, np.ndarray], str]:
    """``read_arrays`` and the hex sha256 of the header it checked (one open of the file)."""
    path = Path(path)
    try:
        with open_regular(path) as f:
            return _read(f, os.fstat(f.fileno()).st_size, path, what)
    except FileSafetyError:
        raise
    except OSError as e:
        raise BundleError(f"{path}: cannot read {what} ({e.strerror or e})") from None


def header_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a container file's sealed header, read from its prefix (checked against the
    header whenever the file is read): the header holds every array's sha256 (and each block's),
    so this names the file's whole content without reading its data."""
    with open_regular(path) as f:
        prefix = f.read(PREFIX.size)
    if len(prefix) < PREFIX.size or PREFIX.unpack(prefix)[0] != MAGIC:
        raise BundleError(f"{path}: not a segvlad-edge container file")
    return PREFIX.unpack(prefix)[3].hex()


def _read(f, size: int, path: Path, what: str) -> tuple[dict, dict, str]:
    prefix = f.read(PREFIX.size)
    if len(prefix) < PREFIX.size:
        raise BundleError(f"{path}: too short to be a {what} ({size} bytes)")
    magic, version, header_len, header_sha = PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise BundleError(f"{path}: not a segvlad-edge {what} (wrong magic)")
    if not OLDEST_VERSION <= version <= FORMAT_VERSION:
        newer = "newer than" if version > FORMAT_VERSION else "older than"
        raise BundleError(f"{path}: {what} format {version} is {newer} this segvlad-edge's ({FORMAT_VERSION}); "
                          "rebuild it or use a matching segvlad-edge")
    if header_len > min(MAX_HEADER_BYTES, size - PREFIX.size):
        raise BundleError(f"{path}: header size {header_len} exceeds the file: truncated or corrupted")
    header = f.read(header_len)
    if hashlib.sha256(header).digest() != header_sha:
        raise BundleError(f"{path}: header checksum mismatch: corrupted")
    try:
        doc = json.loads(header, parse_constant=_no_constant)
        meta, entries = doc["meta"], doc["arrays"]
        if not isinstance(meta, dict) or not isinstance(entries, dict):
            raise TypeError("meta/arrays are not objects")
    except (ValueError, KeyError, TypeError) as e:
        raise BundleError(f"{path}: malformed header ({e})") from None
    start = data_start(header_len)
    data_bytes = doc.get("data_bytes")
    if not isinstance(data_bytes, int) or data_bytes != size - start:
        raise BundleError(f"{path}: {size - start} data bytes after the header, header says {data_bytes!r}: "
                          "truncated or extended")
    return meta, {name: _read_array(f, path, name, e, start, size, version) for name, e in entries.items()}, \
        header_sha.hex()


def _no_constant(name: str):
    raise ValueError(f"non-finite number {name} in the header")


def _read_array(f, path: Path, name: str, e: dict, start: int, size: int, version: int) -> np.ndarray:
    """One array entry, checked against the file size before reading and against its sha256 after
    (from format 4, a LAZY_ARRAYS one against its block hashes when its blocks are first read)."""
    try:
        dtype, shape, offset, nbytes, sha = e["dtype"], e["shape"], e["offset"], e["nbytes"], e["sha256"]
        ok = (dtype in DTYPES and isinstance(shape, list) and len(shape) <= 4
              and all(isinstance(s, int) and s >= 0 for s in shape)
              and isinstance(offset, int) and isinstance(nbytes, int) and offset >= 0 and isinstance(sha, str))
    except (KeyError, TypeError):
        ok = False
    if not ok:
        raise BundleError(f"{path}: malformed entry for array {name!r}")
    expected = int(np.prod(shape, dtype=object)) * np.dtype(dtype).itemsize
    if expected != nbytes:
        raise BundleError(f"{path}: array {name!r} declares {nbytes} bytes for shape {shape} {dtype}")
    if start + offset + nbytes > size:
        raise BundleError(f"{path}: array {name!r} extends past the end of the file: truncated")
    if int(np.prod([max(s, 1) for s in shape], dtype=object)) * np.dtype(dtype).itemsize > MAX_ARRAY_BYTES:
        raise BundleError(f"{path}: array {name!r} declares an impossible shape {shape}")
    if version >= 4 and name in LAZY_ARRAYS:
        rows, hashes = e.get("block_rows"), e.get("block_sha256")
        row_bytes = nbytes // shape[0] if shape and shape[0] else 0
        rows_ok = isinstance(rows, int) and not isinstance(rows, bool) and 1 <= rows and rows * row_bytes <= MAX_BLOCK_BYTES
        n_blocks = -(-shape[0] // rows) if rows_ok and shape else -1
        if not rows_ok or not isinstance(hashes, list) or len(hashes) != n_blocks \
                or not all(isinstance(h, str) and len(h) == 64 for h in hashes):
            raise BundleError(f"{path}: malformed block checksums for array {name!r}")
        mapped = np.memmap(path, dtype=dtype, mode="r", offset=start + offset, shape=tuple(shape)) if nbytes else \
            np.zeros(shape, dtype)
        return CheckedRows(mapped, path, name, rows, hashes)
    f.seek(start + offset)
    if name in MMAP_ARRAYS or nbytes >= MMAP_FROM:
        return _mapped_array(f, path, name, dtype, shape, start + offset, nbytes, sha)
    data = f.read(nbytes)
    if len(data) != nbytes or hashlib.sha256(data).hexdigest() != sha:
        raise BundleError(f"{path}: array {name!r} checksum mismatch: corrupted")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _mapped_array(f, path: Path, name: str, dtype: str, shape: list, at: int, nbytes: int, sha: str) -> np.ndarray:
    """A large array as a read-only memory map, after its sha256 is checked by streaming the file
    (``f`` positioned at ``at``) through a fixed buffer: pages come into RAM only when used."""
    h, buf, left = hashlib.sha256(), bytearray(HASH_CHUNK), nbytes
    view = memoryview(buf)
    while left:
        got = f.readinto(view[:min(left, HASH_CHUNK)])
        if not got:
            raise BundleError(f"{path}: array {name!r} extends past the end of the file: truncated")
        h.update(view[:got])
        left -= got
    if h.hexdigest() != sha:
        raise BundleError(f"{path}: array {name!r} checksum mismatch: corrupted")
    return np.memmap(path, dtype=dtype, mode="r", offset=at, shape=tuple(shape))


class CheckedRows:
    """A memory-mapped array ``[R, ...]`` whose blocks of ``rows`` leading rows are checked against
    their sha256 (``hashes``, from the checksummed header) and for finite values the first time
    any of their rows is read. Indexing (an int, a slice, an int array or list over the leading
    rows, optionally with more indices after it) returns a copy of checked rows; ``np.asarray``
    checks every block. A mismatch raises BundleError naming the file, the array and the rows."""

    def __init__(self, mapped: np.ndarray, path: Path, name: str, rows: int, hashes: list[str]):
        self._mapped, self.path, self.name, self.rows, self._hashes = mapped, path, name, rows, hashes
        self._checked = np.zeros(len(hashes), bool)
        self.shape, self.dtype, self.ndim, self.nbytes = mapped.shape, mapped.dtype, mapped.ndim, mapped.nbytes

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        lead = key[0] if isinstance(key, tuple) and key else key
        if isinstance(lead, slice):
            rows = np.arange(*lead.indices(len(self)))
        else:
            rows = np.asarray(lead)
            if rows.dtype == bool or rows.dtype.kind not in "iu":
                raise TypeError(f"{self.name}: index rows by integers or a slice, not {rows.dtype}")
            rows = np.where(rows < 0, rows + len(self), rows)
            if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
                raise IndexError(f"{self.name}: row index out of range for {len(self)} rows")
        self._check(np.unique(rows.ravel() // self.rows))
        return np.array(self._mapped[key])

    def __array__(self, dtype=None, copy=None):
        self.check_all()
        out = np.array(self._mapped)
        return out if dtype is None else out.astype(dtype)

    def block(self, row: int) -> range:
        """The rows checked together with ``row`` (its block)."""
        start = row // self.rows * self.rows
        return range(start, min(start + self.rows, len(self)))

    def check_all(self) -> None:
        """Check every block now (``verify``), one block in memory at a time."""
        self._check(np.arange(len(self._hashes)))

    def _check(self, blocks: np.ndarray) -> None:
        for b in blocks[~self._checked[blocks]]:
            rows = self.block(b * self.rows)
            block = self._mapped[rows.start:rows.stop]
            if hashlib.sha256(memoryview(np.ascontiguousarray(block)).cast("B")).hexdigest() != self._hashes[b]:
                raise BundleError(f"{self.path}: array {self.name!r} checksum mismatch in rows "
                                  f"{rows.start}-{rows.stop - 1}: corrupted")
            if block.dtype.kind == "f" and not np.isfinite(block).all():
                raise BundleError(f"{self.path}: array {self.name!r} holds NaN or infinite values in rows "
                                  f"{rows.start}-{rows.stop - 1}")
            self._checked[b] = True

"""MapBundle: one self-describing, checksummed file a user copies to a robot. No pickle.

The container (also used for domain fits, ``runtime/fitting.py``) is, little-endian::

    magic        16 bytes  b"SEGVLAD-MAP\\r\\n\\x1a\\n\\x00"
    version       u32      FORMAT_VERSION
    header_len    u64      bytes of the JSON header
    header_sha256 32 bytes sha256 of the JSON header
    header        JSON     {"meta": {...}, "arrays": {name: {dtype, shape, offset, nbytes, sha256}}}
    arrays        raw      each at a 64-byte aligned offset

``meta["format"]`` says what the file is ("segvlad-edge map" or "segvlad-edge domain").

Every size is checked against the file before anything is allocated, every array against
its sha256, and the arrays against each other, before a bundle is used. Arrays of MMAP_FROM
bytes or more (descriptors, label maps, the stored index) are hashed by streaming the file and
then memory-mapped read-only, so a large map costs RAM only for the pages a search touches. Writes go to a
temporary file in the same folder, fsync'ed, then renamed over the target.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

MAGIC = b"SEGVLAD-MAP\r\n\x1a\n\x00"
FORMAT_VERSION = 2          # 2: vocabulary/PCA may come from a domain fit (meta["fit"])
PREFIX = struct.Struct("<16sIQ32s")
ALIGN = 64
MAX_HEADER_BYTES = 64 << 20
DTYPES = {"float16", "float32", "int32", "uint8"}
MMAP_FROM = 1 << 20             # arrays of this many bytes or more are memory-mapped, not read
HASH_CHUNK = 8 << 20
REQUIRED = {"descriptors": "float16", "segments_per_image": "int32", "segment_labels": "uint8"}


class BundleError(ValueError):
    """A map bundle is unreadable, corrupted, inconsistent or not for this engine."""


@dataclass
class MapBundle:
    """``meta``: JSON-able facts (format, engine signature, settings, image table with metadata);
    ``arrays``: ``descriptors [N, d] float16``, ``segments_per_image [I] int32``,
    ``segment_labels [I, h*w] uint8`` (base segment of each patch, 255 = none) and, when
    ``meta["fit"]["source"] == "map"``, ``vocab_centers [K, D] float32``, ``pca_mean [K*D]``,
    ``pca_components [d, K*D]``, ``pca_scale [d]``; a domain-fitted bundle instead names the
    domain file kept beside the engines and its sha256 in ``meta["fit"]``; ``calib_negatives
    [<=I] float32`` calibrates the confidence (runtime/confidence.py); ``meta["index"]`` and the
    ``index_*`` arrays hold the stored search structure (runtime/index.py; maps written by
    ``build-map`` always carry one, a bundle without one gets an HNSW graph built at load)."""

    meta: dict
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    path: Path | None = None

    # ------------------------------------------------------------------ derived views
    @property
    def images(self) -> list[dict]:
        return self.meta["images"]

    @property
    def segment_image(self) -> np.ndarray:
        """``[N] int64`` map image of each segment."""
        counts = self.arrays["segments_per_image"]
        return np.repeat(np.arange(len(counts)), counts)

    # ------------------------------------------------------------------ write / read
    def write(self, path: str | os.PathLike) -> int:
        """Write atomically; returns the file size in bytes."""
        self.validate()
        size = write_arrays(path, self.meta, self.arrays)
        self.path = Path(path)
        return size

    @classmethod
    def read(cls, path: str | os.PathLike) -> "MapBundle":
        meta, arrays = read_arrays(path, "map bundle")
        if meta.get("format") != "segvlad-edge map":
            raise BundleError(f"{path}: a {meta.get('format')!r} file, not a map bundle")
        bundle = cls(meta, arrays, Path(path))
        bundle.validate()
        return bundle

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Internal consistency; raises BundleError naming the first problem."""
        where = self.path or "bundle"
        m, a = self.meta, self.arrays
        for name, dtype in REQUIRED.items():
            if name not in a:
                raise BundleError(f"{where}: array {name!r} is missing")
            if a[name].dtype.name != dtype:
                raise BundleError(f"{where}: array {name!r} is {a[name].dtype.name}, expected {dtype}")
        images = m.get("images")
        if not isinstance(images, list) or not images:
            raise BundleError(f"{where}: the image table is empty or missing")
        for img in images:
            name = img.get("name") if isinstance(img, dict) else None
            if not isinstance(name, str) or not name or PurePosixPath(name).is_absolute() or ".." in PurePosixPath(name).parts \
                    or "\\" in name or "\x00" in name:
                raise BundleError(f"{where}: unsafe or invalid image name {name!r}")
        desc, counts, labels = a["descriptors"], a["segments_per_image"], a["segment_labels"]
        if desc.ndim != 2 or counts.ndim != 1 or labels.ndim != 2:
            raise BundleError(f"{where}: descriptor/segment table arrays have the wrong rank")
        if len(counts) != len(images) or len(labels) != len(images):
            raise BundleError(f"{where}: segment table has {len(counts)} images, image table {len(images)}")
        if (counts < 0).any() or int(counts.sum(dtype=np.int64)) != len(desc):
            raise BundleError(f"{where}: segment table points past the descriptors ({int(counts.sum())} vs {len(desc)})")
        used = labels != 255
        top_label = np.where(used, labels, 0).max(1, initial=0)
        if (used.any(1) & (top_label >= np.minimum(counts, 255))).any():
            raise BundleError(f"{where}: segment labels point past their image's segments (segment table out of order)")
        grid = m.get("engine", {}).get("patch_grid")
        if not grid or labels.shape[1] != grid[0] * grid[1]:
            raise BundleError(f"{where}: segment label maps do not match the engine's patch grid {grid}")
        if not isinstance(m.get("settings"), dict):
            raise BundleError(f"{where}: settings are missing")
        dims = m["settings"].get("pca_dims")
        if desc.shape[1] != dims:
            raise BundleError(f"{where}: descriptors have {desc.shape[1]} dims, settings say PCA {dims}")
        calib = a.get("calib_negatives")
        if calib is not None and (calib.dtype != np.float32 or calib.ndim != 1 or len(calib) > len(images)
                                  or not np.all(np.isfinite(calib))):
            raise BundleError(f"{where}: confidence calibration table is malformed")
        index = m.get("index")          # the stored search structure (runtime/index.py checks its arrays)
        if index is not None and (not isinstance(index, dict) or index.get("kind") not in ("hnsw", "ivfpq")
                                  or not isinstance(index.get("params"), dict)):
            raise BundleError(f"{where}: the stored search index record is malformed")
        fit = m.get("fit")
        if not isinstance(fit, dict) or fit.get("source") not in ("map", "domain"):
            raise BundleError(f"{where}: the vocabulary/PCA source ('fit') is missing or unknown")
        if fit["source"] == "domain":
            file = fit.get("file")
            if not isinstance(fit.get("sha256"), str) or not isinstance(fit.get("settings"), dict) \
                    or not isinstance(file, str) or not file or PurePosixPath(file).name != file or "\\" in file:
                raise BundleError(f"{where}: domain fit reference is incomplete or names an unsafe file")
            return
        check_models(a, m["settings"], desc.shape[1], where)


def check_models(a: dict, settings: dict, dims: int | None, where) -> None:
    """Vocabulary and PCA arrays agree with each other and with the descriptor dimension ``dims``
    (None: no descriptors to compare with, as in a domain file)."""
    if "vocab_centers" not in a or a["vocab_centers"].ndim != 2 or a["vocab_centers"].dtype != np.float32:
        raise BundleError(f"{where}: vocabulary is missing or malformed")
    k, d = a["vocab_centers"].shape
    if k != settings.get("vocab_k"):
        raise BundleError(f"{where}: vocabulary has {k} words, settings say {settings.get('vocab_k')}")
    if settings.get("pca"):
        for name in ("pca_mean", "pca_components", "pca_scale"):
            if name not in a:
                raise BundleError(f"{where}: PCA array {name!r} is missing")
        dims = a["pca_components"].shape[0] if dims is None else dims
        if a["pca_components"].shape != (dims, k * d) or a["pca_mean"].shape != (k * d,) \
                or a["pca_scale"].shape != (dims,):
            raise BundleError(f"{where}: PCA shapes disagree with the vocabulary and the index dimension")
    elif dims is not None and dims != k * d:
        raise BundleError(f"{where}: descriptors have {dims} dims, the vocabulary gives {k * d}")


# ---------------------------------------------------------------------- the container
def write_arrays(path: str | os.PathLike, meta: dict, arrays: dict[str, np.ndarray]) -> int:
    """Write ``meta`` + ``arrays`` in the container layout above, atomically (temporary file in
    the same folder, fsync, rename). Returns the file size in bytes."""
    path = Path(path)
    entries, offset, end, blobs = {}, 0, 0, []
    for name, arr in arrays.items():
        arr = np.ascontiguousarray(arr)
        data = arr.tobytes()
        entries[name] = {"dtype": arr.dtype.name, "shape": list(arr.shape), "offset": offset,
                         "nbytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        blobs.append(data)
        end = offset + len(data)
        offset += -(-len(data) // ALIGN) * ALIGN
    header = json.dumps({"meta": meta, "arrays": entries, "data_bytes": end}, sort_keys=True).encode()
    start = -(-(PREFIX.size + len(header)) // ALIGN) * ALIGN
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(PREFIX.pack(MAGIC, FORMAT_VERSION, len(header), hashlib.sha256(header).digest()))
            f.write(header)
            for entry, data in zip(entries.values(), blobs):
                f.seek(start + entry["offset"])
                f.write(data)
            f.truncate(start + end)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path.stat().st_size


def read_arrays(path: str | os.PathLike, what: str = "map bundle") -> tuple[dict, dict[str, np.ndarray]]:
    """``(meta, arrays)`` of a container file; every size is checked before allocation and every
    checksum after reading. ``what`` names the file kind in error messages."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            return _read(f, size, path, what)
    except OSError as e:
        raise BundleError(f"{path}: cannot read {what} ({e.strerror or e})") from None


def _read(f, size: int, path: Path, what: str) -> tuple[dict, dict]:
    prefix = f.read(PREFIX.size)
    if len(prefix) < PREFIX.size:
        raise BundleError(f"{path}: too short to be a {what} ({size} bytes)")
    magic, version, header_len, header_sha = PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise BundleError(f"{path}: not a segvlad-edge {what} (wrong magic)")
    if version != FORMAT_VERSION:
        newer = "newer than" if version > FORMAT_VERSION else "older than"
        raise BundleError(f"{path}: {what} format {version} is {newer} this segvlad-edge's ({FORMAT_VERSION}); "
                          "rebuild it or use a matching segvlad-edge")
    if header_len > min(MAX_HEADER_BYTES, size - PREFIX.size):
        raise BundleError(f"{path}: header size {header_len} exceeds the file: truncated or corrupted")
    header = f.read(header_len)
    if hashlib.sha256(header).digest() != header_sha:
        raise BundleError(f"{path}: header checksum mismatch: corrupted")
    try:
        doc = json.loads(header)
        meta, entries = doc["meta"], doc["arrays"]
        if not isinstance(meta, dict) or not isinstance(entries, dict):
            raise TypeError("meta/arrays are not objects")
    except (ValueError, KeyError, TypeError) as e:
        raise BundleError(f"{path}: malformed header ({e})") from None
    start = -(-(PREFIX.size + header_len) // ALIGN) * ALIGN
    data_bytes = doc.get("data_bytes")
    if not isinstance(data_bytes, int) or data_bytes != size - start:
        raise BundleError(f"{path}: {size - start} data bytes after the header, header says {data_bytes!r}: "
                          "truncated or extended")
    return meta, {name: _read_array(f, path, name, e, start, size) for name, e in entries.items()}


def _read_array(f, path: Path, name: str, e: dict, start: int, size: int) -> np.ndarray:
    """One array entry, checked against the file size before reading and against its sha256 after."""
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
    f.seek(start + offset)
    if nbytes >= MMAP_FROM:
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

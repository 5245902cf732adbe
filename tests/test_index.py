"""SegmentIndex: stored search structures (HNSW links, HNSW-SQ graph + codes, IVF-PQ codes) load without a rebuild and
answer as built; malformed stored indexes are refused; memory-mapped bundles refuse truncation
and tampering."""
import subprocess
import sys

import numpy as np
import pytest

from segvlad_edge.runtime.mapfiles import bundle as B
from segvlad_edge.runtime.steps import index as I
from segvlad_edge.runtime.mapfiles.bundle import BundleError, MapBundle
from segvlad_edge.runtime.settings import Settings
from segvlad_edge.runtime.steps.index import SegmentIndex, StoredIndexError, open_index, store_index


def clustered(n=3000, d=64, seed=0, dup_every=3):
    """Unit vectors around 40 centres, every ``dup_every``-th a copy of its predecessor (ties)."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((40, d))
    x = c[rng.integers(0, 40, n)] + 0.8 * rng.standard_normal((n, d))
    x[1::dup_every] = x[0::dup_every][:len(x[1::dup_every])]
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


def queries(x, n=100, seed=1):
    rng = np.random.default_rng(seed)
    q = x[rng.choice(len(x), n, replace=False)].astype(np.float32) + 0.05 * rng.standard_normal((n, x.shape[1]))
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def no_build(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the search structure was rebuilt")
    for kind, ops in I._KIND.items():
        monkeypatch.setitem(I._KIND, kind, ops._replace(build=boom))


OLD_IVFPQ = {"nlist": 32, "train_max": 3000, "quantizer": "flat", "by_residual": True, "refine": None}   # before 2026-11


@pytest.mark.parametrize("kind,params", [("hnsw", {}), ("hnswsq", {}), ("ivfpq", {"nlist": 32, "train_max": 3000}),
                                         ("ivfpq", OLD_IVFPQ)])
def test_stored_index_answers_like_the_built_one_without_rebuilding(kind, params, monkeypatch):
    x, q = clustered(), None
    q = queries(x)
    built = SegmentIndex(x, kind, threads=1)
    built.params.update(params)
    meta, stored = built.to_arrays()
    ids, sims = built.search(q, 20)
    no_build(monkeypatch)
    loaded = SegmentIndex(x, kind, threads=1, meta=meta, stored=stored)
    ids2, sims2 = loaded.search(q, 20)
    np.testing.assert_array_equal(ids, ids2)
    np.testing.assert_allclose(sims, sims2, atol=1e-6)
    assert loaded.recall(q, 20) >= 0.99
    assert (ids2 >= 0).all() and (ids2 < len(x)).all()


def test_choose_kind_by_map_size():
    assert I.choose_kind(0) == I.choose_kind(I.HNSWSQ_FROM - 1) == "hnsw"
    assert I.choose_kind(I.HNSWSQ_FROM) == I.choose_kind(I.IVFPQ_FROM - 1) == "hnswsq"
    assert I.choose_kind(I.IVFPQ_FROM) == I.choose_kind(10_000_000) == "ivfpq"
    assert I.ivf_lists(100) == 16 and I.ivf_lists(2_000_000) == 3906 and I.ivf_lists(10**10) == 65536
    assert I.ivf_quantizer(I.FLAT_QUANTIZER_LISTS) == "flat" and I.ivf_quantizer(I.FLAT_QUANTIZER_LISTS + 1) == "hnsw"


def test_exact_search_in_chunks_matches_one_block(monkeypatch):
    x = clustered(n=500)
    q = queries(x, 30)
    ids, sims = SegmentIndex(x, "hnsw").search(q, 10, exact=True)
    monkeypatch.setattr(I, "EXACT_CHUNK", 37)
    ids2, sims2 = SegmentIndex(x, "hnsw").search(q, 10, exact=True)
    np.testing.assert_allclose(sims, sims2, atol=1e-6)
    ref = np.sort(q @ x.astype(np.float32).T, axis=1)[:, ::-1][:, :10]
    np.testing.assert_allclose(sims2, ref, atol=1e-5)


@pytest.mark.parametrize("kind,params", [("hnsw", {}), ("hnswsq", {}), ("ivfpq", {"nlist": 32, "train_max": 3000})])
def test_repeated_query_rows_are_searched_once_with_the_same_answers(kind, params, monkeypatch):
    """A frame's SuperSegments often share a descriptor: each distinct row is searched once and
    every copy gets the answer the row gets alone."""
    x = clustered(n=2000)
    q = queries(x, 12)
    idx = SegmentIndex(x, kind, threads=1)
    idx.params.update(params)
    alone = [idx.search(q[i:i + 1], 10) for i in range(len(q))]
    picks = [0, 3, 3, 7, 0, 11, 3, 5]
    batch = q[picks]
    searched = []
    real = I.SegmentIndex.search

    def spy(self, queries, k, exact=False):
        searched.append(len(queries))
        return real(self, queries, k, exact)
    monkeypatch.setattr(I.SegmentIndex, "search", spy)
    ids, sims = idx.search(batch, 10)
    assert searched == [8, 5]                       # the batch, then its 5 distinct rows once
    for i, ids_row, sims_row in zip(picks, ids, sims):
        np.testing.assert_array_equal(ids_row, alone[i][0][0])
        np.testing.assert_allclose(sims_row, alone[i][1][0], atol=1e-6)


def test_malformed_stored_hnsw_is_refused():
    x = clustered(n=400)
    meta, stored = SegmentIndex(x, "hnsw", threads=1).to_arrays()
    bad = dict(stored)
    links = stored["index_links0"].copy()
    links.view(np.uint32)[0, 1] = 10_000_000                    # a link past the segments
    links.view(np.uint32)[0, 0] = max(links.view(np.uint32)[0, 0], 1)
    bad["index_links0"] = links
    with pytest.raises(StoredIndexError, match="point past"):
        SegmentIndex(x, "hnsw", meta=meta, stored=bad)
    with pytest.raises(StoredIndexError, match="does not match"):
        SegmentIndex(x[:300], "hnsw", meta=meta, stored=stored)
    bad = dict(stored, index_labels=np.zeros(len(x), np.int32))
    with pytest.raises(StoredIndexError, match="permutation"):
        SegmentIndex(x, "hnsw", meta=meta, stored=bad)
    with pytest.raises(StoredIndexError, match="incomplete"):
        SegmentIndex(x, "hnsw", meta={k: v for k, v in meta.items() if k != "max_M0"}, stored=stored)


def test_malformed_stored_ivfpq_is_refused():
    x = clustered(n=1000)
    idx = SegmentIndex(x, "ivfpq")
    idx.params.update(nlist=16, train_max=1000)
    meta, stored = idx.to_arrays()
    with pytest.raises(StoredIndexError, match="not the 999x64"):
        SegmentIndex(x[:999], "ivfpq", meta=meta, stored=stored)
    garbage = np.frombuffer(b"not a faiss index" * 8, np.uint8).copy()
    with pytest.raises(StoredIndexError, match="unreadable"):
        SegmentIndex(x, "ivfpq", meta=meta, stored={"index_faiss": garbage})


def test_stored_ivfpq_structure_is_read_from_the_index():
    """An IVF-PQ index built before the HNSW quantiser and the refine stage (flat quantiser, residual
    codes, no refine) loads as built, whatever the current defaults say; the current one is an
    IndexRefine over a fast scan whose lists are found by scoring every centroid (``auto`` at 32
    lists) or by an HNSW graph (maps of more than FLAT_QUANTIZER_LISTS lists, and those built with it)."""
    x = clustered(n=2000)
    old = SegmentIndex(x, "ivfpq", threads=1)
    old.params.update(OLD_IVFPQ)
    meta, stored = old.to_arrays()
    legacy_meta = {**meta, "params": {k: v for k, v in meta["params"].items() if k in ("pq_m", "nprobe", "rerank",
                                                                                        "train_max", "seed", "nlist")}}
    loaded = SegmentIndex(x, "ivfpq", threads=1, meta=legacy_meta, stored=stored)
    assert (loaded.params["quantizer"], loaded.params["by_residual"], loaded.params["refine"]) == ("flat", True, None)
    q = queries(x, 40)
    np.testing.assert_array_equal(old.search(q, 10)[0], loaded.search(q, 10)[0])
    for quantizer, built_as in (("auto", "flat"), ("hnsw", "hnsw")):
        new = SegmentIndex(x, "ivfpq", threads=1)
        new.params.update(nlist=32, train_max=2000, quantizer=quantizer)
        meta, stored = new.to_arrays()
        loaded = SegmentIndex(x, "ivfpq", threads=1, meta=meta, stored=stored)
        structure = (loaded.params["quantizer"], loaded.params["by_residual"], loaded.params["refine"])
        assert structure == (built_as, True, "sq8")
        assert type(loaded.prepare()).__name__ == "IndexRefine"
        assert loaded.resident_bytes() == stored["index_faiss"].nbytes < 16 * 1024 * len(x) / 22
        np.testing.assert_array_equal(new.search(q, 10)[0], loaded.search(q, 10)[0])


def test_a_stored_map_keeps_its_own_search_settings():
    """A map searches with the nprobe it was built with, not the current default."""
    x = clustered(n=2000)
    built = SegmentIndex(x, "ivfpq", threads=1)
    built.params.update(nlist=64, nprobe=12, train_max=2000)
    meta, stored = built.to_arrays()
    loaded = SegmentIndex(x, "ivfpq", threads=1, meta=meta, stored=stored)
    q = queries(x, 40)
    assert loaded.params["nprobe"] == 12 != I.IVFPQ["nprobe"]
    np.testing.assert_array_equal(built.search(q, 10)[0], loaded.search(q, 10)[0])
    import faiss
    assert faiss.extract_index_ivf(loaded.prepare()).nprobe == 12          # what the search ran with


def test_an_unknown_ivfpq_quantizer_is_refused():
    idx = SegmentIndex(clustered(n=1000), "ivfpq", threads=1)
    idx.params.update(nlist=16, train_max=1000, quantizer="HNSW")
    with pytest.raises(ValueError, match="choose auto, flat or hnsw"):
        idx.prepare()


def test_queries_of_another_dimension_are_refused():
    with pytest.raises(ValueError, match="64-dim"):
        SegmentIndex(clustered(n=100), "hnsw").search(np.zeros((2, 32), np.float32), 5)


@pytest.mark.parametrize("key,value", [("nprobe", 33), ("nprobe", 0), ("rerank", 0), ("rerank", 2.0),
                                       ("refine_factor", "4"), ("quantizer_ef", True), ("quantizer_ef", 1 << 17)])
def test_stored_ivfpq_search_parameters_are_checked(key, value):
    x = clustered(n=1000)
    idx = SegmentIndex(x, "ivfpq", threads=1)
    idx.params.update(nlist=32, train_max=1000)
    meta, stored = idx.to_arrays()
    with pytest.raises(StoredIndexError, match=f"IVF-PQ index: {key} is not an integer"):
        SegmentIndex(x, "ivfpq", meta={**meta, "params": {**meta["params"], key: value}}, stored=stored)


def test_malformed_stored_ivfpq_quantiser_and_refine_are_refused():
    import faiss
    x = clustered(n=1000)
    idx = SegmentIndex(x, "ivfpq", threads=1)
    idx.params.update(nlist=32, train_max=1000, quantizer="hnsw")       # as maps of more than 8,192 lists
    meta, stored = idx.to_arrays()
    blob = stored["index_faiss"]
    for cut in (blob[:len(blob) // 2], blob[:-1]):
        with pytest.raises(StoredIndexError, match="unreadable"):
            SegmentIndex(x, "ivfpq", meta=meta, stored={"index_faiss": cut.copy()})
    built = idx.prepare()
    h = faiss.downcast_index(faiss.extract_index_ivf(built).quantizer).hnsw
    links = faiss.rev_swig_ptr(h.neighbors.data(), h.neighbors.size())
    keep = int(links[3])
    links[3] = 500                                       # a quantiser link past its 32 centroids
    with pytest.raises(StoredIndexError, match="IVF-PQ quantiser links point past|unreadable|out of range"):
        SegmentIndex(x, "ivfpq", meta=meta, stored={"index_faiss": faiss.serialize_index(built)})
    links[3] = keep
    sq4 = faiss.IndexScalarQuantizer(x.shape[1], faiss.ScalarQuantizer.QT_4bit, faiss.METRIC_INNER_PRODUCT)
    sq4.train(x.astype(np.float32))
    sq4.add(x.astype(np.float32))
    other = faiss.IndexRefine(faiss.extract_index_ivf(built), sq4)           # a 4-bit refine stage
    with pytest.raises(StoredIndexError, match="refine stage"):
        SegmentIndex(x, "ivfpq", meta=meta, stored={"index_faiss": faiss.serialize_index(other)})


@pytest.mark.parametrize("refine", ["sq8", None])
def test_stored_ivfpq_list_ids_and_candidate_bound_are_checked(refine):
    """Every descriptor once in the inverted lists (a re-sealed index with ids out of range or
    repeated is refused at load, not failing or silently missing hits in search); rerank x
    refine_factor bounded, so a stored index cannot make a search allocate without limit."""
    import faiss
    x = clustered(n=1000)
    idx = SegmentIndex(x, "ivfpq", threads=1)
    idx.params.update(nlist=16, train_max=1000, refine=refine)
    meta, stored = idx.to_arrays()
    built = idx.prepare()
    inv = faiss.extract_index_ivf(built).invlists
    lst = next(i for i in range(inv.nlist) if inv.list_size(i) >= 2)
    ids = faiss.rev_swig_ptr(inv.get_ids(lst), inv.list_size(lst))
    first, second = int(ids[0]), int(ids[1])
    for bad in (len(x) + 5, second):                     # past the descriptors; a descriptor twice
        ids[0] = bad
        with pytest.raises(StoredIndexError, match="inverted lists do not hold each of the 1000 descriptors once"):
            SegmentIndex(x, "ivfpq", meta=meta, stored={"index_faiss": faiss.serialize_index(built)})
    ids[0] = first
    assert SegmentIndex(x, "ivfpq", meta=meta, stored={"index_faiss": faiss.serialize_index(built)}).search(
        queries(x, 3), 5)[0].min() >= 0
    if refine:
        params = {**meta["params"], "rerank": 1000, "refine_factor": 1000}
        with pytest.raises(StoredIndexError, match="rerank x refine_factor is over 1024"):
            SegmentIndex(x, "ivfpq", meta={**meta, "params": params}, stored=stored)


def test_hnswsq_holds_less_in_ram_than_hnswlib_and_reports_it():
    x = clustered(n=2000, d=256)
    q = queries(x, 50)
    sq, flat = SegmentIndex(x, "hnswsq", threads=1), SegmentIndex(x, "hnsw", threads=1)
    meta, stored = sq.to_arrays()
    loaded = SegmentIndex(x, "hnswsq", threads=1, meta=meta, stored=stored)
    assert loaded.resident_bytes() == sq.resident_bytes() == stored["index_faiss"].nbytes
    assert loaded.resident_bytes() < 0.5 * flat.resident_bytes()
    assert flat.resident_bytes() > len(x) * 4 * x.shape[1]          # hnswlib's float32 copy at least
    assert loaded.recall(q, 50) >= 0.99


def hnswsq_blob(x, edit):
    """The serialized HNSW-SQ index of ``x`` after ``edit(faiss_hnsw, links_view)``."""
    import faiss
    idx = SegmentIndex(x, "hnswsq", threads=1)
    h = idx.prepare().hnsw
    edit(h, faiss.rev_swig_ptr(h.neighbors.data(), h.neighbors.size()))
    return idx.to_arrays()


def test_malformed_stored_hnswsq_is_refused_in_one_line():
    x = clustered(n=1200)
    meta, stored = SegmentIndex(x, "hnswsq", threads=1).to_arrays()
    blob = stored["index_faiss"]
    cases = [(x[:1100], stored, "not the 1100x64"),
             (x, {"index_faiss": blob[:len(blob) // 2].copy()}, "unreadable"),
             (x, {"index_faiss": blob[:-1].copy()}, "unreadable"),
             (x, {"index_faiss": np.frombuffer(b"not a faiss index" * 8, np.uint8).copy()}, "unreadable"),
             (x, {}, "missing")]
    _, ivf = SegmentIndex(x, "ivfpq", threads=1).to_arrays()
    cases.append((x, ivf, "IndexRefine"))                          # another kind's index (IVF-PQ + SQ8 refine)
    bad_meta, bad = hnswsq_blob(x, lambda h, links: links.__setitem__(7, 5_000))   # a link past the segments
    cases.append((x, bad, "point past|out of range"))           # faiss >= 1.12 checks links itself
    _, bad = hnswsq_blob(x, lambda h, links: setattr(h, "entry_point", int(np.flatnonzero(               # a node
        __import__("faiss").vector_to_array(h.levels) == 1)[0])))                                   # on level 0 only
    cases.append((x, bad, "entry point"))
    _, bad = hnswsq_blob(x, lambda h, links: setattr(h, "max_level", 0))         # the graph has upper levels
    cases.append((x, bad, "entry point"))
    for xs, arrays, message in cases:
        with pytest.raises(StoredIndexError, match=message) as e:
            SegmentIndex(xs, "hnswsq", threads=1, meta=meta, stored=arrays)
        assert "\n" not in str(e.value)
    with pytest.raises(StoredIndexError, match="rerank"):
        SegmentIndex(x, "hnswsq", meta={**meta, "params": {**meta["params"], "rerank": 0}}, stored=stored)


# ---------------------------------------------------------------------- in a bundle, memory-mapped
def big_bundle(n_images=120, per_image=25, dims=256):
    """A map bundle whose descriptors (1.5 MiB) are memory-mapped on reading."""
    rng = np.random.default_rng(0)
    n = n_images * per_image
    meta = {"format": "segvlad-edge map", "format_version": B.FORMAT_VERSION, "created": "2026-01-01T00:00:00Z",
            "created_by": "test",
            "engine": {"patch_grid": [2, 3], "input_size": [42, 28], "patch_size": 14, "block": 10, "facet": "value",
                       "dim": 4, "source_sha256": "ab" * 32, "file": "e.onnx", "source_name": "test"},
            "settings": Settings(pca_dims=dims, top_k=10, vocab_k=2).to_json(), "fit": {"source": "map", "images": n_images},
            "images": [{"name": f"img{i}.jpg"} for i in range(n_images)]}
    arrays = {"descriptors": clustered(n, dims, dup_every=5),
              "segments_per_image": np.full(n_images, per_image, np.int32),
              "segment_labels": np.zeros((n_images, 6), np.uint8),
              "vocab_centers": rng.standard_normal((2, 4)).astype(np.float32),
              "pca_mean": np.zeros(8, np.float32), "pca_components": np.eye(dims, 8, dtype=np.float16) + np.float16(0.01),
              "pca_scale": np.ones(dims, np.float32)}
    b = MapBundle(meta, arrays)
    store_index(b, threads=1)
    return b


@pytest.fixture(scope="module")
def big_written(tmp_path_factory):
    p = tmp_path_factory.mktemp("big") / "big.segmap"
    big_bundle().write(p)
    return p


def test_bundle_loads_memory_mapped_with_its_stored_index(big_written, monkeypatch):
    from segvlad_edge.runtime.localizer import Localizer

    ref = big_bundle()
    b = MapBundle.read(big_written)
    assert isinstance(b.arrays["descriptors"], np.memmap) and not b.arrays["descriptors"].flags.writeable
    assert b.arrays["descriptors"].nbytes >= B.MMAP_FROM
    assert b.meta["index"]["kind"] == "hnswsq"
    no_build(monkeypatch)
    loc = Localizer(b, None)
    q = queries(ref.arrays["descriptors"], 20)
    expected = open_index(ref).search(q, 10)
    got = loc.index.search(q, 10)
    np.testing.assert_array_equal(expected[0], got[0])
    r = loc.rank_descriptors(ref.arrays["descriptors"][50:75], top=1)
    assert r.images[0] == 2                                     # image 2's own segments find it


def test_truncated_memory_mapped_bundle_is_refused(big_written, tmp_path):
    data = big_written.read_bytes()
    p = tmp_path / "cut.segmap"
    for cut in (len(data) - 1, len(data) // 2):
        p.write_bytes(data[:cut])
        with pytest.raises(BundleError, match="truncated"):
            MapBundle.read(p)


def test_tampered_memory_mapped_bundle_is_refused_in_one_line(big_written, tmp_path):
    import json
    data = bytearray(big_written.read_bytes())
    _, _, hlen, _ = B.PREFIX.unpack_from(data)
    header = json.loads(data[B.PREFIX.size:B.PREFIX.size + hlen])
    start = -(-(B.PREFIX.size + hlen) // B.ALIGN) * B.ALIGN
    for name in ("descriptors", "index_faiss"):
        e = header["arrays"][name]
        flipped = bytearray(data)
        flipped[start + e["offset"] + e["nbytes"] // 2] ^= 0x01
        p = tmp_path / f"{name}.segmap"
        p.write_bytes(bytes(flipped))
        with pytest.raises(BundleError, match=f"array '{name}' checksum mismatch"):
            MapBundle.read(p)
    r = subprocess.run([sys.executable, "-m", "segvlad_edge.apps.cli", "inspect", str(p)], capture_output=True,
                       text=True)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "checksum mismatch" in r.stderr


@pytest.mark.parametrize("kind", ["hnswsq", "ivfpq"])
def test_builds_and_searches_give_back_the_faiss_thread_count(kind, monkeypatch):
    """faiss's thread count is per calling thread and outlives a call: a build and a search run on
    the index's threads and restore the count before, so later faiss work (a vocabulary fit) keeps
    the caller's."""
    faiss = I._faiss()
    x = clustered(n=2000)
    seen = []
    real_add = I._add_all
    monkeypatch.setattr(I, "_add_all", lambda index, idx: seen.append(faiss.omp_get_max_threads()) or real_add(index, idx))
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(3)
    try:
        idx = SegmentIndex(x, kind, threads=1)
        idx.prepare()
        assert seen == [1] and faiss.omp_get_max_threads() == 3
        idx.search(queries(x, 5), 10)
        assert faiss.omp_get_max_threads() == 3
    finally:
        faiss.omp_set_num_threads(before)
    assert I.search_threads(None) == -1 and I.search_threads(1) == 1 and I.search_threads(64) == I.SEARCH_THREADS

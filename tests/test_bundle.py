import json
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from segvlad_edge.runtime.mapfiles import bundle as B
from segvlad_edge.runtime.mapfiles.bundle import BundleError, MapBundle
from segvlad_edge.runtime.settings import Settings


def make_bundle(n_images=3, per_image=2, dims=8, k=2, d=4):
    rng = np.random.default_rng(0)
    n = n_images * per_image
    settings = Settings(pca_dims=dims, top_k=5, vocab_k=k)
    meta = {"format": "segvlad-edge map", "format_version": B.FORMAT_VERSION, "created": "2026-01-01T00:00:00Z",
            "created_by": "test",
            "engine": {"patch_grid": [2, 3], "input_size": [42, 28], "patch_size": 14, "block": 10, "facet": "value",
                       "dim": d, "source_sha256": "ab" * 32, "file": "e.onnx", "source_name": "test"},
            "settings": settings.to_json(), "fit": {"source": "map", "images": n_images},
            "images": [{"name": f"img{i}.jpg", "meta": {"label": str(i)}} for i in range(n_images)]}
    arrays = {"descriptors": rng.standard_normal((n, dims)).astype(np.float16),
              "segments_per_image": np.full(n_images, per_image, np.int32),
              "segment_labels": np.zeros((n_images, 6), np.uint8),
              "vocab_centers": rng.standard_normal((k, d)).astype(np.float32),
              "pca_mean": np.zeros(k * d, np.float32), "pca_components": np.eye(dims, k * d, dtype=np.float16),
              "pca_scale": np.ones(dims, np.float32), "calib_negatives": np.linspace(0, 1, 3).astype(np.float32)}
    return MapBundle(meta, arrays)


@pytest.fixture
def written(tmp_path):
    p = tmp_path / "m.segmap"
    make_bundle().write(p)
    return p


def test_round_trip(written):
    b = MapBundle.read(written)
    ref = make_bundle()
    assert b.meta == ref.meta
    for k, v in ref.arrays.items():
        np.testing.assert_array_equal(b.arrays[k], v)
        assert b.arrays[k].dtype == v.dtype
    np.testing.assert_array_equal(b.segment_image, [0, 0, 1, 1, 2, 2])
    assert not list(written.parent.glob(".*tmp*"))


def rewrite_header(path, mutate):
    """Apply ``mutate`` to the JSON header and re-seal it with a valid header checksum."""
    import hashlib
    data = path.read_bytes()
    magic, ver, hlen, _ = B.PREFIX.unpack_from(data)
    header = json.loads(data[B.PREFIX.size:B.PREFIX.size + hlen])
    payload = data[-(-(B.PREFIX.size + hlen) // B.ALIGN) * B.ALIGN:]
    mutate(header)
    new = json.dumps(header, sort_keys=True).encode()
    start = -(-(B.PREFIX.size + len(new)) // B.ALIGN) * B.ALIGN
    out = B.PREFIX.pack(magic, ver, len(new), hashlib.sha256(new).digest()) + new
    path.write_bytes(out.ljust(start, b"\0") + payload)


def test_truncated(written):
    data = written.read_bytes()
    for cut in (0, 10, B.PREFIX.size + 5, len(data) - 1):
        written.write_bytes(data[:cut])
        with pytest.raises(BundleError):
            MapBundle.read(written)


def test_bit_flips_anywhere_are_detected(written):
    data = written.read_bytes()
    for pos in range(0, len(data), max(1, len(data) // 97)):
        flipped = bytearray(data)
        flipped[pos] ^= 0x10
        written.write_bytes(bytes(flipped))
        try:
            MapBundle.read(written)
        except BundleError:
            continue
        # only padding bytes between arrays may change without notice
        assert flipped != data and _is_padding(data, pos)


def _is_padding(data, pos):
    _, _, hlen, _ = B.PREFIX.unpack_from(data)
    header = json.loads(data[B.PREFIX.size:B.PREFIX.size + hlen])
    start = -(-(B.PREFIX.size + hlen) // B.ALIGN) * B.ALIGN
    if pos < start:
        return pos >= B.PREFIX.size + hlen
    return not any(start + e["offset"] <= pos < start + e["offset"] + e["nbytes"] for e in header["arrays"].values())


def test_wrong_magic_and_future_version(written):
    data = bytearray(written.read_bytes())
    written.write_bytes(b"PK\x03\x04" + bytes(data[4:]))
    with pytest.raises(BundleError, match="wrong magic"):
        MapBundle.read(written)
    struct.pack_into("<I", data, 16, 7)
    written.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="format 7 is newer"):
        MapBundle.read(written)


def test_inconsistent_bundles_are_refused(tmp_path):
    p = tmp_path / "x.segmap"
    b = make_bundle()
    b.arrays["segments_per_image"] = np.array([2, 2, 5], np.int32)      # points past the descriptors
    with pytest.raises(BundleError, match="points past"):
        b.write(p)
    assert not p.exists()
    b = make_bundle()
    b.meta["settings"]["pca_dims"] = 4                                   # index dim above the PCA asked for
    with pytest.raises(BundleError, match="PCA"):
        b.write(p)
    for bad in ("../../etc/passwd", "/abs/path.jpg", "a\\..\\b.jpg", ""):
        b = make_bundle()
        b.meta["images"][0]["name"] = bad
        with pytest.raises(BundleError, match="image name"):
            b.write(p)
    b = make_bundle()
    b.arrays["pca_components"] = np.ones((8, 3), np.float16)
    with pytest.raises(BundleError, match="PCA shapes"):
        b.write(p)


def test_domain_fitted_bundles(tmp_path):
    """A domain-fitted bundle holds no vocabulary/PCA, only a reference that must be a plain file name."""
    p = tmp_path / "d.segmap"
    b = make_bundle()
    for name in ("vocab_centers", "pca_mean", "pca_components", "pca_scale"):
        del b.arrays[name]
    with pytest.raises(BundleError, match="vocabulary is missing"):
        b.write(p)
    b.meta["fit"] = {"source": "domain", "file": "e.onnx.x.domain", "sha256": "ab" * 32,
                     "settings": b.settings.fit_part()}
    b.write(p)
    assert MapBundle.read(p).meta["fit"]["file"] == "e.onnx.x.domain"
    for bad in ("../e.domain", "/tmp/e.domain", "a\\b.domain", ""):
        b.meta["fit"]["file"] = bad
        with pytest.raises(BundleError, match="unsafe"):
            b.write(p)
    b.meta["fit"] = {"source": "elsewhere"}
    with pytest.raises(BundleError, match="fit"):
        b.write(p)


def test_bad_calibration_table(tmp_path):
    b = make_bundle()
    for bad in ([0.1, np.nan], [0.5, 0.1], [0.1, 1.5], [-0.2, 0.1]):       # not finite, unsorted, outside [0, 1]
        b.arrays["calib_negatives"] = np.array(bad, np.float32)
        with pytest.raises(BundleError, match="calib"):
            b.write(tmp_path / "c.segmap")


def test_other_container_kinds_are_not_maps(tmp_path):
    p = tmp_path / "x.domain"
    B.write_arrays(p, {"format": "segvlad-edge domain"}, {"vocab_centers": np.zeros((2, 4), np.float32)})
    with pytest.raises(BundleError, match="not a map bundle"):
        MapBundle.read(p)


def test_huge_declared_sizes_do_not_allocate(written):
    rewrite_header(written, lambda h: h["arrays"]["descriptors"].update(shape=[2**40, 2**20],
                                                                        nbytes=2**40 * 2**20 * 2))
    with pytest.raises(BundleError, match="past the end"):
        MapBundle.read(written)


def test_resealed_header_lies_are_caught(written):
    """Even with a valid header checksum, arrays must match their own checksums and each other."""
    data = written.read_bytes()
    rewrite_header(written, lambda h: h["arrays"]["segments_per_image"].update(sha256="0" * 64))
    with pytest.raises(BundleError, match="checksum"):
        MapBundle.read(written)
    written.write_bytes(data)
    rewrite_header(written, lambda h: h["meta"]["images"].append({"name": "extra.jpg"}))
    with pytest.raises(BundleError, match="segment table"):
        MapBundle.read(written)
    written.write_bytes(data)
    rewrite_header(written, lambda h: h["meta"]["images"][1].update(name="../../../etc/passwd"))
    with pytest.raises(BundleError, match="unsafe"):
        MapBundle.read(written)


def test_previous_bundle_survives_a_failed_write(written, monkeypatch):
    before = written.read_bytes()
    b = make_bundle(n_images=4)

    def boom(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(B.os, "fsync", boom)
    with pytest.raises(OSError):
        b.write(written)
    assert written.read_bytes() == before
    assert not [p for p in written.parent.iterdir() if p.name != written.name]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_reader_never_crashes(tmp_path, data):
    """Random mutations of a valid bundle: the reader returns a valid bundle or raises BundleError."""
    base = bytearray(_valid_bytes(tmp_path))
    for _ in range(data.draw(st.integers(1, 8))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert", "prefix"]))
        pos = data.draw(st.integers(0, max(len(base) - 1, 0)))
        if op == "flip" and base:
            base[pos] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del base[pos:pos + data.draw(st.integers(1, 64))]
        elif op == "insert":
            base[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
        else:
            struct.pack_into("<Q", base, 20, data.draw(st.integers(0, 2**64 - 1))) if len(base) >= 28 else None
    p = tmp_path / "fuzz.segmap"
    p.write_bytes(bytes(base))
    try:
        MapBundle.read(p)
    except BundleError:
        pass


def _valid_bytes(tmp_path):
    p = tmp_path / "valid.segmap"
    if not p.exists():
        make_bundle().write(p)
    return p.read_bytes()


def with_verification(b: MapBundle, d=3, c=5):
    rng = np.random.default_rng(1)
    n, p = len(b.images), 6
    b.meta["settings"].update(verify_top=10, verify_dims=d, verify_model="similarity", verify_threshold=1.5,
                              verify_min_sim=0.0, verify_gain=1.5)
    b.arrays.update(verify_mean=np.zeros(c, np.float32), verify_components=np.eye(d, c, dtype=np.float32),
                    verify_codes=rng.standard_normal((n, p, d)).astype(np.float16))
    return b


def flip(path, at):
    raw = bytearray(path.read_bytes())
    raw[at] ^= 0xFF
    path.write_bytes(bytes(raw))


def blocked(monkeypatch, n_images=10):
    """A bundle with verification codes of 4 blocks (3 images of 36 bytes a block, BLOCK_BYTES 108)."""
    monkeypatch.setattr(B, "BLOCK_BYTES", 108)
    return with_verification(make_bundle(n_images=n_images))


def test_verification_codes_are_memory_mapped_and_checked_block_by_block_on_first_read(tmp_path, monkeypatch, array_span):
    from segvlad_edge.runtime.verify import verify_bundle

    p = tmp_path / "v.segmap"
    ref = blocked(monkeypatch)
    ref.write(p)
    codes = MapBundle.read(p).arrays["verify_codes"]
    assert isinstance(codes, B.CheckedRows) and codes.rows == 3 and codes.shape == ref.arrays["verify_codes"].shape
    np.testing.assert_array_equal(np.asarray(codes), ref.arrays["verify_codes"])
    start, nbytes = array_span(p, "verify_codes")
    flip(p, start + 36 * 4 + 5)                                  # image 4: the second block (images 3-5)
    b = MapBundle.read(p)                                        # loading does not read the codes
    codes = b.arrays["verify_codes"]
    np.testing.assert_array_equal(codes[[0, 2]], ref.arrays["verify_codes"][[0, 2]])     # first block: fine
    np.testing.assert_array_equal(codes[6:], ref.arrays["verify_codes"][6:])
    np.testing.assert_array_equal(codes[-1, 2], ref.arrays["verify_codes"][-1, 2])
    for read in (lambda: codes[3], lambda: codes[[1, 5]], lambda: codes[2:4], lambda: np.asarray(codes)):
        with pytest.raises(BundleError, match=r"array 'verify_codes' checksum mismatch in rows 3-5: corrupted") as e:
            read()
        assert "\n" not in str(e.value) and str(p) in str(e.value)
    assert not verify_bundle(p)[0][1] and "verify_codes" in verify_bundle(p)[0][2]
    with pytest.raises(IndexError):
        codes[10]


def test_blocks_of_another_size_than_this_writer_uses_are_read(tmp_path):
    p = tmp_path / "v.segmap"
    with pytest.MonkeyPatch.context() as m:
        ref = blocked(m)                             # blocks of 3 images
        ref.write(p)
    codes = MapBundle.read(p).arrays["verify_codes"]
    assert codes.rows == 3 != B.block_rows(codes.shape, 2)
    np.testing.assert_array_equal(np.asarray(codes), ref.arrays["verify_codes"])


def test_truncated_verification_codes_are_refused_at_load(tmp_path, monkeypatch):
    p = tmp_path / "v.segmap"
    blocked(monkeypatch).write(p)
    data = p.read_bytes()
    for cut in (len(data) - 1, len(data) - 40):
        p.write_bytes(data[:cut])
        with pytest.raises(BundleError, match="truncated"):
            MapBundle.read(p)


def test_block_checksums_are_checked_against_the_header(tmp_path, monkeypatch):
    p = tmp_path / "v.segmap"
    blocked(monkeypatch).write(p)
    for mutate in (lambda e: e["block_sha256"].pop(), lambda e: e.update(block_rows=4),
                   lambda e: e["block_sha256"].__setitem__(0, 7), lambda e: e.pop("block_rows")):
        q = tmp_path / "bad.segmap"
        q.write_bytes(p.read_bytes())
        rewrite_header(q, lambda h: mutate(h["arrays"]["verify_codes"]))
        with pytest.raises(BundleError, match="malformed block checksums for array 'verify_codes'"):
            MapBundle.read(q)


def test_format_3_bundles_still_load_their_codes_hashed_in_full(tmp_path, monkeypatch, array_span):
    """A bundle written before block checksums (container and meta format 3, one sha256 per array)."""
    p = tmp_path / "v3.segmap"
    ref = with_verification(make_bundle())
    ref.meta["format_version"] = 3
    with monkeypatch.context() as m:
        m.setattr(B, "FORMAT_VERSION", 3)
        m.setattr(B, "LAZY_ARRAYS", set())
        ref.write(p)
    assert struct.unpack_from("<I", p.read_bytes(), 16)[0] == 3
    b = MapBundle.read(p)
    assert isinstance(b.arrays["verify_codes"], np.memmap) and b.meta["format_version"] == 3
    np.testing.assert_array_equal(b.arrays["verify_codes"], ref.arrays["verify_codes"])
    q = tmp_path / "edited.segmap"
    b.write(q)                                      # an edit (--add, remove-images, tiles) writes the new format
    assert struct.unpack_from("<I", q.read_bytes(), 16)[0] == B.FORMAT_VERSION == MapBundle.read(q).meta["format_version"]
    assert isinstance(MapBundle.read(q).arrays["verify_codes"], B.CheckedRows)
    start, _ = array_span(p, "verify_codes")
    flip(p, start + 1)
    with pytest.raises(BundleError, match="verify_codes.*checksum"):              # at load, as before
        MapBundle.read(p)


@pytest.mark.parametrize("name", ["verify_codes", "descriptors"])
def test_a_zero_sized_array_of_impossible_shape_is_refused(tmp_path, name):
    p = tmp_path / "h.segmap"
    with_verification(make_bundle()).write(p)
    rewrite_header(p, lambda h: h["arrays"][name].update(shape=[0, 2**31, 2**31], nbytes=0))
    with pytest.raises(BundleError, match=f"array '{name}' declares an impossible shape"):
        MapBundle.read(p)


@pytest.mark.parametrize("breakage, message", [
    (lambda b: b.arrays.pop("verify_mean"), "incomplete"),
    (lambda b: b.arrays.update(verify_codes=b.arrays["verify_codes"][:2]), "disagree"),
    (lambda b: b.arrays.update(verify_codes=b.arrays["verify_codes"].astype(np.float32)), "float16"),
    (lambda b: b.meta["settings"].update(verify_model="homography"), "settings"),
    (lambda b: b.meta["settings"].update(verify_threshold=-1), "settings"),
])
def test_malformed_verification_data_is_refused(tmp_path, breakage, message):
    b = with_verification(make_bundle())
    breakage(b)
    with pytest.raises(BundleError, match=message):
        b.write(tmp_path / "bad.segmap")
    assert not (tmp_path / "bad.segmap").exists()


def test_an_older_format_is_refused_with_a_rebuild_hint(written):
    data = bytearray(written.read_bytes())
    struct.pack_into("<I", data, 16, B.OLDEST_VERSION - 1)
    written.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="older than.*rebuild"):
        MapBundle.read(written)


def _mapped_copies(arrays: dict, folder) -> dict:
    """Each array as a read-only ``np.memmap`` of a ``.npy`` file in ``folder`` (how a big map's arrays arrive)."""
    for name, arr in arrays.items():
        np.save(folder / f"{name}.npy", arr)
    return {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in arrays}


def test_memory_mapped_checked_or_strided_arrays_are_written_as_the_same_bytes_with_true_checksums(tmp_path, monkeypatch):
    import hashlib

    ref = blocked(monkeypatch)                                  # codes in 4 blocks of 3 images
    p = tmp_path / "ram.segmap"
    ref.write(p)
    (tmp_path / "npy").mkdir()
    read = MapBundle.read(p).arrays                             # CheckedRows codes, as an edit passes them on
    writes = {"mapped": _mapped_copies(ref.arrays, tmp_path / "npy"), "checked": {k: read[k] for k in ref.arrays},
              "strided": {k: np.asfortranarray(v) for k, v in ref.arrays.items()}}
    assert isinstance(writes["checked"]["verify_codes"], B.CheckedRows)
    for kind, arrays in writes.items():
        q = tmp_path / f"{kind}.segmap"
        MapBundle(ref.meta, arrays).write(q)
        assert q.read_bytes() == p.read_bytes(), kind
    data = p.read_bytes()
    _, version, hlen, header_sha = B.PREFIX.unpack_from(data)
    header = data[B.PREFIX.size:B.PREFIX.size + hlen]
    assert hashlib.sha256(header).digest() == header_sha and version == B.FORMAT_VERSION
    start = B.data_start(hlen)
    entries = json.loads(header)["arrays"]
    assert set(entries) == set(ref.arrays)
    for name, e in entries.items():
        raw = data[start + e["offset"]:start + e["offset"] + e["nbytes"]]
        assert raw == np.ascontiguousarray(ref.arrays[name]).tobytes(), name
        assert hashlib.sha256(raw).hexdigest() == e["sha256"], name
    e = entries["verify_codes"]
    step = e["block_rows"] * 36                                  # 36 bytes per image's codes
    raw = data[start + e["offset"]:start + e["offset"] + e["nbytes"]]
    assert e["block_rows"] == 3 and e["block_sha256"] == [hashlib.sha256(raw[i:i + step]).hexdigest()
                                                          for i in range(0, len(raw), step)]
    assert len(e["block_sha256"]) == 4


def test_a_block_that_fails_its_checksum_on_the_way_to_a_new_file_leaves_no_file(tmp_path, monkeypatch, array_span):
    """An edit streams the old map's codes block by block into the new file: a corrupted block
    stops it, and neither a half-written nor a loadable new file is left."""
    p = tmp_path / "in.segmap"
    blocked(monkeypatch).write(p)
    flip(p, array_span(p, "verify_codes")[0] + 36 * 7 + 1)      # image 7: the third block (images 6-8)
    with pytest.raises(BundleError, match="'verify_codes' checksum mismatch in rows 6-8"):
        MapBundle.read(p).write(tmp_path / "out.segmap")
    assert [x.name for x in tmp_path.iterdir()] == ["in.segmap"]


def test_arrays_in_another_byte_order_are_refused_not_written_wrong(tmp_path):
    with pytest.raises(BundleError, match="'a' is not in this machine's byte order"):
        B.write_arrays(tmp_path / "x.bin", {"format": "test"}, {"a": np.arange(6, dtype=np.dtype("f4").newbyteorder())})
    assert not list(tmp_path.iterdir())


def _traced_peak(fn) -> int:
    """Peak bytes Python and numpy allocated (tracemalloc) while ``fn()`` ran."""
    import tracemalloc

    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_large_arrays_are_written_and_gathered_in_bounded_memory(tmp_path):
    """64 MiB of codes, memory-mapped or block-checked, is written (and gathered on disk from parts)
    holding a few blocks (BLOCK_BYTES, 4 MiB) at a time: the traced peak stays under 16 MiB."""
    big = np.lib.format.open_memmap(tmp_path / "codes.npy", "w+", np.float16, (512, 512, 128))       # 64 MiB
    for i in range(0, len(big), 64):
        big[i:i + 64] = np.arange(i, i + 64, dtype=np.float16)[:, None, None]
    big.flush()
    meta = {"format": "test"}
    assert _traced_peak(lambda: B.write_arrays(tmp_path / "a.bin", meta, {"verify_codes": big})) < 16 << 20
    _, arrays = B.read_arrays(tmp_path / "a.bin", "test file")
    assert isinstance(arrays["verify_codes"], B.CheckedRows)
    assert _traced_peak(lambda: B.write_arrays(tmp_path / "b.bin", meta, arrays)) < 16 << 20
    assert (tmp_path / "a.bin").read_bytes() == (tmp_path / "b.bin").read_bytes()

    folder = tmp_path / "scratch"
    folder.mkdir()

    def gather():
        with B.rows_on_disk(folder, B.row_blocks(big), big.shape[1:], np.float16) as rows:
            assert isinstance(rows, np.memmap) and rows.shape == big.shape
            assert all(np.array_equal(x, y) for x, y in zip(B.row_blocks(rows), B.row_blocks(big)))
    assert _traced_peak(gather) < 16 << 20
    assert not list(folder.iterdir())


def test_gathered_rows_leave_no_file_even_on_failure(tmp_path):
    def parts():
        yield np.ones((2, 3), np.float16)
        raise KeyboardInterrupt                           # killed while gathering
    with pytest.raises(KeyboardInterrupt):
        with B.rows_on_disk(tmp_path, parts(), (3,), np.float16):
            pass
    with pytest.raises(ValueError, match="rows of shape"):
        with B.rows_on_disk(tmp_path, [np.ones((2, 3)), np.ones((1, 4))], (3,), np.float16):
            pass
    with B.rows_on_disk(tmp_path, iter([np.ones((2, 3)), np.zeros((1, 3))]), (3,), np.float16) as rows:
        assert not list(tmp_path.iterdir())               # no name, from the start
    np.testing.assert_array_equal(rows, [[1, 1, 1], [1, 1, 1], [0, 0, 0]])     # mapped while it is used
    with B.rows_on_disk(tmp_path, [], (3,), np.float16) as rows:
        assert rows.shape == (0, 3)


def test_a_read_bundle_keeps_the_sealed_header_sha256_as_its_id(tmp_path):
    import hashlib

    from segvlad_edge.apps.stream import map_ref

    b = make_bundle()
    assert map_ref(tmp_path / "m.segmap", b)["id"] is None        # made in memory: no sealed header to name it by
    p = tmp_path / "m.segmap"
    b.write(p)
    data = p.read_bytes()
    header_len = B.PREFIX.unpack_from(data)[2]
    sealed = hashlib.sha256(data[B.PREFIX.size:B.PREFIX.size + header_len]).hexdigest()
    read = MapBundle.read(p)
    assert read.header_sha256 == b.header_sha256 == B.header_sha256(p) == sealed
    assert map_ref(p, read) == map_ref(p) == {"file": "m.segmap", "id": sealed[:12]}
    assert map_ref(None, make_bundle()) == {"file": None, "id": None}


def test_the_localizers_threads_cap_its_search():
    from segvlad_edge.runtime.localizer import Localizer
    from segvlad_edge.runtime.steps.index import SEARCH_THREADS

    b = make_bundle()
    assert [Localizer(b, None, t).index.threads for t in (None, 1, 64)] == [-1, 1, SEARCH_THREADS]

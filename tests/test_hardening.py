"""Issue 11, one test (or more) per numbered item: outputs never clobber inputs, no stale resumes,
no hangs, sizes checked before decoding, bundles and manifests validated by meaning, names and
ground truth checked, option ranges. Crafted files are generated here, never committed."""
import dataclasses
import json
import os
import shutil
import stat
import struct
import subprocess
import sys
import zlib

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from segvlad_edge.errors import FileSafetyError, SegvladError
from segvlad_edge.files import atomic_write, check_output, open_regular
from segvlad_edge.runtime.mapfiles import bundle as B
from segvlad_edge.runtime.mapfiles.bundle import BundleError, MapBundle
from segvlad_edge.runtime.inputs.images import ImageError, declared_size, decode_image, load_image
from segvlad_edge.runtime.settings import CONFS, Settings
from segvlad_edge.schema import SchemaError


def _bundle_helpers():
    """``make_bundle`` and ``rewrite_header`` of test_bundle.py (tests are not a package)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("bundle_helpers", Path(__file__).with_name("test_bundle.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_bundle, module.rewrite_header


make_bundle, rewrite_header = _bundle_helpers()


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "segvlad_edge.apps.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


def small_images(folder, n=3, size=(96, 128)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(folder)))
    for i in range(n):
        img = cv2.GaussianBlur(rng.integers(0, 255, (*size, 3), dtype=np.uint8), (0, 0), 3)
        cv2.imwrite(str(folder / f"Image{i:03d}.jpg"), img)
    return sorted(folder.iterdir())


# ------------------------------------------------------------------ 1. outputs never overwrite inputs
def test_outputs_refuse_inputs_special_files_and_devices(tmp_path):
    src = tmp_path / "in.jpg"
    src.write_bytes(b"input")
    with pytest.raises(FileSafetyError, match="input of this command"):
        check_output(src, [src])
    link = tmp_path / "link.jpg"
    os.link(src, link)                                      # the same file under another name
    with pytest.raises(FileSafetyError, match="input"):
        check_output(link, [src])
    os.mkfifo(tmp_path / "fifo")
    for special, kind in ((tmp_path / "fifo", "FIFO"), ("/dev/null", "device"), (tmp_path, "folder")):
        with pytest.raises(FileSafetyError, match=kind):
            with atomic_write(special) as f:
                f.write(b"x")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode) and src.read_bytes() == b"input"
    with pytest.raises(RuntimeError):                       # an error mid-write leaves no temp file, no target
        with atomic_write(tmp_path / "out.bin") as f:
            f.write(b"half")
            raise RuntimeError("killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "in.jpg", "link.jpg"]
    with atomic_write(tmp_path / "out.bin") as f:
        f.write(b"whole")
    assert (tmp_path / "out.bin").read_bytes() == b"whole"


def test_every_writer_refuses_its_inputs(tmp_path):
    from segvlad_edge.apps.explain import write_png

    m = tmp_path / "m.segmap"
    make_bundle().write(m)
    before = m.read_bytes()
    with pytest.raises(FileSafetyError, match="input"):      # explain -o MAP
        write_png(m, np.zeros((4, 4, 3), np.uint8), inputs=[m])
    with pytest.raises(FileSafetyError, match="input"):      # a bundle written over its own source
        MapBundle.read(m).write(m, inputs=[m])
    from click.testing import CliRunner

    from segvlad_edge.apps.cli import cli as group

    q = tmp_path / "q.png"
    cv2.imwrite(str(q), np.zeros((8, 8, 3), np.uint8))
    for out in (m, q):                                      # explain q --map m -o m / -o q: refused before work
        r = CliRunner().invoke(group, ["explain", str(q), "--map", str(m), "-o", str(out)])
        assert r.exit_code == 1 and "input of this command" in r.output
    assert m.read_bytes() == before


def test_build_map_refuses_to_overwrite_an_input_image_before_any_work(engines_dir, tmp_path):
    imgs = small_images(tmp_path / "imgs")
    before = imgs[1].read_bytes()
    r = cli("build-map", tmp_path / "imgs", "-o", imgs[1], "--engines", engines_dir)
    assert r.returncode == 1 and "input of this command" in r.stderr and "Traceback" not in r.stderr
    assert imgs[1].read_bytes() == before and not (tmp_path / "imgs" / f".{imgs[1].name}.work").exists()


# ------------------------------------------------------------------ 2. stale resume
def test_work_files_are_keyed_by_content_and_truncated_ones_redone(engines_dir, tmp_path, make_pipeline):
    from segvlad_edge.runtime.frame_cache import extract_frames, load_frame

    pipe = make_pipeline(engines_dir)
    a, b = small_images(tmp_path / "a"), small_images(tmp_path / "bb")     # same names, other pixels
    work = tmp_path / "work"
    kept_a, _, _ = extract_frames([(p.name, p) for p in a], work, pipe, progress=False)
    kept_b, _, ms = extract_frames([(p.name, p) for p in b], work, pipe, progress=False)
    assert [n for n, _ in kept_a] == [n for n, _ in kept_b]
    assert not {wf for _, wf in kept_a} & {wf for _, wf in kept_b} and ms     # B computed, not A reused
    other = make_pipeline(engines_dir, segmenter="grid")                     # other settings: other work files
    kept_g, _, _ = extract_frames([(p.name, p) for p in a], work, other, progress=False)
    assert not {wf for _, wf in kept_g} & {wf for _, wf in kept_a}
    wf = kept_a[0][1]
    good = load_frame(wf, pipe.conf).fmap.features
    for broken in (b"", wf.read_bytes()[: wf.stat().st_size // 2]):       # empty, truncated: redone
        wf.write_bytes(broken)
        kept, _, ms = extract_frames([(p.name, p) for p in a], work, pipe, progress=False)
        assert kept[0][1] == wf and "features" in ms
        np.testing.assert_allclose(load_frame(wf, pipe.conf).fmap.features, good, atol=1e-3)
    again, _, ms = extract_frames([(p.name, p) for p in a], work, pipe, progress=False)
    assert ms == {}                                                         # all reused: nothing recomputed
    assert not [p for p in work.iterdir() if ".tmp" in p.name]


# ------------------------------------------------------------------ 3. FIFOs and unbounded settings
def test_fifos_are_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "f.segmap"
    os.mkfifo(fifo)
    with pytest.raises(FileSafetyError, match="FIFO"):
        open_regular(fifo)
    with pytest.raises(SegvladError, match="FIFO"):
        MapBundle.read(fifo)
    os.mkfifo(tmp_path / "x.jpg")
    with pytest.raises(ImageError, match="FIFO"):
        load_image(tmp_path / "x.jpg")
    r = cli("inspect", fifo, timeout=60)
    assert r.returncode == 1 and "FIFO" in r.stderr


def test_every_setting_is_bounded():
    assert CONFS["grid"] == dataclasses.replace(CONFS["segvlad"], segmenter="grid")     # presets from one base
    for bad in ({"order": 10**9}, {"order": -1}, {"top_k": 10**9}, {"top_k": 0}, {"vocab_k": 0},
                {"pca_dims": 1}, {"pca_dims": 10**6}, {"whiten": "yes"}, {"norm": "l3"}, {"segmenter": "x"},
                {"segmenter_conf": {"k": -3}}, {"segmenter_conf": {"clusters": -3}}, {"order": 2.5}):
        with pytest.raises(SchemaError):
            Settings.of(bad)
        with pytest.raises(SchemaError):
            dataclasses.replace(CONFS["segvlad"], **bad)
    with pytest.raises(SchemaError, match="missing"):
        Settings.parse({"order": 3})
    assert Settings.parse(json.loads(json.dumps(CONFS["grid"].to_json()))) == CONFS["grid"]
    b = make_bundle()
    b.meta["settings"]["order"] = 10**9                    # the bundle that hung localize
    with pytest.raises(BundleError, match="order"):
        b.validate()


# ------------------------------------------------------------------ 4. declared image sizes
def _png(w, h, body=b"\0" * 100):
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(body)) + chunk(b"IEND", b""))


def test_declared_size_is_checked_before_decoding(tmp_path):
    bomb = _png(60000, 60000)
    assert len(bomb) < 400 and declared_size(bomb) == ("PNG", 60000, 60000)
    with pytest.raises(ImageError, match="declares 60000x60000"):
        decode_image(bomb, "bomb.png")
    with pytest.raises(ImageError, match="declares 23000x23000"):
        decode_image(_png(23000, 23000), "big.png")
    for ext in (".png", ".jpg", ".bmp", ".tiff", ".webp", ".ppm"):
        ok, buf = cv2.imencode(ext, np.zeros((37, 53, 3), np.uint8))
        assert declared_size(buf.tobytes())[1:] == (53, 37), ext
    ok, buf = cv2.imencode(".jpg", np.zeros((30, 40, 3), np.uint8))
    data = bytearray(buf.tobytes())
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, 60000, 60000)   # a JPEG declaring 3.6 GP: refused even at 1/8
    with pytest.raises(ImageError, match="declares 60000x60000"):
        decode_image(bytes(data), "huge.jpg")

def test_a_decompression_bomb_is_skipped_by_build_map(engines_dir, tmp_path):
    small_images(tmp_path / "imgs")
    (tmp_path / "imgs" / "bomb.png").write_bytes(_png(60000, 60000))
    r = cli("build-map", tmp_path / "imgs", "-o", tmp_path / "m.segmap", "--engines", engines_dir, "--fit", "map",
            "--pca-dims", "0", "--quiet")
    assert r.returncode == 0, r.stderr
    assert "skipped bomb.png: bomb.png: PNG declares 60000x60000 pixels" in r.stderr and "Traceback" not in r.stderr


# ------------------------------------------------------------------ 5. small maps and unreadable map images
def test_temporal_filter_on_maps_shorter_than_its_kernel():
    from segvlad_edge.runtime.steps.temporal import SequenceFilter

    for n in (1, 2, 3, 6, 7, 8):
        f = SequenceFilter(n)
        for _ in range(3):
            best, p = f.update(np.array([n - 1]), np.array([1.0]))
        assert best == n - 1 and 0 < p <= 1 and f.belief.shape == (n,)


def test_eval_with_an_unreadable_map_image(engines_dir, tmp_path):
    """One unreadable map image of three (gt.json): skipped; the temporal filter over a two-image
    map (shorter than its kernel) used to fail with "operands could not be broadcast"."""
    ds = tmp_path / "ds"
    maps = small_images(ds / "map", n=3)
    small_images(ds / "q", n=2)
    maps[2].write_bytes(b"not an image")
    gt = {"q/Image000.jpg": ["map/Image000.jpg"], "q/Image001.jpg": ["map/Image001.jpg", "map/Image002.jpg"]}
    (ds / "gt.json").write_text(json.dumps(gt))
    r = cli("eval", ds, "--engines", engines_dir, "--fit", "map", "--pca-dims", "0", "--json", "--quiet")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.splitlines()[-1])
    assert result["map_images"] == 2 and 0 <= result["recall@1_filtered"] <= 1
    assert [s[0] for s in result["skipped"]] == ["map/Image002.jpg"]


# ------------------------------------------------------------------ 7. bundles that pass the checksums but lie
def _sealed(tmp_path, mutate=None, arrays=None):
    """A bundle file whose header (``mutate``) or arrays (``arrays``: name -> array) lie, with every
    checksum recomputed."""
    b = make_bundle()
    b.arrays.update(arrays or {})
    p = tmp_path / "lie.segmap"
    B.write_arrays(p, b.meta, b.arrays)
    if mutate:
        rewrite_header(p, lambda h: mutate(h["meta"]))
    return p


HEADER_LIES = {
    "engine is a list": (lambda m: m.update(engine=["a"]), "engine"),
    "patch_grid ab": (lambda m: m["engine"].update(patch_grid="ab"), "patch_grid"),
    "created missing": (lambda m: m.pop("created"), "created"),
    "top_k missing": (lambda m: m["settings"].pop("top_k"), "top_k"),
    "top_k 1e9": (lambda m: m["settings"].update(top_k=10**9), "top_k"),
    "segmenter_conf k -3": (lambda m: m["settings"].update(segmenter_conf={"k": -3}), "segmenter_conf"),
    "metadata NaN": (lambda m: m["images"][0]["meta"].update(x=float("nan")), "NaN"),
    "metadata Infinity": (lambda m: m["images"][1].update(meta={"gps": [float("inf"), 1]}), "Infinity"),
    "grid vs input": (lambda m: m["engine"].update(patch_grid=[3, 2]), "patch grid"),
    "format_version lie": (lambda m: m.update(format_version=2), "format_version"),
}


@pytest.mark.parametrize("case", sorted(HEADER_LIES))
def test_resealed_header_lies_are_one_line_errors(tmp_path, case):
    mutate, word = HEADER_LIES[case]
    p = tmp_path / "lie.segmap"
    make_bundle().write(p)
    rewrite_header(p, lambda h: mutate(h["meta"]))
    with pytest.raises(BundleError, match=word):
        MapBundle.read(p)


MODEL_LIES = {
    "NaN vocabulary": ("vocab_centers", lambda a: np.full_like(a, np.nan), "NaN"),
    "zero vocabulary": ("vocab_centers", np.zeros_like, "vocabulary"),
    "NaN PCA": ("pca_components", lambda a: np.full_like(a, np.nan), "NaN"),
    "zero PCA": ("pca_components", np.zeros_like, "PCA"),
    "PCA scale 0": ("pca_scale", np.zeros_like, "PCA"),
    "zero descriptors": ("descriptors", np.zeros_like, "descriptors"),
    "infinite descriptor row": ("descriptors", lambda a: np.where(np.arange(len(a))[:, None] == 1, np.inf,
                                                                  a).astype(a.dtype), "infinite"),
    "calibration above 1": ("calib_negatives", lambda a: a + 2, "calib"),
    "calibration unsorted": ("calib_negatives", lambda a: a[::-1].copy(), "calib"),
}


@pytest.mark.parametrize("case", sorted(MODEL_LIES))
def test_degenerate_models_are_refused_by_read_and_verify(tmp_path, case):
    name, change, word = MODEL_LIES[case]
    b = make_bundle()
    p = _sealed(tmp_path, arrays={name: change(b.arrays[name])})
    with pytest.raises(BundleError, match=word):
        MapBundle.read(p)
    from segvlad_edge.runtime import verify

    results = verify.verify_bundle(p)
    assert results[0][0] == "file" and not results[0][1] and word in results[0][2]


def test_localize_output_is_always_valid_json():
    """Image metadata reaches the JSON lines as the bundle stores it, and a bundle cannot store NaN."""
    b = make_bundle()
    b.meta["images"][0]["meta"]["x"] = float("inf")
    with pytest.raises(BundleError, match="not finite"):
        b.validate()
    with pytest.raises(ValueError):
        B.write_arrays("/nonexistent/never.segmap", b.meta, {})           # allow_nan=False, before any file


def _nest(children):
    return st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3)


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
                           _nest, max_leaves=6)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_header_semantics(tmp_path, data):
    """Any header field replaced by any JSON value (checksums re-sealed): a valid bundle or a BundleError."""
    p = tmp_path / "fuzz.segmap"
    make_bundle().write(p)
    value = data.draw(JSON_VALUES)

    def mutate(h):
        node, key = h["meta"], None
        for _ in range(data.draw(st.integers(1, 3))):
            if not isinstance(node, (dict, list)) or not node:
                break
            key = data.draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))))
            parent, node = node, node[key]
        if key is not None:
            parent[key] = value
    rewrite_header(p, mutate)
    try:
        MapBundle.read(p)
    except BundleError:
        pass


# ------------------------------------------------------------------ 8. engine manifests
@pytest.fixture
def engine_copy(dinov2_manifest, tmp_path):
    from segvlad_edge.engines.manifest import manifest_path_for

    src = dinov2_manifest.engine_path
    (tmp_path / src.name).write_bytes(src.read_bytes())
    manifest_path_for(tmp_path / src.name).write_text(dinov2_manifest.path.read_text())
    return manifest_path_for(tmp_path / src.name)


MANIFEST_LIES = {
    "input_size string": (lambda m: m.update(input_size="448x336"), "input_size"),
    "patch_grid 1e5": (lambda m: m["model"].update(patch_grid=[100000, 100000]), "patch_grid"),
    "model empty": (lambda m: m.update(model={}), "model"),
    "grid vs size": (lambda m: m.update(input_size=[224, 224]), "patch_grid"),
    "NaN mean": (lambda m: m["model"].update(mean=[float("nan"), 0, 0]), "NaN"),
    "kind unknown": (lambda m: m.update(kind="x"), "kind"),
}


@pytest.mark.parametrize("case", sorted(MANIFEST_LIES))
def test_manifest_lies_are_engine_errors(engine_copy, case):
    from segvlad_edge.engines.manifest import EngineError, load_manifest

    mutate, word = MANIFEST_LIES[case]
    raw = json.loads(engine_copy.read_text())
    mutate(raw)
    engine_copy.write_text(json.dumps(raw))
    with pytest.raises(EngineError, match=word):
        load_manifest(engine_copy)


def test_graph_and_manifest_disagreeing_and_runtime_errors_name_the_engine(engine_copy):
    """224x224 declared (grid and inputs consistent) for a 224x168 graph: refused at open; an
    onnxruntime failure at run time is one BackendError line naming the engine."""
    from segvlad_edge.engines.manifest import EngineError, load_manifest
    from segvlad_edge.runtime.backends import BackendError
    from segvlad_edge.runtime.steps.features import DenseFeatureExtractor

    m = load_manifest(engine_copy)
    ext = DenseFeatureExtractor(m)
    with pytest.raises(BackendError, match=f"engine {m.file}: onnxruntime failed"):
        ext.backend.run({"image": np.zeros((1, 3, 10, 10), np.float32)})
    raw = json.loads(engine_copy.read_text())
    raw.update(input_size=[224, 224], inputs={"image": [1, 3, 224, 224]})
    raw["model"]["patch_grid"] = [16, 16]
    engine_copy.write_text(json.dumps(raw))
    with pytest.raises(EngineError, match="the graph takes image"):
        DenseFeatureExtractor(load_manifest(engine_copy))


def test_engines_command_lists_broken_manifests(engine_copy):
    raw = json.loads(engine_copy.read_text())
    raw["model"] = {}
    engine_copy.write_text(json.dumps(raw))
    r = cli("engines", engine_copy.parent, timeout=60)
    assert r.returncode == 0 and "BROKEN" in r.stdout and "Traceback" not in r.stderr


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_manifests(engine_copy, data):
    """Any manifest field replaced by any JSON value: a manifest or an EngineError, never a crash."""
    from segvlad_edge.engines.manifest import EngineError, load_manifest

    raw = json.loads(engine_copy.read_text())
    node = raw
    key = data.draw(st.sampled_from(sorted(raw)))
    if isinstance(raw[key], dict) and raw[key] and data.draw(st.booleans()):
        node, key = raw[key], data.draw(st.sampled_from(sorted(raw[key])))
    node[key] = data.draw(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.text(max_size=8)
                          | st.lists(st.integers(-5, 10**6), max_size=4) | st.dictionaries(st.text(max_size=3),
                                                                                           st.integers(), max_size=2))
    path = engine_copy.with_name("fuzz.onnx.json")
    path.write_text(json.dumps(raw))
    try:
        load_manifest(path, verify=False)
    except EngineError:
        pass


# ------------------------------------------------------------------ 9. unsafe file names
def test_unsafe_names_are_refused_before_any_work_and_printed_escaped(engines_dir, tmp_path):
    imgs = small_images(tmp_path / "imgs")
    shutil.copy(imgs[0], tmp_path / "imgs" / "a\\b.jpg")
    r = cli("build-map", tmp_path / "imgs", "-o", tmp_path / "m.segmap", "--engines", engines_dir, "--quiet")
    assert r.returncode == 1 and "unsafe" in r.stderr and not (tmp_path / "m.segmap").exists()
    assert not (tmp_path / ".m.segmap.work").exists()                      # refused before the work
    (tmp_path / "imgs" / "a\\b.jpg").unlink()
    shutil.copy(imgs[0], tmp_path / "imgs" / "x\nerror: forged.jpg")
    r = cli("build-map", tmp_path / "imgs", "-o", tmp_path / "m.segmap", "--engines", engines_dir, "--quiet")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "x\\nerror: forged.jpg" in r.stderr


# ------------------------------------------------------------------ 10. ground truth
def test_malformed_ground_truth_is_a_dataset_error(tmp_path):
    from segvlad_edge.runtime.inputs.datasets import DatasetError, load_dataset, load_object_npy

    imgs = small_images(tmp_path / "ds")
    ds = tmp_path / "ds"
    for gt in ({imgs[0].name: 5}, {imgs[0].name: [5]}, 5, {}):
        (ds / "gt.json").write_text(json.dumps(gt))
        with pytest.raises(DatasetError):
            load_dataset(ds)
    (ds / "gt.json").unlink()
    (ds / "places.json").write_text(json.dumps({p.name: i for i, p in enumerate(imgs)}))   # all distinct
    with pytest.raises(DatasetError, match="share a place"):
        load_dataset(ds)
    npy = tmp_path / "g.npy"
    for raw in (b"\x93NUMPY\x01\x00" + (16).to_bytes(2, "little") + b"['descr', '|O']\n", b"\x93NUMPY",
                b"\x93NUMPY\x01\x00" + (9).to_bytes(2, "little") + b"{'descr':"):
        npy.write_bytes(raw)
        with pytest.raises(DatasetError):
            load_object_npy(npy)
    bomb = b"\x80\x02cnumpy\nndarray\nJ" + struct.pack("<i", 2**27) + b"\x85\x85R."   # np.ndarray((2**27,))
    npy.write_bytes(b"\x93NUMPY\x01\x00" + (20).to_bytes(2, "little") + b"{'descr': '|O'}     " + bomb)
    with pytest.raises(DatasetError, match="at most"):
        load_object_npy(npy)


def test_vpr_bench_plain_int_and_scalar_positives(tmp_path):
    from segvlad_edge.runtime.inputs.datasets import load_dataset

    root = tmp_path / "vb"
    small_images(root / "ref", n=3)
    small_images(root / "query", n=2)
    np.save(root / "ground_truth_new.npy", np.array([[0, 1], [1, 2]], np.int64))          # int64 [N, 2]
    ds = load_dataset(root)
    assert ds.positives == [{1}, {2}]
    arr = np.empty((2, 2), object)
    arr[0] = [0, 2]                                                                       # scalar positive
    arr[1, 0], arr[1, 1] = 1, [0, 1]
    np.save(root / "ground_truth_new.npy", arr, allow_pickle=True)
    assert load_dataset(root).positives == [{2}, {0, 1}]


# ------------------------------------------------------------------ 11. option ranges
@pytest.mark.parametrize("args", [("localize", "--top", "0"), ("localize", "--top", "-3"),
                                  ("localize", "--min-confidence", "2"), ("localize", "--max-fps", "-1"),
                                  ("eval", "--order", "-1", "x"), ("eval", "--pca-dims", "-5", "x"),
                                  ("build-map", "--order", "1000000000", "x", "-o", "y"),
                                  ("localize", "--every-n", "0"), ("explain", "--top", "0", "--map", "m", "q"),
                                  ("localize", "--threads", "0"), ("localize", "--rival-ratio", "-1")])
def test_option_ranges(args):
    from click.testing import CliRunner

    from segvlad_edge.apps.cli import cli as group

    r = CliRunner().invoke(group, [*args, "--map", "m", "--images", "i"] if args[0] == "localize" else list(args))
    assert r.exit_code == 2 and "range" in r.output and args[1] in r.output


# ------------------------------------------------------------------ issue 9 item 3: one error family
def test_user_errors_are_one_line_and_bugs_ask_to_be_reported(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from segvlad_edge.apps.cli import BUG_EXIT, cli as group

    p = tmp_path / "m.segmap"
    make_bundle().write(p)
    data = bytearray(p.read_bytes())
    data[-3] ^= 1
    p.write_bytes(bytes(data))
    r = CliRunner().invoke(group, ["inspect", str(p)])
    assert r.exit_code == 1 and r.output.startswith("error: ") and r.output.count("\n") == 1
    monkeypatch.setattr(MapBundle, "read", classmethod(lambda cls, path: {}["missing"]))
    r = CliRunner().invoke(group, ["inspect", str(p)])
    assert r.exit_code == BUG_EXIT and "internal error (KeyError" in r.output and "-v" in r.output
    assert "Traceback" not in r.output
    r = CliRunner().invoke(group, ["-v", "inspect", str(p)])
    assert r.exit_code == BUG_EXIT and "Traceback" in r.output


def test_error_classes_share_one_base():
    from segvlad_edge.apps.demo import DemoError
    from segvlad_edge.engines.manifest import EngineError
    from segvlad_edge.export.dinov2 import SourceError as ExportSourceError
    from segvlad_edge.runtime.backends import BackendError
    from segvlad_edge.runtime.inputs.datasets import DatasetError
    from segvlad_edge.runtime.fitting import FitError
    from segvlad_edge.runtime.mapping import MapBuildError
    from segvlad_edge.runtime.mapfiles.metadata import MetadataError
    from segvlad_edge.runtime.inputs.sources import SourceError

    assert ExportSourceError is SourceError
    for cls in (DemoError, EngineError, BackendError, DatasetError, FitError, MapBuildError, MetadataError,
                SourceError, BundleError, ImageError, FileSafetyError, SchemaError):
        assert issubclass(cls, SegvladError), cls


def test_require_names_the_extra_in_one_line_and_lets_own_import_bugs_surface():
    from segvlad_edge.errors import require
    from segvlad_edge.runtime.fitting import FitError

    assert require("json", "x", "anything") is json
    with pytest.raises(FitError) as e:
        require("no_such_module_segvlad.sub", "ray", "build-map --ray", FitError)
    assert str(e.value) == ("build-map --ray needs no_such_module_segvlad: install the [ray] extra "
                            "(`pip install 'segvlad-edge[ray]'`)")
    with pytest.raises(SegvladError, match=r"^x needs no_such_module_segvlad: `pip install no_such_module_segvlad`$"):
        require("no_such_module_segvlad", None, "x")
    # an ImportError from segvlad-edge's own code is a bug, not a missing extra
    with pytest.raises(ImportError) as e:
        require("segvlad_edge.no_such_module", "export", "x")
    assert not isinstance(e.value, SegvladError)


def test_a_corrupted_block_of_verification_codes_leaves_its_images_out_not_the_run(corridor_bundle, datasets,
                                                                                  engines_dir, tmp_path, monkeypatch,
                                                                                  caplog):
    """Format 4 checks the verification codes block by block on first read: a flipped byte leaves the
    images of that block out of the answers, with a warning, while localisation goes on."""
    import logging

    from segvlad_edge.runtime.localizer import Localizer

    b = MapBundle.read(corridor_bundle)
    monkeypatch.setattr(B, "BLOCK_BYTES", 2 * b.arrays["verify_codes"][0].nbytes)       # blocks of 2 images
    p = tmp_path / "m.segmap"
    b.write(p)
    query = load_image(sorted((datasets / "corridor" / "query").iterdir())[25])
    first = Localizer.from_bundle(p, engines_dir).localize(query)
    best = first.top[0]["index"]
    raw = bytearray(p.read_bytes())
    raw[MapBundle.read(p).arrays["verify_codes"]._mapped.offset + best * b.arrays["verify_codes"][0].nbytes] ^= 0xFF
    p.write_bytes(bytes(raw))
    loc = Localizer.from_bundle(p, engines_dir)                  # loads: the codes are not read at load
    with caplog.at_level(logging.WARNING, logger="segvlad_edge.runtime.localizer"):
        ans = loc.localize(query)
    block = {best // 2 * 2, best // 2 * 2 + 1}
    assert loc.corrupt == block                                 # the whole block, also an image not shortlisted
    assert ans.top and not {e["index"] for e in ans.top} & loc.corrupt
    assert "checksum mismatch" in caplog.text and "left out of the answers" in caplog.text
    caplog.clear()
    again = loc.localize(query)                                 # known now: skipped, no second warning
    assert [e["index"] for e in again.top] == [e["index"] for e in ans.top] and "checksum" not in caplog.text

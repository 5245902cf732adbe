import hashlib
import json

import pytest

from segvlad_edge.engines.manifest import EngineError, find_engine, load_manifest, manifest_path_for, tensorrt_available


def test_round_trip_and_signature(dinov2_manifest):
    m = load_manifest(dinov2_manifest.path)
    assert m == dinov2_manifest
    assert m.model["patch_grid"] == [12, 16] and m.model["dim"] == 384 and m.model["block"] == 10
    assert m.inputs == {"image": [1, 3, 168, 224]} and m.outputs == {"features": [1, 192, 384]}
    assert m.verification["max_abs_diff"] < 1e-4
    assert m.feature_signature()["source_sha256"] == m.source["sha256"]


@pytest.fixture
def engine_copy(dinov2_manifest, tmp_path):
    src = dinov2_manifest.engine_path
    (tmp_path / src.name).write_bytes(src.read_bytes())
    manifest_path_for(tmp_path / src.name).write_text(dinov2_manifest.path.read_text())
    return tmp_path / src.name


def test_bit_flip_is_refused(engine_copy):
    data = bytearray(engine_copy.read_bytes())
    data[len(data) // 2] ^= 0x01
    engine_copy.write_bytes(bytes(data))
    with pytest.raises(EngineError, match="sha256"):
        load_manifest(engine_copy)


def test_truncated_engine_is_refused(engine_copy):
    engine_copy.write_bytes(engine_copy.read_bytes()[:1000])
    with pytest.raises(EngineError, match="bytes"):
        find_engine(engine_copy.parent, "dinov2")


def test_missing_engine_and_bad_manifests(engine_copy, tmp_path):
    mpath = manifest_path_for(engine_copy)
    raw = json.loads(mpath.read_text())
    mpath.write_text(json.dumps({**raw, "format_version": 99}))
    with pytest.raises(EngineError, match="format 99"):
        load_manifest(mpath)
    mpath.write_text(json.dumps({**raw, "file": "../elsewhere.onnx"}))
    with pytest.raises(EngineError, match="folder"):
        load_manifest(mpath)
    mpath.write_text("{not json")
    with pytest.raises(EngineError, match="unreadable"):
        load_manifest(mpath)
    mpath.write_text(json.dumps(raw))
    engine_copy.unlink()
    with pytest.raises(EngineError, match="missing"):
        load_manifest(mpath)
    with pytest.raises(EngineError, match="build-engines"):
        find_engine(tmp_path, "sam_encoder")


@pytest.mark.skipif(tensorrt_available(),
                    reason="TensorRT is installed here")
def test_onnx_chosen_over_a_plan_without_tensorrt(engine_copy):
    """A TensorRT plan beside the ONNX engine is only preferred where TensorRT can run it."""
    plan = engine_copy.with_suffix(".fp16.plan")
    plan.write_bytes(b"serialized engine")
    m = load_manifest(engine_copy)
    m.file, m.backend, m.precision = plan.name, "tensorrt", "fp16"
    m.file_bytes, m.file_sha256 = plan.stat().st_size, hashlib.sha256(b"serialized engine").hexdigest()
    m.write(manifest_path_for(plan))
    assert find_engine(engine_copy.parent, "dinov2").backend == "onnx"
    assert find_engine(engine_copy.parent, "dinov2", backend="tensorrt").file == plan.name

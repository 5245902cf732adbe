"""INT8 calibration for TensorRT builds: a folder of images -> an entropy calibrator with a
calibration cache kept beside the plan (``X.int8.calib.cache``), so rebuilds skip calibration.

Images are preprocessed exactly as the runtime does for the engine's kind; device buffers come
from torch (available wherever export runs). Imported only when ``--precision int8`` is asked for.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from segvlad_edge.engines.manifest import EngineError, EngineManifest
from segvlad_edge.errors import require
from segvlad_edge.files import write_bytes
from segvlad_edge.runtime.backends import require_tensorrt
from segvlad_edge.runtime.steps.features import normalise
from segvlad_edge.runtime.inputs.images import ImageError, list_images, load_image

MAX_IMAGES = 500


def calibration_batches(m: EngineManifest, images_dir: str | Path):
    """Yield ``[1, 3, H, W] float32`` inputs for a DINOv2 or SAM-encoder engine."""
    files = list_images(images_dir)[:MAX_IMAGES]
    if not files:
        raise EngineError(f"{images_dir} holds no calibration images")
    w, h = m.input_size
    for f in files:
        try:
            img = load_image(f)
        except ImageError:
            continue
        if m.kind == "dinov2":
            yield normalise(img, (w, h), m.model["mean"], m.model["std"], 1 / 255)
        else:   # SAM encoder: long side to 1024, zero-pad bottom/right
            s = w / max(img.shape[:2])
            nh, nw = int(img.shape[0] * s + 0.5), int(img.shape[1] * s + 0.5)
            x = np.zeros((1, 3, h, w), np.float32)
            x[:, :, :nh, :nw] = normalise(img, (nw, nh), m.model["mean"], m.model["std"], 1.0)
            yield x


def make_calibrator(m: EngineManifest, images_dir: str | Path, cache_path: Path):
    trt = require_tensorrt()
    torch = require("torch", "export", "int8 calibration", EngineError)

    if not torch.cuda.is_available():
        raise EngineError("int8 calibration needs a CUDA device")
    input_name = next(iter(m.inputs))

    class ImageFolderCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            super().__init__()
            self.batches = calibration_batches(m, images_dir)
            self.device = None

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names):
            x = next(self.batches, None)
            if x is None:
                return None
            self.device = torch.from_numpy(x).cuda()   # kept alive until the next call
            return [int(self.device.data_ptr()) if n == input_name else 0 for n in names]

        def read_calibration_cache(self):
            return cache_path.read_bytes() if cache_path.is_file() else None

        def write_calibration_cache(self, cache) -> None:
            write_bytes(cache_path, bytes(cache))

    return ImageFolderCalibrator()

"""Engine backends: one small interface over onnxruntime and native TensorRT.

    backend = open_engine(manifest)            # or OrtBackend(path) / TrtBackend(path)
    outputs = backend.run({"image": x})        # name -> np.ndarray
    backend.inputs, backend.outputs            # name -> shape (None for dynamic axes)
    backend.provider                           # what actually runs it, e.g. "CPUExecutionProvider"

TensorRT and cuda-python are imported only when a TensorRT engine is opened.
"""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np

from segvlad_edge.engines.manifest import EngineError, EngineManifest
from segvlad_edge.errors import SegvladError, require

log = logging.getLogger(__name__)

ORT_PROVIDERS = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider",
                 "cpu": "CPUExecutionProvider"}


class BackendError(SegvladError, RuntimeError):
    """A backend cannot be created or run here (missing package, device, or bad input)."""


class Backend:
    """``run(inputs) -> outputs`` with named float32 arrays; ``inputs``/``outputs`` map names to shapes."""

    inputs: dict[str, list]
    outputs: dict[str, list]
    provider: str

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError


class OrtBackend(Backend):
    """onnxruntime session. ``providers``: names from ORT_PROVIDERS in order of preference; the
    ones this onnxruntime build lacks are dropped with a warning, CPU is always last."""

    def __init__(self, path: str | os.PathLike, providers: tuple[str, ...] = ("cpu",), threads: int | None = None):
        import onnxruntime as ort

        unknown = [p for p in providers if p not in ORT_PROVIDERS]
        if unknown:
            raise BackendError(f"unknown provider(s) {unknown}; choose from {list(ORT_PROVIDERS)}")
        available = set(ort.get_available_providers())
        wanted = [ORT_PROVIDERS[p] for p in providers]
        usable = [p for p in wanted if p in available]
        if len(usable) < len(wanted):
            missing = [p for p in wanted if p not in available]
            warnings.warn(f"onnxruntime here lacks {missing}; falling back to {usable or ['CPUExecutionProvider']}",
                          stacklevel=2)
        if "CPUExecutionProvider" not in usable:
            usable.append("CPUExecutionProvider")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        # idle workers sleep instead of spinning after each run, so the CPU steps that follow it
        # (segments, search, verification) get the cores: 7% less wall and 11% less CPU time per
        # frame here, the DINOv2 pass itself no slower (README, "Measured")
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=usable)
        except Exception as e:  # onnxruntime raises its own exception types
            raise BackendError(f"onnxruntime cannot load {path}: {e}") from None
        self.name = Path(path).name
        self.provider = self.session.get_providers()[0]
        if self.provider != usable[0]:
            warnings.warn(f"onnxruntime runs {Path(path).name} on {self.provider}, not {usable[0]}", stacklevel=2)
        self.inputs = {i.name: [d if isinstance(d, int) else None for d in i.shape] for i in self.session.get_inputs()}
        self.outputs = {o.name: [d if isinstance(d, int) else None for d in o.shape] for o in self.session.get_outputs()}

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            return dict(zip(self.outputs, self.session.run(list(self.outputs), inputs)))
        except Exception as e:  # onnxruntime raises its own exception types
            text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BackendError(f"engine {self.name}: onnxruntime failed: {text[:300]}") from None


def require_tensorrt():
    """Import TensorRT or raise BackendError naming what to install."""
    return require("tensorrt", "trt", "the TensorRT backend", BackendError,
                   how="install NVIDIA TensorRT for Python (JetPack on Jetson, or "
                       "`pip install tensorrt` from NVIDIA's index) and the [trt] extra (`pip install 'segvlad-edge[trt]'`)")


class TrtBackend(Backend):
    """A serialized TensorRT engine (``.plan``), run with TensorRT 10's name-based tensor API;
    device buffers via cuda-python. Dynamic input axes take their size from each call."""

    def __init__(self, path: str | os.PathLike):
        trt = require_tensorrt()
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            cudart = require("cuda.cudart", "trt", "the TensorRT backend", BackendError)
        self._trt, self._cudart = trt, cudart
        self._logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self._logger).deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            raise BackendError(f"TensorRT cannot deserialize {path} (built for another TensorRT version or GPU?)")
        self.context = self.engine.create_execution_context()
        self.stream = self._check(cudart.cudaStreamCreate())
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_in = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        shape = {n: [d if d >= 0 else None for d in self.engine.get_tensor_shape(n)] for n in names}
        self.inputs = {n: shape[n] for n in names if is_in[n]}
        self.outputs = {n: shape[n] for n in names if not is_in[n]}
        self.provider = "TensorRT"
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)

    def _check(self, result):
        err, *rest = result
        if int(err) != 0:
            raise BackendError(f"CUDA error {err}")
        return rest[0] if len(rest) == 1 else rest

    def _device(self, name: str, nbytes: int) -> int:
        ptr, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                self._check(self._cudart.cudaFree(ptr))
            ptr = self._check(self._cudart.cudaMalloc(nbytes))
            self._buffers[name] = (ptr, nbytes)
        return ptr

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cudart = self._cudart
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name in self.inputs:
            x = np.ascontiguousarray(inputs[name], dtype=np.float32)
            self.context.set_input_shape(name, x.shape)
            ptr = self._device(name, x.nbytes)
            self._check(cudart.cudaMemcpyAsync(ptr, x.ctypes.data, x.nbytes, h2d, self.stream))
            self.context.set_tensor_address(name, ptr)
        out = {}
        for name in self.outputs:
            out[name] = np.empty(tuple(self.context.get_tensor_shape(name)), dtype=np.float32)
            self.context.set_tensor_address(name, self._device(name, out[name].nbytes))
        if not self.context.execute_async_v3(self.stream):
            raise BackendError("TensorRT execution failed")
        for name, arr in out.items():
            self._check(cudart.cudaMemcpyAsync(arr.ctypes.data, self._buffers[name][0], arr.nbytes, d2h, self.stream))
        self._check(cudart.cudaStreamSynchronize(self.stream))
        return out

    def __del__(self):
        for ptr, _ in getattr(self, "_buffers", {}).values():
            self._cudart.cudaFree(ptr)


def open_engine(manifest: EngineManifest, providers: tuple[str, ...] = ("cpu",), threads: int | None = None) -> Backend:
    """The backend for a verified manifest: TrtBackend for ``.plan``, OrtBackend for ONNX."""
    if manifest.backend == "tensorrt":
        return TrtBackend(manifest.engine_path)
    if manifest.backend == "onnx":
        return OrtBackend(manifest.engine_path, providers, threads)
    raise EngineError(f"{manifest.file}: unknown backend {manifest.backend!r}")


DEVICES = ("auto", "cpu", "cuda", "tensorrt")     # also the CLI's --device choices (apps/cli.py)
EXPECTED_PROVIDER = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


def device_choice(device: str, has_plan: bool) -> tuple[str | None, tuple[str, ...]]:
    """``--device`` -> (engine backend for ``find_engine``, onnxruntime providers in order).

    ``auto``: a TensorRT plan when one is built and TensorRT imports, else onnxruntime on the
    best provider it offers (TensorRT, CUDA, CPU); ``cpu``: onnxruntime on CPU; ``cuda``:
    onnxruntime's CUDA provider; ``tensorrt``: the native plan (``has_plan``: one is built),
    else onnxruntime's TensorRT provider. A named device that this machine cannot run raises
    BackendError saying what to install: no silent fall-back to CPU."""
    if device not in DEVICES:
        raise BackendError(f"--device {device}: choose from {', '.join(DEVICES)}")
    if device == "cpu":
        return "onnx", ("cpu",)
    if device == "tensorrt" and has_plan:
        require_tensorrt()
        return "tensorrt", ()
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device == "auto":
        return None, tuple(p for p in ("tensorrt", "cuda", "cpu") if ORT_PROVIDERS[p] in available)
    if EXPECTED_PROVIDER[device] not in available:
        plan = "no TensorRT plan is built (`segvlad-edge build-engines --trt`) and " if device == "tensorrt" else ""
        raise BackendError(f"--device {device} is not available here: {plan}onnxruntime offers only "
                           f"{', '.join(available)}; on an NVIDIA machine install the [gpu] extra "
                           "(`pip uninstall -y onnxruntime && pip install 'segvlad-edge[gpu]'`)")
    return "onnx", (device, "cpu") if device == "cuda" else ("tensorrt", "cuda", "cpu")


def check_device(device: str, backend: Backend) -> None:
    """BackendError when a session opened for ``device`` runs elsewhere (onnxruntime-gpu falls back
    to CPU when the CUDA libraries or the driver are missing)."""
    want = EXPECTED_PROVIDER.get(device)
    if want and backend.provider not in (want, "TensorRT"):
        raise BackendError(f"--device {device}: onnxruntime created the session on {backend.provider}, not {want} "
                           "(CUDA/cuDNN libraries or the GPU driver are missing?)")

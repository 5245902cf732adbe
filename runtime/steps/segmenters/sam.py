"""``sam``: SAM / MobileSAM "segment everything" on the exported engines (no torch).

A ``points x points`` grid of single-point prompts goes through the batched decoder in
chunks; masks are kept by predicted IoU and stability (both on the low-resolution logits),
de-duplicated by mask-IoU NMS, and pooled straight onto the feature patch grid.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from segvlad_edge.engines.manifest import EngineError, default_engines_dir, find_engine
from segvlad_edge.runtime.backends import open_engine
from segvlad_edge.runtime.steps.features import normalise

IMAGE_SIZE = 1024
LOW_RES = 256


class SamSegmenter:
    def __init__(self, encoder, decoder, mean, std, points: int = 16, batch: int = 64, iou_thresh: float = 0.88,
                 stability_thresh: float = 0.95, stability_offset: float = 1.0, nms_thresh: float = 0.7,
                 min_patches: int = 1):
        self.encoder, self.decoder, self.mean, self.std = encoder, decoder, mean, std
        self.points, self.batch = points, batch
        self.iou_thresh, self.stability_thresh, self.stability_offset = iou_thresh, stability_thresh, stability_offset
        self.nms_thresh, self.min_patches = nms_thresh, min_patches

    @classmethod
    def from_engines(cls, engines_dir: str | Path | None = None, providers=("cpu",), **conf) -> "SamSegmenter":
        folder = engines_dir or default_engines_dir()
        enc = find_engine(folder, "sam_encoder")
        dec = find_engine(folder, "sam_decoder")
        if enc.source.get("sha256") != dec.source.get("sha256"):
            raise EngineError(f"SAM encoder {enc.file} and decoder {dec.file} come from different checkpoints; rebuild both with build-engines --sam")
        return cls(open_engine(enc, providers), open_engine(dec, providers), enc.model["mean"], enc.model["std"], **conf)

    def embed(self, image_bgr: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        """-> image embeddings [1, 256, 64, 64] and the image's (h, w) inside the 1024 frame."""
        h, w = image_bgr.shape[:2]
        s = IMAGE_SIZE / max(h, w)
        nh, nw = int(h * s + 0.5), int(w * s + 0.5)
        x = normalise(image_bgr, (nw, nh), self.mean, self.std, 1.0)
        padded = np.zeros((1, 3, IMAGE_SIZE, IMAGE_SIZE), np.float32)
        padded[:, :, :nh, :nw] = x
        return self.encoder.run({"image": padded})["image_embeddings"], (nh, nw)

    def low_res_masks(self, image_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
        """-> logits [M, 256, 256] and scores [M] of the masks kept before NMS, and the valid (h, w) in 256 px."""
        emb, (nh, nw) = self.embed(image_bgr)
        g = (np.arange(self.points) + 0.5) / self.points
        pts = np.stack(np.meshgrid(g * nw, g * nh), axis=-1).reshape(-1, 2).astype(np.float32)
        logits, scores = [], []
        for i in range(0, len(pts), self.batch):
            out = self.decoder.run({"image_embeddings": emb, "point_coords": pts[i:i + self.batch]})
            lg, iou = out["low_res_logits"].reshape(-1, LOW_RES, LOW_RES), out["iou"].ravel()
            inter = (lg > self.stability_offset).sum((1, 2))
            union = (lg > -self.stability_offset).sum((1, 2))
            stability = inter / np.maximum(union, 1)
            keep = (iou >= self.iou_thresh) & (stability >= self.stability_thresh)
            logits.append(lg[keep])
            scores.append(iou[keep])
        vh, vw = int(np.ceil(nh * LOW_RES / IMAGE_SIZE)), int(np.ceil(nw * LOW_RES / IMAGE_SIZE))
        return np.concatenate(logits), np.concatenate(scores), (vh, vw)

    def __call__(self, image_bgr: np.ndarray, fmap) -> np.ndarray:
        logits, scores, (vh, vw) = self.low_res_masks(image_bgr)
        h, w = fmap.grid
        masks = np.stack([cv2.resize((lg[:vh, :vw] > 0).astype(np.float32), (w, h), interpolation=cv2.INTER_AREA) > 0
                          for lg in logits]) if len(logits) else np.zeros((0, h, w), bool)
        masks = masks.reshape(len(masks), -1)
        order = np.argsort(-scores)
        masks = masks[order][masks[order].sum(1) >= self.min_patches]
        return mask_nms(masks, self.nms_thresh)


def mask_nms(masks: np.ndarray, thresh: float) -> np.ndarray:
    """Greedy NMS on ``masks [M, P] bool`` given best first: drop a mask whose IoU with a kept one > thresh."""
    if len(masks) == 0:
        return masks
    m = masks.astype(np.float32)
    inter = m @ m.T
    area = m.sum(1)
    iou = inter / np.maximum(area[:, None] + area[None, :] - inter, 1)
    keep = []
    for i in range(len(m)):
        if all(iou[i, j] <= thresh for j in keep):
            keep.append(i)
    return masks[keep]

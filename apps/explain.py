"""Explanation images: the query and its best map images side by side, matched segments in
the same colour on both, with names and scores.

``save_explanation(localizer, query_bgr, answer, path)`` writes one PNG and returns its layout
(panel boxes and the colour of each matched pair) so callers and tests can find the regions.
A colour stands for one query segment (at most ``len(PALETTE)``); each matched pair is the centre segment of the query SuperSegment and of the map SuperSegment
it hit (the o-hop neighbourhood is what was compared; the centre is what is drawn). Map images
are read from ``map_images`` or the folder the map was built from; where a map image is not on
this machine its panel shows the stored segment layout on grey.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from segvlad_edge.files import write_bytes
from segvlad_edge.runtime.inputs.images import ImageError, load_image

PANEL_H = 300
TITLE_H = 28
PALETTE = [(0, 0, 255), (0, 200, 0), (255, 64, 0), (0, 215, 255), (255, 0, 255), (255, 255, 0),
           (0, 128, 255), (128, 0, 255)]                    # BGR, one per matched pair rank


def _panel(image: np.ndarray | None, aspect: float) -> np.ndarray:
    w = int(round(PANEL_H * aspect))
    if image is None:
        return np.full((PANEL_H, w, 3), 96, np.uint8)
    return cv2.resize(image, (w, PANEL_H), interpolation=cv2.INTER_AREA)


def _paint(panel: np.ndarray, mask_patches: np.ndarray, grid: tuple[int, int], colour) -> None:
    """Blend ``colour`` over the patches of ``mask_patches [h*w] bool`` and outline them."""
    m = cv2.resize(mask_patches.reshape(grid).astype(np.uint8), (panel.shape[1], panel.shape[0]),
                   interpolation=cv2.INTER_NEAREST)
    if not m.any():
        return
    sel = m.astype(bool)
    panel[sel] = (0.55 * panel[sel] + 0.45 * np.asarray(colour)).astype(np.uint8)
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(panel, contours, -1, colour, 2)


def _title(panel: np.ndarray, text: str, ok: bool | None) -> np.ndarray:
    bar = np.full((TITLE_H, panel.shape[1], 3), 32, np.uint8)
    colour = (255, 255, 255) if ok is None else ((80, 220, 80) if ok else (80, 80, 255))
    cv2.putText(bar, text[: max(8, panel.shape[1] // 9)], (6, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1,
                cv2.LINE_AA)
    return np.vstack([bar, panel])


def save_explanation(localizer, query_bgr: np.ndarray, answer, path: str | Path, top: int = 3,
                     map_images: Path | None = None, correct: set[str] | None = None, inputs=()) -> dict:
    """Write the explanation PNG of ``answer`` (a Localizer answer for ``query_bgr``).
    ``correct``: names of the right map images, when known, to mark each panel right/wrong;
    ``inputs``: files the command reads, which ``path`` must not be.
    Returns ``{"panels": [(x0, x1)], "pairs": [[(colour, query_seg, map_seg)]]}``."""
    bundle, frame = localizer.bundle, answer.frame
    grid = tuple(bundle.meta["engine"]["patch_grid"])
    aspect = query_bgr.shape[1] / query_bgr.shape[0]
    root = Path(map_images) if map_images else Path(bundle.meta.get("images_root", "."))
    offsets = bundle.segment_offsets
    q_panel = _panel(query_bgr, aspect)
    colour_of: dict[int, tuple] = {}                         # query segment -> colour, first come first served
    layout_pairs, m_panels = [], []
    title = f"query  {'no confident match' if answer.match is None else 'match'}  conf {answer.confidence:.2f}"
    for rank_i, (entry, pairs) in enumerate(zip(answer.top[:top], answer.pairs[:top])):
        i = entry["index"]
        try:
            folder = root if map_images else Path(bundle.images[i].get("root", root))   # added flights keep their folder
            img = load_image(folder / entry["name"])
        except ImageError:
            img = None                                          # not on this machine: segment layout on grey
        m_panel = _panel(img, aspect)
        labels = bundle.arrays["segment_labels"][i]
        drawn = []
        for q, m, _ in pairs:                               # best first; one colour per map segment
            local = m - int(offsets[i])
            if any(d[2] == local for d in drawn):
                continue
            if q not in colour_of:
                if len(colour_of) == len(PALETTE):
                    continue
                colour_of[q] = PALETTE[len(colour_of)]
                if frame is not None:
                    _paint(q_panel, frame.masks[q], grid, colour_of[q])
            _paint(m_panel, labels == local, grid, colour_of[q])
            drawn.append((colour_of[q], q, local))
        layout_pairs.append(drawn)
        ok = None if correct is None else entry["name"] in correct
        m_panels.append(_title(m_panel, f"#{rank_i + 1} {entry['name']}  {entry['score']:.2f}", ok))
    panels = [_title(q_panel, title, None)] + m_panels
    gap = np.full((panels[0].shape[0], 6, 3), 255, np.uint8)
    row, boxes, x = [], [], 0
    for p in panels:
        boxes.append((x, x + p.shape[1]))
        row += [p, gap]
        x += p.shape[1] + gap.shape[1]
    write_png(path, np.hstack(row[:-1]), inputs)
    return {"panels": boxes, "pairs": layout_pairs}


def write_png(path: str | Path, img: np.ndarray, inputs=()) -> None:
    """Encode ``img`` as PNG and write it atomically (files.write_bytes; never over one of
    ``inputs`` or a special file); creates the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    write_bytes(path, buf.tobytes(), inputs)

"""``eval --report DIR``: a Recall@N plot of each method and a table of failures with thumbnails.

``write_report(results, dataset_root, out)`` writes ``recall.png`` (Recall@1..10, one line per
method), and per method ``failures-<method>.png`` (rows: query, the wrong answer, a correct map
image, with names) and ``failures-<method>.csv`` (every failed query). Drawn with OpenCV.
"""
from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np

from segvlad_edge.apps.explain import write_png
from segvlad_edge.files import atomic_write
from segvlad_edge.runtime.inputs.images import ImageError, load_image

COLOURS = [(200, 90, 30), (40, 160, 40), (30, 30, 210), (160, 40, 160)]     # BGR per method
FONT = cv2.FONT_HERSHEY_SIMPLEX
THUMB = (176, 132)
MAX_ROWS = 12


def recall_curve(per_query: list[dict], max_n: int = 10) -> np.ndarray:
    """``[max_n]`` Recall@1..max_n from each query's ``first_correct`` rank (-1: none in the list)."""
    first = np.array([q["first_correct"] for q in per_query])
    return np.array([np.mean((first >= 0) & (first < n)) for n in range(1, max_n + 1)]) if len(first) else \
        np.zeros(max_n)


def plot_recall(curves: dict[str, np.ndarray], title: str, path: Path) -> None:
    w, h, left, bottom, top, right = 640, 420, 60, 50, 40, 20
    img = np.full((h, w, 3), 255, np.uint8)
    n = len(next(iter(curves.values())))
    x = lambda i: int(left + (w - left - right) * i / max(n - 1, 1))        # noqa: E731
    y = lambda r: int(h - bottom - (h - top - bottom) * r)                    # noqa: E731
    for r in np.linspace(0, 1, 6):
        cv2.line(img, (left, y(r)), (w - right, y(r)), (225, 225, 225), 1)
        cv2.putText(img, f"{r:.1f}", (18, y(r) + 4), FONT, 0.4, (60, 60, 60), 1, cv2.LINE_AA)
    for i in range(n):
        cv2.putText(img, str(i + 1), (x(i) - 4, h - bottom + 18), FONT, 0.4, (60, 60, 60), 1, cv2.LINE_AA)
    cv2.rectangle(img, (left, top), (w - right, h - bottom), (120, 120, 120), 1)
    cv2.putText(img, "N", (w // 2, h - 12), FONT, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, f"Recall@N  {title}", (left, 25), FONT, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    for k, (method, curve) in enumerate(curves.items()):
        c = COLOURS[k % len(COLOURS)]
        pts = np.array([(x(i), y(r)) for i, r in enumerate(curve)], np.int32)
        cv2.polylines(img, [pts], False, c, 2, cv2.LINE_AA)
        for p in pts:
            cv2.circle(img, tuple(int(v) for v in p), 3, c, -1, cv2.LINE_AA)
        cv2.putText(img, f"{method}  R@1 {curve[0]:.3f}", (w - right - 210, h - bottom - 15 - 20 * k), FONT, 0.45, c,
                    1, cv2.LINE_AA)
    write_png(path, img)


def _thumb(root: Path, name: str | None, caption: str) -> np.ndarray:
    tile = np.full((THUMB[1] + 22, THUMB[0], 3), 235, np.uint8)
    if name is not None:
        try:
            tile[:THUMB[1]] = cv2.resize(load_image(root / name), THUMB, interpolation=cv2.INTER_AREA)
        except ImageError:
            cv2.putText(tile, "unreadable", (8, THUMB[1] // 2), FONT, 0.45, (0, 0, 160), 1, cv2.LINE_AA)
    cv2.putText(tile, caption[:26], (4, THUMB[1] + 16), FONT, 0.38, (0, 0, 0), 1, cv2.LINE_AA)
    return tile


def failures_table(per_query: list[dict], root: Path, method: str, out: Path) -> int:
    """Write the failure PNG (first MAX_ROWS failures) and CSV (all); returns the number of failures."""
    failed = [q for q in per_query if q["first_correct"] != 0]
    with atomic_write(out / f"failures-{method}.csv", text=True) as f:
        w = csv.writer(f)
        w.writerow(["query", "answered", "first_correct_rank", "a_correct_map_image"])
        for q in failed:
            w.writerow([q["query"], q["top1"], q["first_correct"] + 1 if q["first_correct"] >= 0 else "",
                        q["correct"][0] if q["correct"] else ""])
    rows = []
    for q in failed[:MAX_ROWS]:
        rank = f"right at #{q['first_correct'] + 1}" if q["first_correct"] > 0 else "not in top 10"
        tiles = [_thumb(root, q["query"], Path(q["query"]).name), _thumb(root, q["top1"], "answered (wrong)"),
                 _thumb(root, q["correct"][0] if q["correct"] else None, rank)]
        rows.append(np.hstack([np.pad(t, ((2, 2), (2, 2), (0, 0)), constant_values=255) for t in tiles]))
    if rows:
        header = np.full((28, rows[0].shape[1], 3), 255, np.uint8)
        cv2.putText(header, f"{method}: {len(failed)} of {len(per_query)} queries wrong at Recall@1 "
                    f"(query | answer | a correct image)", (6, 19), FONT, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        write_png(out / f"failures-{method}.png", np.vstack([header] + rows))
    return len(failed)


def write_report(results: dict[str, dict], dataset_root: Path, out: Path) -> list[Path]:
    """``results``: method -> evaluate.main result (with ``per_query``). Returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    curves = {m: recall_curve(r["per_query"]) for m, r in results.items()}
    plot_recall(curves, Path(dataset_root).name, out / "recall.png")
    written = [out / "recall.png"]
    for method, r in results.items():
        if failures_table(r["per_query"], Path(dataset_root), method, out):
            written.append(out / f"failures-{method}.png")
        written.append(out / f"failures-{method}.csv")
    return written

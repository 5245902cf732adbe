"""``grid``: regular rectangles of patches, the paper's ablation baseline."""
from __future__ import annotations

import numpy as np


class GridSegmenter:
    """Splits the patch grid into ``cells = (rows, cols)`` near-equal rectangles."""

    def __init__(self, cells: tuple[int, int] = (6, 8)):
        self.cells = tuple(cells)

    def __call__(self, image_bgr, fmap) -> np.ndarray:
        h, w = fmap.grid
        rows = np.minimum(np.arange(h) * self.cells[0] // h, self.cells[0] - 1)
        cols = np.minimum(np.arange(w) * self.cells[1] // w, self.cells[1] - 1)
        label = (rows[:, None] * self.cells[1] + cols[None, :]).ravel()
        return label[None, :] == np.arange(self.cells[0] * self.cells[1])[:, None]

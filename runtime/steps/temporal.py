"""Temporal filter over a frame stream: a discrete Bayes filter on the map image index.

Beyond the paper (which answers frame by frame): the belief over map images is carried from
frame to frame. Prediction spreads it over ``±window`` neighbouring map images (map order is
capture order for a sequential map) and keeps ``teleport`` of it uniform so a robot that is
carried elsewhere is found again; the update multiplies by a likelihood made from the frame's
ranking: ``floor + ((score - last) / (best - last))**2`` for the ranked images (``last`` the
lowest ranked score, so rankings whose scores are all alike, as global VLAD's are, still say
which image is best) and ``floor`` for the rest. One-frame flips to a far place are suppressed
unless the new place keeps winning.

A frame answered "no confident match" brings no likelihood (prediction only). After
``lost_after`` such frames in a row the filter is *lost*: the robot is somewhere the map does
not know (or sees nothing), the belief is reset to uniform and ``lost`` stays true, so the
filtered answer is withheld, until a frame is matched confidently again.
"""
from __future__ import annotations

import numpy as np


class SequenceFilter:
    """``update(images [N], scores [N]) -> (best map image, its posterior probability)``."""

    def __init__(self, n_images: int, window: int = 3, teleport: float = 0.05, floor: float = 0.05,
                 lost_after: int = 3):
        if n_images < 1:
            raise ValueError("the map has no images")
        self.n, self.teleport, self.floor, self.lost_after = n_images, teleport, floor, lost_after
        self.kernel = np.ones(2 * window + 1, np.float64) / (2 * window + 1)
        self.belief = np.full(n_images, 1.0 / n_images)
        self.refusals = 0           # frames in a row without a confident match
        self.lost = False

    def reset(self) -> None:
        self.belief[:] = 1.0 / self.n

    def update(self, images: np.ndarray, scores: np.ndarray, confident: bool = True) -> tuple[int, float]:
        """One frame's ranking (``confident``: whether it was answered with a match) -> the best map
        image and its posterior probability; check ``lost`` before acting on them."""
        self.refusals = 0 if confident else self.refusals + 1
        if self.refusals >= self.lost_after and not self.lost:
            self.lost = True
            self.reset()
        elif confident:
            self.lost = False
        w = len(self.kernel) // 2       # zero-padded "same" convolution, also for maps shorter than the kernel
        prior = np.convolve(np.pad(self.belief, w), self.kernel, mode="valid")
        prior = (1 - self.teleport) * prior / prior.sum() + self.teleport / self.n
        like = np.full(self.n, self.floor)
        if confident and len(images) and scores[0] > 0:
            s = np.asarray(scores, np.float64)
            last = s[-1] if len(s) > 1 and s[-1] < s[0] else 0.0
            like[np.asarray(images, np.int64)] += np.clip((s - last) / (s[0] - last), 0, 1) ** 2
        post = prior * like
        self.belief = post / post.sum()
        best = int(np.argmax(self.belief))
        return best, float(self.belief[best])

"""The fitted models of a pipeline: the k-means vocabulary and the optional PCA, as one value.

Fitted on the map (``runtime/fitting.py``) or read from a bundle or a domain file
(``runtime/mapfiles/domain.py``); ``to_arrays`` / ``from_arrays`` are the arrays those files store, and
``sha256`` is what a bundle records of the domain fit it was built with.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from segvlad_edge.runtime.steps.pca import Pca
from segvlad_edge.runtime.settings import Settings
from segvlad_edge.runtime.steps.vlad import Vocabulary


def arrays_sha256(arrays: dict[str, np.ndarray]) -> str:
    """sha256 (hex) over the model arrays by name, in name order: the name, a NUL, the raw bytes."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        h.update(name.encode() + b"\0" + np.ascontiguousarray(arrays[name]).tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class Models:
    """``vocab``: ``centers [K, D] float32``; ``pca``: ``[K*D] -> [d]`` projection, None where the
    settings ask for no PCA (descriptors are then the ``[K*D]`` VLADs in float16)."""

    vocab: Vocabulary
    pca: Pca | None = None

    @property
    def dims(self) -> int:
        """Descriptor dimension d."""
        return self.pca.dims if self.pca is not None else self.vocab.centers.size

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The arrays a bundle or domain file stores: ``vocab_centers [K, D] float32`` and, with a
        PCA, ``pca_mean [K*D] float32``, ``pca_components [d, K*D] float16``, ``pca_scale [d] float32``."""
        arrays = {"vocab_centers": self.vocab.centers}
        if self.pca is not None:
            p = self.pca
            arrays.update(pca_mean=p.mean, pca_components=p.components.astype(np.float16), pca_scale=p.scale)
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], settings: Settings) -> "Models":
        """The models stored in ``arrays`` (as ``to_arrays`` writes them, already checked by
        ``bundle.check_models``); the PCA is read where ``settings.pca_dims`` asks for one."""
        pca = (Pca(arrays["pca_mean"], arrays["pca_components"], arrays["pca_scale"])
               if settings.pca_dims is not None else None)
        return cls(Vocabulary(arrays["vocab_centers"]), pca)

    @property
    def sha256(self) -> str:
        """``arrays_sha256`` of ``to_arrays()``."""
        return arrays_sha256(self.to_arrays())

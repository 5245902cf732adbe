"""Settings of the data path: typed, frozen, bounded, and parsed and validated here only.

``Settings`` holds what a map is built with and queried with; each field is one line, its
default and its bound (:func:`segvlad_edge.schema.setting`), so adding a setting is adding a
line. The named presets (``CONFS``) derive from one base. Every way in goes through the same
checks: presets and CLI overrides (``dataclasses.replace``, checked in ``__post_init__``),
dicts from code (:meth:`Settings.of`) and map-bundle / domain-file headers (:meth:`Settings.parse`,
strict: every field present, no unknown ones).

``pca_dims`` is the PCA dimension *asked for* (None: no PCA); the dimension a fitted PCA has
(smaller when the map has fewer samples) is the shape of its arrays, never a setting.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from segvlad_edge.schema import Bool, Float, Int, Json, List, Obj, OneOf, Optional, Str, check_fields, parse, setting

SEGMENTER_CONFS = {     # each segmenter's overridable parameters and their bounds (runtime/steps/segmenters/)
    "featclust": Obj({"clusters": OneOf((Int(1, 256), List(Int(1, 256), 1, 4))), "spatial": Float(0, 100), "iters": Int(1, 100),
                      "min_patches": Int(1, 10_000), "seed": Int(0, 2**31 - 1)}, partial=True),
    "grid": Obj({"cells": List(Int(1, 256), 2, 2)}, partial=True),
    "sam": Obj({"points": Int(1, 64), "batch": Int(1, 4096), "iou_thresh": Float(0, 1),
                "stability_thresh": Float(0, 1), "stability_offset": Float(0, 100), "nms_thresh": Float(0, 1),
                "min_patches": Int(1, 10_000)}, partial=True),
    "whole": Obj({}, partial=True),
}
FIT_FIELDS = ("segmenter", "order", "vocab_k", "pca_dims", "whiten")   # what a vocabulary/PCA fit depends on


@dataclass(frozen=True)
class Settings:
    """One map's data-path settings (units: counts; see the README for what each does)."""

    segmenter: str = setting("featclust", Str(tuple(SEGMENTER_CONFS)))
    segmenter_conf: dict = setting({}, Json())          # bounded per segmenter in __post_init__
    order: int = setting(3, Int(0, 8))                    # SuperSegment neighbourhood order o
    vocab_k: int = setting(32, Int(2, 256))               # VLAD vocabulary words
    pca_dims: int | None = setting(128, Optional(Int(2, 4096)))
    whiten: bool = setting(False, Bool())
    top_k: int = setting(50, Int(1, 1000))                # K': segments retrieved per query segment
    norm: str = setting("query", Str(("query", "none")))   # per-query similarity normalisation
    overlap_psi: float | None = setting(None, Optional(Float(0, 1)))   # drop SuperSegments overlapping a kept one
    # spatial verification of the shortlist (runtime/steps/verification.py): top-N map images re-ranked by
    # RANSAC inliers of mutual-NN matches of PCA-coded patches; 0 turns it off
    verify_top: int = setting(10, Int(0, 100))
    verify_dims: int = setting(64, Int(2, 1024))          # dimensions of the stored patch codes
    verify_model: str = setting("affine", Str(("similarity", "affine")))
    verify_threshold: float = setting(1.5, Float(0.1, 100))   # RANSAC reprojection threshold, patches
    verify_min_sim: float = setting(0.0, Float(-1, 1))    # mutual-NN matches below this cosine are dropped
    verify_gain: float = setting(1.25, Float(1, 100))     # another candidate replaces the first with > gain x its inliers

    def __post_init__(self):
        check_fields(self)
        conf = SEGMENTER_CONFS[self.segmenter].check(self.segmenter_conf, "segmenter_conf")
        object.__setattr__(self, "segmenter_conf", conf)

    @classmethod
    def parse(cls, data: Any, path: str = "settings") -> "Settings":
        """Strict: a header's settings object with every field and no other. Raises SchemaError."""
        return parse(cls, data, path)

    @classmethod
    def of(cls, conf: "Settings | dict") -> "Settings":
        """``conf`` as Settings: a Settings as is, a dict over the base preset (keys that are not
        settings, a caller's own flags, are left out). Raises SchemaError."""
        if isinstance(conf, Settings):
            return conf
        names = {f.name for f in dataclasses.fields(cls)}
        return dataclasses.replace(BASE, **{k: v for k, v in conf.items() if k in names})

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def fit_part(self) -> dict:
        """The settings a vocabulary/PCA fit depends on (a domain file is fitted for these)."""
        return {k: getattr(self, k) for k in FIT_FIELDS}

    # read-only mapping view, for code written against the former dict presets
    def __getitem__(self, key: str):
        if key not in self.keys():
            raise KeyError(key)
        return getattr(self, key)

    def keys(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self)]

    def get(self, key: str, default=None):
        return getattr(self, key) if key in self.keys() else default


def bounds(name: str) -> tuple[int, int]:
    """``(lo, hi)`` of an integer setting, for command-line ranges."""
    spec = next(f.metadata["spec"] for f in dataclasses.fields(Settings) if f.name == name)
    spec = spec.spec if isinstance(spec, Optional) else spec
    return spec.lo, spec.hi


BASE = Settings()
CONFS = {
    "segvlad": BASE,
    "grid": dataclasses.replace(BASE, segmenter="grid"),
    "global": dataclasses.replace(BASE, segmenter="whole", order=0, pca_dims=None, norm="none", verify_top=0),
}

"""Localizer: a map bundle + engines -> ``localize(image) -> Answer``.

The one object `localize`, `eval` and `explain` go through. It checks that the bundle was
built with the same feature engine (signature in the bundle vs the engine manifest), rebuilds
the pipeline from the bundle's settings, vocabulary and PCA, and ranks map images by
similarity-weighted segment hits.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segvlad_edge.engines.manifest import default_engines_dir, find_engine
from segvlad_edge.runtime.mapfiles.bundle import BundleError, MapBundle
from segvlad_edge.runtime.steps.confidence import NO_MATCH_BELOW, RANK_DEPTH, RIVAL_RATIO, best_rival, confidence
from segvlad_edge.runtime.mapfiles.domain import load_domain
from segvlad_edge.runtime.steps.index import open_index, search_threads
from segvlad_edge.runtime.models import Models
from segvlad_edge.runtime.pipeline import FramePipeline, FrameSegments, make_pipeline
from segvlad_edge.runtime.steps.position import MapPositions
from segvlad_edge.runtime.steps.ranking import Ranked, rank, without
from segvlad_edge.runtime.steps.verification import PatchCoder, rerank_by_inliers, verify_shortlist

log = logging.getLogger(__name__)

BLANK_STD = 2.0                 # grey levels: a frame flatter than this carries no place information


@dataclass
class Answer:
    """``top``: [{"name", "score", "index", "inliers"?, "meta"?}] best first; ``pairs``: matched
    (query_seg, map_seg, sim) per top image; ``ms``: per-stage milliseconds; ``confidence`` in
    [0, 1] (runtime/steps/confidence.py); ``match``: ``top[0]`` when confident, else None ("no
    confident match"); ``similarity``: mean best-hit similarity of the frame's segments;
    ``ranked``: the full ranking (for the temporal filter); ``position``: the estimate from the
    agreeing top matches (runtime/steps/position.py), None without a confident match or map positions;
    ``rival``: {"name", "inliers"} of the verified image of another place than ``top[0]`` with the
    most inliers (the ambiguity the confidence weighs), None where no such image has inliers."""

    top: list
    pairs: list
    ms: dict
    segments: int
    confidence: float = 0.0
    match: dict | None = None
    similarity: float = 0.0
    frame: FrameSegments | None = field(default=None, repr=False)
    ranked: Ranked | None = field(default=None, repr=False)
    position: dict | None = None
    rival: dict | None = None


def engine_for(sig: dict, where, engines_dir=None, backend: str | None = None):
    """The engine manifest of the feature signature ``sig`` (a bundle's or tile index's ``engine``)."""
    folder = engines_dir or default_engines_dir()
    m = find_engine(folder, "dinov2", tuple(sig["input_size"]), backend)
    mine = m.feature_signature()
    theirs = {k: sig.get(k) for k in mine}
    if mine != theirs:
        diff = ", ".join(f"{k}: map {theirs[k]!r} vs engine {mine[k]!r}" for k in mine if mine[k] != theirs[k])
        raise BundleError(f"{where}: built with another engine than {m.file} ({diff}); rebuild the map "
                          "or point --engines at the engines it was built with")
    return m


def bundle_sizes(bundle: MapBundle, search_bytes: int, kind: str) -> dict:
    """``Localizer.map_sizes`` of one bundle whose index holds ``search_bytes`` in RAM."""
    a = bundle.arrays
    return {"segments": len(a["descriptors"]), "file_bytes": bundle.path.stat().st_size if bundle.path else 0,
            "search_bytes": int(search_bytes), "verify_bytes": a["verify_codes"].nbytes if "verify_codes" in a else 0,
            "index": kind, "fit": bundle.meta["fit"]["source"]}


class Localizer:
    """A map bundle's localizer. What the answer path reads of the map goes through ``meta``
    (engine, settings), ``hits``, ``image``, ``coder`` and ``map_codes``, which the tiled
    localizer (runtime/tiled.py) provides over a map folder's tiles."""

    min_confidence = NO_MATCH_BELOW     # answers below it have no match (``localize --min-confidence``)
    rival_ratio = RIVAL_RATIO           # of verified answers (runtime/steps/confidence.py; 0: off)

    def __init__(self, bundle: MapBundle, pipeline: FramePipeline, threads: int | None = None):
        """``threads``: CPU threads (as the engine's; None: not limited), of which the search takes
        up to SEARCH_THREADS (runtime/steps/index.py)."""
        self.bundle, self.pipeline = bundle, pipeline
        self.path, self.meta = bundle.path, bundle.meta
        s = bundle.settings
        self.top_k, self.norm = s.top_k, s.norm
        self.index = open_index(bundle, search_threads(threads))     # stored in the bundle: read, not rebuilt
        self.segment_image = bundle.segment_image
        self.names = [img["name"] for img in bundle.images]
        self.calib = bundle.arrays.get("calib_negatives")
        self.positions = MapPositions.from_images(bundle.images)
        a = bundle.arrays
        self.map_codes = a.get("verify_codes")          # [I, P, d] float16, memory-mapped
        self.corrupt: set[int] = set()                  # map images whose codes failed their checksum
        self.coder = PatchCoder(a["verify_mean"], a["verify_components"]) if self.map_codes is not None else None

    @classmethod
    def from_bundle(cls, path: str | Path, engines_dir=None, backend: str | None = None, providers=("cpu",),
                    threads: int | None = None, domain: Path | None = None) -> "Localizer":
        """``domain``: the map's domain fit file where it is not beside the engine."""
        bundle = MapBundle.read(path)
        manifest = engine_for(bundle.meta["engine"], bundle.path, engines_dir, backend)
        s, fit = bundle.settings, bundle.meta["fit"]
        if fit["source"] == "map":
            models = Models.from_arrays(bundle.arrays, s)
        else:
            beside = bundle.path.parent / fit["file"]           # a map folder's tile: its folder's fit
            where = Path(domain) if domain else beside if beside.is_file() else manifest.engine_path.parent / fit["file"]
            found = load_domain(manifest, s, fit["sha256"], where)
            if found is None:
                raise BundleError(f"{bundle.path}: built with the domain fit {fit['file']}, which is not in "
                                  f"{where.parent}; copy it beside the engine (or pass --domain FILE)")
            models = found[0]
        loc = cls(bundle, make_pipeline(s, engines_dir, manifest=manifest, threads=threads, providers=providers,
                                        models=models), threads)
        loc.index.prepare()             # a bundle without a stored index builds it now, not in the first frame
        return loc

    def rank_descriptors(self, desc: np.ndarray, top: int = 10, exact: bool = False,
                         exclude_images: Iterable[int] | None = None, ms: dict | None = None) -> Ranked:
        """``desc [S, d] float16`` -> ranked map images. ``exclude_images`` drops those map images
        (leave-one-out evaluation, confidence calibration)."""
        t0 = time.perf_counter()
        k = self.top_k
        excluded = np.asarray(sorted(set(exclude_images or ())), np.int64)
        if len(excluded):
            k += int(self.bundle.arrays["segments_per_image"][excluded].sum())
        ids, sims, segment_image = self.hits(desc, k, exact)
        if len(excluded):
            drop = (ids >= 0) & np.isin(segment_image[np.maximum(ids, 0)], excluded)
            ids, sims = np.where(drop, -1, ids), np.where(drop, -np.inf, sims)
            order = np.argsort(-sims, axis=1, kind="stable")[:, :self.top_k]
            ids, sims = np.take_along_axis(ids, order, 1), np.take_along_axis(sims, order, 1)
        t1 = time.perf_counter()
        r = rank(ids, sims, segment_image, top, self.norm)
        if ms is not None:
            ms["search"] = 1e3 * (t1 - t0)
            ms["rank"] = 1e3 * (time.perf_counter() - t1)
        return r

    def hits(self, desc: np.ndarray, k: int, exact: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``desc [S, d]`` -> the top-``k`` map segments of each: ``ids [S, k] int64`` (-1: none),
        ``sims [S, k] float32`` best first, and ``segment_image [N] int`` (map image of each id)."""
        ids, sims = self.index.search(desc, k, exact=exact)
        return ids, sims, self.segment_image

    def image(self, i: int) -> dict:
        """Map image ``i``'s table entry (``name``, optional ``meta``)."""
        return self.bundle.images[i]

    def map_sizes(self) -> dict:
        """What the map holds, for reports: ``segments``, ``file_bytes`` (on disk), ``search_bytes``
        (the RAM-resident search data), ``verify_bytes`` (memory-mapped verification codes), ``index``
        (its kind) and ``fit`` (where its vocabulary/PCA came from)."""
        return bundle_sizes(self.bundle, self.index.resident_bytes(), self.index.kind)

    def patch_codes(self, features: np.ndarray) -> np.ndarray | None:
        """A frame's patch ``features [P, C] float32`` -> ``[P, d] float16`` codes for verification
        (None where the map has no verification data)."""
        return None if self.coder is None else self.coder.codes(features)

    def verify(self, ranked: Ranked, codes: np.ndarray | None, top: int | None = None) -> Ranked:
        """Re-rank the first ``top`` (default: the settings' ``verify_top``) images of ``ranked`` by
        spatial verification of the frame's patch ``codes [P, d]`` (``patch_codes``) against theirs;
        unchanged where there are no codes or ``top`` is 0."""
        s = self.meta["settings"]
        top = int(s.get("verify_top", 0)) if top is None else top
        if codes is None or top <= 0 or len(ranked.images) == 0:
            return ranked
        if self.corrupt:
            ranked = without(ranked, self.corrupt)
        try:
            checks = verify_shortlist(codes, self.map_codes, ranked.images[:top],
                                      tuple(self.meta["engine"]["patch_grid"]), model=s["verify_model"],
                                      threshold=float(s["verify_threshold"]), min_sim=float(s["verify_min_sim"]))
        except BundleError:
            if not self._find_corrupt(ranked.images[:top]):
                raise
            return self.verify(ranked, codes, top)
        return rerank_by_inliers(ranked, checks, float(s["verify_gain"]))

    def _find_corrupt(self, images) -> bool:
        """Which of ``images`` have verification codes that fail their block checksum (bundle format
        4 checks them on first read): they and the other images of their block are added to
        ``corrupt`` with one warning per block, so they leave this and every later answer while the
        run goes on. False when none of them fails."""
        found = False
        for i in map(int, images):
            if i in self.corrupt:
                continue
            try:
                self.map_codes[[i]]
            except BundleError as e:
                block = self.map_codes.block(i)         # only block-checked codes (CheckedRows) fail on read
                self.corrupt.update(block)
                found = True
                log.warning("%s; map images %s-%s are left out of the answers", e, self.names[block[0]],
                            self.names[block[-1]])
        return found

    def answer(self, ranked: Ranked, ms: dict, segments: int, top: int, frame=None) -> Answer:
        entries = []
        for j, (i, score) in enumerate(zip(ranked.images[:top], ranked.scores[:top])):
            img = self.image(int(i))
            entry = {"name": img["name"], "score": round(float(score), 4), "index": int(i)}
            if ranked.inliers is not None and ranked.inliers[j] >= 0:
                entry["inliers"] = int(ranked.inliers[j])        # verified: the shortlist is ordered by these
            meta = img.get("meta")
            if meta:
                entry["meta"] = meta
            entries.append(entry)
        conf = confidence(ranked, self.calib, self.meta["settings"]["verify_model"], positions=self.positions,
                          rival_ratio=self.rival_ratio)
        match = entries[0] if entries and conf >= self.min_confidence else None
        position = self.positions.estimate(ranked.images, ranked.scores) if match and self.positions else None
        other, inliers = best_rival(ranked, positions=self.positions)
        rival = {"name": self.image(other)["name"], "inliers": inliers} if other >= 0 else None
        return Answer(entries, ranked.pairs[:top], {k: round(v, 2) for k, v in ms.items()}, segments, conf, match,
                      round(ranked.match_sim, 4), frame, ranked, position, rival)

    def localize(self, image_bgr: np.ndarray, top: int = 5, exact: bool = False) -> Answer:
        """One frame -> Answer. A frame without texture (all one colour) or without segments is
        answered with no match rather than ranked."""
        if image_bgr.std() < BLANK_STD:
            return Answer([], [], {}, 0)
        frame = self.pipeline.segment(image_bgr)
        desc = self.pipeline.describe(frame)
        ms = dict(frame.ms)
        if len(desc) == 0:
            return Answer([], [], {k: round(v, 2) for k, v in ms.items()}, 0, frame=frame)
        ranked = self.rank_descriptors(desc, max(top, RANK_DEPTH), exact, ms=ms)
        if int(self.meta["settings"].get("verify_top", 0)) > 0 and self.map_codes is not None:
            t0 = time.perf_counter()
            ranked = self.verify(ranked, self.patch_codes(frame.fmap.features))
            ms["verify"] = 1e3 * (time.perf_counter() - t0)
        return self.answer(ranked, ms, len(desc), top, frame)

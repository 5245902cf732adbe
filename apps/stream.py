"""Step: frames from a source -> localise -> one JSON line per processed frame.

``run_stream(localizer, source, sink, conf)`` runs until the source ends or ``stop`` is set (the CLI
sets it on SIGINT/SIGTERM). Output schema (``SCHEMA``, documented in the README)::

    {"schema": "segvlad-edge/localize/2", "map": {"file": str | null, "id": str (12 hex) | null},
     "query": str, "frame": int, "timestamp": float (unix s, capture time: runtime/inputs/sources.py),
     "top": [{"name": str, "score": float, "inliers"?: int, "meta"?: {...}}], "match": str | null,
     "confidence": float, "similarity": float, "segments": int,
     "position": {"lat", "lon"[, "alt"], "sigma_m"} | {"x", "y", "z", "sigma_m"} | null,
     "rival": {"name": str, "inliers": int} | null,
     "ms": {stage: ms, "total": ms} (processing time),
     "filtered"?: {"name": str | null, "probability": float, "state": "tracking" | "lost",
                   "position": {...} | null}, "error"?: str}

``match`` is null for "no confident match" (confidence below the map's threshold, a blank
frame, a frame without segments, or an undecodable frame, which also has ``error``); so is
``position`` (runtime/steps/position.py), which is also null when the map has no positions.
``rival``: the verified map image of another place than ``top[0]`` with the most inliers, whose
inliers the confidence weighs (runtime/steps/confidence.py); null where no image of another place
has verified inliers.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from segvlad_edge.apps.explain import save_explanation
from segvlad_edge.files import sha256_file
from segvlad_edge.runtime.mapfiles.bundle import MapBundle, header_sha256
from segvlad_edge.runtime.mapfiles.tiles import INDEX_NAME
from segvlad_edge.runtime.steps.position import CANDIDATES
from segvlad_edge.runtime.steps.temporal import SequenceFilter

SCHEMA = "segvlad-edge/localize/2"      # /2: "map" names the bundle by its header's sha256 ("id"), not the file's
CONF = {"top": 5, "max_fps": 0.0, "filter": False, "save_vis": None}


def map_ref(path: str | Path | None, bundle: MapBundle | None = None) -> dict:
    """``{"file": name, "id": 12 hex digits}``: which map answered. A bundle's id is the sha256 of
    the sealed header ``bundle`` was read with (``segvlad-edge inspect`` prints it; the header holds
    every array's sha256, so it names the content without hashing gigabytes of verification codes
    at start); a map folder's, its tile index's sha256."""
    path = Path(path) if path is not None else None
    if bundle is not None:  # a bundle made in memory, never read from or written to a file, has no sealed header
        ident = bundle.header_sha256[:12] if bundle.header_sha256 else None
    elif path is not None and path.is_dir():
        ident = sha256_file(path / INDEX_NAME)[:12]
    else:
        ident = header_sha256(path)[:12] if path is not None else None
    return {"file": path.name if path is not None else None, "id": ident}


def filtered_position(localizer, belief: np.ndarray) -> dict | None:
    """The temporal filter's position: the estimator over its most probable map images, belief-weighted."""
    if localizer.positions is None:
        return None
    best = np.argsort(-belief, kind="stable")[:CANDIDATES]
    return localizer.positions.estimate(best, belief[best])


def record(frame, ans, filtered: tuple[str, float, dict | None] | None, total_ms: float, map_id: dict) -> dict:
    rec = {"schema": SCHEMA, "map": map_id, "query": frame.name, "frame": frame.index,
           "timestamp": round(frame.timestamp, 3),
           "top": [{k: v for k, v in t.items() if k != "index"} for t in ans.top] if ans else [],
           "match": ans.match["name"] if ans and ans.match else None,
           "confidence": ans.confidence if ans else 0.0, "similarity": ans.similarity if ans else 0.0,
           "segments": ans.segments if ans else 0, "position": ans.position if ans else None,
           "rival": ans.rival if ans else None,
           "ms": {**(ans.ms if ans else {}), "total": round(total_ms, 2)}}
    if filtered is not None:
        rec["filtered"] = {"name": filtered[0], "probability": round(filtered[1], 4),
                           "state": "lost" if filtered[0] is None else "tracking", "position": filtered[2]}
    if frame.error:
        rec["error"] = frame.error
    return rec


def run_stream(localizer, source, sink, conf: dict | None = None, stop: threading.Event | None = None) -> dict:
    """``sink.write(record)`` gets each record (apps/sinks.py). Returns ``{"frames": processed, "errors": undecodable frames, "seconds": wall time}``."""
    conf = {**CONF, **(conf or {})}
    stop = stop or threading.Event()
    filt = SequenceFilter(len(localizer.names)) if conf["filter"] else None
    min_period = 1.0 / conf["max_fps"] if conf["max_fps"] else 0.0
    vis_dir = Path(conf["save_vis"]) if conf["save_vis"] else None
    map_id = map_ref(localizer.path, localizer.bundle)
    stats, t_start, last = {"frames": 0, "errors": 0}, time.perf_counter(), 0.0
    for frame in source:
        if stop.is_set():
            break
        wait = last + min_period - time.perf_counter()
        if wait > 0:
            if stop.wait(wait):
                break
        last = time.perf_counter()
        ans, filtered = None, None
        if frame.image is not None:
            ans = localizer.localize(frame.image, top=conf["top"])
            if filt is not None and ans.ranked is not None:
                best, p = filt.update(ans.ranked.images, ans.ranked.scores, ans.match is not None)
                filtered = ((None, p, None) if filt.lost else
                            (localizer.names[best], p, filtered_position(localizer, filt.belief)))
            if vis_dir is not None and ans.top:
                save_explanation(localizer, frame.image, ans, vis_dir / f"{frame.index:06d}.png")
        else:
            stats["errors"] += 1
        sink.write(record(frame, ans, filtered, 1e3 * (time.perf_counter() - last), map_id))
        stats["frames"] += 1
    stats["seconds"] = round(time.perf_counter() - t_start, 2)
    return stats

"""Step: frames from a source -> localise -> one JSON line per processed frame.

``main(localizer, source, sink, conf)`` runs until the source ends or ``stop`` is set (the CLI
sets it on SIGINT/SIGTERM). Output schema (``SCHEMA``, documented in the README)::

    {"schema": "segvlad-edge/localize/1", "query": str, "frame": int, "timestamp": float (unix s),
     "top": [{"name": str, "score": float, "meta"?: {...}}], "match": str | null,
     "confidence": float, "similarity": float, "segments": int, "ms": {stage: ms, "total": ms},
     "filtered"?: {"name": str | null, "probability": float, "state": "tracking" | "lost"}, "error"?: str}

``match`` is null for "no confident match" (confidence below the map's threshold, a blank
frame, a frame without segments, or an undecodable frame, which also has ``error``).
"""
from __future__ import annotations

import json
import socket
import sys
import threading
import time
from pathlib import Path
from typing import TextIO

from segvlad_edge.apps.explain import save_explanation
from segvlad_edge.runtime.temporal import SequenceFilter

SCHEMA = "segvlad-edge/localize/1"
CONF = {"top": 5, "max_fps": 0.0, "filter": False, "save_vis": None}


class JsonSink:
    """Where the JSON lines go: ``-`` (stdout), ``udp://HOST:PORT`` (one datagram per line) or a
    file path (appended, flushed per line)."""

    def __init__(self, target: str = "-"):
        self.target, self._sock, self._file = target, None, None
        if target == "-":
            self._out: TextIO = sys.stdout
        elif target.startswith("udp://"):
            host, _, port = target[6:].rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"{target}: expected udp://HOST:PORT")
            self._addr = (host.strip("[]"), int(port))
            self._sock = socket.socket(socket.AF_INET6 if ":" in self._addr[0] else socket.AF_INET, socket.SOCK_DGRAM)
        else:
            self._file = self._out = open(target, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        line = json.dumps(record, ensure_ascii=False)
        if self._sock is not None:
            try:
                self._sock.sendto(line.encode(), self._addr)
            except OSError:
                pass                   # a listener that went away must not stop the robot's localiser
            return
        self._out.write(line + "\n")
        self._out.flush()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        if self._file is not None:
            self._file.close()


def record(frame, ans, filtered: tuple[str, float] | None, total_ms: float) -> dict:
    rec = {"schema": SCHEMA, "query": frame.name, "frame": frame.index, "timestamp": round(frame.timestamp, 3),
           "top": [{k: v for k, v in t.items() if k != "index"} for t in ans.top] if ans else [],
           "match": ans.match["name"] if ans and ans.match else None,
           "confidence": ans.confidence if ans else 0.0, "similarity": ans.similarity if ans else 0.0,
           "segments": ans.segments if ans else 0,
           "ms": {**(ans.ms if ans else {}), "total": round(total_ms, 2)}}
    if filtered is not None:
        rec["filtered"] = {"name": filtered[0], "probability": round(filtered[1], 4),
                           "state": "lost" if filtered[0] is None else "tracking"}
    if frame.error:
        rec["error"] = frame.error
    return rec


def main(localizer, source, sink: JsonSink, conf: dict | None = None, stop: threading.Event | None = None) -> dict:
    """Returns ``{"frames": processed, "errors": undecodable frames, "seconds": wall time}``."""
    conf = {**CONF, **(conf or {})}
    stop = stop or threading.Event()
    filt = SequenceFilter(len(localizer.names)) if conf["filter"] else None
    min_period = 1.0 / conf["max_fps"] if conf["max_fps"] else 0.0
    vis_dir = Path(conf["save_vis"]) if conf["save_vis"] else None
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
                filtered = (None if filt.lost else localizer.names[best], p)
            if vis_dir is not None and ans.top:
                save_explanation(localizer, frame.image, ans, vis_dir / f"{frame.index:06d}.png")
        else:
            stats["errors"] += 1
        sink.write(record(frame, ans, filtered, 1e3 * (time.perf_counter() - last)))
        stats["frames"] += 1
    stats["seconds"] = round(time.perf_counter() - t_start, 2)
    return stats

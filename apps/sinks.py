"""Where `localize` records go: every ``--out`` target gets every record.

    sinks = open_sinks(["-", "run.jsonl", "udp://127.0.0.1:9870", "mavlink:udp:127.0.0.1:14550"],
                       inputs=[map_path, ...])
    sinks.write(record); sinks.close()

Targets, all checked when opened (one-line ``SinkError`` before the first frame):

- ``-``: stdout, one JSON line per record.
- ``udp://HOST:PORT``: one JSON datagram per record; the host is resolved and the port range
  checked at start; a listener that goes away later does not stop the localiser.
- ``mavlink:udp:HOST:PORT`` / ``mavlink:serial:DEVICE[:BAUD]``: MAVLink messages for an
  autopilot (apps/mavlink_out.py, the ``[mavlink]`` extra).
- anything else is a file, opened for append (created if missing, never truncated or replaced).
  Refused: a folder, a block device or socket, and any file that is an input of the run (the
  map, the video, a query image, the domain fit). Character devices (``/dev/null``, a tty) and
  FIFOs with a reader are written to as they are.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import sys
from pathlib import Path

from segvlad_edge.errors import FileSafetyError, SegvladError
from segvlad_edge.files import check_output


class SinkError(SegvladError, ValueError):
    """An output target cannot be used; the message names it and says why in one line."""


class StdoutSink:
    def __init__(self):
        self.target = "-"

    def write(self, record: dict) -> None:
        sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
        sys.stdout.flush()

    def close(self) -> None:
        pass


class FileSink:
    """JSON lines appended to a file (flushed per line); see the module docstring for what is refused."""

    def __init__(self, target: str, inputs: list[Path]):
        self.target = target
        try:
            path = check_output(target, inputs, streams=True)
        except FileSafetyError as e:
            raise SinkError(f"--out {e}") from None
        # non-blocking open: a FIFO without a reader fails (ENXIO) instead of waiting for one
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(path, flags, 0o644)
        except OSError as e:
            why = "a FIFO without a reader" if e.errno == errno.ENXIO else (e.strerror or str(e))
            raise SinkError(f"--out {target}: cannot open for writing ({why})") from None
        os.set_blocking(fd, True)
        self._file = os.fdopen(fd, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def resolve_udp(target: str, host: str, port: str) -> tuple[int, tuple]:
    """``(address family, socket address)`` of HOST:PORT, or SinkError naming the target."""
    host = host.strip("[]")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise SinkError(f"--out {target}: expected HOST:PORT with a port from 1 to 65535")
    try:
        family, _, _, _, addr = socket.getaddrinfo(host, int(port), type=socket.SOCK_DGRAM)[0]
    except (socket.gaierror, UnicodeError) as e:
        raise SinkError(f"--out {target}: cannot resolve host {host!r} ({getattr(e, 'strerror', None) or e})") from None
    return family, addr


class UdpSink:
    """One JSON datagram per record to HOST:PORT (resolved once, at start)."""

    def __init__(self, target: str):
        self.target = target
        host, _, port = target[len("udp://"):].rpartition(":")
        family, self._addr = resolve_udp(target, host, port)
        self._sock = socket.socket(family, socket.SOCK_DGRAM)

    def write(self, record: dict) -> None:
        try:
            self._sock.sendto(json.dumps(record, ensure_ascii=False).encode(), self._addr)
        except OSError:
            pass                   # a listener that went away must not stop the robot's localiser

    def close(self) -> None:
        self._sock.close()


class Sinks:
    """All outputs of one run; ``write`` sends each record to every sink, in order."""

    def __init__(self, sinks: list):
        self.sinks = sinks

    def write(self, record: dict) -> None:
        for s in self.sinks:
            s.write(record)

    def close(self) -> None:
        for s in self.sinks:
            s.close()


def open_sink(target: str, inputs: list[Path], position_kind: str | None = None):
    """One sink for ``target`` (forms in the module docstring); ``position_kind`` ("gps" / "local" /
    None) is the map's position frame, which chooses the MAVLink message."""
    if target == "-":
        return StdoutSink()
    if target.startswith("udp://"):
        return UdpSink(target)
    if target.startswith("mavlink:"):
        from segvlad_edge.apps.mavlink_out import MavlinkSink

        return MavlinkSink(target, position_kind)
    return FileSink(target, inputs)


def open_sinks(targets: list[str] | tuple[str, ...], inputs: list[Path] = (), position_kind: str | None = None) -> Sinks:
    """Every target opened and checked (SinkError on the first bad one, the others closed again).
    The same file named twice is refused (its lines would interleave)."""
    targets = list(targets) or ["-"]
    files = [t for t in targets if t != "-" and not t.startswith(("udp://", "mavlink:"))]
    if len({os.path.abspath(t) for t in files}) < len(files) or targets.count("-") > 1:
        raise SinkError(f"--out: the same target is given twice ({', '.join(targets)})")
    opened = []
    try:
        for t in targets:
            opened.append(open_sink(t, [Path(p) for p in inputs], position_kind))
    except BaseException:
        for s in opened:
            s.close()
        raise
    return Sinks(opened)

"""MAVLink output for PX4 / ArduPilot autopilots (``--out mavlink:...``, the ``[mavlink]`` extra).

    --out mavlink:udp:HOST:PORT              UDP datagrams to HOST:PORT (e.g. mavlink-router, SITL)
    --out mavlink:serial:DEVICE[:BAUD]       a telemetry UART, e.g. mavlink:serial:/dev/ttyTHS1:921600
                                             (BAUD default 57600; raw 8N1, set with termios)

MAVLink 2, common dialect, encoded with pymavlink, sent as system ``SYSTEM_ID`` component
``MAV_COMP_ID_VISUAL_INERTIAL_ODOMETRY`` (197):

- ``HEARTBEAT`` at 1 Hz from a background thread (type MAV_TYPE_ONBOARD_CONTROLLER, autopilot
  MAV_AUTOPILOT_INVALID, state ACTIVE), as the common dialect asks of every component.
- per record with a position (a confident match on a map with positions; nothing otherwise):
  - lat/lon maps: ``GPS_INPUT``: ``time_usec`` = capture time, GPS week / week-ms from it,
    ``fix_type`` 3 (3D) when the map has altitude else 2 (2D), ``lat``/``lon`` in degE7, ``alt``
    metres AMSL, ``horiz_accuracy`` = ``sigma_m``; HDOP, VDOP, velocities, speed and vertical
    accuracy flagged as ignored (``ignore_flags``); ``satellites_visible`` 0 (a visual fix has
    none: ArduPilot's GPS checks on the satellite count must allow it) and ``yaw`` 0 (unknown).
  - local x,y,z maps: ``ODOMETRY`` in ``MAV_FRAME_LOCAL_FRD`` (the map's x, y, z as they are:
    give the CSV in the autopilot's local frame), child ``MAV_FRAME_BODY_FRD``; attitude and
    velocities unknown (NaN, as PX4 reads them), ``pose_covariance`` diagonal sigma_m^2 for x, y
    (and z when known, else NaN), NaN for the attitude, 0 off the diagonal; ``estimator_type`` VISION;
    ``quality`` = confidence in percent (1-100).
The rate is the frame rate of the localiser (each confident frame sends one message).
"""
from __future__ import annotations

import math
import os
import socket
import threading
import time

from segvlad_edge.apps.sinks import SinkError, resolve_udp
from segvlad_edge.errors import require

SYSTEM_ID = 1
HEARTBEAT_S = 1.0
DEFAULT_BAUD = 57600
GPS_EPOCH_UNIX = 315964800       # 1980-01-06T00:00:00Z
GPS_LEAP_SECONDS = 18            # GPS - UTC since 2017-01-01


def require_pymavlink():
    """The common-dialect module of pymavlink, or SinkError naming the extra to install."""
    return require("pymavlink.dialects.v20.common", "mavlink", "--out mavlink:...", SinkError)


class _Udp:
    def __init__(self, target: str, host: str, port: str):
        family, self.addr = resolve_udp(target, host, port)
        self.sock = socket.socket(family, socket.SOCK_DGRAM)

    def write(self, data: bytes) -> None:
        try:
            self.sock.sendto(data, self.addr)
        except OSError:
            pass                   # no listener yet / network down: the next message tries again

    def close(self) -> None:
        self.sock.close()


class _Serial:
    """A tty in raw 8N1 mode at ``baud`` (termios; no pyserial needed)."""

    def __init__(self, target: str, device: str, baud: int):
        import termios

        speed = getattr(termios, f"B{baud}", None)
        if speed is None:
            raise SinkError(f"--out {target}: unsupported baud rate {baud}")
        try:
            self.fd = os.open(device, os.O_RDWR | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0))
        except OSError as e:
            raise SinkError(f"--out {target}: cannot open {device} ({e.strerror or e})") from None
        try:
            attr = termios.tcgetattr(self.fd)
        except termios.error:
            os.close(self.fd)
            raise SinkError(f"--out {target}: {device} is not a serial device") from None
        attr[0] = 0                                                  # iflag: raw input
        attr[1] = 0                                                  # oflag: raw output
        attr[2] = termios.CS8 | termios.CREAD | termios.CLOCAL       # cflag: 8N1, no modem control
        attr[3] = 0                                                  # lflag: no echo, not canonical
        attr[4] = attr[5] = speed
        termios.tcsetattr(self.fd, termios.TCSANOW, attr)

    def write(self, data: bytes) -> None:
        os.write(self.fd, data)

    def close(self) -> None:
        os.close(self.fd)


def parse_target(target: str) -> tuple[str, str, str]:
    """``mavlink:udp:HOST:PORT`` -> ("udp", HOST, PORT); ``mavlink:serial:DEV[:BAUD]`` -> ("serial", DEV, BAUD)."""
    kind, _, rest = target[len("mavlink:"):].partition(":")
    if kind == "udp":
        host, _, port = rest.rpartition(":")
        return kind, host, port
    if kind == "serial" and rest:
        dev, _, baud = rest.rpartition(":") if rest.rsplit(":", 1)[-1].isdigit() else (rest, "", str(DEFAULT_BAUD))
        return kind, dev, baud
    raise SinkError(f"--out {target}: expected mavlink:udp:HOST:PORT or mavlink:serial:DEVICE[:BAUD]")


class MavlinkSink:
    """Sends each record's position as GPS_INPUT (``position_kind`` "gps") or ODOMETRY ("local"),
    plus a 1 Hz HEARTBEAT; records without a position send nothing."""

    def __init__(self, target: str, position_kind: str | None, heartbeat_s: float = HEARTBEAT_S):
        self.target = target
        kind, where, extra = parse_target(target)
        self.dialect = require_pymavlink()
        if position_kind not in ("gps", "local"):
            raise SinkError(f"--out {target}: the map has no positions (GPS, x,y,z or UTM) to send; "
                            "build it with --metadata or from geotagged photos")
        self.position_kind = position_kind
        self.link = _Udp(target, where, extra) if kind == "udp" else _Serial(target, where, int(extra))
        self.mav = self.dialect.MAVLink(self.link, srcSystem=SYSTEM_ID,
                                        srcComponent=self.dialect.MAV_COMP_ID_VISUAL_INERTIAL_ODOMETRY)
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._boot = time.monotonic()
        self.sent = 0
        self._thread = threading.Thread(target=self._heartbeats, args=(heartbeat_s,), name="segvlad-mavlink-hb",
                                        daemon=True)
        self._thread.start()

    def _send(self, msg) -> None:
        with self._lock:
            self.mav.send(msg)

    def _heartbeats(self, period: float) -> None:
        d = self.dialect
        while not self._stop.is_set():
            try:
                self._send(d.MAVLink_heartbeat_message(d.MAV_TYPE_ONBOARD_CONTROLLER, d.MAV_AUTOPILOT_INVALID, 0, 0,
                                                       d.MAV_STATE_ACTIVE, 3))
            except OSError:
                pass                                    # a serial hiccup: try again next period
            self._stop.wait(period)

    def message(self, record: dict):
        """The MAVLink message for one record, or None (no position: nothing is sent)."""
        pos = record.get("position")
        if not pos:
            return None
        d, t = self.dialect, float(record.get("timestamp") or time.time())
        usec = int(t * 1e6)
        if self.position_kind == "gps":
            gps_s = t - GPS_EPOCH_UNIX + GPS_LEAP_SECONDS
            week, week_ms = int(gps_s // 604800), int((gps_s % 604800) * 1000)
            alt = pos.get("alt")
            ignore = (d.GPS_INPUT_IGNORE_FLAG_HDOP | d.GPS_INPUT_IGNORE_FLAG_VDOP | d.GPS_INPUT_IGNORE_FLAG_VEL_HORIZ
                      | d.GPS_INPUT_IGNORE_FLAG_VEL_VERT | d.GPS_INPUT_IGNORE_FLAG_SPEED_ACCURACY
                      | d.GPS_INPUT_IGNORE_FLAG_VERTICAL_ACCURACY | (d.GPS_INPUT_IGNORE_FLAG_ALT if alt is None else 0))
            return d.MAVLink_gps_input_message(
                usec, 0, ignore, week_ms, week, 3 if alt is not None else 2, round(pos["lat"] * 1e7),
                round(pos["lon"] * 1e7), float(alt or 0.0), 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, float(pos["sigma_m"]), 0.0, 0, 0)
        nan, var = math.nan, float(pos["sigma_m"]) ** 2
        z = pos.get("z")
        cov = [0.0] * 21                       # upper triangle of the 6x6 (x y z roll pitch yaw), row-major
        for i, v in zip((0, 6, 11, 15, 18, 20), (var, var, var if z is not None else nan, nan, nan, nan)):
            cov[i] = v
        quality = max(1, min(100, round(100 * float(record.get("confidence", 0)))))
        return d.MAVLink_odometry_message(
            usec, d.MAV_FRAME_LOCAL_FRD, d.MAV_FRAME_BODY_FRD, float(pos["x"]), float(pos["y"]),
            nan if z is None else float(z), [nan] * 4, nan, nan, nan, nan, nan, nan, cov, [nan] * 21, 0,
            d.MAV_ESTIMATOR_TYPE_VISION, quality)

    def write(self, record: dict) -> None:
        msg = self.message(record)
        if msg is not None:
            try:
                self._send(msg)
                self.sent += 1
            except OSError:
                pass                                    # a serial hiccup must not stop the localiser

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        self.link.close()

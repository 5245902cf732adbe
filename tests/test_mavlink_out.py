"""MAVLink out: what the localiser sends on loopback, decoded with pymavlink's own parser."""
import json
import math
import socket
import subprocess
import sys
import time

import pytest

pytest.importorskip("pymavlink")

from segvlad_edge.apps.mavlink_out import MavlinkSink, parse_target  # noqa: E402
from segvlad_edge.apps.sinks import SinkError  # noqa: E402


@pytest.fixture
def receiver():
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(0.5)
    yield rx
    rx.close()


def received(rx) -> list:
    """Every MAVLink message that arrived, decoded by pymavlink (CRC and MAVLink 2 framing checked)."""
    from pymavlink.dialects.v20 import common

    parser, msgs = common.MAVLink(None), []
    while True:
        try:
            data = rx.recv(65536)
        except socket.timeout:
            return msgs
        msgs += parser.parse_buffer(data) or []


def test_gps_map_sends_gps_input_and_heartbeat_only_when_confident(receiver):
    port = receiver.getsockname()[1]
    sink = MavlinkSink(f"mavlink:udp:127.0.0.1:{port}", "gps", heartbeat_s=0.1)
    t = 1_790_000_000.25
    sink.write({"timestamp": t, "confidence": 0.9, "position": {"lat": 45.1234567, "lon": -9.7654321, "alt": 12.5,
                                                                "sigma_m": 4.25}})
    sink.write({"timestamp": t + 1, "confidence": 0.2, "position": None})      # no confident match: nothing
    time.sleep(0.35)
    sink.close()
    msgs = received(receiver)
    gps = [m for m in msgs if m.get_type() == "GPS_INPUT"]
    beats = [m for m in msgs if m.get_type() == "HEARTBEAT"]
    assert len(gps) == 1 and len(beats) >= 2 and sink.sent == 1
    g = gps[0]
    assert (g.lat, g.lon, g.alt, g.fix_type) == (451234567, -97654321, 12.5, 3)
    assert g.horiz_accuracy == pytest.approx(4.25) and g.time_usec == 1_790_000_000_250_000
    gps_s = t - 315964800 + 18
    assert g.time_week == int(gps_s // 604800) and g.time_week_ms == int(gps_s % 604800 * 1000)
    assert g.ignore_flags & 8 and g.ignore_flags & 2 and not g.ignore_flags & 64     # velocities, HDOP ignored
    assert beats[0].type == 18 and beats[0].autopilot == 8                           # onboard controller
    assert g.get_srcComponent() == 197 and g.get_msgbuf()[0] == 0xFD                  # MAVLink 2 framing


def test_local_map_sends_odometry_with_covariance_and_quality(receiver):
    sink = MavlinkSink(f"mavlink:udp:127.0.0.1:{receiver.getsockname()[1]}", "local")
    sink.write({"timestamp": 100.0, "confidence": 0.8, "position": {"x": 3.5, "y": -1.0, "z": None, "sigma_m": 0.5}})
    sink.close()
    odo = [m for m in received(receiver) if m.get_type() == "ODOMETRY"]
    assert len(odo) == 1
    o = odo[0]
    assert (o.x, o.y, o.frame_id, o.child_frame_id, o.estimator_type, o.quality) == (3.5, -1.0, 20, 12, 2, 80)
    assert math.isnan(o.z) and math.isnan(o.q[0]) and math.isnan(o.vx)
    assert o.pose_covariance[0] == o.pose_covariance[6] == 0.25 and math.isnan(o.pose_covariance[11])
    assert o.pose_covariance[1] == 0 and math.isnan(o.velocity_covariance[0])


def test_targets_are_parsed_and_checked_at_start():
    assert parse_target("mavlink:udp:10.0.0.2:14550") == ("udp", "10.0.0.2", "14550")
    assert parse_target("mavlink:serial:/dev/ttyUSB0:921600") == ("serial", "/dev/ttyUSB0", "921600")
    assert parse_target("mavlink:serial:/dev/ttyTHS1") == ("serial", "/dev/ttyTHS1", "57600")
    with pytest.raises(SinkError, match="port from 1 to 65535"):
        MavlinkSink("mavlink:udp:127.0.0.1:0", "gps")
    with pytest.raises(SinkError, match="no positions"):
        MavlinkSink("mavlink:udp:127.0.0.1:14550", None)
    with pytest.raises(SinkError, match="not a serial device"):
        MavlinkSink("mavlink:serial:/dev/null:57600", "gps")
    with pytest.raises(SinkError, match="unsupported baud"):
        MavlinkSink("mavlink:serial:/dev/null:12345", "gps")


def test_missing_pymavlink_is_one_line_naming_the_extra(positioned_bundle, engines_dir, datasets):
    code = ("import sys; sys.modules['pymavlink'] = None\n"
            "from segvlad_edge.apps.cli import main\n"
            "main()")
    r = subprocess.run([sys.executable, "-c", code, "localize", "--map", str(positioned_bundle("gps")), "--images",
                        str(datasets / "corridor" / "query"), "--engines", str(engines_dir),
                        "--out", "mavlink:udp:127.0.0.1:14550"], capture_output=True, text=True)
    errors = [x for x in r.stderr.strip().splitlines() if not x.startswith("info: ")]
    assert r.returncode == 1 and r.stdout == "" and "Traceback" not in r.stderr
    assert errors == ["error: --out mavlink:... needs pymavlink: install the [mavlink] extra "
                      "(`pip install 'segvlad-edge[mavlink]'`)"]


def test_localize_streams_real_frames_to_an_autopilot(positioned_bundle, engines_dir, datasets, receiver, tmp_path):
    """End to end: corridor queries against a geotagged corridor map; every confident record's position
    arrives as GPS_INPUT with the same numbers, nothing for the refused ones."""
    import shutil

    queries = tmp_path / "q"
    queries.mkdir()
    for p in sorted((datasets / "corridor" / "query").iterdir())[20:50:3]:
        shutil.copy(p, queries / p.name)
    r = subprocess.run([sys.executable, "-m", "segvlad_edge.apps.cli", "localize", "--map", positioned_bundle("gps"),
                        "--images", queries, "--engines", engines_dir, "--out", "-",
                        "--out", f"mavlink:udp:127.0.0.1:{receiver.getsockname()[1]}"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    sent = [x["position"] for x in lines if x["match"]]
    assert len(lines) == 10 and sent and all(x["position"] is None for x in lines if not x["match"])
    gps = [m for m in received(receiver) if m.get_type() == "GPS_INPUT"]
    assert [(g.lat, g.lon) for g in gps] == [(round(p["lat"] * 1e7), round(p["lon"] * 1e7)) for p in sent]
    assert [g.horiz_accuracy for g in gps] == pytest.approx([p["sigma_m"] for p in sent])
    assert [g.alt for g in gps] == pytest.approx([p["alt"] for p in sent])


def test_serial_link_writes_raw_mavlink_to_a_tty():
    """A pseudo-terminal stands in for the telemetry UART: what arrives on the other side decodes."""
    import os
    import select

    from pymavlink.dialects.v20 import common

    master, slave = os.openpty()
    try:
        sink = MavlinkSink(f"mavlink:serial:{os.ttyname(slave)}:921600", "local", heartbeat_s=10)
        sink.write({"timestamp": 5.0, "confidence": 0.95, "position": {"x": 1.0, "y": 2.0, "z": 3.0, "sigma_m": 0.2}})
        sink.close()
        data = b""
        while True:
            if not select.select([master], [], [], 0.5)[0]:
                break
            data += os.read(master, 4096)
        msgs = common.MAVLink(None).parse_buffer(data) or []
        types = [m.get_type() for m in msgs]
        assert "HEARTBEAT" in types and types.count("ODOMETRY") == 1
        odo = msgs[types.index("ODOMETRY")]
        assert (odo.x, odo.y, odo.z, odo.quality) == (1.0, 2.0, 3.0, 95)
        assert odo.pose_covariance[11] == pytest.approx(0.04)
    finally:
        os.close(master)
        os.close(slave)

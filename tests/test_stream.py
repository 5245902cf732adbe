"""The camera app: video files, live sources that stall and reconnect, signals, JSON lines."""
import calendar
import json
import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from segvlad_edge.runtime.inputs.images import list_images
from segvlad_edge.runtime.inputs.sources import LiveSource, SourceError, open_source

KEYS = {"schema", "query", "frame", "timestamp", "top", "match", "confidence", "segments", "ms", "rival"}


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "segvlad_edge.apps.cli", *map(str, args)], capture_output=True,
                          text=True, **kw)


@pytest.fixture(scope="module")
def video(datasets, tmp_path_factory):
    """30 corridor query frames as an MJPEG AVI."""
    path = tmp_path_factory.mktemp("video") / "corridor.avi"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 120))
    assert w.isOpened()
    for p in list_images(datasets / "corridor" / "query")[:30]:
        w.write(cv2.imread(str(p)))
    w.release()
    return path


def test_video_gives_one_json_line_per_processed_frame(video, corridor_bundle, engines_dir, tmp_path):
    r = cli("localize", "--map", corridor_bundle, "--video", video, "--engines", engines_dir, "--every-n", 2,
            "--filter", "--save-vis", tmp_path / "vis")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["frame"] for x in lines] == list(range(0, 30, 2))
    hits = 0
    for x in lines:
        assert KEYS <= set(x) and x["schema"] == "segvlad-edge/localize/2" and "filtered" in x
        assert 0 <= x["confidence"] <= 1 and x["ms"]["total"] >= x["ms"]["features"] > 0
        hits += abs(int(x["top"][0]["name"][:7]) - x["frame"]) <= 2
    assert hits >= 0.6 * len(lines)
    assert len(list((tmp_path / "vis").glob("*.png"))) == len(lines)


def test_truncated_video_ends_with_a_clear_message(video, corridor_bundle, engines_dir, tmp_path):
    cut = tmp_path / "cut.avi"
    data = video.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    r = cli("localize", "--map", corridor_bundle, "--video", cut, "--engines", engines_dir)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    info, error = r.stderr.strip().splitlines()          # the run had started: its info line, then the error
    assert info.startswith("info: engine ") and error.startswith("error: ")
    assert "truncated" in error
    for line in r.stdout.splitlines():                 # frames before the cut were answered normally
        assert KEYS <= set(json.loads(line))


def test_corrupt_frames_in_a_folder_are_reported_not_fatal(datasets, corridor_bundle, engines_dir, tmp_path):
    for p in list_images(datasets / "corridor" / "query")[:3]:
        (tmp_path / p.name).write_bytes(p.read_bytes())
    (tmp_path / "0000001.jpg").write_bytes(b"\xff\xd8\xff garbage")
    r = cli("localize", "--map", corridor_bundle, "--images", tmp_path, "--engines", engines_dir)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["query"] for x in lines] == ["0000000.jpg", "0000001.jpg", "0000002.jpg"]
    assert "error" in lines[1] and lines[1]["match"] is None and lines[1]["top"] == []
    assert lines[0]["top"] and lines[2]["top"]


class FakeCapture:
    """A camera that delivers ``frames`` frames, then fails (unplugged)."""

    def __init__(self, frames, start=0, delay=0.0):
        self.left, self.n, self.delay = frames, start, delay

    def isOpened(self):
        return True

    def grab(self):
        time.sleep(self.delay)
        if self.left == 0:
            return False
        self.left -= 1
        self.n += 1
        return True

    def retrieve(self):
        return True, np.full((8, 8, 3), self.n % 256, np.uint8)

    def release(self):
        pass


def test_live_source_reconnects_after_a_disconnect():
    plan = [FakeCapture(5, delay=0.01), None, None, FakeCapture(5, start=100, delay=0.01)]
    events = []

    def opener(spec):
        return plan.pop(0) if plan else None
    src = LiveSource(0, backoff=0.01, max_backoff=0.02, give_up_s=1.0, on_event=events.append, opener=opener)
    frames = []
    with pytest.raises(SourceError, match="giving up"):
        for f in src:
            frames.append(int(f.image[0, 0, 0]))
    src.close()
    assert any("lost" in e for e in events) and any("cannot open" in e for e in events)
    assert any("reconnected" in e for e in events)
    assert frames and frames[-1] > 100 and frames == sorted(frames)


def test_live_source_drops_stale_frames():
    src = LiveSource(0, opener=lambda spec: FakeCapture(10_000, delay=0.001))
    seen = []
    for f in src:
        seen.append(f.index)
        time.sleep(0.05)                                # a slow pipeline
        if len(seen) == 6:
            break
    src.close()
    assert all(b - a > 3 for a, b in zip(seen, seen[1:])), seen


def test_source_choice_is_checked(tmp_path):
    with pytest.raises(SourceError, match="exactly one"):
        open_source()
    with pytest.raises(SourceError, match="no such video"):
        open_source(video=str(tmp_path / "none.mp4"))
    (tmp_path / "x.mp4").write_bytes(b"not a video at all")
    with pytest.raises(SourceError, match="cannot open"):
        open_source(video=str(tmp_path / "x.mp4"))


def test_sigterm_stops_a_camera_loop_cleanly(corridor_bundle, engines_dir, tmp_path):
    log = tmp_path / "stderr.txt"
    with open(log, "w") as err:
        p = subprocess.Popen([sys.executable, "-m", "segvlad_edge.apps.cli", "localize", "--map", str(corridor_bundle),
                              "--camera", "97", "--engines", str(engines_dir)], stdout=subprocess.PIPE, stderr=err,
                             text=True)
        deadline = time.time() + 60
        while time.time() < deadline and "cannot open" not in log.read_text():
            time.sleep(0.2)                             # no camera 97: it keeps retrying, never crashes
        assert p.poll() is None, log.read_text()
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=20)
    text = log.read_text()
    assert p.returncode == 0, text
    assert "Traceback" not in text and "stopped after 0 frames" in text


def test_video_frames_carry_their_container_timestamps(tmp_path, datasets):
    """A written 10 fps video: frame i is stamped start + i/10 s, the start being the file's mtime minus
    its 3 s duration (not the time it is processed)."""
    path = tmp_path / "v.avi"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 120))
    for p in list_images(datasets / "corridor" / "query")[:30]:
        w.write(cv2.imread(str(p)))
    w.release()
    os.utime(path, (1_700_000_000.0, 1_700_000_000.0))
    src = open_source(video=str(path), every_n=7)
    stamps = [(f.index, f.timestamp) for f in src]
    src.close()
    assert [i for i, _ in stamps] == [0, 7, 14, 21, 28]
    for i, t in stamps:
        assert t == pytest.approx(1_700_000_000.0 - 3.0 + i / 10, abs=1e-3)


def test_folder_frames_carry_exif_time_else_mtime(tmp_path, datasets):
    from PIL import Image

    src_img = list_images(datasets / "corridor" / "query")[0]
    exif = Image.Exif()
    exif[0x8769] = {0x9003: "2024:05:06 07:08:09", 0x9011: "+02:00", 0x9291: "5"}
    Image.open(src_img).save(tmp_path / "a.jpg", exif=exif)
    (tmp_path / "b.jpg").write_bytes(src_img.read_bytes())
    os.utime(tmp_path / "b.jpg", (1_600_000_000.5, 1_600_000_000.5))
    frames = list(open_source(images=tmp_path))
    assert frames[0].timestamp == pytest.approx(calendar.timegm((2024, 5, 6, 5, 8, 9)) + 0.5)
    assert frames[1].timestamp == 1_600_000_000.5


def test_live_frames_carry_the_grab_time():
    t0 = time.time()
    src = LiveSource(0, opener=lambda spec: FakeCapture(10_000, delay=0.01))
    frame = next(iter(src))
    src.close()
    assert t0 <= frame.timestamp <= time.time()

"""Frame sources for the camera app: image folders, video files, live cameras and streams.

``open_source(spec)`` -> an iterable of ``Frame``. Live sources (a device index, an RTSP /
HTTP / GStreamer URL) run a capture thread that keeps only the newest frame, so a slow
pipeline always works on what the camera sees now instead of a growing queue; a stalled or
lost camera is reopened with exponential back-off and reported through ``on_event``, never
raised. Files and folders are read in order, every frame (``every_n`` thins them).

``Frame.timestamp`` is the capture time in Unix seconds: for image folders each file's EXIF
DateTimeOriginal (runtime/inputs/exif.py), else its modification time; for video files the frame's own
container timestamp (``CAP_PROP_POS_MSEC``) added to the recording's start, taken as the file's
modification time minus its duration (a recorder writes the file until its last frame); for
cameras and streams the wall-clock time at which ``grab()`` returned the frame.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from segvlad_edge.errors import SourceError
from segvlad_edge.runtime.inputs.exif import file_time
from segvlad_edge.runtime.inputs.images import ImageError, list_images, load_image

log = logging.getLogger(__name__)


@dataclass
class Frame:
    """``image [H, W, 3] uint8`` BGR (None with ``error`` set when the frame could not be decoded);
    ``index``: frame number in the source; ``timestamp``: seconds since the epoch at capture."""

    index: int
    name: str
    image: np.ndarray | None
    timestamp: float
    error: str | None = None


class FolderSource:
    def __init__(self, folder: Path, every_n: int = 1):
        self.folder, self.every_n = Path(folder), every_n
        self.files = list_images(self.folder)
        if not self.files:
            raise SourceError(f"{folder} holds no images")

    def __iter__(self) -> Iterator[Frame]:
        for i, path in enumerate(self.files[::self.every_n]):
            name = path.relative_to(self.folder).as_posix()
            try:
                image, error = load_image(path), None
            except ImageError as e:
                image, error = None, str(e)
            yield Frame(i * self.every_n, name, image, file_time(path), error)

    def close(self) -> None:
        pass


class VideoFileSource:
    """Every ``every_n``-th frame of a video file, in order. A file that stops decoding before
    its declared length (truncated, corrupt) ends the stream with a SourceError."""

    def __init__(self, path: Path, every_n: int = 1):
        self.path, self.every_n = Path(path), every_n
        if not self.path.is_file():
            raise SourceError(f"{path}: no such video file")
        self.cap = cv2.VideoCapture(str(self.path))
        if not self.cap.isOpened():
            raise SourceError(f"{path}: cannot open as a video (unknown format or corrupt header)")
        self.declared = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        fps = self.cap.get(cv2.CAP_PROP_FPS) or 0.0
        duration = self.declared / fps if fps > 0 and self.declared else 0.0
        self.start = self.path.stat().st_mtime - duration      # Unix seconds of the first frame

    def _time(self, i: int) -> float:
        """Capture time of the frame just grabbed (index ``i``): container timestamp from the start."""
        pos_ms = self.cap.get(cv2.CAP_PROP_POS_MSEC)
        if not pos_ms and i:                     # containers without timestamps: the nominal frame rate
            fps = self.cap.get(cv2.CAP_PROP_FPS) or 0.0
            pos_ms = 1e3 * i / fps if fps > 0 else 0.0
        return self.start + pos_ms / 1e3

    def __iter__(self) -> Iterator[Frame]:
        i = 0
        while True:
            ok = self.cap.grab()
            if not ok:
                break
            if i % self.every_n == 0:
                ts = self._time(i)
                ok, img = self.cap.retrieve()
                if ok and img is not None:
                    yield Frame(i, f"{self.path.name}#{i}", img, ts)
                else:
                    yield Frame(i, f"{self.path.name}#{i}", None, ts, "frame could not be decoded")
            i += 1
        if self.declared and i < self.declared:
            raise SourceError(f"{self.path}: video ended at frame {i} of {self.declared} (truncated or corrupt)")

    def close(self) -> None:
        self.cap.release()


class LiveSource:
    """A camera (device index) or stream URL. A capture thread holds only the newest frame.

    ``stall_s``: no new frame for this long counts as a stall and the source is reopened, after
    waits of ``backoff`` seconds doubling to ``max_backoff``. ``give_up_s`` > 0 ends the stream
    (SourceError) after that long without a frame; 0 retries for ever. ``on_event(text)`` hears
    about disconnects and reconnects."""

    def __init__(self, spec: int | str, every_n: int = 1, stall_s: float = 5.0, backoff: float = 0.5,
                 max_backoff: float = 8.0, give_up_s: float = 0.0, on_event: Callable[[str], None] | None = None,
                 opener: Callable[[int | str], "cv2.VideoCapture"] | None = None):
        self.spec, self.every_n, self.stall_s = spec, every_n, stall_s
        self.backoff, self.max_backoff, self.give_up_s = backoff, max_backoff, give_up_s
        self.on_event = on_event or (lambda text: log.warning(text))
        self.opener = opener or open_capture
        self._cond = threading.Condition()
        self._latest: tuple[int, np.ndarray, float] | None = None
        self._count, self._stop, self._failed = 0, threading.Event(), None
        self._last_frame = time.monotonic()
        self._thread = threading.Thread(target=self._capture, name="segvlad-capture", daemon=True)
        self._thread.start()

    def _open(self):
        cap = self.opener(self.spec)
        if cap is not None and cap.isOpened():
            return cap
        if cap is not None:
            cap.release()
        return None

    def _capture(self) -> None:
        wait, cap = self.backoff, None
        while not self._stop.is_set():
            if cap is None:
                cap = self._open()
                if cap is None:
                    if self.give_up_s and time.monotonic() - self._last_frame > self.give_up_s:
                        self._fail(f"camera {self.spec!r}: no frames for {self.give_up_s:.0f} s, giving up")
                        return
                    self.on_event(f"camera {self.spec!r}: cannot open, retrying in {wait:.1f} s")
                    self._stop.wait(wait)
                    wait = min(wait * 2, self.max_backoff)
                    continue
                if self._count:
                    self.on_event(f"camera {self.spec!r}: reconnected")
                wait = self.backoff
            ok = cap.grab()
            grabbed = time.time()                   # capture time: when the driver handed the frame over
            ok, img = cap.retrieve() if ok else (False, None)
            now = time.monotonic()
            if ok and img is not None:
                self._last_frame = now
                with self._cond:
                    self._count += 1
                    self._latest = (self._count - 1, img, grabbed)
                    self._cond.notify_all()
            elif now - self._last_frame > self.stall_s or not ok:
                self.on_event(f"camera {self.spec!r}: {'lost' if not ok else 'stalled'}, reconnecting")
                cap.release()
                cap = None
        if cap is not None:
            cap.release()

    def _fail(self, text: str) -> None:
        with self._cond:
            self._failed = text
            self._cond.notify_all()

    def __iter__(self) -> Iterator[Frame]:
        wanted = 0                                   # the next frame number worth processing
        while not self._stop.is_set():
            with self._cond:
                self._cond.wait_for(lambda: self._failed or self._stop.is_set()
                                    or (self._latest is not None and self._latest[0] >= wanted), timeout=0.5)
                if self._failed:
                    raise SourceError(self._failed)
                latest = self._latest
            if latest is None or latest[0] < wanted:
                continue
            index, img, ts = latest
            wanted = index + self.every_n
            yield Frame(index, f"camera:{self.spec}#{index}", img, ts)

    def request_stop(self) -> None:
        """Make the iterator end soon; safe from a signal handler (does not block)."""
        self._stop.set()

    def close(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(timeout=2.0)


def open_capture(spec: int | str, timeout_ms: int = 5000) -> "cv2.VideoCapture":
    """OpenCV capture for a device index, a URL (FFmpeg, with open/read time-outs so a dead
    stream cannot block for ever) or a GStreamer pipeline (contains ``!``; needs an OpenCV
    built with GStreamer, as on JetPack)."""
    if isinstance(spec, int):
        return cv2.VideoCapture(spec)
    if "!" in spec:
        return cv2.VideoCapture(spec, cv2.CAP_GSTREAMER)
    return cv2.VideoCapture(spec, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms,
                                                   cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms])


def check_choice(camera, video, images) -> None:
    """Raise SourceError unless exactly one source is given (cheap: opens nothing)."""
    if sum(x is not None for x in (camera, video, images)) != 1:
        raise SourceError("give exactly one frame source: --camera N, --video FILE|URL or --images DIR")


def open_source(camera: int | None = None, video: str | None = None, images: Path | None = None,
                every_n: int = 1, **live) -> FolderSource | VideoFileSource | LiveSource:
    """Exactly one of ``camera`` (device index), ``video`` (file path or stream URL) or ``images``."""
    check_choice(camera, video, images)
    if every_n < 1:
        raise SourceError("--every-n must be at least 1")
    if images is not None:
        return FolderSource(images, every_n)
    if camera is not None:
        return LiveSource(camera, every_n, **live)
    if "://" in video or video.startswith(("gst:", "v4l2src", "nvarguscamerasrc")) or "!" in video:
        spec = video[4:] if video.startswith("gst:") else video
        return LiveSource(spec, every_n, **live)
    return VideoFileSource(Path(video), every_n)

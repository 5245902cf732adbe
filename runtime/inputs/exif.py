"""EXIF facts of a photo: GPS position and capture time. A small bounded parser, no dependencies.

``read_exif(path) -> Exif`` reads the first ``MAX_HEAD_BYTES`` of a JPEG (APP1 "Exif" segment)
or TIFF file and walks IFD0, the Exif IFD and the GPS IFD. Anything malformed, truncated or
absent gives ``None`` fields, never an exception: EXIF is a bonus, not a requirement.

- ``gps``: ``[lat, lon]`` or ``[lat, lon, alt]`` (degrees WGS84, signed by the N/S, E/W refs;
  metres above mean sea level, negative when GPSAltitudeRef says below), from GPS tags 1-6.
- ``time``: Unix seconds of DateTimeOriginal (0x9003, else IFD0 DateTime 0x0132) plus
  SubSecTimeOriginal; with OffsetTimeOriginal (0x9011) the offset is applied, without it the
  time is read as this machine's local time (EXIF stores wall-clock time without a zone).
"""
from __future__ import annotations

import calendar
import math
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path

MAX_HEAD_BYTES = 256 << 10
MAX_ENTRIES = 512
TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 7: 1, 9: 4, 10: 8}
EXIF_IFD, GPS_IFD, DATETIME = 0x8769, 0x8825, 0x0132
DATETIME_ORIGINAL, OFFSET_ORIGINAL, SUBSEC_ORIGINAL = 0x9003, 0x9011, 0x9291


@dataclass
class Exif:
    gps: list[float] | None = None
    time: float | None = None


def read_exif(path: str | os.PathLike) -> Exif:
    """EXIF GPS and capture time of an image file (``Exif()`` when it has none or cannot be read)."""
    if not os.path.isfile(path):             # a FIFO or device would block or never end
        return Exif()
    try:
        with open(path, "rb") as f:
            head = f.read(MAX_HEAD_BYTES)
    except OSError:
        return Exif()
    tiff = _tiff_block(head)
    if tiff is None:
        return Exif()
    try:
        return _parse(tiff)
    except (struct.error, ValueError, ZeroDivisionError, OverflowError, IndexError):
        return Exif()


def _tiff_block(head: bytes) -> bytes | None:
    """The TIFF structure inside a JPEG's APP1 Exif segment, or the file itself for TIFF."""
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return head
    if head[:2] != b"\xff\xd8":
        return None
    pos = 2
    while pos + 4 <= len(head) and head[pos] == 0xFF:
        marker = head[pos + 1]
        if marker in (0xD9, 0xDA):                     # end of image / start of scan: no more metadata
            return None
        length = struct.unpack(">H", head[pos + 2:pos + 4])[0]
        body = head[pos + 4:pos + 2 + length]
        if marker == 0xE1 and body[:6] == b"Exif\x00\x00":
            return body[6:]
        pos += 2 + length
    return None


def _parse(tiff: bytes) -> Exif:
    endian = "<" if tiff[:2] == b"II" else ">"
    ifd0 = _ifd(tiff, endian, struct.unpack(endian + "I", tiff[4:8])[0])
    exif = _ifd(tiff, endian, ifd0[EXIF_IFD][0]) if EXIF_IFD in ifd0 else {}
    gps = _ifd(tiff, endian, ifd0[GPS_IFD][0]) if GPS_IFD in ifd0 else {}
    return Exif(_gps(gps), _time(exif.get(DATETIME_ORIGINAL) or ifd0.get(DATETIME), exif.get(SUBSEC_ORIGINAL),
                                 exif.get(OFFSET_ORIGINAL)))


def _ifd(tiff: bytes, e: str, offset: int) -> dict:
    """``{tag: value}`` of one IFD; values are lists of numbers or a str (ASCII)."""
    if not 8 <= offset <= len(tiff) - 2:
        return {}
    count = struct.unpack(e + "H", tiff[offset:offset + 2])[0]
    out = {}
    for i in range(min(count, MAX_ENTRIES)):
        at = offset + 2 + 12 * i
        if at + 12 > len(tiff):
            break
        tag, typ, n = struct.unpack(e + "HHI", tiff[at:at + 8])
        size = TYPE_SIZES.get(typ)
        if size is None or n > 4096:
            continue
        nbytes = size * n
        where = at + 8 if nbytes <= 4 else struct.unpack(e + "I", tiff[at + 8:at + 12])[0]
        data = tiff[where:where + nbytes]
        if len(data) < nbytes:
            continue
        out[tag] = _value(data, typ, n, e)
    return out


def _value(data: bytes, typ: int, n: int, e: str):
    if typ == 2:
        return data.split(b"\x00", 1)[0].decode("ascii", "replace").strip()
    if typ in (5, 10):
        raw = struct.unpack(e + ("I" if typ == 5 else "i") * (2 * n), data)
        return [a / b if b else math.nan for a, b in zip(raw[::2], raw[1::2])]
    fmt = {1: "B", 3: "H", 4: "I", 7: "B", 9: "i"}[typ]
    return list(struct.unpack(e + fmt * n, data))


def _gps(tags: dict) -> list[float] | None:
    lat, lon = _degrees(tags.get(2), tags.get(1), "S"), _degrees(tags.get(4), tags.get(3), "W")
    if lat is None or lon is None or not (-90 <= lat <= 90 and -180 <= lon <= 180):
        return None
    alt = tags.get(6)
    if isinstance(alt, list) and len(alt) == 1 and math.isfinite(alt[0]):
        below = isinstance(tags.get(5), list) and tags[5][:1] == [1]
        return [lat, lon, -alt[0] if below else alt[0]]
    return [lat, lon]


def _degrees(dms, ref, negative: str) -> float | None:
    if not isinstance(dms, list) or len(dms) != 3 or not isinstance(ref, str) or not ref:
        return None
    value = dms[0] + dms[1] / 60 + dms[2] / 3600
    if not math.isfinite(value):
        return None
    return -value if ref.upper().startswith(negative) else value


def _time(stamp, subsec, offset) -> float | None:
    if not isinstance(stamp, str):
        return None
    try:
        parts = time.strptime(stamp[:19], "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None
    if isinstance(offset, str) and len(offset) == 6 and offset[0] in "+-" and offset[3] == ":" \
            and offset[1:3].isdigit() and offset[4:].isdigit():
        shift = (int(offset[1:3]) * 3600 + int(offset[4:]) * 60) * (1 if offset[0] == "+" else -1)
        seconds = calendar.timegm(parts) - shift
    else:
        seconds = time.mktime(parts)
    if isinstance(subsec, str) and subsec.isdigit():
        seconds += int(subsec) / 10 ** len(subsec)
    return float(seconds)


def file_time(path: str | os.PathLike) -> float:
    """Capture time of an image file: its EXIF time, else its modification time, else now (Unix seconds)."""
    t = read_exif(path).time
    if t is not None:
        return t
    try:
        return Path(path).stat().st_mtime
    except OSError:
        return time.time()

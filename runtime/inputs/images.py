"""Image files -> ``[H, W, 3] uint8`` BGR arrays, and image folders -> sorted file lists.

Only regular files are opened (a FIFO named ``x.jpg`` is refused, not waited on). Before
anything is decoded, the size the file *declares* is read from its header (JPEG, PNG, BMP,
TIFF, WebP, PNM; other formats are refused): JPEG is decoded at a reduced scale (1/2, 1/4 or
1/8, done by the decoder) so that at most ``MAX_PIXELS`` are produced; the other formats can
only be decoded at full size, so they are refused above ``MAX_DECODE_PIXELS`` and reduced
after decoding above ``MAX_PIXELS``. Decoding goes through OpenCV from bytes (so non-ASCII
names work), which applies EXIF orientation and converts grayscale/RGBA/CMYK/16-bit images to
8-bit BGR.
"""
from __future__ import annotations

import os
import re
import struct
from pathlib import Path

import cv2
import numpy as np

from segvlad_edge.errors import SegvladError, printable
from segvlad_edge.files import read_regular

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm")
MAX_PIXELS = 40_000_000           # most pixels an image is decoded to
MAX_DECODE_PIXELS = 100_000_000   # most pixels a format without reduced decoding may declare (300 MB as BGR)
MAX_FILE_BYTES = 512 << 20
REDUCED = ((1, cv2.IMREAD_COLOR), (2, cv2.IMREAD_REDUCED_COLOR_2), (4, cv2.IMREAD_REDUCED_COLOR_4),
           (8, cv2.IMREAD_REDUCED_COLOR_8))


class ImageError(SegvladError, ValueError):
    """A file that cannot be used as an image; the message says why in one line."""


def declared_size(data: bytes) -> tuple[str, int, int] | None:
    """``(format, width, height)`` from the header of an image file's bytes, or None when the
    format is not one of JPEG, PNG, BMP, TIFF, WebP, PNM or the header is cut short."""
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n":
            return ("PNG",) + struct.unpack(">II", data[16:24])
        if data[:2] == b"\xff\xd8":
            return _jpeg_size(data)
        if data[:2] == b"BM":
            if struct.unpack("<I", data[14:18])[0] == 12:             # OS/2 core header
                return ("BMP",) + struct.unpack("<HH", data[18:22])
            w, h = struct.unpack("<ii", data[18:26])
            return "BMP", abs(w), abs(h)
        if data[:4] in (b"II*\0", b"MM\0*"):
            return _tiff_size(data)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp_size(data)
        m = re.match(rb"P[1-7](?:\s+|#[^\n]*\n)*(\d+)(?:\s+|#[^\n]*\n)+(\d+)", data[:512])
        if m:
            return "PNM", int(m.group(1)), int(m.group(2))
    except struct.error:
        return None
    return None


def _jpeg_size(data: bytes) -> tuple[str, int, int] | None:
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:                       # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        length = struct.unpack(">H", data[i + 2:i + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h, w = struct.unpack(">HH", data[i + 5:i + 9])
            return "JPEG", w, h
        i += 2 + length
    return None


def _tiff_size(data: bytes) -> tuple[str, int, int] | None:
    e = "<" if data[:2] == b"II" else ">"
    ifd = struct.unpack(e + "I", data[4:8])[0]
    n = struct.unpack(e + "H", data[ifd:ifd + 2])[0]
    size = {}
    for k in range(min(n, 1024)):
        tag, typ, _, value = struct.unpack(e + "HHI4s", data[ifd + 2 + 12 * k:ifd + 14 + 12 * k])
        if tag in (256, 257):
            size[tag] = struct.unpack(e + "H", value[:2])[0] if typ == 3 else struct.unpack(e + "I", value)[0]
    return ("TIFF", size[256], size[257]) if len(size) == 2 else None


def _webp_size(data: bytes) -> tuple[str, int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X":
        w, h = int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    elif chunk == b"VP8L":
        bits = struct.unpack("<I", data[21:25])[0]
        w, h = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    elif chunk == b"VP8 ":
        w, h = (struct.unpack("<H", data[26:28])[0] & 0x3FFF), (struct.unpack("<H", data[28:30])[0] & 0x3FFF)
    else:
        return None
    return "WebP", w, h


def decode_image(data: bytes, name: str = "image") -> np.ndarray:
    """An image file's bytes -> ``[H, W, 3] uint8`` BGR of at most MAX_PIXELS, checking the
    declared size before decoding; raises ImageError saying why not."""
    name = printable(name)
    if len(data) == 0:
        raise ImageError(f"{name}: empty file")
    size = declared_size(data)
    if size is None:
        raise ImageError(f"{name}: not a readable image (JPEG, PNG, BMP, TIFF, WebP or PNM)")
    fmt, w, h = size
    if w < 1 or h < 1:
        raise ImageError(f"{name}: not a readable image ({fmt} header declares {w}x{h} pixels)")
    if fmt != "JPEG" and w * h > MAX_DECODE_PIXELS:
        raise ImageError(f"{name}: {fmt} declares {w}x{h} pixels, over the {MAX_DECODE_PIXELS // 10**6} MP "
                         f"this app decodes for {fmt} (JPEG is decoded reduced); shrink it first")
    factor, flags = next(((f, fl) for f, fl in REDUCED if w * h // (f * f) <= MAX_PIXELS), (None, None))
    if factor is None:
        raise ImageError(f"{name}: JPEG declares {w}x{h} pixels, over {MAX_PIXELS // 10**6} MP even at 1/8 scale")
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error as e:
        raise ImageError(f"{name}: not a readable image ({str(e).strip().splitlines()[-1][:120]})") from None
    if img is None or img.ndim != 3 or img.shape[0] < 1 or img.shape[1] < 1:
        raise ImageError(f"{name}: not a readable image")
    return img


def read_image_bytes(path: str | os.PathLike) -> bytes:
    """The bytes of an image file (a regular file of at most MAX_FILE_BYTES); raises ImageError."""
    path = Path(path)
    try:
        return read_regular(path, MAX_FILE_BYTES, "image")
    except OSError as e:
        raise ImageError(f"{printable(path.name)}: cannot read ({e.strerror or e})") from None


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read one image file as ``[H, W, 3] uint8`` BGR; raises ImageError with the reason."""
    return decode_image(read_image_bytes(path), Path(path).name)


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files under ``folder`` (recursive, symlinked folders not followed), sorted by
    relative path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageError(f"{printable(folder)} is not a folder")
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        found += [Path(root) / f for f in files if f.lower().endswith(IMAGE_SUFFIXES) and not f.startswith(".")]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())

"""Image files -> ``[H, W, 3] uint8`` BGR arrays, and image folders -> sorted file lists.

Decoding goes through OpenCV from bytes (so non-ASCII names work), which applies EXIF
orientation, converts grayscale/RGBA/CMYK/16-bit images to 8-bit BGR, and refuses files
that are not images. Images larger than ``MAX_PIXELS`` are decoded at a reduced scale.
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm")
MAX_PIXELS = 40_000_000
MAX_FILE_BYTES = 512 << 20


class ImageError(ValueError):
    """A file that cannot be used as an image; the message says why in one line."""


def decode_image(data: bytes | np.ndarray, name: str = "image") -> np.ndarray:
    buf = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    if buf.size == 0:
        raise ImageError(f"{name}: empty file")
    header = cv2.imdecode(buf, cv2.IMREAD_REDUCED_GRAYSCALE_8)   # cheap probe of the size
    if header is None:
        raise ImageError(f"{name}: not a readable image")
    full_pixels = header.shape[0] * header.shape[1] * 64
    flags = cv2.IMREAD_COLOR
    for factor, reduced in ((2, cv2.IMREAD_REDUCED_COLOR_2), (4, cv2.IMREAD_REDUCED_COLOR_4),
                            (8, cv2.IMREAD_REDUCED_COLOR_8)):
        if full_pixels // (factor // 2) ** 2 > MAX_PIXELS:
            flags = reduced
    img = cv2.imdecode(buf, flags)
    if img is None or img.ndim != 3 or img.shape[0] < 1 or img.shape[1] < 1:
        raise ImageError(f"{name}: not a readable image")
    return img


def read_image_file(path: str | os.PathLike) -> np.ndarray:
    """The undecoded bytes of an image file (``[n] uint8``), size-checked; raises ImageError."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ImageError(f"{path.name}: {size >> 20} MiB is larger than the {MAX_FILE_BYTES >> 20} MiB limit")
        return np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise ImageError(f"{path.name}: cannot read ({e.strerror or e})") from None


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read one image file as ``[H, W, 3] uint8`` BGR; raises ImageError with the reason."""
    return decode_image(read_image_file(path), Path(path).name)


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files under ``folder`` (recursive, symlinked folders not followed), sorted by
    relative path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageError(f"{folder} is not a folder")
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        found += [Path(root) / f for f in files if f.lower().endswith(IMAGE_SUFFIXES) and not f.startswith(".")]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())

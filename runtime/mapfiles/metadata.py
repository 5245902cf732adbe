"""Per-image metadata for map bundles: GPS, pose, label, from a CSV, ``@``-style names or EXIF GPS.

``@``-style names are the VPR-methods-evaluation convention::

    @utm_east@utm_north@utm_zone_number@utm_zone_letter@lat@lon@pano_id@tile@heading@pitch@roll@height@timestamp@note@.jpg

Fields that are empty or missing are left out. A CSV has a header row with a ``name`` column
(the image's path relative to the map folder; ``image``/``file`` are accepted too) and any of
``lat, lon[, alt]`` -> ``gps``, ``x, y, z[, qw, qx, qy, qz]`` -> ``pose``, ``label``; other
columns are kept under their own names (numbers as numbers). Geotagged photos (drone
surveys) give ``gps = [lat, lon(, alt)]`` from their EXIF GPS tags (runtime/inputs/exif.py). Where
sources disagree the CSV wins over the name, the name over EXIF.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path, PurePosixPath

from segvlad_edge.errors import SegvladError
from segvlad_edge.files import read_regular
from segvlad_edge.runtime.inputs.exif import read_exif

NAME_COLUMNS = ("name", "image", "file")
POSE_KEYS = ("x", "y", "z", "qw", "qx", "qy", "qz")
MAX_CSV_BYTES = 64 << 20


class MetadataError(SegvladError, ValueError):
    """A metadata CSV is malformed or does not match the map's images."""


def _number(text: str) -> float | None:
    try:
        v = float(text)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def from_name(name: str) -> dict:
    """Metadata encoded in an ``@``-style file name ({} when the name has none)."""
    parts = PurePosixPath(name).name.split("@")
    if len(parts) < 4:
        return {}
    f = parts[1:] + [""] * 14
    meta = {}
    east, north = _number(f[0]), _number(f[1])
    if east is not None and north is not None:
        meta["utm"] = [east, north]
        if f[2] and f[3]:
            meta["utm_zone"] = f"{f[2]}{f[3]}"
    lat, lon = _number(f[4]), _number(f[5])
    if lat is not None and lon is not None:
        meta["gps"] = [lat, lon]
    for key, i in (("heading", 8), ("pitch", 9), ("roll", 10), ("height", 11)):
        v = _number(f[i])
        if v is not None:
            meta[key] = v
    for key, i in (("timestamp", 12), ("note", 13)):
        if f[i]:
            meta[key] = f[i]
    return meta


def from_exif(path: str | Path) -> dict:
    """``{"gps": [lat, lon(, alt)]}`` from a photo's EXIF GPS tags ({} when it has none)."""
    gps = read_exif(path).gps
    return {"gps": gps} if gps else {}


def read_csv(path: str | Path, names: list[str]) -> dict[str, dict]:
    """``{name: metadata}`` for the rows of ``path``; every row must name one of ``names``."""
    path = Path(path)
    try:
        text = read_regular(path, MAX_CSV_BYTES, "metadata table").decode("utf-8-sig")
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
    except OSError as e:
        raise MetadataError(f"{path}: cannot read ({e.strerror or e})") from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise MetadataError(f"{path}: not a UTF-8 CSV ({e})") from None
    if not rows:
        return {}
    columns = [c.strip().lower() if c else "" for c in rows[0].keys()]
    key = next((c for c in NAME_COLUMNS if c in columns), None)
    if key is None:
        raise MetadataError(f"{path}: no 'name' column (columns: {', '.join(columns)})")
    known, out = set(names), {}
    for line, row in enumerate(rows, start=2):
        row = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items() if isinstance(v, str)}
        name = row.pop(key)
        if name not in known:
            raise MetadataError(f"{path}:{line}: {name!r} is not an image of this map")
        if name in out:
            raise MetadataError(f"{path}:{line}: {name!r} appears twice")
        out[name] = _row_meta(row, path, line)
    return out


def _row_meta(row: dict[str, str], path: Path, line: int) -> dict:
    meta = {}
    if row.get("lat") or row.get("lon"):
        gps = [_number(row.pop("lat", "")), _number(row.pop("lon", ""))]
        if row.get("alt"):
            gps.append(_number(row.pop("alt")))
        if None in gps:
            raise MetadataError(f"{path}:{line}: lat/lon/alt must be numbers")
        meta["gps"] = gps
    if any(row.get(k) for k in POSE_KEYS):
        pose = [_number(row.pop(k, "")) for k in POSE_KEYS if k in row]
        if None in pose or len(pose) not in (3, 7):
            raise MetadataError(f"{path}:{line}: pose needs numeric x,y,z or x,y,z,qw,qx,qy,qz")
        meta["pose"] = pose
    for k, v in row.items():
        if v and k:
            n = _number(v)
            meta[k] = n if n is not None else v
    return meta

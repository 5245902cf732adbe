"""Position estimate of a frame from its best map matches, with a horizontal uncertainty in metres.

The map's image table may carry positions (``meta.gps = [lat, lon(, alt)]`` from names, a CSV
or EXIF; ``meta.pose = [x, y, z, ...]`` from a CSV; ``meta.utm = [east, north]`` from names).
``MapPositions.from_images`` puts them in one horizontal frame in metres (GPS: east/north on a
tangent plane at the map's mean position, exact to centimetres over a few km) and measures the
map's spacing (median distance from each mapped position to its nearest distinct neighbour).

``estimate(xy, weights, agree_m, floor_m)`` is the estimator, over candidates (best first):

1. each candidate's support is the weight of all candidates within ``agree_m`` of it; the
   best-supported candidate (ties: the better ranked) anchors the estimate;
2. candidates farther than ``agree_m`` from the anchor are outliers and ignored;
3. the estimate is the weight-weighted mean of the agreeing candidates, its ``sigma_m`` the
   root of their weighted mean squared distance from it plus ``floor_m**2`` (the map's own
   resolution: half its spacing; a frame between two map images cannot be placed closer).

Weights are the candidates' ranking scores; with spatial verification they are scores times
the share of verified inliers (``MapPositions.estimate(..., inliers=...)``), so unverified
candidates (0 inliers) drop out. ``AGREE_SPACINGS`` = 4 and ``CANDIDATES`` = 5 were chosen with
``python benchmarks/position.py`` (sweep of 1.5 / 2.5 / 4 spacings x 3 / 5 / 10 candidates on the
confident corridor + gardens_point_day queries): 4 spacings lowered the mean error against 2.5 by
0.007-0.080 frames (paired bootstrap 95% interval) when chosen; with the confidence's rival rule,
which refuses 14% of corridor's queries, the same comparison is -0.002..+0.067
(``benchmarks/position.log``), within noise, so 4 stays; more candidates changed nothing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

EARTH_RADIUS_M = 6_371_008.8
AGREE_SPACINGS = 4.0
CANDIDATES = 5


def estimate(xy: np.ndarray, weights: np.ndarray, agree_m: float, floor_m: float = 0.0
             ) -> tuple[np.ndarray, float, np.ndarray] | None:
    """``xy [K, 2] float64`` candidate positions (metres, best ranked first), ``weights [K] >= 0``
    -> ``(position [2], sigma_m, agreeing [K] bool)``; None when no candidate has weight."""
    xy, w = np.asarray(xy, np.float64), np.asarray(weights, np.float64)
    if not len(w) or not (w > 0).any():
        return None
    w = np.where(w > 0, w, 0.0)
    near = np.linalg.norm(xy[:, None] - xy[None], axis=2) <= agree_m
    support = (near * w[None]).sum(1) * (w > 0)
    anchor = int(np.argmax(support))
    agree = near[anchor] & (w > 0)
    wa = w[agree] / w[agree].sum()
    mean = wa @ xy[agree]
    spread = float(wa @ ((xy[agree] - mean) ** 2).sum(1))
    return mean, math.sqrt(spread + floor_m ** 2), agree


@dataclass
class MapPositions:
    """``kind``: "gps" (answers {"lat", "lon"[, "alt"], "sigma_m"}) or "local" ({"x", "y", "z",
    "sigma_m"}, map units taken as metres); ``xy [I, 2] float64`` horizontal metres (NaN: image
    without a position); ``z [I] float64`` altitude / z (NaN: unknown); ``origin``: (lat, lon)
    degrees of the tangent plane (gps); ``spacing_m``: median nearest-distinct-neighbour distance."""

    kind: str
    xy: np.ndarray
    z: np.ndarray
    origin: tuple[float, float] = (0.0, 0.0)
    spacing_m: float = 0.0

    @classmethod
    def from_images(cls, images: list[dict]) -> "MapPositions | None":
        """From the bundle's image table; None when fewer than one image has a position. GPS wins
        over a pose, a pose over UTM, per map (one frame for all images)."""
        metas = [img.get("meta") or {} for img in images]
        for kind, key, width in (("gps", "gps", 2), ("local", "pose", 3), ("local", "utm", 2)):
            if any(_numbers(m.get(key), width) is not None for m in metas):
                break
        else:
            return None
        full = _table(metas, key, width)
        if key == "utm":
            full[:, 2] = [_height(m) for m in metas]
        origin = (0.0, 0.0)
        xy = full[:, :2].copy()
        if kind == "gps":
            known = np.isfinite(xy).all(1)
            lon_ref = xy[known, 1][0] if known.any() else 0.0      # mean longitude across the antimeridian too
            origin = (float(xy[known, 0].mean()), float(wrap_lon(lon_ref + wrap_lon(xy[known, 1] - lon_ref).mean())))
            xy = to_plane(xy, origin)
        return cls(kind, xy, full[:, 2], origin, _spacing(xy))

    def fill(self, start: int, images: list[dict]) -> None:
        """Set the rows of map images ``start, start + 1, ...`` from ``images``' GPS (a GPS map whose
        frame, origin and spacing are known, e.g. a map folder's, whose tiles load one by one)."""
        full = _table([img.get("meta") or {} for img in images], "gps", 2)
        self.xy[start:start + len(images)] = to_plane(full[:, :2], self.origin)
        self.z[start:start + len(images)] = full[:, 2]

    @property
    def agree_m(self) -> float:
        return AGREE_SPACINGS * self.spacing_m

    def estimate(self, images: np.ndarray, scores: np.ndarray, inliers: np.ndarray | None = None) -> dict | None:
        """``images [K] int`` map images best first, ``scores [K]``, optional ``inliers [K]`` verified
        matches -> the position answer (README schema) or None (no candidate has a position)."""
        images = np.asarray(images[:CANDIDATES], np.int64)
        w = np.asarray(scores[:CANDIDATES], np.float64)
        if inliers is not None:
            n = np.asarray(inliers[:CANDIDATES], np.float64)
            w = w * n / max(float(n.max(initial=0)), 1.0)
        xy = self.xy[images]
        known = np.isfinite(xy).all(1) & np.isfinite(w)
        got = estimate(xy[known], w[known], self.agree_m, self.spacing_m / 2)
        if got is None:
            return None
        mean, sigma, agree = got
        z = self.z[images[known][agree]]
        wz = w[known][agree]
        zk = np.isfinite(z)
        height = float(wz[zk] @ z[zk] / wz[zk].sum()) if zk.any() and wz[zk].sum() > 0 else None
        return self.answer(mean, height, sigma)

    def answer(self, xy: np.ndarray, z: float | None, sigma_m: float) -> dict:
        if self.kind == "gps":
            lat, lon = from_plane(np.asarray(xy)[None], self.origin)[0]
            out = {"lat": round(float(lat), 8), "lon": round(float(lon), 8)}
            if z is not None:
                out["alt"] = round(z, 3)
            return {**out, "sigma_m": round(sigma_m, 3)}
        return {"x": round(float(xy[0]), 4), "y": round(float(xy[1]), 4),
                "z": None if z is None else round(z, 4), "sigma_m": round(sigma_m, 4)}


def wrap_lon(deg):
    """Longitude(s) in degrees -> the same in [-180, 180)."""
    return (np.asarray(deg, np.float64) + 180.0) % 360.0 - 180.0


def to_plane(latlon: np.ndarray, origin: tuple[float, float]) -> np.ndarray:
    """``[N, 2]`` degrees -> ``[N, 2]`` (east, north) metres on the tangent plane at ``origin``
    (longitude differences taken the short way round, across the antimeridian too)."""
    lat0, lon0 = origin
    ll = np.asarray(latlon, np.float64)
    d = np.radians(np.stack([ll[:, 0] - lat0, wrap_lon(ll[:, 1] - lon0)], 1))
    return np.stack([d[:, 1] * EARTH_RADIUS_M * math.cos(math.radians(lat0)), d[:, 0] * EARTH_RADIUS_M], 1)


def from_plane(en: np.ndarray, origin: tuple[float, float]) -> np.ndarray:
    """Inverse of ``to_plane``."""
    lat0, lon0 = origin
    lat = lat0 + np.degrees(en[:, 1] / EARTH_RADIUS_M)
    lon = wrap_lon(lon0 + np.degrees(en[:, 0] / (EARTH_RADIUS_M * math.cos(math.radians(lat0)))))
    return np.stack([lat, lon], 1)


def latlon_of(images: list[dict]) -> np.ndarray:
    """``[I, 2] float64``: (lat, lon) degrees of each image's ``meta.gps`` (NaN where it has none)."""
    return _table([img.get("meta") or {} for img in images], "gps", 2)[:, :2]


def _table(metas: list[dict], key: str, width: int) -> np.ndarray:
    """``[I, 3] float64``: the first three numbers of each ``meta[key]`` (NaN where missing or short)."""
    rows = [_numbers(m.get(key), width) for m in metas]
    return np.array([(r + [math.nan] * 3)[:3] if r is not None else [math.nan] * 3 for r in rows], np.float64)


def _numbers(value, width: int) -> list[float] | None:
    if not isinstance(value, list) or len(value) < width:
        return None
    v = value[:3]
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v):
        return None
    return [float(x) for x in v]


def _height(meta: dict) -> float:
    h = meta.get("height")
    return float(h) if isinstance(h, (int, float)) and not isinstance(h, bool) and math.isfinite(h) else math.nan


def _spacing(xy: np.ndarray) -> float:
    """Median distance from each known position to its nearest distinct known position (0 if none)."""
    pts = np.unique(xy[np.isfinite(xy).all(1)], axis=0)
    if len(pts) < 2:
        return 0.0
    from scipy.spatial import cKDTree

    d, _ = cKDTree(pts).query(pts, k=2)
    return float(np.median(d[:, 1]))

"""Step: check a map bundle end to end before it goes onto a robot.

``verify_bundle(path, engines_dir, domain) -> [(check, ok, detail)]``: file checksums, the header
against its schema (every setting in range, finite metadata), internal consistency, finite and
non-degenerate models (vocabulary, PCA, calibration), engine compatibility, the domain fit it
references, descriptor sanity (finite, unit norm), and the stored index the robot will search
(sampled map images must find themselves first through it with their own descriptors).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from segvlad_edge.errors import SegvladError
from segvlad_edge.runtime.mapfiles.bundle import BundleError, CheckedRows, MapBundle
from segvlad_edge.runtime.steps.index import KIND_NAMES

SELF_CHECKS = 20


def verify_bundle(path: str | Path, engines_dir=None, domain: Path | None = None) -> list[tuple[str, bool, str]]:
    from segvlad_edge.runtime.localizer import Localizer

    results = []
    try:
        bundle = MapBundle.read(path)
        for arr in bundle.arrays.values():
            if isinstance(arr, CheckedRows):        # checked on first read when localizing: all of it here
                arr.check_all()
    except BundleError as e:
        return [("file", False, str(e))]
    n_img, desc = len(bundle.images), bundle.arrays["descriptors"]
    results.append(("file", True, f"format {bundle.meta['format_version']}, {n_img} images, {len(desc)} segments, "
                                  "checksums and tables consistent"))
    try:
        loc = Localizer.from_bundle(path, engines_dir, domain=domain)
        fit = bundle.meta["fit"]
        results.append(("engine", True, loc.pipeline.extractor.manifest.file))
        results.append(("models", True, "vocabulary/PCA in the bundle" if fit["source"] == "map"
                        else f"domain fit {fit['file']} present, sha256 matches"))
    except (SegvladError, OSError) as e:
        results.append(("engine/models", False, str(e)))
        loc = None
    d = desc.astype(np.float32)
    norms = np.linalg.norm(d, axis=1)
    bad = int((~np.isfinite(d).all(1) | (np.abs(norms - 1) > 0.02)).sum())
    results.append(("descriptors", bad == 0, f"{bad} of {len(d)} are not finite unit vectors" if bad
                    else "finite, unit norm"))
    if loc is None:
        loc = Localizer(bundle, None)
    counts = bundle.arrays["segments_per_image"]
    offsets = bundle.segment_offsets
    sample = [i for i in np.unique(np.linspace(0, n_img - 1, min(SELF_CHECKS, n_img)).astype(int)) if counts[i]]
    found = sum(int(i) in loc.rank_descriptors(desc[offsets[i]:offsets[i + 1]], top=1).images[:1] for i in sample)
    ok = not sample or found >= 0.8 * len(sample)
    kind = KIND_NAMES[loc.index.kind]
    where = "stored in the bundle" if bundle.meta.get("index") else "built at load"
    results.append(("index", ok, f"{kind}: {found}/{len(sample)} sampled map images find themselves first ({where})"))
    return results


def verify_folder(folder: str | Path, engines_dir=None) -> list[tuple[str, bool, str]]:
    """A map folder (runtime/mapfiles/tiles.py): its tile index, then each tile as ``verify_bundle``
    checks a bundle (on the folder's shared fit), after its sha256 against the index."""
    from segvlad_edge.files import sha256_file
    from segvlad_edge.runtime.mapfiles.tiles import read_index
    from segvlad_edge.runtime.tiled import TiledLocalizer

    folder = Path(folder)
    try:
        doc = read_index(folder)
    except SegvladError as e:
        return [("tile index", False, str(e))]
    results = [("tile index", True, f"{len(doc['tiles'])} tiles of {doc['tile_m']:g} m, {doc['images']} images, "
                                    "checksum and schema ok")]
    fit = folder / doc["fit"]["file"]
    fit_ok = fit.is_file() and sha256_file(fit) == doc["fit"]["sha256"]
    results.append(("shared fit", fit_ok, doc["fit"]["file"] + (" matches the index" if fit_ok else
                                                                 " is missing or differs from the index")))
    try:
        tiled = TiledLocalizer.open(folder, engines_dir) if fit_ok else None
    except SegvladError as e:
        tiled = None
        results.append(("engine/fit", False, str(e)))
    for i, t in enumerate(doc["tiles"]):
        path = folder / t["file"]
        if not path.is_file() or sha256_file(path) != t["sha256"]:
            results.append((t["file"], False, "missing, or its sha256 differs from the tile index's"))
            continue
        if tiled is not None:
            try:
                tiled.load_tile(i)                  # the checks a localizer makes on loading the tile
                results.append((f"{t['file']} against the tile index", True, "images, engine, settings, fit, "
                                "coder and positions agree"))
            except SegvladError as e:
                results.append((f"{t['file']} against the tile index", False, str(e)))
        results += [(f"{t['file']} {check}", ok, detail) for check, ok, detail in verify_bundle(path, engines_dir, fit)]
    return results

"""Step: edit a map bundle without rebuilding it -- append a new flight's images, remove images.

``add_images(map, images, out)``: the new images go through the map's own pipeline (its engine,
settings and vocabulary/PCA, domain-fitted or not), pass 1 into a work folder beside the output
(a killed add resumes there), pass 3 with the map's fit; the old images' descriptors are kept.
``remove_images(map, names, out)``: drops images and their segments. Either way the confidence
calibration and the stored search index are recomputed over the edited map, exactly as a full
build would, and the bundle is written atomically: until the rename, the old map is intact
(``out`` may be the map itself). The result answers like a full rebuild with the same fit. The
spatial verification's patch coder counts as part of the map's fit: new images are coded with the
map's own coder (a full rebuild would refit it on all images, so its codes differ slightly). The
codes (96 KiB per image) pass through a temporary file beside the output, never all in RAM.
"""
from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from itertools import chain
from pathlib import Path

import numpy as np

from segvlad_edge.files import check_output
from segvlad_edge.runtime import ray_build
from segvlad_edge.runtime.mapfiles.bundle import MapBundle, block_rows, row_blocks, rows_on_disk
from segvlad_edge.runtime.steps.confidence import held_back_negatives
from segvlad_edge.runtime.frame_cache import extract_frames, load_features
from segvlad_edge.runtime.steps.index import store_index
from segvlad_edge.runtime.localizer import Localizer
from segvlad_edge.runtime.mapping import BuildSummary, MapBuildError, describe_frames
from segvlad_edge.runtime.steps.verification import PatchCoder


def add_images(map_path: str | os.PathLike, images: list[tuple[str, Path]], out: str | os.PathLike | None = None,
               metadata: dict[str, dict] | None = None, images_root: str | None = None, engines_dir=None,
               domain: Path | None = None, threads: int | None = None, keep_work: bool = False,
               progress: bool = True, ray: ray_build.RayConf | None = None, inputs: tuple = ()) -> BuildSummary:
    """Append ``images`` [(name, path)] to the map at ``map_path``; write to ``out`` (default: the
    map itself). ``images_root``: their folder, recorded per image where it differs from the map's.
    The summary counts the edited map's images and segments; its stage times are the new images'.
    ``out`` may be the map but no other input (the new images, ``inputs`` such as a metadata CSV)."""
    t_start = time.perf_counter()
    out = Path(out or map_path)
    inputs = [p for _, p in images] + [p for p in (domain, *inputs) if p is not None]
    check_output(out, inputs)
    loc = Localizer.from_bundle(map_path, engines_dir, threads=threads, domain=domain)
    old = loc.bundle
    names = {img["name"] for img in old.images}
    clash = [n for n, _ in images if n in names]
    if clash:
        raise MapBuildError(f"{map_path}: already holds {len(clash)} of the new images' names (e.g. {clash[0]}); "
                            "remove them first or rename the new images")
    if not images:
        raise MapBuildError("no images to add")
    work = _work_folder(out)
    kept, skipped, stage_ms = (extract_frames(images, work, loc.pipeline, progress) if ray is None
                               else ray_build.extract_frames(images, work, loc.pipeline, ray, progress))
    descs, counts, labels, ms = (describe_frames(kept, loc.pipeline, progress) if ray is None
                                 else ray_build.describe_frames(kept, loc.pipeline, ray, progress))
    stage_ms.update(ms)
    a = old.arrays
    root = str(images_root) if images_root and str(images_root) != old.meta.get("images_root") else None
    entries = [{"name": n, **({"meta": metadata[n]} if metadata and n in metadata else {}),
                **({"root": root} if root else {})} for n, _ in kept]
    arrays = {**a, "descriptors": np.concatenate([np.asarray(a["descriptors"])] + descs),
              "segments_per_image": np.concatenate([a["segments_per_image"], np.asarray(counts, np.int32)]),
              "segment_labels": np.concatenate([a["segment_labels"], np.stack(labels).astype(np.uint8)])}

    def added(codes):               # the old images' codes block by block, then the new ones' (the map's coder)
        coder = PatchCoder(a["verify_mean"], a["verify_components"])
        return chain(row_blocks(codes), (coder.codes(load_features(wf))[None] for _, wf in kept))
    with codes_on_disk(arrays, added, out.parent) as arrays:
        size, bundle = _finish(old, old.images + entries, arrays, out, inputs)
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)
    n = len(kept)
    return BuildSummary(len(bundle.images), len(bundle.arrays["descriptors"]), size, time.perf_counter() - t_start, skipped,
                        {k: v / n for k, v in stage_ms.items()}, bundle.meta["fit"], loc.pipeline.models)


def remove_images(map_path: str | os.PathLike, names: list[str], out: str | os.PathLike | None = None) -> MapBundle:
    """Remove the images named ``names`` (and their segments) from the map; write to ``out``
    (default: the map itself). Every name must be in the map; at least one image must remain."""
    out = Path(out or map_path)
    folder = _output_folder(out)                    # the codes' temporary file goes there too
    old = MapBundle.read(map_path)
    have = [img["name"] for img in old.images]
    missing = sorted(set(names) - set(have))
    if missing:
        raise MapBuildError(f"{map_path}: holds no image named {missing[0]!r}" +
                            (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    keep = np.array([n not in set(names) for n in have])
    if not keep.any():
        raise MapBuildError(f"{map_path}: removing every image would leave an empty map")
    with select_images(old, keep, folder) as (images, arrays):
        return _finish(old, images, arrays, out)[1]


@contextmanager
def select_images(bundle: MapBundle, keep: np.ndarray, folder: str | os.PathLike) -> Iterator[tuple[list[dict], dict]]:
    """``keep [I] bool`` -> the kept images' table entries and the bundle's arrays with only their
    rows (descriptors, segment table, label maps; verification codes gathered block by block into a
    temporary file in ``folder``, ``codes_on_disk``, reading only the kept images' blocks); other
    arrays as they are."""
    a = bundle.arrays
    seg_keep = np.repeat(keep, a["segments_per_image"])
    arrays = {**a, "descriptors": np.asarray(a["descriptors"])[seg_keep],
              "segments_per_image": a["segments_per_image"][keep], "segment_labels": a["segment_labels"][keep]}

    def kept(codes):                # a block's worth of kept images at a time
        return (codes[r] for r in row_blocks(np.flatnonzero(keep), block_rows(codes.shape, codes.dtype.itemsize)))
    with codes_on_disk(arrays, kept, folder) as arrays:
        yield [img for img, k in zip(bundle.images, keep) if k], arrays


@contextmanager
def codes_on_disk(arrays: dict, rows: Callable[[np.ndarray], Iterable[np.ndarray]],
                  folder: str | os.PathLike) -> Iterator[dict]:
    """``arrays`` with their verification codes ``[I, P, d] float16``, if any, replaced by the rows
    ``rows(codes)`` yields (arrays of whole images, in order), gathered into a nameless temporary
    file in ``folder`` (``rows_on_disk``: never all in RAM), freed once the block has ended and the
    arrays are no longer used."""
    codes = arrays.get("verify_codes")
    if codes is None:
        yield arrays
        return
    with rows_on_disk(folder, rows(codes), codes.shape[1:], codes.dtype) as stored:
        yield {**arrays, "verify_codes": stored}


def _output_folder(out: Path) -> Path:
    """The folder ``out`` is written into; MapBuildError where it does not exist."""
    if not out.parent.is_dir():
        raise MapBuildError(f"output folder {out.parent} does not exist")
    return out.parent


def _work_folder(out: Path) -> Path:
    work = _output_folder(out) / f".{out.name}.work"
    work.mkdir(exist_ok=True)
    return work


def _finish(old: MapBundle, images: list[dict], arrays: dict, out: Path, inputs=()) -> tuple[int, MapBundle]:
    """The edited bundle with its calibration and search index recomputed, written atomically."""
    meta = {**old.meta, "images": images, "modified": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    bundle = MapBundle(meta, {k: v for k, v in arrays.items() if k != "calib_negatives"})
    store_index(bundle)
    bundle.validate()
    bundle.arrays["calib_negatives"] = held_back_negatives(Localizer(bundle, None))
    return bundle.write(out, inputs), bundle

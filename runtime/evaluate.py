"""Step: dataset with ground truth -> Recall@N of one method, with sizes and per-stage times.

``evaluate(pipeline, dataset, work_dir)`` builds the map bundle from the dataset's map images (in
``work_dir``) with the pipeline's settings, localises every query through the one Localizer on
the same pipeline (engine session, segmenter, the vocabulary/PCA just fitted), and returns
``{"recall@1", "recall@5", "recall@10", "queries", ...}``.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from segvlad_edge.runtime import mapping
from segvlad_edge.runtime.mapfiles.bundle import MapBundle
from segvlad_edge.runtime.inputs.datasets import Dataset
from segvlad_edge.runtime.inputs.images import ImageError, load_image
from segvlad_edge.runtime.localizer import Localizer
from segvlad_edge.runtime.pipeline import FramePipeline
from segvlad_edge.runtime.steps.temporal import SequenceFilter

RECALL_AT = (1, 5, 10)


def evaluate(pipe: FramePipeline, ds: Dataset, work_dir: str | Path, progress: bool = True, exact: bool = False,
         fit: str = "auto", domain: Path | None = None, index_kind: str = "auto") -> dict:
    """``fit``/``domain``: where the vocabulary and PCA come from, as for ``mapping.build_map``;
    ``index_kind``: the map's search index (runtime/steps/index.py)."""
    bundle_path = Path(work_dir) / "map.segmap"
    summary = mapping.build_map([(ds.name(p), p) for p in ds.map_images], bundle_path, pipe, progress=progress,
                           fit=fit, domain=domain, images_root=str(Path(ds.root).resolve()), index_kind=index_kind)
    loc = Localizer(MapBundle.read(bundle_path), pipe.with_models(summary.models))
    result = score(loc, ds, progress, exact)
    n_img = max(summary.images, 1)
    result.update({"map_images": summary.images, "fit": summary.fit["source"],
                   "segments_per_image": round(summary.segments / n_img, 1),
                   "bundle_bytes": summary.bytes, "bytes_per_image": round(summary.bytes / n_img),
                   "map_build_ms": {k: round(v, 2) for k, v in summary.stage_ms.items()},
                   "skipped": summary.skipped + result["skipped"]})
    return result


def score(loc: Localizer, ds: Dataset, progress: bool = True, exact: bool = False) -> dict:
    """Localise every query of ``ds`` against the map ``loc`` holds (map images matched by name; a
    map folder's localizer too, where ``ds`` has no leave-one-out queries)."""
    index_of = {name: i for i, name in enumerate(loc.names)}
    # map image index in the bundle (skipped images shift it) -> dataset map index
    bundle_to_ds = {index_of[ds.name(p)]: i for i, p in enumerate(ds.map_images) if ds.name(p) in index_of}
    first = np.full(len(ds.queries), -1)           # rank (0-based) of the first correct map image, -1: none in top 10
    top1 = np.full(len(ds.queries), -1)            # dataset map index answered first
    stage_ms: dict[str, list] = {}
    failures, stream = [], []                      # stream: (query index, ranking) in query order
    answered = []                                  # (query index, confident match given)
    offsets = loc.bundle.segment_offsets if ds.query_map_index is not None else None   # leave-one-out: one bundle
    t0 = time.perf_counter()
    for qi, q in enumerate(tqdm(ds.queries, desc="queries", unit="q", disable=not progress)):
        if ds.query_map_index is not None:          # leave-one-out: the query is a map image
            b = index_of.get(ds.name(q))
            if b is None:
                continue
            ranked = loc.rank_descriptors(loc.bundle.arrays["descriptors"][offsets[b]:offsets[b + 1]],
                                          top=max(RECALL_AT), exact=exact, exclude_images=[b])
            codes = loc.bundle.arrays.get("verify_codes")
            ranked = loc.verify(ranked, None if codes is None else np.asarray(codes[b]))
            top = [bundle_to_ds[i] for i in ranked.images]
        else:
            try:
                ans = loc.localize(load_image(q), top=max(RECALL_AT), exact=exact)
            except ImageError as e:
                failures.append((ds.name(q), str(e)))
                continue
            for k, v in ans.ms.items():
                stage_ms.setdefault(k, []).append(v)
            top = [bundle_to_ds[e["index"]] for e in ans.top]
            if ans.ranked is not None:
                stream.append((qi, ans.ranked, ans.match is not None))
            answered.append((qi, ans.match is not None))
        correct = [r for r, t in enumerate(top) if t in ds.positives[qi]]
        first[qi] = correct[0] if correct else -1
        top1[qi] = top[0] if top else -1
    hits = np.stack([(first >= 0) & (first < n) for n in RECALL_AT], axis=1)
    n_img = max(len(loc.names), 1)
    sizes = loc.map_sizes()                         # search data in RAM; descriptors and codes stay memory-mapped
    result = {f"recall@{n}": round(float(hits[:, j].mean()), 4) for j, n in enumerate(RECALL_AT)}
    result.update({
        "queries": len(ds.queries), "map_images": len(loc.names), "layout": ds.layout, "fit": sizes["fit"],
        "segments_per_image": round(sizes["segments"] / n_img, 1),
        "bundle_bytes": sizes["file_bytes"], "bytes_per_image": round(sizes["file_bytes"] / n_img),
        "descriptor_bytes_per_image": round(sizes["search_bytes"] / n_img), "index": sizes["index"],
        "verification_bytes_per_image": round(sizes["verify_bytes"] / n_img),
        "query_ms": {k: round(float(np.median(v)), 2) for k, v in stage_ms.items()},
        "eval_seconds": round(time.perf_counter() - t0, 1), "skipped": failures,
        "hits": hits[:, 0].tolist(),
        "per_query": [{"query": ds.name(q), "first_correct": int(first[i]),
                       "top1": ds.name(ds.map_images[top1[i]]) if top1[i] >= 0 else None,
                       "correct": sorted(ds.name(ds.map_images[j]) for j in ds.positives[i])[:3]}
                      for i, q in enumerate(ds.queries)],
    })
    if ds.query_map_index is None and stream:
        result["recall@1_filtered"] = round(_filtered_recall(stream, ds, bundle_to_ds, len(loc.names)), 4)
    if answered:          # the confidence threshold: how many queries get a match, and how often it is right
        confident = [qi for qi, ok in answered if ok]
        result["answered"] = round(len(confident) / len(answered), 4)
        result["recall@1_answered"] = round(float(hits[confident, 0].mean()), 4) if confident else None
    return result


def _filtered_recall(stream: list, ds: Dataset, bundle_to_ds: dict, n_images: int) -> float:
    """Recall@1 per frame with the temporal filter run over the queries in order (a frame where
    the filter is lost counts as a miss)."""
    f = SequenceFilter(n_images)
    hits = []
    for qi, r, confident in stream:
        best = f.update(r.images, r.scores, confident)[0]
        hits.append(not f.lost and bundle_to_ds[best] in ds.positives[qi])
    return float(np.mean(hits))

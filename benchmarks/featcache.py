"""DINOv2 features per image, computed once per engine and kept on disk for benchmark sweeps.

``cached_features(extractor, paths, cache_dir) -> {path: FeatureMap}``: one ``.npy``
(``[h*w, C] float16``) per image under ``cache_dir/<engine sha256[:16]>/``, keyed by the image
file's content (not the code that loads and prepares it); written atomically. A miss returns
what a hit does: the stored float16 values as float32, re-normalised.
Benchmarks only: the product computes features per frame.

    python benchmarks/featcache.py DIR [DIR ...] [--cache /work/cache/features]
"""
from __future__ import annotations

import argparse
import hashlib
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from segvlad_edge.engines.manifest import default_engines_dir, find_engine
from segvlad_edge.runtime.steps.features import DenseFeatureExtractor, FeatureMap
from segvlad_edge.runtime.inputs.images import list_images, load_image

DEFAULT_CACHE = Path(os.environ.get("SEGVLAD_FEATURE_CACHE", "/work/cache/features"))


def _key(path: Path, tag: str) -> str:
    """The image file's content (sha1 of its bytes) and ``tag``: a copy of the image, or the same
    folder copied again with new modification times, hits the cache."""
    digest = hashlib.sha1(path.read_bytes())
    if tag:
        digest.update(f"|{tag}".encode())
    return digest.hexdigest()[:24]


def cached_features(extractor: DenseFeatureExtractor, paths, cache_dir: Path = DEFAULT_CACHE,
                    progress: bool = True, transform=None, tag: str = "") -> dict[Path, FeatureMap]:
    """Features of each image in ``paths`` (computed on a cache miss), of ``transform(image)``
    where given (``tag`` names the transform in the cache key)."""
    folder = Path(cache_dir) / extractor.manifest.file_sha256[:16]
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for p in tqdm(list(paths), desc="features", unit="img", disable=not progress):
        f = folder / (_key(p, tag) + ".npy")
        if f.is_file():
            stored = np.load(f)
        else:
            image = load_image(p)
            stored = extractor(transform(image) if transform else image).features.astype(np.float16)
            tmp = f.with_name(f.name + f".tmp-{os.getpid()}.npy")
            np.save(tmp, stored)
            os.replace(tmp, f)
        feats = stored.astype(np.float32)       # what is stored, on a miss as on a hit: a sweep's first run reprints
        feats /= np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)   # undo float16 rounding of the norm
        out[p] = FeatureMap(feats, extractor.grid)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dirs", nargs="+", type=Path)
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    ext = DenseFeatureExtractor(find_engine(default_engines_dir(), "dinov2"), threads=a.threads)
    paths = [p for d in a.dirs for p in list_images(d)]
    cached_features(ext, paths, a.cache)
    print(f"{len(paths)} images cached in {a.cache}")


if __name__ == "__main__":
    main()

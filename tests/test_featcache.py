"""The benchmarks' feature cache: a sweep reprints the same figures whether its features were
computed in this run or read back, and a folder copied again (new modification times) hits the cache."""
import os
import shutil
from types import SimpleNamespace

import numpy as np

from benchmarks.featcache import cached_features
from segvlad_edge.runtime.inputs.images import load_image


class CountingExtractor:
    """Stands in for DenseFeatureExtractor: float32 features with more precision than float16 keeps."""

    grid = (2, 3)
    manifest = SimpleNamespace(file_sha256="f" * 64)

    def __init__(self):
        self.calls = 0

    def __call__(self, image):
        self.calls += 1
        rng = np.random.default_rng(int(image.sum()))
        return SimpleNamespace(features=rng.normal(size=(6, 4)).astype(np.float32) / 3 + 1e-4)


def _write_images(folder, n=3):
    import cv2
    folder.mkdir()
    for i in range(n):
        cv2.imwrite(str(folder / f"{i}.png"), np.full((8, 8, 3), 40 * i + 10, np.uint8))
    return sorted(folder.iterdir())


def test_a_miss_returns_what_a_later_hit_reads(tmp_path):
    paths = _write_images(tmp_path / "images")
    ext = CountingExtractor()
    first = cached_features(ext, paths, tmp_path / "cache", progress=False)
    again = cached_features(ext, paths, tmp_path / "cache", progress=False)
    assert ext.calls == len(paths)                          # the second pass read every image back
    for p in paths:
        np.testing.assert_array_equal(first[p].features, again[p].features)
        assert first[p].features.dtype == np.float32
        stored = CountingExtractor()(load_image(p)).features.astype(np.float16).astype(np.float32)
        np.testing.assert_allclose(first[p].features, stored / np.linalg.norm(stored, axis=1, keepdims=True), rtol=1e-6)
        assert not np.allclose(first[p].features, stored, rtol=0, atol=1e-6)     # re-normalised, not raw


def test_a_copied_folder_hits_the_cache_and_a_tag_does_not(tmp_path):
    paths = _write_images(tmp_path / "images")
    ext = CountingExtractor()
    cached_features(ext, paths, tmp_path / "cache", progress=False)
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "images", copy)              # new files, new times, same bytes
    for p in copy.iterdir():
        os.utime(p, (1, 1))
    cached_features(ext, sorted(copy.iterdir()), tmp_path / "cache", progress=False)
    assert ext.calls == len(paths)
    cached_features(ext, paths, tmp_path / "cache", progress=False, transform=lambda im: im[::-1], tag="flip")
    assert ext.calls == 2 * len(paths)                      # a transform is cached apart
    (copy / "0.png").write_bytes((copy / "0.png").read_bytes() + b"\0")   # other bytes: another image
    cached_features(ext, sorted(copy.iterdir()), tmp_path / "cache", progress=False)
    assert ext.calls == 2 * len(paths) + 1

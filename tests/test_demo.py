"""The first run: photos shipped with scikit-image, synthetic viewpoint/lighting views as queries."""
import cv2
import numpy as np
import pytest

from segvlad_edge.apps import demo


def test_demo_localises_changed_views(engines_dir, make_pipeline, tmp_path):
    try:
        demo.skimage_data()
    except demo.DemoError as e:
        pytest.fail(f"scikit-image images are part of the test install: {e}")
    r = demo.run_demo(make_pipeline(engines_dir), tmp_path, progress=False)
    assert r["queries"] == 20 and r["recall@1"] >= 0.8 and r["recall@5"] >= r["recall@1"]
    png = cv2.imread(r["explanation"])
    assert png is not None and png.shape[0] > 100 and r["pairs"] > 0
    assert len(list((tmp_path / "queries").glob("*.png"))) == 20


def test_views_are_changed_but_the_same_size():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
    for change in (demo.viewpoint_change, demo.lighting_change):
        out = change(img, rng)
        assert out.shape == img.shape and out.dtype == np.uint8 and np.abs(out.astype(int) - img).mean() > 5

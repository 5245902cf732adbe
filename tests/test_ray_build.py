"""build-map on Ray (a local instance with 2 CPUs started here) gives the local build's bundle."""
import sys

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed (the [ray] extra); Ray builds cannot be tested here")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_ray_build_equals_local_build(datasets, engines_dir, make_pipeline, tmp_path, local_ray):
    from segvlad_edge.runtime import mapping
    from segvlad_edge.runtime.mapfiles.bundle import MapBundle
    from segvlad_edge.runtime.inputs.images import list_images
    from segvlad_edge.runtime.ray_build import RayConf

    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    images = [(p.name, p) for p in list_images(datasets / "gardens_point_day" / "day_left")[:10]]
    images.insert(4, ("broken.jpg", tmp_path / "broken.jpg"))
    local = mapping.build_map(images, tmp_path / "local.segmap", make_pipeline(engines_dir), progress=False, fit="map")
    remote = mapping.build_map(images, tmp_path / "ray.segmap", make_pipeline(engines_dir), progress=False, fit="map",
                          ray=RayConf(threads=2, chunk=3))
    assert remote.skipped == local.skipped and [n for n, _ in remote.skipped] == ["broken.jpg"]
    a, b = MapBundle.read(tmp_path / "local.segmap"), MapBundle.read(tmp_path / "ray.segmap")
    assert [i["name"] for i in a.images] == [i["name"] for i in b.images] and len(a.images) == 10
    for name in ("descriptors", "segments_per_image", "segment_labels", "vocab_centers", "pca_components"):
        np.testing.assert_array_equal(np.asarray(a.arrays[name]), np.asarray(b.arrays[name]), err_msg=name)
    assert not (tmp_path / ".ray.segmap.work").exists()


def test_missing_ray_is_one_line(monkeypatch):
    from segvlad_edge.runtime import ray_build
    from segvlad_edge.runtime.fitting import FitError

    monkeypatch.setitem(sys.modules, "ray", None)          # `import ray` now raises ImportError
    with pytest.raises(FitError, match=r"needs ray: install the \[ray\] extra"):
        ray_build._ray()

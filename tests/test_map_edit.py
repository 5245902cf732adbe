"""Adding a flight to a map and removing images: the result equals a full rebuild with the same
fit (same arrays, same answers); a failed or killed add leaves the old map as it was."""
import subprocess
import sys

import numpy as np
import pytest


@pytest.fixture(scope="module")
def setup(datasets, engines_dir, make_pipeline, tmp_path_factory):
    """A domain fit, a map of 8 images, 6 more images, and the full 14-image map built at once."""
    from segvlad_edge.runtime import mapping
    from segvlad_edge.runtime.build_domain import build_domain
    from segvlad_edge.runtime.inputs.images import list_images

    tmp = tmp_path_factory.mktemp("edit")
    files = list_images(datasets / "gardens_point_day" / "day_left")[::12][:14]
    first, extra = [(p.name, p) for p in files[:8]], [(p.name, p) for p in files[8:]]
    domain = tmp / "fit.domain"
    build_domain([(p.name, p) for p in list_images(datasets / "corridor" / "ref")[::10]], make_pipeline(engines_dir),
                 tmp / "fitwork", ["corridor"], progress=False, out=domain)
    mapping.build_map(first, tmp / "first.segmap", make_pipeline(engines_dir), progress=False, fit="domain", domain=domain)
    mapping.build_map(first + extra, tmp / "full.segmap", make_pipeline(engines_dir), progress=False, fit="domain",
                 domain=domain)
    return {"tmp": tmp, "first": first, "extra": extra, "domain": domain}


def assert_same_map(a, b):
    assert [i["name"] for i in a.images] == [i["name"] for i in b.images]
    for name in ("descriptors", "segments_per_image", "segment_labels", "calib_negatives"):
        np.testing.assert_array_equal(np.asarray(a.arrays[name]), np.asarray(b.arrays[name]), err_msg=name)
    assert a.meta["fit"] == b.meta["fit"] and a.meta["index"]["kind"] == b.meta["index"]["kind"]


def test_add_equals_full_rebuild_and_remove_undoes_it(setup, engines_dir):
    import shutil

    from segvlad_edge.runtime.mapfiles.bundle import MapBundle
    from segvlad_edge.runtime.localizer import Localizer
    from segvlad_edge.runtime.map_edit import add_images, remove_images

    tmp = setup["tmp"]
    edited = tmp / "edited.segmap"
    shutil.copy(tmp / "first.segmap", edited)
    s = add_images(edited, setup["extra"], engines_dir=engines_dir, domain=setup["domain"], progress=False)
    assert s.images == 14 and not (tmp / ".edited.segmap.work").exists()
    full = MapBundle.read(tmp / "full.segmap")
    assert_same_map(MapBundle.read(edited), full)
    a = Localizer.from_bundle(edited, engines_dir, domain=setup["domain"])
    b = Localizer.from_bundle(tmp / "full.segmap", engines_dir, domain=setup["domain"])
    counts = full.arrays["segments_per_image"]
    offsets = np.concatenate([[0], np.cumsum(counts)])
    for i in (1, 9, 13):                          # map images' own segments as queries, HNSW search
        q = np.asarray(full.arrays["descriptors"][offsets[i]:offsets[i + 1]])
        ra, rb = a.rank_descriptors(q, top=5), b.rank_descriptors(q, top=5)
        assert ra.images.tolist() == rb.images.tolist() and ra.images[0] == i
        np.testing.assert_allclose(ra.scores, rb.scores, rtol=1e-6)
    first = MapBundle.read(tmp / "first.segmap")
    added = MapBundle.read(edited)                # verification: the map's own coder, old codes kept
    np.testing.assert_array_equal(added.arrays["verify_components"], first.arrays["verify_components"])
    np.testing.assert_array_equal(np.asarray(added.arrays["verify_codes"][:8]), np.asarray(first.arrays["verify_codes"]))
    assert added.arrays["verify_codes"].shape[0] == 14
    removed = remove_images(edited, [n for n, _ in setup["extra"]], tmp / "removed.segmap")
    assert_same_map(removed, first)
    np.testing.assert_array_equal(np.asarray(removed.arrays["verify_codes"]), np.asarray(first.arrays["verify_codes"]))


def test_failed_or_killed_add_leaves_the_old_map(setup, engines_dir, monkeypatch):
    import shutil

    from segvlad_edge.runtime.mapfiles import bundle as B
    from segvlad_edge.runtime import map_edit
    from segvlad_edge.runtime.mapfiles.bundle import MapBundle

    tmp = setup["tmp"]
    target = tmp / "crash.segmap"
    shutil.copy(tmp / "first.segmap", target)
    before = target.read_bytes()

    def killed(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(map_edit, "describe_frames", killed)            # killed after pass 1
    with pytest.raises(KeyboardInterrupt):
        map_edit.add_images(target, setup["extra"], engines_dir=engines_dir, domain=setup["domain"], progress=False)
    assert target.read_bytes() == before
    monkeypatch.undo()

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(B.os, "fsync", full_disk)                       # dies while writing the new bundle
    with pytest.raises(OSError):
        map_edit.add_images(target, setup["extra"], engines_dir=engines_dir, domain=setup["domain"], progress=False)
    assert target.read_bytes() == before
    assert not [p for p in tmp.iterdir() if p.name.startswith(".crash.segmap.tmp")]
    monkeypatch.undo()
    assert (tmp / ".crash.segmap.work").is_dir()                        # pass-1 results kept: the rerun resumes
    map_edit.add_images(target, setup["extra"], engines_dir=engines_dir, domain=setup["domain"], progress=False)
    assert_same_map(MapBundle.read(target), MapBundle.read(tmp / "full.segmap"))


def test_edit_errors_are_one_line(setup, engines_dir):
    from segvlad_edge.runtime.map_edit import MapBuildError, add_images, remove_images

    tmp = setup["tmp"]
    before = (tmp / "first.segmap").read_bytes()
    with pytest.raises(MapBuildError, match="no image named 'nope.jpg'"):
        remove_images(tmp / "first.segmap", ["nope.jpg"])
    with pytest.raises(MapBuildError, match="empty map"):
        remove_images(tmp / "first.segmap", [n for n, _ in setup["first"]])
    with pytest.raises(MapBuildError, match="output folder .*nowhere does not exist"):
        remove_images(tmp / "first.segmap", [setup["first"][0][0]], tmp / "nowhere" / "x.segmap")
    with pytest.raises(MapBuildError, match="already holds 1"):
        add_images(tmp / "first.segmap", setup["first"][:1], engines_dir=engines_dir, domain=setup["domain"],
                   progress=False)
    assert (tmp / "first.segmap").read_bytes() == before
    r = subprocess.run([sys.executable, "-m", "segvlad_edge.apps.cli", "remove-images", str(tmp / "first.segmap"),
                        "nope.jpg"], capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "no image named" in r.stderr


def test_build_map_needs_an_output_or_a_map_to_add_to(tmp_path):
    r = subprocess.run([sys.executable, "-m", "segvlad_edge.apps.cli", "build-map", str(tmp_path)], capture_output=True,
                       text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--add MAP" in r.stderr

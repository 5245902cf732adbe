"""Domain fits: fitted once, kept beside the engine, referenced (not copied) by bundles, verified on load."""
import shutil

import numpy as np
import pytest

from segvlad_edge.runtime import fitting, mapping
from segvlad_edge.runtime.bundle import BundleError, MapBundle, read_arrays, write_arrays
from segvlad_edge.runtime.images import list_images, load_image
from segvlad_edge.runtime.localizer import Localizer


@pytest.fixture(scope="module")
def domain_file(datasets, engines_dir, tmp_path_factory, make_pipeline):
    tmp = tmp_path_factory.mktemp("domain")
    toy = datasets / "toy_unlabelled"
    images = [(p.relative_to(toy).as_posix(), p) for p in list_images(toy)]
    path, size, n, skipped = fitting.build_domain(images, make_pipeline(engines_dir), tmp / "work", [str(toy)],
                                          progress=False, out=tmp / "toy.domain")
    assert n == len(images) == 22 and not skipped and path.stat().st_size == size
    return path


def corridor_images(datasets, n):
    return [(p.name, p) for p in list_images(datasets / "corridor" / "ref")[:n]]


def test_bundle_references_the_domain_fit(datasets, engines_dir, domain_file, tmp_path, make_pipeline):
    out = tmp_path / "m.segmap"
    s = mapping.build_map(corridor_images(datasets, 20), out, make_pipeline(engines_dir), progress=False,
                     fit="domain", domain=domain_file)
    b = MapBundle.read(out)
    assert s.fit["source"] == b.meta["fit"]["source"] == "domain"
    assert not {"vocab_centers", "pca_components"} & set(b.arrays)
    meta, arrays = read_arrays(domain_file, "domain fit")
    assert b.meta["fit"]["sha256"] == meta["sha256"] == fitting.models_sha256(arrays)
    # the same 20 images fitted on the map carry the models and are several times larger
    s_map = mapping.build_map(corridor_images(datasets, 20), tmp_path / "own.segmap", make_pipeline(engines_dir),
                         progress=False, fit="map")
    assert s_map.fit["source"] == "map" and s_map.bytes > 3 * s.bytes
    loc = Localizer.from_bundle(out, engines_dir, domain=domain_file)
    np.testing.assert_array_equal(loc.pipeline.vocab.centers, arrays["vocab_centers"])
    ans = loc.localize(load_image(datasets / "corridor" / "query" / "0000005.jpg"))
    assert ans.top and ans.segments > 0


def test_domain_fit_is_found_beside_the_engine_and_verified(datasets, engines_dir, domain_file, tmp_path, make_pipeline):
    engines = tmp_path / "engines"
    shutil.copytree(engines_dir, engines)
    pipe = make_pipeline(engines)
    beside = fitting.domain_path(pipe)
    assert fitting.resolve_fit(pipe, "auto") is None                      # none yet: fit on the map
    with pytest.raises(fitting.FitError, match="build-domain"):
        fitting.resolve_fit(pipe, "domain")
    shutil.copy(domain_file, beside)
    out = tmp_path / "m.segmap"
    mapping.build_map(corridor_images(datasets, 12), out, make_pipeline(engines), progress=False)   # auto, small map
    assert MapBundle.read(out).meta["fit"]["file"] == beside.name
    Localizer.from_bundle(out, engines)
    assert fitting.resolve_fit(make_pipeline(engines), "auto", n_images=fitting.MIN_MAP_FIT_IMAGES) is None
    assert fitting.resolve_fit(make_pipeline(engines), "domain", n_images=1000)["file"] == beside.name

    meta, arrays = read_arrays(beside, "domain fit")                      # another fit under the same name
    arrays["vocab_centers"] = arrays["vocab_centers"][::-1].copy()
    meta["sha256"] = fitting.models_sha256(arrays)
    write_arrays(beside, meta, arrays)
    with pytest.raises(BundleError, match="not the domain fit this map was built with"):
        Localizer.from_bundle(out, engines)
    meta["sha256"] = "0" * 64                                              # contents disagree with the record
    write_arrays(beside, meta, arrays)
    with pytest.raises(BundleError, match="corrupted"):
        Localizer.from_bundle(out, engines)
    beside.unlink()
    with pytest.raises(BundleError, match="copy it beside the engine"):
        Localizer.from_bundle(out, engines)


def test_domain_fit_for_other_settings_is_refused(engines_dir, domain_file, make_pipeline):
    pipe = make_pipeline(engines_dir, order=1)
    with pytest.raises(BundleError, match="fitted for settings"):
        fitting.load_domain(pipe, path=domain_file)


def test_domain_file_without_a_vocabulary_is_refused(engines_dir, domain_file, tmp_path, make_pipeline):
    meta, arrays = read_arrays(domain_file, "domain fit")
    del arrays["vocab_centers"]
    broken = tmp_path / "broken.domain"
    write_arrays(broken, meta, arrays)
    with pytest.raises(BundleError, match="vocabulary is missing"):
        fitting.load_domain(make_pipeline(engines_dir), path=broken)

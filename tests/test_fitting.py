"""Domain fits: fitted once, kept beside the engine, referenced (not copied) by bundles, verified on load."""
import shutil

import numpy as np
import pytest

from segvlad_edge.runtime.mapfiles import domain
from segvlad_edge.runtime import fitting, mapping
from segvlad_edge.runtime.build_domain import build_domain
from segvlad_edge.runtime.mapfiles.bundle import BundleError, MapBundle, read_arrays, write_arrays
from segvlad_edge.runtime.inputs.images import list_images, load_image
from segvlad_edge.runtime.localizer import Localizer
from segvlad_edge.runtime.models import Models, arrays_sha256
from segvlad_edge.runtime.steps.pca import Pca
from segvlad_edge.runtime.settings import CONFS
from segvlad_edge.runtime.steps.vlad import Vocabulary


@pytest.fixture(scope="module")
def domain_file(datasets, engines_dir, tmp_path_factory, make_pipeline):
    tmp = tmp_path_factory.mktemp("domain")
    toy = datasets / "toy_unlabelled"
    images = [(p.relative_to(toy).as_posix(), p) for p in list_images(toy)]
    path, size, n, skipped, _ = build_domain(images, make_pipeline(engines_dir), tmp / "work", [str(toy)],
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
    assert b.meta["fit"]["sha256"] == meta["sha256"] == arrays_sha256(arrays)
    # the same 20 images fitted on the map carry the models and are several times larger
    s_map = mapping.build_map(corridor_images(datasets, 20), tmp_path / "own.segmap", make_pipeline(engines_dir),
                         progress=False, fit="map")
    assert s_map.fit["source"] == "map" and s_map.bytes > 3 * s.bytes
    loc = Localizer.from_bundle(out, engines_dir, domain=domain_file)
    np.testing.assert_array_equal(loc.pipeline.models.vocab.centers, arrays["vocab_centers"])
    ans = loc.localize(load_image(datasets / "corridor" / "query" / "0000005.jpg"))
    assert ans.top and ans.segments > 0


def test_domain_fit_is_found_beside_the_engine_and_verified(datasets, engines_dir, domain_file, tmp_path, make_pipeline):
    engines = tmp_path / "engines"
    shutil.copytree(engines_dir, engines)
    pipe = make_pipeline(engines)
    engine, settings = pipe.extractor.manifest, pipe.conf
    beside = domain.domain_path(engine, settings)
    assert fitting.resolve_fit(engine, settings, "auto") is None         # none yet: fit on the map
    with pytest.raises(fitting.FitError, match="build-domain"):
        fitting.resolve_fit(engine, settings, "domain")
    shutil.copy(domain_file, beside)
    out = tmp_path / "m.segmap"
    mapping.build_map(corridor_images(datasets, 12), out, make_pipeline(engines), progress=False)   # auto, small map
    assert MapBundle.read(out).meta["fit"]["file"] == beside.name
    Localizer.from_bundle(out, engines)
    assert fitting.resolve_fit(engine, settings, "auto", n_images=fitting.MIN_MAP_FIT_IMAGES) is None
    assert fitting.resolve_fit(engine, settings, "domain", n_images=1000)[1]["file"] == beside.name

    meta, arrays = read_arrays(beside, "domain fit")                      # another fit under the same name
    arrays["vocab_centers"] = arrays["vocab_centers"][::-1].copy()
    meta["sha256"] = arrays_sha256(arrays)
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
        domain.load_domain(pipe.extractor.manifest, pipe.conf, path=domain_file)


def test_domain_file_without_a_vocabulary_is_refused(engines_dir, domain_file, tmp_path, make_pipeline):
    meta, arrays = read_arrays(domain_file, "domain fit")
    del arrays["vocab_centers"]
    broken = tmp_path / "broken.domain"
    write_arrays(broken, meta, arrays)
    with pytest.raises(BundleError, match="vocabulary is missing"):
        pipe = make_pipeline(engines_dir)
        domain.load_domain(pipe.extractor.manifest, pipe.conf, path=broken)


def test_models_round_trip_through_their_arrays():
    rng = np.random.default_rng(0)
    models = Models(Vocabulary(rng.standard_normal((4, 8))), Pca.fit(rng.standard_normal((20, 32)), 5))
    arrays = models.to_arrays()
    assert arrays["pca_components"].dtype == np.float16                   # stored as a bundle stores it
    back = Models.from_arrays(arrays, CONFS["segvlad"])
    assert back.sha256 == models.sha256 == arrays_sha256(arrays) and back.dims == 5
    no_pca = Models.from_arrays(arrays, CONFS["global"])                  # settings without PCA: VLADs as they are
    assert no_pca.pca is None and no_pca.dims == 32
    assert set(no_pca.to_arrays()) == {"vocab_centers"}

"""Shared fixtures: the real default engine (built once per session) and ../shared/datasets."""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def datasets() -> Path:
    if not DATASETS.is_dir():
        pytest.skip("../shared/datasets is not beside this checkout")
    return DATASETS


@pytest.fixture(scope="session")
def engines_dir(tmp_path_factory) -> Path:
    """The embedded-default DINOv2 engine at a small input size (fast to run in tests)."""
    from segvlad_edge.export import build_engines

    out = tmp_path_factory.mktemp("engines")
    build_engines.build_engines({"sizes": [(224, 168)]}, out)
    return out


@pytest.fixture(scope="session")
def dinov2_manifest(engines_dir):
    from segvlad_edge.engines.manifest import find_engine

    return find_engine(engines_dir, "dinov2", (224, 168))


@pytest.fixture(scope="session")
def corridor_bundle(datasets, engines_dir, tmp_path_factory, make_pipeline):
    """A map of the whole corridor ref/ set (111 images) built in-process with map-fitted models."""
    from segvlad_edge.runtime import mapping
    from segvlad_edge.runtime.inputs.images import list_images

    ref = datasets / "corridor" / "ref"
    out = tmp_path_factory.mktemp("corridor") / "corridor.segmap"
    mapping.build_map([(p.name, p) for p in list_images(ref)], out, make_pipeline(engines_dir), progress=False,
                 fit="map", images_root=str(ref))
    return out


@pytest.fixture(scope="session")
def make_pipeline():
    """``make_pipeline(engines_dir, method="segvlad", **conf)``: the product pipeline on the test engine (224x168)."""
    import dataclasses

    from segvlad_edge.runtime.pipeline import make_pipeline
    from segvlad_edge.runtime.settings import CONFS

    def make(engines_dir, method: str = "segvlad", **conf):
        return make_pipeline(dataclasses.replace(CONFS[method], **conf), engines_dir, (224, 168), threads=2)
    return make


@pytest.fixture(scope="session")
def positioned_bundle(corridor_bundle, tmp_path_factory):
    """``positioned_bundle(kind)``: the corridor map with a position per image, in its order (map image i
    at x = i metres; "gps": along a meridian from 45 N, 1 m per image, alt 100 + i; "local": pose [i, 0, 2])."""
    from segvlad_edge.runtime.mapfiles.bundle import MapBundle
    from segvlad_edge.runtime.steps.position import EARTH_RADIUS_M

    import math
    made = {}

    def make(kind: str):
        if kind not in made:
            b = MapBundle.read(corridor_bundle)
            for i, img in enumerate(b.images):
                img["meta"] = ({"gps": [45 + math.degrees(i / EARTH_RADIUS_M), 9.0, 100.0 + i]} if kind == "gps"
                               else {"pose": [float(i), 0.0, 2.0]})
            made[kind] = tmp_path_factory.mktemp(f"pos-{kind}") / f"corridor-{kind}.segmap"
            b.write(made[kind])
        return made[kind]
    return make


@pytest.fixture(scope="session")
def array_span():
    """``array_span(path, name) -> (start, nbytes)``: where array ``name``'s data lies in the map
    bundle (container file) at ``path``, for tests that damage one array on purpose."""
    import json

    from segvlad_edge.runtime.mapfiles.bundle import PREFIX, data_start

    def span(path, name):
        data = Path(path).read_bytes()
        header_len = PREFIX.unpack_from(data)[2]
        entry = json.loads(data[PREFIX.size:PREFIX.size + header_len])["arrays"][name]
        return data_start(header_len) + entry["offset"], entry["nbytes"]
    return span

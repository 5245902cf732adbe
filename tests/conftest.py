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
    build_engines.main({"sizes": [(224, 168)]}, out)
    return out


@pytest.fixture(scope="session")
def dinov2_manifest(engines_dir):
    from segvlad_edge.engines.manifest import find_engine

    return find_engine(engines_dir, "dinov2", (224, 168))

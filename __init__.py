"""segvlad-edge: offline visual place recognition (SegVLAD) for robots and drones.

Python API (README "Python API"): ``from segvlad_edge import Localizer, MapBundle, open_map``
(``open_map``: a bundle file or a map folder). The names are imported on first use, so ``import segvlad_edge`` (and the CLI) stays light.
"""
__version__ = "0.1.0"
__all__ = ["Localizer", "MapBundle", "open_map", "__version__"]


def __getattr__(name: str):
    if name == "Localizer":
        from segvlad_edge.runtime.localizer import Localizer
        return Localizer
    if name == "MapBundle":
        from segvlad_edge.runtime.mapfiles.bundle import MapBundle
        return MapBundle
    if name == "open_map":
        from segvlad_edge.runtime.tiled import open_map
        return open_map
    raise AttributeError(f"module 'segvlad_edge' has no attribute {name!r}")

"""Step ``demo``: the first run, with no files of the user's.

Ten public-domain / CC0 photographs that ship inside the PyPI package scikit-image (its
``skimage/data`` folder; read as files, skimage is not imported) are the "places". The map holds
one view of each. The queries are two new views of each place made from the photograph by
geometric and photometric changes -- a perspective warp with zoom (a viewpoint shift) and a
darker, gamma-changed, slightly rotated view (a lighting change). They are synthetic views, not
new photographs. The demo builds the map, localises the 20 queries, prints Recall@1/5 and writes
an explanation PNG for one query.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np

from segvlad_edge.errors import SegvladError
from segvlad_edge.runtime import mapping
from segvlad_edge.runtime.inputs.images import load_image

PLACES = ("astronaut.png", "camera.png", "chelsea.png", "coffee.png", "rocket.jpg", "hubble_deep_field.jpg",
          "coins.png", "clock_motion.png", "brick.png", "retina.jpg")


class DemoError(SegvladError, RuntimeError):
    pass


def skimage_data() -> Path:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise DemoError("the demo images come with scikit-image: `pip install --no-deps scikit-image`")
    folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    missing = [p for p in PLACES if not (folder / p).is_file()]
    if missing:
        raise DemoError(f"{folder} lacks {', '.join(missing)}; reinstall scikit-image")
    return folder


def viewpoint_change(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Perspective warp: each corner moves inwards by 4-12% of the image size, then zoom to fill."""
    h, w = img.shape[:2]
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    jitter = rng.uniform(0.04, 0.12, (4, 2)) * [w, h] * np.float32([[1, 1], [-1, 1], [-1, -1], [1, -1]])
    m = cv2.getPerspectiveTransform(src + jitter.astype(np.float32), src)
    return cv2.warpPerspective(img, m, (w, h), borderMode=cv2.BORDER_REFLECT)


def lighting_change(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Darker (x0.6-0.8), gamma 1.3-1.6, rotated by 3-6 degrees about the centre."""
    h, w = img.shape[:2]
    x = (img.astype(np.float32) / 255) ** rng.uniform(1.3, 1.6) * rng.uniform(0.6, 0.8)
    angle = rng.uniform(3, 6) * rng.choice([-1, 1])
    rot = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.1)
    return cv2.warpAffine((x * 255).astype(np.uint8), rot, (w, h), borderMode=cv2.BORDER_REFLECT)


def run_demo(pipeline, out: Path, progress: bool = True) -> dict:
    """Build the demo map in ``out``, localise the queries, write ``out/explain.png``."""
    from segvlad_edge.apps.explain import save_explanation, write_png
    from segvlad_edge.runtime.mapfiles.bundle import MapBundle
    from segvlad_edge.runtime.localizer import Localizer

    data = skimage_data()
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    queries = []                        # (file name, image, true place)
    for name in PLACES:
        img = load_image(data / name)
        for kind, change in (("view", viewpoint_change), ("light", lighting_change)):
            queries.append((f"{Path(name).stem}-{kind}.png", change(img, rng), name))
    qdir = out / "queries"
    qdir.mkdir(exist_ok=True)
    for qname, img, _ in queries:
        write_png(qdir / qname, img)
    summary = mapping.build_map([(p, data / p) for p in PLACES], out / "map.segmap", pipeline, progress=progress,
                           images_root=str(data))
    loc = Localizer(MapBundle.read(out / "map.segmap"), pipeline.with_models(summary.models))
    hits1 = hits5 = 0
    answers = []
    for qname, img, truth in queries:
        ans = loc.localize(img, top=5)
        names = [t["name"] for t in ans.top]
        hits1 += names[:1] == [truth]
        hits5 += truth in names
        answers.append((qname, img, truth, ans))
    qname, img, truth, ans = next((a for a in answers if a[0].startswith("coffee-view")), answers[0])
    layout = save_explanation(loc, img, ans, out / "explain.png", top=3, correct={truth})
    return {"places": len(PLACES), "queries": len(queries), "recall@1": hits1 / len(queries),
            "recall@5": hits5 / len(queries), "map_bytes": summary.bytes, "explained": qname,
            "explanation": str(out / "explain.png"), "pairs": sum(len(p) for p in layout["pairs"])}

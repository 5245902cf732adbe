"""Explanation PNGs for a correct and a wrong match on a real set: the highlighted regions are there."""
import json

import cv2
import numpy as np
import pytest

from segvlad_edge.apps.explain import PALETTE, TITLE_H, save_explanation
from segvlad_edge.runtime.inputs.images import list_images, load_image
from segvlad_edge.runtime.localizer import Localizer


def colour_pixels(img, box, colour):
    x0, x1 = box
    panel = img[TITLE_H:, x0:x1]
    return int(np.all(panel == np.asarray(colour, np.uint8), axis=2).sum())


@pytest.fixture(scope="module")
def answers(corridor_bundle, engines_dir, datasets):
    """One query answered correctly and one answered wrongly (by the corridor ground truth)."""
    loc = Localizer.from_bundle(corridor_bundle, engines_dir)
    gt = json.loads((datasets / "corridor" / "gt.json").read_text())
    found = {}
    for p in list_images(datasets / "corridor" / "query"):
        image = load_image(p)
        ans = loc.localize(image, top=3)
        right = {n.split("/", 1)[1] for n in gt[f"query/{p.name}"]}
        key = ans.top[0]["name"] in right
        found.setdefault(key, (image, ans, right))
        if len(found) == 2:
            return loc, found
    pytest.fail("the corridor set gave no wrong (or no right) top-1 answer")


@pytest.mark.parametrize("correct", [True, False])
def test_explanation_highlights_matched_segments(answers, correct, tmp_path):
    loc, found = answers
    image, ans, right = found[correct]
    out = tmp_path / f"{'right' if correct else 'wrong'}.png"
    layout = save_explanation(loc, image, ans, out, top=3, correct=right)
    png = cv2.imread(str(out))
    assert png is not None and png.shape[1] == layout["panels"][-1][1]
    assert len(layout["panels"]) == 1 + len(ans.top[:3])
    q_box, m_box = layout["panels"][0], layout["panels"][1]
    pairs = layout["pairs"][0]
    assert pairs, "the best map image has matched segments"
    for colour, q_seg, m_seg in pairs:
        assert colour in PALETTE
        assert colour_pixels(png, q_box, colour) > 0, "query segment outlined"
        assert colour_pixels(png, m_box, colour) > 0, "map segment outlined in the same colour"
    # the title bar says right (green) or wrong (red) for the best map image
    bar = png[:TITLE_H, m_box[0]:m_box[1]].reshape(-1, 3).astype(int)
    green, red = ((bar[:, 1] > 150) & (bar[:, 2] < 120)).sum(), ((bar[:, 2] > 200) & (bar[:, 1] < 120)).sum()
    assert (green > red) == correct

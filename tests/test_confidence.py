import numpy as np
import pytest

from segvlad_edge.runtime.confidence import confidence, held_back_negatives, match_score, place_margin
from segvlad_edge.runtime.ranking import Ranked
from segvlad_edge.runtime.temporal import SequenceFilter


def test_place_margin_ignores_neighbouring_frames():
    images, scores = np.array([10, 11, 9, 40]), np.array([8.0, 7.5, 7.0, 2.0])
    assert place_margin(images, scores, window=2) == pytest.approx((8 - 2) / 8)
    assert place_margin(images, scores, window=0) == pytest.approx((8 - 7.5) / 8)
    assert place_margin(np.array([3]), np.array([5.0])) == 1.0
    assert place_margin(np.array([], int), np.array([])) == 0.0


def test_confidence_is_the_share_of_no_match_scores_below():
    ranked = Ranked(np.array([10, 40]), np.array([8.0, 2.0]), match_sim=0.5)
    assert match_score(ranked) == pytest.approx(0.75 * 0.5)
    calib = np.array([0.1, 0.2, 0.3, 0.4, 0.5], np.float32)
    assert confidence(ranked, calib) == 0.6                        # 0.375 beats 0.1, 0.2, 0.3
    assert confidence(Ranked(np.array([1]), np.array([3.0]), match_sim=0.01), calib) == 0
    assert confidence(ranked, None) == 0.75                        # no calibration: the raw margin


def test_held_back_calibration_and_no_match_frames(corridor_bundle, engines_dir, datasets):
    import json

    from segvlad_edge.runtime.bundle import MapBundle
    from segvlad_edge.runtime.images import list_images, load_image
    from segvlad_edge.runtime.localizer import Localizer

    b = MapBundle.read(corridor_bundle)
    calib = b.arrays["calib_negatives"]
    assert 50 <= len(calib) <= 111 and np.all(np.diff(calib) >= 0) and 0 <= calib[0] and calib[-1] <= 1
    loc = Localizer.from_bundle(corridor_bundle, engines_dir)
    np.testing.assert_allclose(held_back_negatives(loc), calib)
    gt = json.loads((datasets / "corridor" / "gt.json").read_text())
    right, answered = [], []
    for p in list_images(datasets / "corridor" / "query")[::3]:
        ans = loc.localize(load_image(p))
        right.append(f"ref/{ans.top[0]['name']}" in gt[f"query/{p.name}"])
        answered.append(ans.match is not None)
    right, answered = np.array(right), np.array(answered)
    assert 0.2 <= answered.mean() <= 0.95, answered.mean()
    assert right[answered].mean() > right[~answered].mean()        # matches are right more often than refusals
    rng = np.random.default_rng(0)
    for frame in (np.zeros((120, 160, 3), np.uint8), np.full((120, 160, 3), 200, np.uint8)):
        ans = loc.localize(frame)
        assert ans.match is None and ans.top == [] and ans.confidence == 0
    noise = [loc.localize(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)) for _ in range(3)]
    assert all(a.match is None for a in noise), [a.confidence for a in noise]
    # frames of another place entirely (gardens point) are refused more often than the map's own queries
    foreign = [loc.localize(load_image(p)) for p in list_images(datasets / "gardens_point_day" / "day_left")[::10]]
    refused = np.mean([a.match is None for a in foreign])
    assert refused >= 0.5 and refused > 1 - answered.mean(), (refused, answered.mean())


def test_temporal_filter_suppresses_a_one_frame_flip():
    f = SequenceFilter(100, window=2)
    track = [10, 11, 12, 80, 13, 14]                 # frame 3 flips to a far place for one frame
    out = []
    for true in track:
        images = np.array([true, true + 1, (true + 50) % 100])
        out.append(f.update(images, np.array([5.0, 3.0, 1.0]))[0])
    assert abs(out[3] - 12) <= 2 and abs(out[-1] - 14) <= 1, out      # the flip to 80 is not followed
    f.reset()
    for _ in range(6):                                 # a real move is followed after a few frames
        best, p = f.update(np.array([80]), np.array([5.0]))
    assert best == 80 and p > 0.2

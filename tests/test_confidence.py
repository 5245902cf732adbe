import numpy as np
import pytest

from segvlad_edge.runtime.steps.confidence import confidence, held_back_negatives, match_score, place_margin
from segvlad_edge.runtime.steps.ranking import Ranked
from segvlad_edge.runtime.steps.temporal import SequenceFilter


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
    assert confidence(ranked, calib, "affine") == 0.6              # 0.375 beats 0.1, 0.2, 0.3
    assert confidence(Ranked(np.array([1]), np.array([3.0]), match_sim=0.01), calib, "affine") == 0
    assert confidence(ranked, None, "affine") == 0.75              # no calibration: the raw margin


def test_held_back_calibration_and_no_match_frames(corridor_bundle, engines_dir, datasets):
    import json

    from segvlad_edge.runtime.mapfiles.bundle import MapBundle
    from segvlad_edge.runtime.inputs.images import list_images, load_image
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
    assert answered.mean() >= 0.6, answered.mean()                  # the map's own places are answered
    assert right[answered].mean() >= right.mean() - 1e-9 and right[answered].mean() >= 0.6
    rng = np.random.default_rng(0)
    for frame in (np.zeros((120, 160, 3), np.uint8), np.full((120, 160, 3), 200, np.uint8)):
        ans = loc.localize(frame)
        assert ans.match is None and ans.top == [] and ans.confidence == 0
    noise = [loc.localize(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)) for _ in range(3)]
    assert all(a.match is None for a in noise), [a.confidence for a in noise]
    # frames of another place entirely (gardens point) are refused more often than the map's own queries
    foreign = [loc.localize(load_image(p)) for p in list_images(datasets / "gardens_point_day" / "day_left")[::10]]
    refused = np.mean([a.match is None for a in foreign])
    assert refused >= 0.8 and refused > 1 - answered.mean(), (refused, answered.mean())
    assert max(a.confidence for a in foreign) < max(a.confidence for a in [loc.localize(load_image(p)) for p in
                                                                           list_images(datasets / "corridor" / "query")[:3]])


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


def test_temporal_filter_gets_lost_after_a_run_of_refusals_and_recovers():
    f = SequenceFilter(100, window=2, lost_after=3)
    for i in range(5):
        best, _ = f.update(np.array([20 + i, 21 + i]), np.array([5.0, 3.0]))
    assert not f.lost and abs(best - 24) <= 1
    for _ in range(2):                                 # two refusals: still tracking, the belief carried on
        best, _ = f.update(np.array([70]), np.array([5.0]), confident=False)
    assert not f.lost and abs(best - 24) <= 3
    f.update(np.array([70]), np.array([5.0]), confident=False)
    assert f.lost and f.belief.max() < 2 / 100           # third refusal: lost, belief spread out
    f.update(np.array([71]), np.array([5.0]), confident=False)
    assert f.lost
    best, p = f.update(np.array([60, 61]), np.array([5.0, 4.0]))      # a confident match ends "lost"
    assert not f.lost and best in (60, 61)


@pytest.mark.parametrize("model", ["similarity", "affine"])
def test_verified_confidence_grows_with_inliers_and_is_the_threshold_at_the_answer_level(model):
    from segvlad_edge.runtime.steps.confidence import ANSWER_INLIERS, NO_MATCH_BELOW

    level = ANSWER_INLIERS[model]

    def conf(inliers):
        r = Ranked(np.array([3, 40]), np.array([5.0, 1.0]), match_sim=0.5, inliers=np.array([inliers, 2]))
        return confidence(r, np.array([0.9, 0.95], np.float32), model)   # the margin calibration is not used

    values = [conf(i) for i in (0, 5, level - 1, level, 4 * level, 500)]
    assert values[0] == 0 and values == sorted(values) and values[-1] > 0.99
    assert values[2] < NO_MATCH_BELOW == values[3]                      # the default threshold: T inliers
    assert conf(level // 2) < 0.2
    assert ANSWER_INLIERS["affine"] > ANSWER_INLIERS["similarity"]      # more freedom, more chance agreement


def test_an_answer_that_another_place_verifies_as_well_is_refused():
    """The answer's inliers against the best verified image of another place: a near tie is
    ambiguous (refused), a clear lead is answered; neighbours within the window are the same place."""
    from segvlad_edge.runtime.steps.confidence import NO_MATCH_BELOW, RIVAL_RATIO, best_rival

    def conf(images, inliers, positions=None):
        r = Ranked(np.array(images), np.linspace(5, 1, len(images)), match_sim=0.5, inliers=np.array(inliers))
        return confidence(r, None, "affine", positions=positions)

    assert conf([3, 40], [60, 58]) < NO_MATCH_BELOW                  # two places, equally well: ambiguous
    assert conf([3, 40], [60, 30]) > 0.95                            # twice the rival's inliers
    assert conf([3, 4, 5], [60, 59, 58]) > 0.95                      # the place's own neighbours do not compete
    assert conf([3, 40, 41], [60, 58, -1]) == conf([3, 40], [60, 58])   # unverified images are no rivals
    assert conf([3, 40], [60, 0]) == conf([3], [60])
    edge = int(np.ceil(RIVAL_RATIO * 40))
    assert conf([3, 40], [edge, 40]) >= NO_MATCH_BELOW > conf([3, 40], [edge - 1, 40])
    assert conf([3, 40], [10, 0]) < NO_MATCH_BELOW                   # too few inliers stays refused
    ranked = Ranked(np.array([3, 40, 20, 4]), np.ones(4), inliers=np.array([60, 30, 58, 59]))
    assert best_rival(ranked) == (20, 58)                            # the best other place, not the first
    assert best_rival(Ranked(np.array([3, 4]), np.ones(2), inliers=np.array([60, 59]))) == (-1, 0)
    assert best_rival(Ranked(np.array([3, 40]), np.ones(2), inliers=np.array([60, -1]))) == (-1, 0)
    assert best_rival(Ranked(np.array([3, 40]), np.ones(2))) == (-1, 0)                  # an unverified map


def test_with_map_positions_another_place_is_beyond_the_agreement_radius():
    """A map with positions says which images show another place by distance, not by index: a
    landmark photographed twice far apart in the image list is one place, a jump in a route is two."""
    from segvlad_edge.runtime.steps.confidence import NO_MATCH_BELOW, other_places
    from segvlad_edge.runtime.steps.position import MapPositions

    xy = np.zeros((50, 2))
    xy[:, 0] = np.arange(50) * 10.0                 # a route, 10 m between images
    xy[40] = xy[3] + [5.0, 0.0]                     # image 40 was taken 5 m from image 3
    xy[4] = [1000.0, 0.0]                           # image 4 far away
    xy[7] = np.nan                                  # image 7 without a position
    xy[9] = np.nan
    pos = MapPositions("local", xy, np.full(50, np.nan), spacing_m=10.0)
    assert pos.agree_m == 40.0
    images = np.array([3, 40, 4, 7, 20, 6, 2])      # image 6 at the radius (40 m), image 2 at 10 m
    xy[6] = xy[3] + [40.0, 0.0]
    np.testing.assert_array_equal(other_places(images), [False, True, False, True, True, True, False])
    np.testing.assert_array_equal(other_places(images, positions=pos), [False, False, True, True, True, False, False])
    xy[6] += [0.01, 0.0]
    assert other_places(images, positions=pos)[5]
    np.testing.assert_array_equal(other_places(np.array([9, 10, 40]), positions=pos), [False, False, True])  # first unknown: by index
    same = MapPositions("local", np.zeros((50, 2)), np.full(50, np.nan))      # one position for all: no spacing
    np.testing.assert_array_equal(other_places(images, positions=same), other_places(images))
    r = Ranked(np.array([3, 40]), np.array([5.0, 4.0]), match_sim=0.5, inliers=np.array([60, 58]))
    assert confidence(r, None, "affine", positions=pos) > 0.95 > NO_MATCH_BELOW > confidence(r, None, "affine")
    r = Ranked(np.array([3, 4]), np.array([5.0, 4.0]), match_sim=0.5, inliers=np.array([60, 58]))
    assert confidence(r, None, "affine", positions=pos) < NO_MATCH_BELOW < confidence(r, None, "affine")


def test_the_localizer_judges_rivals_by_its_map_positions(corridor_bundle, engines_dir):
    """An answer whose rival is far in the image list but near in space is answered; a map without
    positions refuses it."""
    from segvlad_edge.runtime.localizer import Localizer
    from segvlad_edge.runtime.steps.confidence import NO_MATCH_BELOW
    from segvlad_edge.runtime.steps.position import MapPositions

    loc = Localizer.from_bundle(corridor_bundle, engines_dir)
    ranked = Ranked(np.array([3, 40]), np.array([5.0, 1.0]), [[], []], 0.5, np.array([60, 58]))
    loc.positions = None
    ans = loc.answer(ranked, {}, 1, 1)
    assert ans.match is None and ans.rival == {"name": loc.names[40], "inliers": 58}     # the ambiguity, named
    xy = np.stack([np.arange(111) * 1.0, np.zeros(111)], 1)
    xy[40] = xy[3]                                   # a second pass over image 3's place
    loc.positions = MapPositions("local", xy, np.full(111, np.nan), spacing_m=1.0)
    ans = loc.answer(ranked, {}, 1, 1)
    assert ans.confidence > NO_MATCH_BELOW and ans.match["index"] == 3 and ans.rival is None


def test_a_map_is_verified_and_answered_with_its_own_stored_settings(corridor_bundle, engines_dir, monkeypatch):
    """A map keeps the verification it was built with: model, threshold and overtaking rule from its
    header, and the answer level of its model (maps built before the affine default stay similarity)."""
    from segvlad_edge.runtime import localizer as L
    from segvlad_edge.runtime.steps.confidence import ANSWER_INLIERS, NO_MATCH_BELOW

    loc = L.Localizer.from_bundle(corridor_bundle, engines_dir)
    assert loc.meta["settings"]["verify_model"] == "affine" and loc.meta["settings"]["verify_gain"] == 1.25
    seen = {}
    real_verify, real_rerank = L.verify_shortlist, L.rerank_by_inliers
    monkeypatch.setattr(L, "verify_shortlist", lambda *a, **k: seen.update(k) or real_verify(*a, **k))
    monkeypatch.setattr(L, "rerank_by_inliers", lambda r, c, gain: seen.update(gain=gain) or real_rerank(r, c, gain))
    ranked = Ranked(np.array([3, 40]), np.array([5.0, 1.0]), [[], []], 0.5, np.array([ANSWER_INLIERS["similarity"], 2]))
    for model, gain, threshold in (("similarity", 1.5, 2.0), ("affine", 1.25, 1.5)):
        loc.meta["settings"].update(verify_model=model, verify_gain=gain, verify_threshold=threshold)
        loc.verify(loc.rank_descriptors(loc.bundle.arrays["descriptors"][:5], top=10), np.ones((192, 64), np.float16))
        assert (seen["model"], seen["threshold"], seen["gain"]) == (model, threshold, gain)
        conf = loc.answer(ranked, {}, 1, 1).confidence                   # 16 inliers: a similarity map's level
        assert (conf == NO_MATCH_BELOW) if model == "similarity" else (conf < NO_MATCH_BELOW)
"""Position estimates: the estimator, map positions in one frame, and errors on real corridor frames."""
import math

import numpy as np
import pytest

from segvlad_edge.runtime.steps.position import MapPositions, estimate, from_plane, to_plane


def test_estimator_ignores_outliers_and_weights_by_score():
    xy = np.array([[10.0, 0], [11.0, 0], [250.0, 40.0], [12.0, 0]])
    mean, sigma, agree = estimate(xy, np.array([3.0, 2.0, 2.5, 1.0]), agree_m=5.0)
    assert agree.tolist() == [True, True, False, True]
    assert mean == pytest.approx([(30 + 22 + 12) / 6, 0])
    spread = (3 * (10 - mean[0]) ** 2 + 2 * (11 - mean[0]) ** 2 + (12 - mean[0]) ** 2) / 6
    assert sigma == pytest.approx(math.sqrt(spread))
    assert estimate(xy, np.zeros(4), 5.0) is None


def test_estimator_follows_the_best_supported_cluster_and_has_a_floor():
    xy = np.array([[0.0, 0], [100.0, 0], [101.0, 0], [99.0, 0]])     # the top hit alone vs three that agree
    mean, sigma, agree = estimate(xy, np.array([2.0, 1.5, 1.5, 1.0]), agree_m=3.0, floor_m=0.5)
    assert agree.tolist() == [False, True, True, True] and 99 < mean[0] < 101 and sigma > 0.5
    _, sigma1, _ = estimate(xy[:1], np.array([1.0]), agree_m=3.0, floor_m=0.5)
    assert sigma1 == pytest.approx(0.5)


def test_verified_inliers_reweight_candidates():
    pos = MapPositions("local", np.array([[0.0, 0], [1.0, 0], [50.0, 0]]), np.full(3, np.nan), spacing_m=1.0)
    plain = pos.estimate(np.array([2, 0, 1]), np.array([3.0, 2.0, 1.0]))
    verified = pos.estimate(np.array([2, 0, 1]), np.array([3.0, 2.0, 1.0]), inliers=np.array([0, 40, 30]))
    assert plain["x"] == 50.0                      # unverified, the top hit wins on its score
    assert 0 <= verified["x"] <= 1 and verified["z"] is None


def test_map_positions_from_gps_pose_and_utm():
    gps = MapPositions.from_images([{"name": "a", "meta": {"gps": [45.0, 9.0, 120.0]}},
                                    {"name": "b", "meta": {"gps": [45.0001, 9.0]}}, {"name": "c"}])
    assert gps.kind == "gps" and np.isnan(gps.xy[2]).all()
    assert gps.spacing_m == pytest.approx(11.12, abs=0.02)          # 1e-4 degree of latitude
    ans = gps.estimate(np.array([0]), np.array([1.0]))
    assert ans["lat"] == pytest.approx(45.0) and ans["lon"] == pytest.approx(9.0) and ans["alt"] == 120.0
    assert ans["sigma_m"] == pytest.approx(gps.spacing_m / 2, abs=1e-3)
    pose = MapPositions.from_images([{"name": "a", "meta": {"pose": [1, 2, 3, 1, 0, 0, 0]}},
                                     {"name": "b", "meta": {"pose": [3, 2, 3]}}])
    assert pose.kind == "local" and set(pose.estimate(np.array([1]), np.array([1.0]))) == {"x", "y", "z", "sigma_m"}
    utm = MapPositions.from_images([{"name": "a", "meta": {"utm": [500000.0, 4100000.0], "height": 3}}])
    assert utm.estimate(np.array([0]), np.array([1.0])) == {"x": 500000.0, "y": 4100000.0, "z": 3.0, "sigma_m": 0.0}
    assert MapPositions.from_images([{"name": "a", "meta": {"label": "x"}}]) is None


def test_tangent_plane_round_trip():
    ll = np.array([[45.0, 9.0], [45.01, 9.02], [44.99, 8.97]])
    origin = (45.0, 9.0)
    en = to_plane(ll, origin)
    assert en[1, 1] == pytest.approx(1111.95, abs=0.5)               # 0.01 degree north
    assert np.abs(from_plane(en, origin) - ll).max() < 1e-9


def test_position_error_on_real_corridor_frames(positioned_bundle, engines_dir, datasets):
    """Corridor queries against the corridor map with x = map index: confident answers carry a position
    close to the query's own index, with a sigma that covers most errors; refused answers carry none."""
    from segvlad_edge.runtime.inputs.images import list_images
    from segvlad_edge.runtime.localizer import Localizer

    loc = Localizer.from_bundle(positioned_bundle("local"), engines_dir, threads=2)
    errors, sigmas, refused = [], [], 0
    for i, p in enumerate(list_images(datasets / "corridor" / "query")[::3]):
        from segvlad_edge.runtime.inputs.images import load_image

        ans = loc.localize(load_image(p))
        if ans.match is None:
            assert ans.position is None
            refused += 1
            continue
        errors.append(abs(ans.position["x"] - 3 * i))
        sigmas.append(ans.position["sigma_m"])
        assert ans.position["y"] == 0 and ans.position["z"] == 2.0
    assert len(errors) >= 10 and refused < 37
    assert np.median(errors) <= 2.0 and np.mean(np.array(errors) <= 3 * np.array(sigmas) + 1) >= 0.8

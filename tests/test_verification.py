import numpy as np
import pytest

from segvlad_edge.runtime.steps.ranking import Ranked
from segvlad_edge.runtime.steps.verification import (PatchCoder, Verification, mutual_matches, patch_positions, rerank_by_inliers,
                                               verify_shortlist)

GRID = (24, 32)


def unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def planted_pair(rng, n_in=150, n_out=60, shift=(3, 2)):
    """Query codes; a map image holding ``n_in`` query patches moved by ``shift`` (x, y) patches
    (inliers) and ``n_out`` query patches put at random places (outlier matches); other patches random."""
    h, w = GRID
    q = unit(rng.standard_normal((h * w, 64)))
    m = unit(rng.standard_normal((h * w, 64)))
    pos = patch_positions(GRID).astype(int)
    movable = np.flatnonzero((pos[:, 0] + shift[0] < w) & (pos[:, 1] + shift[1] < h))
    src = rng.choice(movable, n_in + n_out, replace=False)
    dst_in = (pos[src[:n_in], 1] + shift[1]) * w + pos[src[:n_in], 0] + shift[0]
    dst_out = []
    for s in src[n_in:]:                         # an outlier lands far (> 3 patches) from where the shift puts it
        far = np.linalg.norm(pos - (pos[s] + shift), axis=1) > 3
        free = np.setdiff1d(np.flatnonzero(far), np.concatenate([dst_in, dst_out]).astype(int))
        dst_out.append(int(rng.choice(free)))
    dst_out = np.asarray(dst_out, int)
    m[dst_in], m[dst_out] = q[src[:n_in]], q[src[n_in:]]
    return q, m, set(zip(src[:n_in].tolist(), dst_in.tolist())), set(zip(src[n_in:].tolist(), dst_out.tolist()))


@pytest.mark.parametrize("model", ["similarity", "affine"])
def test_verifier_finds_the_planted_inliers_and_rejects_outliers(model):
    rng = np.random.default_rng(0)
    q, m, inliers, outliers = planted_pair(rng)
    unrelated = unit(rng.standard_normal(m.shape))
    codes = np.stack([unrelated, m]).astype(np.float16)
    far, near = verify_shortlist(q, codes, [0, 1], GRID, model=model, threshold=1.5, min_sim=0.9)
    got = {tuple(p) for p in near.pairs.tolist()}
    assert near.matches == len(inliers) + len(outliers)          # every planted copy is a mutual match
    assert got == inliers                                        # exactly the geometrically consistent ones
    assert not got & outliers
    assert far.inliers == 0 and far.matches == 0                 # nothing in an unrelated image passes min_sim


def test_mutual_matches_are_mutual():
    sims = np.array([[0.9, 0.5, 0.1], [0.95, 0.2, 0.3], [0.1, 0.7, 0.6]], np.float32)
    qi, mi = mutual_matches(sims, 0.0)
    assert list(zip(qi.tolist(), mi.tolist())) == [(1, 0), (2, 1)]   # row 0's best (col 0) prefers row 1
    qi, mi = mutual_matches(sims, 0.8)
    assert list(zip(qi.tolist(), mi.tolist())) == [(1, 0)]


def test_rerank_orders_the_shortlist_by_inliers_and_keeps_the_rest():
    rng = np.random.default_rng(1)
    q, m, inliers, _ = planted_pair(rng, n_in=80, n_out=0)
    codes = np.stack([unit(rng.standard_normal(m.shape)), m, unit(rng.standard_normal(m.shape))]).astype(np.float16)
    ranked = Ranked(np.array([0, 2, 1, 7]), np.array([9.0, 8.0, 7.0, 1.0], np.float32), [[], [], [], []], 0.4)
    checks = verify_shortlist(q, codes, ranked.images[:3], GRID, model="affine", threshold=1.5, min_sim=0.9)
    out = rerank_by_inliers(ranked, checks, gain=1.0)
    assert out.images.tolist() == [1, 0, 2, 7]
    assert out.inliers.tolist() == [80, 0, 0, -1]
    assert out.scores.tolist() == [7.0, 9.0, 8.0, 1.0]


def test_the_retrieval_first_stays_first_unless_clearly_outverified():
    ranked = Ranked(np.array([5, 6, 7]), np.array([3.0, 2.0, 1.0], np.float32), [[], [], []], 0.4)
    checks = lambda *n: [Verification(k, k, np.zeros((0, 2), np.int64)) for k in n]   # noqa: E731
    assert rerank_by_inliers(ranked, checks(40, 55, 10), gain=1.5).images.tolist() == [5, 6, 7]   # 55 <= 1.5 x 40
    assert rerank_by_inliers(ranked, checks(40, 61, 10), gain=1.5).images.tolist() == [6, 5, 7]   # 61 > 60
    assert rerank_by_inliers(ranked, checks(10, 20, 40), gain=1.5).inliers.tolist() == [40, 20, 10]


def test_patch_coder_keeps_the_principal_directions():
    rng = np.random.default_rng(2)
    basis = np.linalg.qr(rng.standard_normal((32, 32)))[0][:4]
    x = rng.standard_normal((2000, 4)) * [5, 4, 3, 2] @ basis + 0.01 * rng.standard_normal((2000, 32))
    coder = PatchCoder.fit(x, 4)
    codes = coder.codes(x).astype(np.float32)
    assert codes.shape == (2000, 4) and np.allclose(np.linalg.norm(codes, axis=1), 1, atol=1e-2)
    assert np.allclose(np.linalg.norm(coder.components @ basis.T, axis=1), 1, atol=1e-3)   # spans the planted subspace


def test_an_affine_fit_follows_a_sheared_view_that_a_similarity_fit_cannot():
    """A planar scene seen from aside is sheared in the image: every planted match agrees with one
    affine map (x' = x + 0.4 y + 1, y' = y), which no rotation + uniform scale fits."""
    rng = np.random.default_rng(4)
    h, w = GRID
    q = unit(rng.standard_normal((h * w, 64)))
    m = unit(rng.standard_normal((h * w, 64)))
    pos = patch_positions(GRID).astype(int)
    x2 = np.rint(pos[:, 0] + 0.4 * pos[:, 1] + 1).astype(int)
    src = rng.choice(np.flatnonzero(x2 < w), 120, replace=False)
    dst = pos[src, 1] * w + x2[src]
    m[dst] = q[src]
    codes = m[None].astype(np.float16)
    (aff,) = verify_shortlist(q, codes, [0], GRID, model="affine", threshold=1.5, min_sim=0.9)
    (sim,) = verify_shortlist(q, codes, [0], GRID, model="similarity", threshold=1.5, min_sim=0.9)
    assert aff.matches == sim.matches == 120
    assert aff.inliers >= 110 and sim.inliers < 0.7 * aff.inliers, (aff.inliers, sim.inliers)
    with pytest.raises(ValueError, match="unknown verification model 'homography'"):
        verify_shortlist(q, codes, [0], GRID, model="homography", threshold=1.5, min_sim=0.9)


def test_the_verification_models_are_the_same_in_settings_verifier_and_answer_levels():
    import dataclasses

    from segvlad_edge.runtime.settings import Settings
    from segvlad_edge.runtime.steps.confidence import ANSWER_INLIERS
    from segvlad_edge.runtime.steps.verification import ESTIMATORS

    spec = next(f.metadata["spec"] for f in dataclasses.fields(Settings) if f.name == "verify_model")
    assert set(spec.choices) == set(ESTIMATORS) == set(ANSWER_INLIERS)

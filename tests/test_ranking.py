import numpy as np

from segvlad_edge.runtime.steps.index import SegmentIndex
from segvlad_edge.runtime.steps.ranking import rank


def test_hand_computed_weighted_frequency():
    # 2 query segments, K' = 3 hits each; map segments 0,1 -> image 0, 2 -> image 1, 3,4 -> image 2
    seg_img = np.array([0, 0, 1, 2, 2])
    ids = np.array([[2, 0, 3], [4, 2, 1]])
    sims = np.array([[0.9, 0.5, 0.1], [0.8, 0.7, 0.1]], np.float32)
    r = rank(ids, sims, seg_img, top=3, norm="none")
    # image 1: 0.9 + 0.7 = 1.6; image 2: 0.1 + 0.8 = 0.9; image 0: 0.5 + 0.1 = 0.6
    np.testing.assert_array_equal(r.images, [1, 2, 0])
    np.testing.assert_allclose(r.scores, [1.6, 0.9, 0.6], atol=1e-6)
    assert r.pairs[0] == [(0, 2, np.float32(0.9).item()), (1, 2, np.float32(0.7).item())]
    # per-query min-max: (s - 0.1) / 0.8 -> image 1: 1 + 0.75, image 2: 0 + 0.875, image 0: 0.5 + 0
    q = rank(ids, sims, seg_img, top=3, norm="query")
    np.testing.assert_array_equal(q.images, [1, 2, 0])
    np.testing.assert_allclose(q.scores, [1.75, 0.875, 0.5], atol=1e-6)
    g = rank(ids, sims, seg_img, top=1, norm=(0.0, 2.0))
    np.testing.assert_allclose(g.scores, [0.8], atol=1e-6)


def test_equal_similarities_still_vote():
    """Every hit equally similar (a map whose SuperSegments are all identical): min-max has an empty
    range; each hit must still count 1, so a perfect match is ranked, not dropped."""
    ids = np.array([[0, 1, 2], [1, 0, 2]])
    sims = np.full((2, 3), 0.8, np.float32)
    seg_img = np.array([0, 0, 1])
    r = rank(ids, sims, seg_img, top=2, norm="query")
    np.testing.assert_array_equal(r.images, [0, 1])
    np.testing.assert_allclose(r.scores, [4.0, 2.0])
    g = rank(ids, sims, seg_img, top=2, norm=(0.8, 0.8))
    np.testing.assert_allclose(g.scores, [4.0, 2.0])


def test_missing_hits_are_ignored():
    r = rank(np.array([[-1, -1]]), np.full((1, 2), -np.inf, np.float32), np.array([0]))
    assert len(r.images) == 0


def test_hnsw_recall_against_exact():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5000, 128)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    idx = SegmentIndex(x.astype(np.float16))
    q = x[:200] + 0.05 * rng.standard_normal((200, 128)).astype(np.float32)
    assert idx.recall(q, 50) >= 0.99
    ids, sims = idx.search(q[:3], 10)
    assert (np.diff(sims, axis=1) <= 1e-6).all() and ids.shape == (3, 10)
    small = SegmentIndex(x[:4].astype(np.float16))
    ids, sims = small.search(x[:1], 6, exact=True)
    assert (ids[0, 4:] == -1).all() and ids[0, 0] == 0


def test_recall_counts_ties_as_hits():
    """Identical descriptors (SuperSegments grown into the same region) tie; any of them may fill
    the last places of the top-k, so recall compares similarities, not ids."""
    x = np.eye(8, dtype=np.float32)[np.repeat(np.arange(8), 3)]     # each descriptor three times
    idx = SegmentIndex(x)
    assert idx.recall(x[::3], 3) == 1.0
    bad = SegmentIndex(x)
    bad.search = lambda q, k, exact=False: ((np.zeros((len(q), k), np.int64), np.zeros((len(q), k), np.float32))
                                            if not exact else SegmentIndex.search(bad, q, k, exact=True))
    assert bad.recall(x[::3], 3) == 0.0                              # an index that finds nothing scores 0


def _rank_by_loops(ids, sims, segment_image, top, norm, per_image):
    """The ranking spelled out hit by hit over every map image: the oracle for ``rank``."""
    from segvlad_edge.runtime.steps.ranking import normalise_sims
    w = normalise_sims(sims, norm)
    scores = np.zeros(int(segment_image.max()) + 1)
    hits = [(q, k) for q in range(ids.shape[0]) for k in range(ids.shape[1]) if ids[q, k] >= 0]
    for q, k in hits:
        scores[segment_image[ids[q, k]]] += w[q, k]
    order = [int(i) for i in np.argsort(-scores.astype(np.float32), kind="stable")[:top] if scores[i] > 0]
    pairs = []
    for i in order:
        mine = sorted((h for h in hits if segment_image[ids[h]] == i), key=lambda h: -sims[h])   # stable: hit order
        chosen = []
        for q, k in mine:
            if q not in [c[0] for c in chosen] and len(chosen) < per_image:
                chosen.append((q, int(ids[q, k]), float(sims[q, k])))
        pairs.append(chosen)
    return order, scores[order].astype(np.float32), pairs


def test_ranking_equals_a_hit_by_hit_count_with_ties():
    """Only the images hit are scored (fast on a large map): the answer, scores and explained pairs
    equal an image-by-image count, ties included (equal scores: lower image first; equal hits:
    earlier hit first)."""
    rng = np.random.default_rng(5)
    for case in range(300):
        n_seg, q, k = int(rng.integers(1, 120)), int(rng.integers(1, 9)), int(rng.integers(1, 8))
        seg_img = rng.integers(0, int(rng.integers(1, 30)), n_seg)
        ids = rng.integers(-1, n_seg, (q, k))
        sims = -np.sort(-np.round(rng.random((q, k)), 1).astype(np.float32), 1)     # one decimal: many ties
        sims[ids < 0] = -np.inf
        top, per_image, norm = int(rng.integers(1, 12)), int(rng.integers(1, 6)), ("query", "none", (0.2, 0.9))[case % 3]
        r = rank(ids, sims, seg_img, top, norm, per_image)
        order, scores, pairs = _rank_by_loops(ids, sims, seg_img, top, norm, per_image)
        assert r.images.tolist() == order and r.pairs == pairs, case
        np.testing.assert_array_equal(r.scores, scores)

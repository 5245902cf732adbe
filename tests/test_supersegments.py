import numpy as np
import pytest

from segvlad_edge.runtime.steps.supersegments import SuperSegments, delaunay_adjacency, expand


def test_hand_computed_path_of_four_segments():
    # 1 x 4 patch grid, one segment per patch: centroids collinear -> path 0-1-2-3
    masks = np.eye(4, dtype=bool)
    ss0 = SuperSegments.from_masks(masks, (1, 4), 0)
    np.testing.assert_array_equal(ss0.masks, masks)
    ss1 = SuperSegments.from_masks(masks, (1, 4), 1)
    np.testing.assert_array_equal(ss1.masks, [[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 1], [0, 0, 1, 1]])
    ss2 = SuperSegments.from_masks(masks, (1, 4), 2)
    np.testing.assert_array_equal(ss2.masks, [[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1], [0, 1, 1, 1]])


def test_hand_computed_square_with_centre():
    # corners of a square + its centre: Delaunay joins every corner to the centre and to its two
    # side neighbours, never to the opposite corner
    pts = np.array([[0, 0], [0, 4], [4, 0], [4, 4], [2, 2]], np.float32)
    adj = delaunay_adjacency(pts)
    expected = np.array([[1, 1, 1, 0, 1], [1, 1, 0, 1, 1], [1, 0, 1, 1, 1], [0, 1, 1, 1, 1], [1, 1, 1, 1, 1]], bool)
    np.testing.assert_array_equal(adj, expected)
    np.testing.assert_array_equal(expand(adj, 2), np.ones((5, 5), bool))
    np.testing.assert_array_equal(expand(adj, 0), np.eye(5, dtype=bool))


@pytest.mark.parametrize("n", [0, 1, 2, 3])
def test_few_segments(n):
    masks = np.zeros((n, 9), bool)
    for i in range(n):
        masks[i, i * 3] = True
    ss = SuperSegments.from_masks(masks, (3, 3), 3)
    assert ss.masks.shape == (n, 9) and ss.adjacency.shape == (n, n)
    assert (ss.masks.sum(1) >= 1).all()
    if n:
        assert ss.masks.any(0).sum() == n


def test_duplicate_centroids_and_empty_segment():
    masks = np.zeros((4, 9), bool)
    masks[0, [0, 8]] = True        # centroid (1, 1)
    masks[1, [2, 6]] = True        # centroid (1, 1) as well
    masks[2, 4] = True             # centroid (1, 1) too: all duplicates
    ss = SuperSegments.from_masks(masks, (3, 3), 1)   # segment 3 has no patch: dropped
    assert len(ss) == 3
    assert ss.adjacency.all()      # duplicates are each other's neighbours
    np.testing.assert_array_equal(ss.masks[0], masks[:3].any(0))


def test_overlap_filter_drops_near_copies_of_kept_supersegments():
    from segvlad_edge.runtime.steps.supersegments import overlap_filter

    p = 20
    a = np.zeros(p, bool); a[:10] = True                # kept (first)
    b = a.copy()                                        # exact copy of a: IoU 1
    c = np.zeros(p, bool); c[:9] = True                 # IoU with a = 0.9
    d = np.zeros(p, bool); d[5:15] = True               # IoU with a = 5/15
    e = np.zeros(p, bool); e[10:20] = True              # disjoint from a, IoU with d = 5/15
    masks = np.stack([a, b, c, d, e])
    assert overlap_filter(masks, 1.0).tolist() == [0, 1, 2, 3, 4]       # psi 1 keeps everything
    assert overlap_filter(masks, 0.95).tolist() == [0, 2, 3, 4]         # only the exact copy goes
    assert overlap_filter(masks, 0.5).tolist() == [0, 3, 4]             # near-copies go too
    assert overlap_filter(masks, 0.3).tolist() == [0, 4]                # d overlaps a by 1/3
    assert overlap_filter(masks[:0], 0.5).tolist() == []


def test_filtered_frames_keep_the_segment_of_each_supersegment():
    from segvlad_edge.runtime.pipeline import FrameSegments, grow
    from segvlad_edge.runtime.settings import Settings

    grid = (4, 6)
    label = np.repeat(np.arange(6), 4).reshape(6, 4).T.ravel()          # 6 vertical stripes
    masks = label[None, :] == np.arange(6)[:, None]
    ss, kept = grow(masks, grid, Settings(order=3, overlap_psi=0.8))
    assert kept is not None and len(ss) == len(kept) < 6                 # neighbourhoods at o=3 repeat
    np.testing.assert_array_equal(ss.masks, SuperSegments.from_masks(masks, grid, 3).masks[kept])
    labels = FrameSegments(None, masks, ss, kept=kept).label_map()
    for row, base in enumerate(kept):                                   # label = SuperSegment row, on its base segment
        assert (labels[masks[base]] == row).all()
    assert (labels[~masks[kept].any(0)] == 255).all()
    ss_all, none = grow(masks, grid, Settings(order=3))
    assert none is None and len(ss_all) == 6

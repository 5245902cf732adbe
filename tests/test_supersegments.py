import numpy as np
import pytest

from segvlad_edge.runtime.supersegments import SuperSegments, delaunay_adjacency, expand


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

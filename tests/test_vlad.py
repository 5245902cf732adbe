import numpy as np
import pytest

from segvlad_edge.runtime.steps.kmeans import kmeans
from segvlad_edge.runtime.steps.pca import Pca
from segvlad_edge.runtime.steps.vlad import VladAggregator, Vocabulary


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def reference_vlad(feats, masks, centers):
    """Direct loops, as the reference code computes it."""
    unit_c = unit(centers)
    out = []
    for m in masks:
        v = np.zeros_like(centers, dtype=np.float64)
        for f in feats[m]:
            k = np.argmax(unit_c @ f)
            v[k] += f - centers[k]
        n = np.linalg.norm(v, axis=1, keepdims=True)
        v = np.where(n > 0, v / np.maximum(n, 1e-12), 0).ravel()
        out.append(v / max(np.linalg.norm(v), 1e-12))
    return np.array(out)


def test_vlad_matches_direct_reference():
    rng = np.random.default_rng(0)
    feats = unit(rng.standard_normal((60, 8))).astype(np.float32)
    centers = rng.standard_normal((4, 8)).astype(np.float32)
    masks = rng.random((5, 60)) < 0.3
    masks[4] = False
    masks[4, 3] = True
    got = VladAggregator(Vocabulary(centers))(feats, masks)
    np.testing.assert_allclose(got, reference_vlad(feats, masks, centers), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    assert got.dtype == np.float32 and got.shape == (5, 32)


def test_vocabulary_fit_finds_separated_clusters():
    rng = np.random.default_rng(1)
    centres = unit(rng.standard_normal((3, 16)))
    x = unit(np.repeat(centres, 50, axis=0) + 0.05 * rng.standard_normal((150, 16))).astype(np.float32)
    voc = Vocabulary.fit(x, 3)
    labels = voc.assign(x)
    assert all(len(set(labels[i * 50:(i + 1) * 50])) == 1 for i in range(3))
    assert len(set(labels)) == 3


def test_kmeans_separates_clusters_deterministically_and_degenerates_gracefully():
    rng = np.random.default_rng(3)
    means = 10 * rng.standard_normal((4, 6))
    x = (np.repeat(means, 40, axis=0) + 0.1 * rng.standard_normal((160, 6))).astype(np.float32)
    centres, labels = kmeans(x, 4, 8, seed=5, restarts=2)
    assert centres.shape == (4, 6) and centres.dtype == np.float32 and labels.shape == (160,)
    assert sorted(len(set(labels[i * 40:(i + 1) * 40])) for i in range(4)) == [1, 1, 1, 1]
    assert len(set(labels)) == 4
    np.testing.assert_allclose(np.sort(centres, axis=0), np.sort(means, axis=0), atol=0.1)
    again = kmeans(x, 4, 8, seed=5, restarts=2)
    assert np.array_equal(again[0], centres) and np.array_equal(again[1], labels)
    flat = np.ones((10, 6), np.float32)                                # all points equal: k > distinct points
    c, lab = kmeans(flat, 3, 8, seed=0, spherical=True)
    assert np.isfinite(c).all() and len(set(lab)) == 1
    with pytest.raises(ValueError, match="at least 3 points"):
        kmeans(x[:2], 3, 8, seed=0)


def test_a_small_kmeans_runs_on_one_thread_and_leaves_the_thread_count_as_it_was(monkeypatch):
    """A frame's k-means runs on one OpenMP thread (several only wait on each other when other
    processes share the cores); a large one keeps them all; the caller's setting is restored; the
    answer does not depend on the thread count."""
    import faiss

    from segvlad_edge.runtime.steps import kmeans as K

    seen = []
    train = faiss.Kmeans.train
    monkeypatch.setattr(faiss.Kmeans, "train", lambda self, x, *a, **k: seen.append(faiss.omp_get_max_threads())
                        or train(self, x, *a, **k))
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(3)
    try:
        x = np.random.default_rng(0).standard_normal((K.ONE_THREAD_UP_TO + 1, 4)).astype(np.float32)
        one = kmeans(x[:768], 8, 2, seed=0)
        kmeans(x, 2, 1, seed=0)
        assert seen == [1, 3] and faiss.omp_get_max_threads() == 3
        monkeypatch.setattr(K, "ONE_THREAD_UP_TO", 0)                   # the same frame on three threads
        three = kmeans(x[:768], 8, 2, seed=0)
        assert seen[-1] == 3
        np.testing.assert_array_equal(three[1], one[1])
        np.testing.assert_array_equal(three[0], one[0])
    finally:
        faiss.omp_set_num_threads(before)


def test_pca_float16_unit_rows_and_projection():
    rng = np.random.default_rng(2)
    basis = np.linalg.qr(rng.standard_normal((64, 5)))[0].T
    x = (rng.standard_normal((400, 5)) * [5, 4, 3, 2, 1]) @ basis
    pca = Pca.fit(x.astype(np.float32), 5)
    y = pca(x.astype(np.float32))
    assert y.dtype == np.float16 and y.shape == (400, 5)
    np.testing.assert_allclose(np.linalg.norm(y.astype(np.float32), axis=1), 1, atol=2e-3)
    # the 5 components span the data's subspace
    np.testing.assert_allclose(np.abs(np.linalg.svd(pca.components @ basis.T)[1]), 1, atol=1e-4)
    assert not pca.whitened and Pca.fit(x.astype(np.float32), 5, whiten=True).whitened

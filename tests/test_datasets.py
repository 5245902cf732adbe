import pickle

import numpy as np
import pytest

from segvlad_edge.runtime.datasets import DatasetError, load_dataset, load_object_npy


def test_layouts_of_the_shared_sets(datasets):
    g = load_dataset(datasets / "gardens_point_day")
    assert g.layout == "gt.json" and len(g.queries) == 200 and len(g.map_images) == 200
    w = load_dataset(datasets / "wxbs")
    assert w.layout == "places.json" and w.query_map_index is not None and len(w.queries) == len(w.map_images) >= 90
    assert all(w.query_map_index[i] not in p for i, p in enumerate(w.positives))
    with pytest.raises(DatasetError, match="UTM"):
        load_dataset(datasets / "toy_unlabelled")


def test_vpr_bench_npy_read_without_pickle_execution(datasets):
    arr = load_object_npy(datasets / "corridor" / "ground_truth_new.npy")
    assert arr.shape == (111, 2) and list(arr[0][1]) == [0, 1, 2]


class Evil:
    def __reduce__(self):
        import os
        return (os.system, ("echo pwned > /tmp/segvlad-pwned",))


def test_malicious_pickle_is_refused(tmp_path):
    arr = np.empty((1, 2), dtype=object)
    arr[0, 0], arr[0, 1] = 0, Evil()
    p = tmp_path / "ground_truth_new.npy"
    np.save(p, arr, allow_pickle=True)
    with pytest.raises(DatasetError, match="refused"):
        load_object_npy(p)
    p.write_bytes(b"\x93NUMPY\x01\x00" + (20).to_bytes(2, "little") + b"{'descr': '|O'}     " + pickle.dumps(Evil()))
    with pytest.raises(DatasetError, match="refused"):
        load_object_npy(p)

import pickle

import numpy as np
import pytest

from segvlad_edge.runtime.inputs.datasets import DatasetError, load_dataset, load_object_npy


def test_layouts_of_the_shared_sets(datasets):
    g = load_dataset(datasets / "gardens_point_day")
    assert g.layout == "gt.json" and len(g.queries) == 200 and len(g.map_images) == 200
    w = load_dataset(datasets / "wxbs")
    assert w.layout == "places.json" and w.query_map_index is not None and len(w.queries) == len(w.map_images) >= 90
    assert all(w.query_map_index[i] not in p for i, p in enumerate(w.positives))
    assert all(w.map_images[w.own_map_images(i)[0]] == q for i, q in enumerate(w.queries))   # the query itself
    assert g.own_map_images(0) == []
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


def test_positions_give_ground_truth_within_25_m(tmp_path):
    from pathlib import Path

    from segvlad_edge.runtime.inputs.datasets import from_positions

    maps = [{"utm": [500000.0 + 20 * i, 4000000.0]} for i in range(5)]          # every 20 m along x
    queries = [{"utm": [500031.0, 4000000.0]}, {"utm": [500000.0, 4000100.0]}]
    ds = from_positions(tmp_path, [f"m{i}.jpg" for i in range(5)], maps, [Path("q0.jpg"), Path("q1.jpg")], queries)
    assert ds.layout == "utm" and ds.positives == [{1, 2}, set()]                  # 11 m and 9 m; 100 m: none
    lat0, per_m = 45.0, 1 / 111_195.0                                             # degrees of latitude per metre
    gps = [{"gps": [lat0 + 30 * i * per_m, 9.0]} for i in range(3)]
    ds = from_positions(tmp_path, ["a", "b", "c"], gps, [Path("q.jpg")], [{"gps": [lat0 + 40 * per_m, 9.0]}])
    assert ds.layout == "gps" and ds.positives == [{1, 2}]                        # 10 m and 20 m away, 40 m not
    assert ds.name(ds.map_images[0]) == "a"                                       # bundle names, not paths
    with pytest.raises(DatasetError, match="position"):
        from_positions(tmp_path, ["a"], [{}], [Path("q.jpg")], [{"utm": [0.0, 0.0]}])

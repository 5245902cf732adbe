"""Large-map index study: IVF variants' top-50 recall and CPU cost at the scale benchmark's maps.

    nice -n 10 python benchmarks/index_sweep.py --work /work/cache/ram/scale128 [--images 100000]

The map is ``benchmarks/scale.py``'s (its real map in ``--work``, extended to ``--images`` with
synthetic images; the descriptors are cached there as ``sweep-N.npy``). Two query sets:

- real: the SuperSegment descriptors of scale.py's 10 real query frames (what the product meets;
  most of their exact neighbours are among the few real map segments, an island in the synthetic
  ones);
- synthetic: 200 new draws from the synthetic images' Gaussian (a query from the same distribution
  as the bulk of the map; it has no near neighbour, the hard case for any partitioning index).

For each configuration: build seconds, bytes per segment of the faiss index, and per query set
the tie-aware top-50 recall against exact search after re-scoring ``rerank x 50`` candidates
exactly against the float16 descriptors, and the process CPU ms per frame of 22 query segments
(the map's mean per image) for the candidate search and the re-scoring, one thread.
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scale  # noqa: E402

K = 50
PER_FRAME = 22


def map_descriptors(work: Path, n_images: int) -> tuple[np.ndarray, int, np.ndarray, np.ndarray]:
    """``(descriptors [N, d] float16 memmap, real segments, mean [d], chol [d, d])``."""
    from segvlad_edge.runtime.mapfiles.bundle import MapBundle

    real = MapBundle.read(scale.real_map(work, 1))
    path = work / f"sweep-{n_images}.npy"
    if not path.is_file():
        b, _ = scale.synthetic_bundle(real, n_images, np.random.default_rng(n_images))
        np.save(path.with_suffix(".tmp.npy"), b.arrays["descriptors"])
        path.with_suffix(".tmp.npy").rename(path)
    d = np.asarray(real.arrays["descriptors"], np.float32)
    mean = d.mean(0)
    chol = np.linalg.cholesky(np.cov(d, rowvar=False) + 1e-6 * np.eye(d.shape[1]))
    return np.load(path, mmap_mode="r"), len(d), mean, chol


def real_queries(work: Path) -> np.ndarray:
    path = work / "sweep-queries.npy"
    if not path.is_file():
        from segvlad_edge.runtime.inputs.images import list_images, load_image
        from segvlad_edge.runtime.localizer import Localizer

        loc = Localizer.from_bundle(scale.real_map(work, 1), threads=2)
        paths = [str(p) for d in scale.QUERY_DIRS for p in list_images(scale.SHARED / d)]
        paths = [paths[i] for i in np.linspace(0, len(paths) - 1, scale.QUERIES).astype(int)]
        q = np.concatenate([loc.pipeline.describe(loc.pipeline.segment(load_image(p))) for p in paths])
        np.save(path, q.astype(np.float32))
    return np.load(path)


def exact_top(x16: np.ndarray, q: np.ndarray, k: int = K) -> np.ndarray:
    """``[M, k] float32`` exact similarities, best first."""
    best = np.full((len(q), 0), -np.inf, np.float32)
    for s in range(0, len(x16), 1 << 18):
        sims = np.concatenate([best, q @ np.asarray(x16[s:s + (1 << 18)], np.float32).T], 1)
        best = -np.partition(-sims, k - 1, axis=1)[:, :k]
    return -np.sort(-best, 1)


def rescore(x16: np.ndarray, q: np.ndarray, cand: np.ndarray, k: int = K) -> np.ndarray:
    """Each query's candidates re-scored exactly: ``[M, k]`` similarities, best first."""
    valid = cand >= 0
    rows = np.asarray(x16[np.where(valid, cand, 0).ravel()], np.float32).reshape(*cand.shape, -1)
    s = np.where(valid, np.einsum("md,mcd->mc", q, rows), -np.inf)
    return -np.sort(np.partition(-s, k - 1, axis=1)[:, :k], 1)


def recall(s: np.ndarray, ex: np.ndarray, k: int = K) -> float:
    return float(np.mean(np.minimum((s[:, :k] >= ex[:, k - 1:k] - 1e-4).sum(1), k) / k))


def build(faiss, spec: str, x16: np.ndarray, nlist: int, train: np.ndarray, hnsw_quantizer: bool):
    """``spec``: the IVF codes (``pq4fs``: fast-scan PQ, 4 bits per dimension; ``pq4fs/2``: per two
    dimensions; ``sq8``/``sq4``: scalar quantiser), ``-raw`` = codes of the vectors, not of their
    residuals to the list centroid, ``+sq8`` = an 8-bit scalar-quantised refine stage (faiss
    IndexRefine) between the IVF codes and the exact re-scoring."""
    spec, _, refine = spec.partition("+")
    raw = spec.endswith("-raw")
    spec = spec.removesuffix("-raw")
    d = x16.shape[1]
    quantizer = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT) if hnsw_quantizer else faiss.IndexFlatIP(d)
    if spec == "pq4fs":
        idx = faiss.IndexIVFPQFastScan(quantizer, d, nlist, d, 4, faiss.METRIC_INNER_PRODUCT)
    elif spec == "pq4fs/2":
        idx = faiss.IndexIVFPQFastScan(quantizer, d, nlist, d // 2, 4, faiss.METRIC_INNER_PRODUCT)
    elif spec == "sq8":
        idx = faiss.IndexIVFScalarQuantizer(quantizer, d, nlist, faiss.ScalarQuantizer.QT_8bit,
                                            faiss.METRIC_INNER_PRODUCT)
    elif spec == "sq4":
        idx = faiss.IndexIVFScalarQuantizer(quantizer, d, nlist, faiss.ScalarQuantizer.QT_4bit,
                                            faiss.METRIC_INNER_PRODUCT)
    else:
        raise SystemExit(f"unknown spec {spec}")
    if raw:
        idx.by_residual = False
    if hnsw_quantizer:
        quantizer.hnsw.efConstruction = 40
        idx.cp.min_points_per_centroid = 5
    if refine:
        idx = faiss.IndexRefine(idx, faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_8bit,
                                                                 faiss.METRIC_INNER_PRODUCT))
    idx.train(train)
    for s in range(0, len(x16), 1 << 16):
        idx.add(np.asarray(x16[s:s + (1 << 16)], np.float32))
    return idx


def main():
    import faiss

    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("/work/cache/ram/scale128"))
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--specs", nargs="+", default=["pq4fs:1481:flat", "pq4fs:4096:hnsw", "sq8:4096:hnsw"],
                    help="INDEX:NLIST:QUANTIZER[:NPROBE,...[:REFINE_FACTOR,...]], INDEX one of pq4fs, pq4fs/2, sq8, sq4, "
                         "QUANTIZER flat or hnsw")
    ap.add_argument("--nprobe", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--rerank", type=int, nargs="+", default=[2, 8, 32])
    ap.add_argument("--train", type=int, default=200_000)
    ap.add_argument("--implem", type=int, nargs="+", default=[0], help="faiss fast-scan implementations (0: auto)")
    ap.add_argument("--bundle", type=Path, help="sweep the search settings of this bundle's stored IVF-PQ index "
                    "through the product's own search (SegmentIndex.search) instead of building faiss indexes; "
                    "--specs then lists NPROBE,...:REFINE_FACTOR,...")
    a = ap.parse_args()
    x16, n_real, mean, chol = map_descriptors(a.work, a.images)
    rng = np.random.default_rng(1)
    synth = (mean + rng.standard_normal((200, len(mean))) @ chol.T).astype(np.float32)
    synth /= np.linalg.norm(synth, axis=1, keepdims=True)
    sets = {"real": real_queries(a.work), "synthetic": synth}
    t = time.perf_counter()
    exact = {name: exact_top(x16, q) for name, q in sets.items()}
    print(f"{len(x16)} segments ({n_real} real), dims {x16.shape[1]}; exact top-{K} in "
          f"{time.perf_counter() - t:.0f} s; queries: " + ", ".join(f"{n} {len(q)}" for n, q in sets.items()), flush=True)
    if a.bundle:
        sweep_bundle(a.bundle, a.specs, a.rerank, sets, exact)
        return
    train = np.asarray(x16[np.sort(np.random.default_rng(0).choice(len(x16), min(len(x16), a.train), replace=False))],
                       np.float32)
    print(f"{'index':>8s} {'nlist':>6s} {'quant':>5s} {'build s':>7s} {'B/seg':>6s} {'nprobe':>6s} {'rerank':>6s} {'refine':>6s} {'implem':>6s} "
          + " ".join(f"{n + ' recall':>16s} {'ms/frame':>8s} {'(rescore)':>9s}" for n in sets), flush=True)
    for spec in a.specs:
        kind, nlist, quant, *lists = spec.split(":")
        probes = [int(v) for v in lists[0].split(",")] if lists else a.nprobe
        factors = [int(v) for v in lists[1].split(",")] if len(lists) > 1 else [1]
        faiss.omp_set_num_threads(2)
        t = time.perf_counter()
        cached = a.work / f"sweep-{a.images}-{kind.replace('/', '_')}-{nlist}-{quant}.faiss"
        if cached.is_file():
            idx = faiss.read_index(str(cached))
        else:
            idx = build(faiss, kind, x16, int(nlist), train, quant == "hnsw")
            faiss.write_index(idx, str(cached))
        tb = time.perf_counter() - t
        nbytes = faiss.serialize_index(idx).nbytes
        faiss.omp_set_num_threads(1)
        ivf = faiss.extract_index_ivf(idx)
        for nprobe, rr, factor, implem in itertools.product(probes, a.rerank, factors, a.implem):
            ivf.nprobe = nprobe
            if hasattr(ivf, "implem"):
                ivf.implem = implem
            if "+" in kind:
                idx.k_factor = factor
            if quant == "hnsw":
                faiss.downcast_index(ivf.quantizer).hnsw.efSearch = max(64, 2 * nprobe)
            cols = []
            for name, q in sets.items():
                c0 = time.process_time()
                _, cand = idx.search(q, rr * K)
                c1 = time.process_time()
                s = rescore(x16, q, cand)
                c2 = time.process_time()
                per = 1e3 * PER_FRAME / len(q)
                cols.append(f"{recall(s, exact[name]):16.4f} {(c2 - c0) * per:8.2f} {(c2 - c1) * per:9.2f}")
            print(f"{kind:>8s} {int(nlist):6d} {quant:>5s} {tb:7.0f} {nbytes / len(x16):6.0f} {nprobe:6d} {rr:6d} {factor:6d} {implem:6d} "
                  + " ".join(cols), flush=True)
        del idx


def sweep_bundle(path: Path, specs: list[str], reranks: list[int], sets: dict, exact: dict) -> None:
    """The product's search (``SegmentIndex.search``: distinct query rows once, candidates, refine,
    exact re-scoring) over a stored index, for each ``NPROBE,...:REFINE_FACTOR,...`` of ``specs``
    and each rerank: recall and process CPU ms per frame of PER_FRAME segments, one thread."""
    from segvlad_edge.runtime.mapfiles.bundle import MapBundle
    from segvlad_edge.runtime.steps.index import open_index

    idx = open_index(MapBundle.read(path), threads=1)
    print(f"{path.name}: {idx.kind}, stored {idx.params}")
    print(f"{'nprobe':>6s} {'refine':>6s} {'rerank':>6s} " + " ".join(f"{n + ' recall':>16s} {'ms/frame':>8s}" for n in sets))
    for spec in specs:
        probes, factors = ([int(v) for v in part.split(",")] for part in spec.split(":"))
        for nprobe, factor, rr in itertools.product(probes, factors, reranks):
            idx.params.update(nprobe=nprobe, refine_factor=factor, rerank=rr)
            cols = []
            for name, q in sets.items():
                c0 = time.process_time()
                _, s = idx.search(q, K)
                cols.append(f"{recall(s, exact[name]):16.4f} {1e3 * (time.process_time() - c0) * PER_FRAME / len(q):8.2f}")
            print(f"{nprobe:6d} {factor:6d} {rr:6d} " + " ".join(cols), flush=True)


if __name__ == "__main__":
    main()

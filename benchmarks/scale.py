"""Maps that scale: localize start-up, peak memory, search speed and recall by map size.

    nice -n 10 python benchmarks/scale.py [--sizes 1000 10000 100000] [--work /work/cache/scale]

A real map is built by the product (``mapping.main``, default engine and settings) from the map
images of the shared sets (corridor/ref, gardens_point_day/day_left, toy_unlabelled/database),
and cached in ``--work``. A map of N images holds those real images and, beyond them, synthetic
ones: each copies the segment count, duplicate pattern (SuperSegments grown into the same region
share a descriptor) and label map of a random real image, with descriptors drawn from a Gaussian
with the real descriptors' mean and covariance (unit-normalised, float16). The maps carry no
spatial verification data (96 KiB/image of patch codes, memory-mapped and read for the 10
shortlisted images per frame: 9.4 GB at 100k images), so start-up here does not include
checksumming it, and search + ranking does not include verification; with ``--verify`` they do
(the default kind only), each synthetic image carrying its template's codes, gathered into a
temporary file in ``--work`` and streamed into the bundle as ``build-map`` does, and the
writing process's memory is printed (``write_map``). Each map is written by
the product's bundle writer with its stored index (the kind ``build-map`` chooses for its size,
marked *, and the other kinds where they build in reasonable time: hnswlib up to 0.1M segments,
HNSW-SQ up to 1M), then a fresh process per bundle measures:

- start-up: from the process's first statement to the first answer of ``Localizer.from_bundle``
  + ``localize`` on a real query frame, minus that frame's DINOv2 pass (bundle file in the OS
  page cache, as after a copy; checksums of every array are verified on each load);
- peak RSS of that process (VmHWM) after 10 real query frames, engine session included, and its
  resident anonymous memory then (RssAnon: without the file-backed pages of the memory-mapped
  bundle, which the OS can drop);
- search + ranking ms per frame: median over the 10 frames, wall clock (the frame's first pass),
  warm wall clock and process CPU time (each the minimum of 3 further runs of the frame's search +
  ranking, its pages already touched, as on a robot after its first frames: on a shared machine
  contention for caches and memory inflates CPU time too, and the minimum is the least disturbed
  run; with ``--threads`` 2 the search's threads add their CPU time, and idle OpenMP workers
  spinning, to the CPU figure). The probe runs numpy's BLAS (OpenBLAS) on one
  thread: with its default pool, the idle workers spin after each small product of the
  re-scoring and add 5-20 ms of CPU per frame at random (measured on the 1k maps: HNSW-SQ
  5.3-5.9 ms with one thread, 12-24 ms without), which is not search work;
- top-K' (50) recall of the stored index against exact search, tie-aware, over the 10 frames'
  SuperSegment descriptors (most of whose exact neighbours are among the few real map segments,
  an island in the synthetic ones), and over 200 synthetic queries: new draws from the synthetic
  images' Gaussian, like the bulk of the map but with no near neighbour in it (the hard case for
  any partitioning index; what a query of a real map meets lies between the two);
- RAM-resident search data per map image (``SegmentIndex.resident_bytes``: hnswlib's float32
  vectors + links, a faiss index's codes + graph or lists; the float16 descriptors stay
  memory-mapped and only re-scored rows are read).
"""
from __future__ import annotations

import time

T0 = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from itertools import chain  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
MAP_DIRS = ("corridor/ref", "gardens_point_day/day_left", "toy_unlabelled/database")
QUERY_DIRS = ("corridor/query", "gardens_point_day/day_right")
QUERIES = 10
BUILD_MAX = {"hnsw": 100_000, "hnswsq": 1_000_000}   # segments: above these the alternative is not built here
BUILD_NOTE = {"hnsw": "hnswlib build takes too long here",
              "hnswsq": "24 min to build here; measured at PCA 256: recall 0.54"}
SYNTHETIC_QUERIES = 200
CPU_REPEATS = 3                  # search + ranking CPU ms: the minimum of this many runs per frame


def real_map(work: Path, threads: int) -> Path:
    """The product's own map of the shared sets' map images (built once, then reused)."""
    out = work / "real.segmap"
    if out.is_file():
        return out
    from segvlad_edge.runtime import mapping
    from segvlad_edge.runtime.inputs.images import list_images
    from segvlad_edge.runtime.pipeline import make_pipeline
    from segvlad_edge.runtime.settings import CONFS

    pipe = make_pipeline(CONFS["segvlad"], threads=threads)
    images = [(f"{d}/{p.name}", p) for d in MAP_DIRS for p in list_images(SHARED / d)]
    s = mapping.build_map(images, out, pipe, progress=True, fit="map")
    print(f"real map: {s.images} images, {s.segments} segments, {s.seconds:.0f} s")
    return out


@contextmanager
def synthetic_bundle(real, n_images: int, rng: np.random.Generator, scratch: Path | None = None):
    """``with synthetic_bundle(...) as (bundle, real images)``: the real map extended to
    ``n_images`` with synthetic images (see the module docstring); with a ``scratch`` folder, with
    spatial verification data, each synthetic image carrying its template's patch codes, gathered
    block by block into a temporary file there (``rows_on_disk``: 9.4 GB at 100k images, not in RAM)."""
    from segvlad_edge.runtime.mapfiles.bundle import VERIFY_ARRAYS, MapBundle, block_rows, row_blocks, rows_on_disk

    a = real.arrays
    counts_r, desc_r = a["segments_per_image"], np.asarray(a["descriptors"], np.float32)
    n_real = min(len(counts_r), n_images)
    offsets = np.concatenate([[0], np.cumsum(counts_r)])
    patterns = [np.unique(desc_r[offsets[i]:offsets[i + 1]], axis=0, return_inverse=True)[1].ravel()
                for i in range(len(counts_r))]
    n_unique = np.array([p.max(initial=-1) + 1 for p in patterns])
    mean = desc_r.mean(0)
    chol = np.linalg.cholesky(np.cov(desc_r, rowvar=False) + 1e-6 * np.eye(desc_r.shape[1]))
    templates = rng.integers(0, len(counts_r), n_images - n_real)
    counts = np.concatenate([counts_r[:n_real], counts_r[templates]]).astype(np.int32)
    desc = np.empty((int(counts.sum()), desc_r.shape[1]), np.float16)
    desc[:offsets[n_real]] = a["descriptors"][:offsets[n_real]]
    at = int(offsets[n_real])
    for chunk in np.array_split(templates, max(1, len(templates) // 5000)):
        u = int(n_unique[chunk].sum())
        x = mean + rng.standard_normal((u, len(mean)), np.float32) @ chol.T.astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        base = np.concatenate([[0], np.cumsum(n_unique[chunk])])
        rows = np.concatenate([base[j] + patterns[t] for j, t in enumerate(chunk)]) if len(chunk) else []
        desc[at:at + len(rows)] = x[rows]
        at += len(rows)
    labels = np.concatenate([a["segment_labels"][:n_real], a["segment_labels"][templates]])
    meta = {k: v for k, v in real.meta.items() if k != "index"}
    meta["images"] = real.images[:n_real] + [{"name": f"synthetic/{i:06d}.jpg"} for i in range(len(templates))]
    arrays = {k: v for k, v in a.items() if not k.startswith("index_") and (scratch or k not in VERIFY_ARRAYS)}
    arrays.update(descriptors=desc, segments_per_image=counts, segment_labels=labels)
    if scratch is None:
        yield MapBundle(meta, arrays), n_real
        return
    codes = np.asarray(a["verify_codes"])                   # the real images' (328 images: 31 MB)
    parts = chain([codes[:n_real]], (codes[t] for t in row_blocks(templates, block_rows(codes.shape, codes.itemsize))))
    with rows_on_disk(scratch, parts, codes.shape[1:], codes.dtype) as stored:
        yield MapBundle(meta, {**arrays, "verify_codes": stored}), n_real


def make_maps(work: Path, sizes: list[int], threads: int, verify: bool = False) -> list[dict]:
    from segvlad_edge.runtime.mapfiles.bundle import MapBundle
    from segvlad_edge.runtime.steps.index import KINDS, choose_kind

    real = MapBundle.read(real_map(work, threads))
    rows = []
    for n in sizes:
        with synthetic_bundle(real, n, np.random.default_rng(n), work if verify else None) as (bundle, n_real):
            segs = len(bundle.arrays["descriptors"])
            default = choose_kind(segs)
            for kind in [default] if verify else KINDS:
                path = work / f"scale-{n}-{kind}{'-verify' if verify else ''}.segmap"
                if kind != default and segs > BUILD_MAX.get(kind, segs):
                    rows.append({"images": n, "real": n_real, "segments": segs, "kind": kind, "default": False,
                                 "path": None})
                    continue
                if not path.is_file():
                    write_map(bundle, kind, path, threads)
                stored = MapBundle.read(path).arrays
                rows.append({"images": n, "real": n_real, "segments": segs, "kind": kind, "default": kind == default,
                             "path": path, "index_mib": sum(v.nbytes for k, v in stored.items()
                                                            if k.startswith("index_")) / 2**20})
                del stored
            del bundle
    return rows


def write_map(bundle, kind: str, path: Path, threads: int) -> None:
    """Store the index of ``kind`` in ``bundle`` and write it to ``path``; prints the times and this
    process's memory so far: peak RSS (VmHWM, which counts the file-backed pages of memory-mapped
    arrays the writer read, pages the OS can drop) and peak resident anonymous memory (RssAnon,
    sampled every 50 ms while the bundle is written: what the process cannot give back)."""
    from segvlad_edge.runtime.steps.index import store_index

    t = time.perf_counter()
    store_index(bundle, kind, threads)
    t_index = time.perf_counter() - t
    with AnonPeak() as anon:
        bundle.write(path)
    print(f"{path.name}: index built in {t_index:.0f} s, written in {time.perf_counter() - t - t_index:.1f} s; "
          f"peak RSS so far {peak_rss_mib():.0f} MiB (VmHWM), peak anonymous RSS while writing {anon.peak:.0f} MiB",
          flush=True)


class AnonPeak:
    """``with AnonPeak() as p``: ``p.peak``, the largest RssAnon (MiB) sampled every 50 ms in the block."""

    def __enter__(self):
        self.peak, self._stop = anon_rss_mib(), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, anon_rss_mib())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, anon_rss_mib())


def probe(bundle_path: str, query_paths: list[str], threads: int) -> dict:
    """In a fresh process: start-up to the first answer, peak RSS, search+rank ms, recall."""
    from segvlad_edge.runtime.inputs.images import load_image
    from segvlad_edge.runtime.localizer import RANK_DEPTH, Localizer
    from segvlad_edge.runtime.mapfiles.bundle import CheckedRows
    from segvlad_edge.runtime.steps.ranking import rank

    t_imported, cpu0 = time.perf_counter(), time.process_time()
    loc = Localizer.from_bundle(bundle_path, threads=threads)
    t_loaded, load_cpu = time.perf_counter(), time.process_time() - cpu0
    first = loc.localize(load_image(query_paths[0]))
    startup = time.perf_counter() - T0 - first.ms["features"] / 1e3
    answers = [first] + [loc.localize(load_image(p)) for p in query_paths[1:]]
    rss, anon = peak_rss_mib(), anon_rss_mib()
    ms = [a.ms.get("search", 0) + a.ms.get("rank", 0) for a in answers if a.segments]
    hits, same, warm_ms, cpu_ms = [], [], [], []
    for a in answers:
        if not a.segments:
            continue
        d = loc.pipeline.describe(a.frame)
        runs = []
        for _ in range(CPU_REPEATS):                         # the least disturbed of a few (shared machine)
            t0, c0 = time.perf_counter(), time.process_time()
            loc.rank_descriptors(d, top=RANK_DEPTH)
            runs.append((1e3 * (time.perf_counter() - t0), 1e3 * (time.process_time() - c0)))
        warm_ms.append(min(w for w, _ in runs))
        cpu_ms.append(min(c for _, c in runs))
        ids, sims = loc.index.search(d, loc.top_k, exact=True)
        _, approx = loc.index.search(d, loc.top_k)
        hits.append((approx >= sims[:, -1:] - 1e-4).sum(1) / loc.top_k)     # tie-aware, as SegmentIndex.recall
        exact_best = rank(ids, sims, loc.segment_image, 1, loc.norm).images[:1]
        same.append(exact_best.tolist() == a.ranked.images[:1].tolist())
    synth = synthetic_queries(loc, SYNTHETIC_QUERIES)
    t = time.perf_counter()
    lazy = [a.check_all() for a in loc.bundle.arrays.values() if isinstance(a, CheckedRows)]
    codes_check_s = time.perf_counter() - t if lazy else float("nan")
    return {"codes_check_s": codes_check_s,
            "synth_recall": loc.index.recall(synth, loc.top_k) if synth is not None else float("nan"),
            "startup_s": startup, "imports_s": t_imported - T0, "load_s": t_loaded - t_imported, "rss_mib": rss,
            "anon_mib": anon,
            "search_rank_ms": float(np.median(ms)), "recall": float(np.mean(np.concatenate(hits))),
            "top1_same": float(np.mean(same)), "load_cpu_s": load_cpu, "search_rank_cpu_ms": float(np.median(cpu_ms)),
            "search_rank_warm_ms": float(np.median(warm_ms)),
            "ram_kib_per_image": loc.index.resident_bytes() / len(loc.names) / 1024}


def synthetic_queries(loc, n: int) -> np.ndarray | None:
    """``[n, d] float32``: new draws from the Gaussian the synthetic images' descriptors were drawn
    from (the real map segments' mean and covariance): queries like the bulk of the map, with no
    near neighbour in it. None for a map without synthetic images."""
    real = np.array([not name.startswith("synthetic/") for name in loc.names])
    if real.all():
        return None
    d = np.asarray(loc.index.descriptors[:int(loc.bundle.arrays["segments_per_image"][real].sum())], np.float32)
    chol = np.linalg.cholesky(np.cov(d, rowvar=False) + 1e-6 * np.eye(d.shape[1]))
    q = d.mean(0) + np.random.default_rng(1).standard_normal((n, d.shape[1])) @ chol.T
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM; ru_maxrss would include the forking parent's)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def anon_rss_mib() -> float:
    """This process's resident anonymous memory now (RssAnon): the resident set less its file-backed
    pages (the bundle's memory-mapped arrays, libraries), which the OS can drop and read again."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--work", type=Path, default=Path("/work/cache/scale"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--verify", action="store_true",
                    help="maps with spatial verification data (the kind build-map chooses only)")
    ap.add_argument("--probe", help=argparse.SUPPRESS)
    a = ap.parse_args()
    from segvlad_edge.runtime.inputs.images import list_images

    queries = [str(p) for d in QUERY_DIRS for p in list_images(SHARED / d)]
    queries = [queries[i] for i in np.linspace(0, len(queries) - 1, QUERIES).astype(int)]
    if a.probe:
        print(json.dumps(probe(a.probe, queries, a.threads)))
        return
    a.work.mkdir(parents=True, exist_ok=True)
    rows = make_maps(a.work, a.sizes, a.threads, a.verify)
    print(f"\n{'images':>7s} {'real':>5s} {'segments':>9s} {'index':>7s} {'file MiB':>8s} {'index MiB':>9s} "
          f"{'start-up s':>10s} {'imports':>7s} {'load':>6s} {'load CPU':>8s} {'peak RSS MiB':>12s} {'anon':>8s} "
          f"{'search+rank ms':>14s} {'warm':>6s} {'(CPU ms)':>8s} {'recall':>7s} {'synth':>6s} {'top-1 = exact':>13s} "
          f"{'RAM KiB/img':>11s} {'codes check s':>13s}")
    for r in rows:
        name = r["kind"] + ("*" if r["default"] else "")
        if r["path"] is None:
            print(f"{r['images']:7d} {r['real']:5d} {r['segments']:9d} {name:>7s}   not built "
                  f"({BUILD_NOTE[r['kind']]})")
            continue
        out = subprocess.run([sys.executable, __file__, "--probe", str(r["path"]), "--threads", str(a.threads)],
                             capture_output=True, text=True, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
        if out.returncode:
            print(f"{r['images']:7d} {name:>7s} probe failed: {out.stderr.strip().splitlines()[-1]}")
            continue
        p = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{r['images']:7d} {r['real']:5d} {r['segments']:9d} {name:>7s} {r['path'].stat().st_size / 2**20:8.1f} "
              f"{r['index_mib']:9.1f} {p['startup_s']:10.2f} {p['imports_s']:7.2f} {p['load_s']:6.2f} "
              f"{p['load_cpu_s']:8.2f} {p['rss_mib']:12.0f} {p['anon_mib']:8.0f} {p['search_rank_ms']:14.2f} {p['search_rank_warm_ms']:6.2f} {p['search_rank_cpu_ms']:8.2f} "
              f"{p['recall']:7.4f} {p['synth_recall']:6.4f} {p['top1_same']:13.2f} {p['ram_kib_per_image']:11.1f} "
              f"{p.get('codes_check_s', float('nan')):13.2f}", flush=True)
    print(f"load average during the run: {' '.join(Path('/proc/loadavg').read_text().split()[:3])} "
          f"on {os.cpu_count()} cores (wall-clock figures include waiting for the CPU; CPU figures do not)")
    print("start-up: process start to first answer minus its DINOv2 pass (imports: Python modules; load: "
          "Localizer.from_bundle = checksums, engine session, index); anon: resident anonymous memory after the "
          "frames (less file-backed pages: the bundle's memory-mapped arrays, libraries); * = the kind build-map chooses; recall: "
          f"top-50 vs exact, tie-aware, over the segments of {QUERIES} real query frames; top-1 = exact: share of "
          "those frames whose best map image is the exact search's; codes check s: sha256 + finite check of "
          "every block of the verification codes after the frames (what loading would add if it hashed them in "
          "full, as format 3 did; format 4 checks a block when first read)")


if __name__ == "__main__":
    main()

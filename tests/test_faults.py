"""Faults and degenerate inputs: killed builds, empty and one-image maps, verify, flat memory."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from segvlad_edge.runtime import mapping
from segvlad_edge.runtime.mapfiles.bundle import BundleError, MapBundle
from segvlad_edge.runtime.inputs.images import list_images, load_image


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "segvlad_edge.apps.cli", *map(str, args)], capture_output=True,
                          text=True, **kw)


def test_killed_build_never_leaves_a_partial_bundle(datasets, engines_dir, tmp_path):
    """SIGKILL at several points of a rebuild: the target is the previous bundle or a complete new one;
    a rerun resumes from the work folder and completes."""
    src = tmp_path / "imgs"
    src.mkdir()
    for p in list_images(datasets / "corridor" / "ref")[:40]:
        shutil.copy(p, src / p.name)
    target = tmp_path / "map.segmap"
    r = cli("build-map", src, "-o", target, "--engines", engines_dir, "--fit", "map", "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["images"] == 40 and summary["bytes"] == target.stat().st_size and summary["fit"] == "map"
    previous = target.read_bytes()
    for p in list_images(datasets / "corridor" / "query")[:20]:       # the map grows: a real rebuild
        shutil.copy(p, src / f"q{p.name}")
    outcomes = set()
    for delay in (1.0, 3.0, 6.0, 9.0, 14.0):
        proc = subprocess.Popen([sys.executable, "-m", "segvlad_edge.apps.cli", "build-map", str(src), "-o",
                                 str(target), "--engines", str(engines_dir), "--fit", "map", "--quiet"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        data = target.read_bytes()
        if data == previous:
            outcomes.add("previous")
        else:
            assert len(MapBundle.read(target).images) == 60       # complete, valid and new
            outcomes.add("new")
            previous = data
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".map.segmap.tmp")]
    assert "previous" in outcomes
    r = cli("build-map", src, "-o", target, "--engines", engines_dir, "--fit", "map", "--quiet")
    assert r.returncode == 0, r.stderr
    assert len(MapBundle.read(target).images) == 60
    assert not (tmp_path / ".map.segmap.work").exists()


def test_empty_and_one_image_maps(datasets, engines_dir, tmp_path, make_pipeline):
    (tmp_path / "empty").mkdir()
    r = cli("build-map", tmp_path / "empty", "-o", tmp_path / "e.segmap", "--engines", engines_dir)
    assert r.returncode == 1 and "holds no images" in r.stderr and not (tmp_path / "e.segmap").exists()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.jpg").write_bytes(b"")
    r = cli("build-map", tmp_path / "bad", "-o", tmp_path / "e.segmap", "--engines", engines_dir)
    assert r.returncode == 1 and "could be read" in r.stderr and not (tmp_path / "e.segmap").exists()
    one = datasets / "corridor" / "ref" / "0000010.jpg"
    out = tmp_path / "one.segmap"
    mapping.build_map([("only.jpg", one)], out, make_pipeline(engines_dir), progress=False, fit="map")
    from segvlad_edge.runtime.localizer import Localizer
    loc = Localizer.from_bundle(out, engines_dir)
    ans = loc.localize(load_image(one))
    assert ans.top[0]["name"] == "only.jpg"


def test_verify(corridor_bundle, engines_dir, tmp_path):
    r = cli("verify", corridor_bundle, "--engines", engines_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "FAIL" not in r.stdout and "index: HNSW-SQ: 20/20" in r.stdout      # 1,332 segments: HNSW-SQ
    bad = tmp_path / "bad.segmap"
    data = bytearray(corridor_bundle.read_bytes())
    data[-100] ^= 0xFF
    bad.write_bytes(bytes(data))
    r = cli("verify", bad, "--engines", engines_dir)
    assert r.returncode == 1 and "FAIL file" in r.stdout and "checksum" in r.stdout
    r = cli("verify", corridor_bundle, "--engines", tmp_path)                  # no engine here
    assert r.returncode == 1 and "FAIL engine" in r.stdout


def test_a_shuffled_segment_table_is_refused(corridor_bundle):
    b = MapBundle.read(corridor_bundle)
    arrays = dict(b.arrays)
    arrays["segments_per_image"] = arrays["segments_per_image"][::-1].copy()   # same total, wrong images
    with pytest.raises(BundleError, match="segment labels point past"):
        MapBundle(b.meta, arrays).validate()


def test_verify_reports_a_broken_index(corridor_bundle, engines_dir, monkeypatch):
    from segvlad_edge.runtime import verify
    from segvlad_edge.runtime.steps.index import SegmentIndex

    def lost(self, q, k, exact=False):                     # an index that returns the wrong segments
        return np.zeros((len(q), k), np.int64), np.ones((len(q), k), np.float32)
    monkeypatch.setattr(SegmentIndex, "search", lost)
    results = {c: ok for c, ok, _ in verify.verify_bundle(corridor_bundle, engines_dir)}
    assert results["file"] and results["engine"] and not results["index"]


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def test_localize_memory_stays_flat(corridor_bundle, engines_dir, datasets):
    from segvlad_edge.runtime.localizer import Localizer

    loc = Localizer.from_bundle(corridor_bundle, engines_dir)
    frames = [load_image(p) for p in list_images(datasets / "corridor" / "query")[:20]]
    for f in frames * 2:                                             # warm-up: arenas, caches
        loc.localize(f)
    before = rss_mib()
    for f in frames * 15:                                            # 300 frames
        loc.localize(f)
    assert rss_mib() - before < 25, f"RSS grew {rss_mib() - before:.1f} MiB over 300 frames"


def test_disk_full_is_reported_and_keeps_the_old_bundle(corridor_bundle, tmp_path, monkeypatch):
    from segvlad_edge.runtime.mapfiles import bundle as B

    target = tmp_path / "m.segmap"
    shutil.copy(corridor_bundle, target)
    before = target.read_bytes()
    b = MapBundle.read(corridor_bundle)

    def full(*a, **k):
        raise OSError(28, os.strerror(28))
    monkeypatch.setattr(B.os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        b.write(target)
    assert target.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["m.segmap"]


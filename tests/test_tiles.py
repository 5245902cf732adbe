"""Map folders (build-map --tile-m): tiles on one shared fit answer exactly as the single bundle
they were split from; --near loads only the tiles around a point; a tampered tile index, tile or
fit is refused with one line; images without a position are refused before any work."""
import hashlib
import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest

SPACING_M = 50.0            # map image i lies i * 50 m north of 45 N, 9 E: 111 images over 5.5 km
TILE_M = 1003.0            # tiles of images 0-20, 21-40, ..., 101-110 (no image on a tile edge)


def lat_of(i: float) -> float:
    from segvlad_edge.runtime.steps.position import EARTH_RADIUS_M

    return 45 + math.degrees(i * SPACING_M / EARTH_RADIUS_M)


def cli(*args):
    return subprocess.run([sys.executable, "-m", "segvlad_edge.apps.cli", *map(str, args)], capture_output=True,
                          text=True)


@pytest.fixture(scope="module")
def maps(corridor_bundle, engines_dir, tmp_path_factory):
    """The corridor map with GPS positions 50 m apart (one bundle) and the same map split into 1 km tiles."""
    from segvlad_edge.runtime.localizer import Localizer
    from segvlad_edge.runtime.mapfiles.bundle import MapBundle
    from segvlad_edge.runtime.tiling import split_map

    tmp = tmp_path_factory.mktemp("tiles")
    b = MapBundle.read(corridor_bundle)
    for i, img in enumerate(b.images):
        img["meta"] = {"gps": [lat_of(i), 9.0, 100.0 + i]}
    single = tmp / "single.segmap"
    b.write(single)
    loc = Localizer.from_bundle(single, engines_dir)
    doc = split_map(MapBundle.read(single), loc.pipeline, tmp / "folder", TILE_M)
    return {"tmp": tmp, "single": single, "folder": tmp / "folder", "doc": doc, "loc": loc}


def test_folder_layout_and_index(maps, engines_dir):
    from segvlad_edge.runtime.mapfiles.tiles import read_index

    doc, folder = maps["doc"], maps["folder"]
    assert read_index(folder) == doc
    assert len(doc["tiles"]) == 6 and doc["images"] == 111 and [t["images"] for t in doc["tiles"]] == [21] + [20] * 4 + [10]
    assert sorted(p.name for p in folder.iterdir()) == sorted(["tiles.json", "fit.domain"] + [t["file"] for t in doc["tiles"]])
    assert not [p for p in maps["tmp"].iterdir() if p.name.startswith(".folder")]     # no temporary folder left
    lat0, _, lat1, _ = doc["tiles"][0]["bbox"]
    assert lat0 == pytest.approx(lat_of(0)) and lat1 == pytest.approx(lat_of(20))
    # the tiles hold no vocabulary/PCA of their own: the 6 MiB fit is stored once, in fit.domain
    from segvlad_edge.runtime.mapfiles.bundle import MapBundle
    tile = MapBundle.read(folder / doc["tiles"][0]["file"])
    assert tile.meta["fit"]["source"] == "domain" and "pca_components" not in tile.arrays
    from segvlad_edge.runtime.localizer import Localizer
    alone = Localizer.from_bundle(folder / doc["tiles"][1]["file"], engines_dir)   # finds fit.domain beside it
    assert len(alone.names) == 20 and alone.names[0] == maps["loc"].names[21]


def test_all_tiles_answer_like_the_single_bundle(maps, datasets, engines_dir):
    from segvlad_edge.runtime.inputs.images import load_image
    from segvlad_edge.runtime.tiled import TiledLocalizer

    single = maps["loc"]
    tiled = TiledLocalizer.open(maps["folder"], engines_dir)
    b = single.bundle
    offsets = b.segment_offsets
    for i in (0, 37, 64, 110):                         # map images' own descriptors
        q = np.asarray(b.arrays["descriptors"][offsets[i]:offsets[i + 1]])
        ra, rb = single.rank_descriptors(q, 10, exact=True), tiled.rank_descriptors(q, 10, exact=True)
        assert [single.names[j] for j in ra.images] == [tiled.names[j] for j in rb.images]
        np.testing.assert_allclose(ra.scores, rb.scores, rtol=1e-6)
        assert ra.match_sim == pytest.approx(rb.match_sim, rel=1e-6)
    confident = 0
    for path in sorted((datasets / "corridor" / "query").iterdir())[::14]:      # real frames, verified, positioned
        image = load_image(path)
        # exact search: the stored HNSW graphs are approximate (the tiles' smaller graphs miss fewer neighbours)
        a, t = single.localize(image, exact=True), tiled.localize(image, exact=True)
        # scores are sums of float32 similarities from products of other shapes: equal to rounding
        strip = lambda top: [{k: v for k, v in e.items() if k not in ("index", "score")} for e in top]  # noqa: E731
        assert strip(a.top) == strip(t.top) and a.confidence == t.confidence and a.position == t.position
        assert [e["score"] for e in a.top] == pytest.approx([e["score"] for e in t.top], rel=1e-5)
        assert (a.match or {}).get("name") == (t.match or {}).get("name")
        confident += a.match is not None
    assert confident >= 3 and len(tiled.loaded) == 6


def test_near_loads_only_the_tiles_around_the_point(maps, datasets, engines_dir):
    from segvlad_edge.runtime.inputs.images import load_image
    from segvlad_edge.runtime.tiled import TiledLocalizer

    tiled = TiledLocalizer.open(maps["folder"], engines_dir, near=(lat_of(70), 9.0, 300.0), follow=True)
    assert tiled.selected() == [3] and not tiled.loaded        # nothing is read before the first frame
    query = datasets / "corridor" / "query"
    ans = tiled.localize(load_image(sorted(query.iterdir())[70]))
    assert list(tiled.loaded) == [3]
    assert all(61 <= int(e["name"][:7]) <= 80 for e in ans.top)  # every candidate from tile 3 (images 61-80)
    assert ans.match is not None and tiled.region == (ans.position["lat"], ans.position["lon"], 300.0)
    blank = np.zeros((168, 224, 3), np.uint8)          # frames without a confident match: after 3, back to --near
    for n in range(3):
        assert tiled.region != tiled.start
        tiled.localize(blank)
    assert tiled.region == tiled.start
    wide = TiledLocalizer.open(maps["folder"], engines_dir, near=(lat_of(79), 9.0, 300.0))
    assert wide.selected() == [3, 4]                           # within 300 m of the tile boundary: both tiles
    far = TiledLocalizer.open(maps["folder"], engines_dir, near=(10.0, 10.0, 500.0))
    assert far.localize(load_image(sorted(query.iterdir())[5])).match is None and not far.loaded


def test_lru_keeps_a_few_tiles(maps, engines_dir):
    from segvlad_edge.runtime.tiled import TiledLocalizer

    tiled = TiledLocalizer.open(maps["folder"], engines_dir)
    tiled.capacity = 2
    desc = np.asarray(maps["loc"].bundle.arrays["descriptors"][:5])
    for lat in (lat_of(5), lat_of(45), lat_of(90)):
        tiled.region = (lat, 9.0, 100.0)
        tiled.rank_descriptors(desc)
    assert list(tiled.loaded) == [2, 4]


def test_tampered_folder_is_refused_with_one_line(maps, engines_dir, tmp_path, array_span):
    from segvlad_edge.runtime.mapfiles.bundle import BundleError
    from segvlad_edge.runtime.mapfiles.tiles import TileIndexError, read_index
    from segvlad_edge.runtime.tiled import TiledLocalizer

    folder = tmp_path / "copy"
    shutil.copytree(maps["folder"], folder)
    index = folder / "tiles.json"
    doc = json.loads(index.read_text())
    doc["tiles"][0]["bbox"][0] -= 1.0                   # moved a tile without resealing the index
    index.write_text(json.dumps(doc))
    with pytest.raises(TileIndexError, match="checksum mismatch"):
        read_index(folder)
    r = cli("localize", "--map", folder, "--images", folder, "--engines", engines_dir)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "checksum mismatch" in r.stderr
    r = cli("verify", folder, "--engines", engines_dir)
    assert r.returncode == 1 and "FAIL tile index" in r.stdout
    shutil.copy(maps["folder"] / "tiles.json", index)
    tile = folder / doc["tiles"][2]["file"]
    shutil.copy(folder / doc["tiles"][1]["file"], tile)     # a valid bundle, but not the tile the index names
    tiled = TiledLocalizer.open(folder, engines_dir)
    with pytest.raises(TileIndexError, match="sha256 differs"):
        tiled.rank_descriptors(np.asarray(maps["loc"].bundle.arrays["descriptors"][:3]))
    shutil.copy(maps["folder"] / doc["tiles"][2]["file"], tile)
    data = bytearray(tile.read_bytes())                  # one bit of its descriptors flipped: the header still
    data[array_span(tile, "descriptors")[0] + 5] ^= 1    # matches the index, the bundle's own checksum does not
    tile.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="array 'descriptors' checksum mismatch"):
        TiledLocalizer.open(folder, engines_dir).rank_descriptors(np.asarray(maps["loc"].bundle.arrays["descriptors"][:3]))
    r = cli("verify", folder, "--engines", engines_dir)       # verify hashes every tile file in full
    assert r.returncode == 1 and f"FAIL {doc['tiles'][2]['file']}" in r.stdout and "FAIL tile" not in r.stdout.replace(
        f"FAIL {doc['tiles'][2]['file']}", "")
    shutil.copy(maps["folder"] / doc["tiles"][2]["file"], tile)
    fit = (folder / "fit.domain").read_bytes()
    (folder / "fit.domain").write_bytes(fit[:-1])
    with pytest.raises(TileIndexError, match="shared fit"):
        TiledLocalizer.open(folder, engines_dir)
    (folder / "fit.domain").write_bytes(fit)
    from segvlad_edge.runtime.mapfiles.tiles import checksum
    doc = read_index(maps["folder"])
    doc["tiles"][0]["bbox"] = doc["tiles"][1]["bbox"]      # re-sealed: tile 0 claims tile 1's place
    doc["checksum"] = checksum(doc)
    index.write_text(json.dumps(doc))
    with pytest.raises(TileIndexError, match="outside the tile index's bounding box"):
        TiledLocalizer.open(folder, engines_dir).rank_descriptors(np.asarray(maps["loc"].bundle.arrays["descriptors"][:3]))
    r = cli("verify", folder, "--engines", engines_dir)             # verify makes the localizer's checks too
    assert r.returncode == 1 and "outside the tile index's bounding box" in r.stdout
    for field, value, message in (("version", 3, "newer than"), ("images", -3, "images: -3 is below 1"),
                                  ("version", 1, "header_sha256 is required from version 2"),
                                  ("tile_m", "far", "tile_m: 'far' is not a number"),
                                  ("calib_negatives", [0.5, 0.2], "not sorted")):
        doc = {**read_index(maps["folder"]), field: value}
        doc["checksum"] = checksum(doc)                  # re-sealed lies: the schema still refuses them
        index.write_text(json.dumps(doc))
        with pytest.raises(TileIndexError, match=message):
            read_index(folder)
    doc = read_index(maps["folder"])
    doc["tiles"][0]["images"] += 10**8 - doc["images"]  # re-sealed: a count that would size arrays of 1e8 images
    doc["images"] = 10**8
    doc["checksum"] = checksum(doc)
    index.write_text(json.dumps(doc))
    with pytest.raises(TileIndexError, match="claims 999999.. images, more than the file can hold"):
        read_index(folder)
    shutil.copy(maps["folder"] / "tiles.json", index)
    (folder / doc["tiles"][3]["file"]).unlink()
    with pytest.raises(TileIndexError, match="a tile of the map folder is missing"):
        read_index(folder)
    r = cli("localize", "--map", folder, "--images", folder, "--engines", engines_dir)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "is missing" in r.stderr
    r = cli("inspect", maps["folder"])
    assert r.returncode == 0 and "111 in 6 tiles of 1003 m" in r.stdout and r.stdout.count("tile_e") == 6


def test_corrupted_codes_in_a_tile_leave_its_images_out_not_the_run(maps, engines_dir, datasets, tmp_path,
                                                                    array_span, caplog):
    """A tile's header still matches the index, so it loads; its verification codes are checked
    block by block when first read, and a block that fails leaves its images out with one warning."""
    import logging

    from segvlad_edge.runtime.inputs.images import list_images, load_image
    from segvlad_edge.runtime.tiled import TiledLocalizer

    folder = tmp_path / "f"
    shutil.copytree(maps["folder"], folder)
    tile = folder / maps["doc"]["tiles"][0]["file"]                # map images 0-20, one block of codes
    data = bytearray(tile.read_bytes())
    data[array_span(tile, "verify_codes")[0] + 100] ^= 1
    tile.write_bytes(bytes(data))
    tiled = TiledLocalizer.open(folder, engines_dir)
    ref = list_images(datasets / "corridor" / "ref")
    with caplog.at_level(logging.WARNING):
        answers = [tiled.localize(load_image(ref[i])) for i in (3, 10, 30)]
    assert tiled.corrupt == set(range(21))
    assert [r.levelno for r in caplog.records if "checksum mismatch" in r.getMessage()] == [logging.WARNING]
    assert all(e["index"] >= 21 for a in answers for e in a.top)
    assert answers[2].top[0]["name"] == ref[30].name                # a place in another tile is still found


def test_a_version_1_folder_checks_its_tiles_by_file_sha256(maps, engines_dir, tmp_path):
    """Folders written before the tiles' header_sha256 still load and answer, each tile checked by
    the sha256 of its whole file."""
    from segvlad_edge.runtime.mapfiles.tiles import TileIndexError, checksum, read_index
    from segvlad_edge.runtime.tiled import TiledLocalizer

    folder = tmp_path / "v1"
    shutil.copytree(maps["folder"], folder)
    doc = read_index(folder)
    doc = {**doc, "version": 1, "tiles": [{k: v for k, v in t.items() if k != "header_sha256"} for t in doc["tiles"]]}
    doc["checksum"] = checksum(doc)
    (folder / "tiles.json").write_text(json.dumps(doc))
    desc = np.asarray(maps["loc"].bundle.arrays["descriptors"][:30])
    expected = maps["loc"].rank_descriptors(desc, 5, exact=True)
    tiled = TiledLocalizer.open(folder, engines_dir)
    ranked = tiled.rank_descriptors(desc, 5, exact=True)
    assert [maps["loc"].names[j] for j in expected.images] == [tiled.names[j] for j in ranked.images]
    assert len(tiled.loaded) == 6
    tile = folder / doc["tiles"][0]["file"]
    data = bytearray(tile.read_bytes())
    data[-10] ^= 1
    tile.write_bytes(bytes(data))
    with pytest.raises(TileIndexError, match="sha256 differs"):
        TiledLocalizer.open(folder, engines_dir).rank_descriptors(desc)


def test_positions_are_required_and_outputs_are_safe(maps, corridor_bundle, datasets, tmp_path):
    from segvlad_edge.runtime.mapfiles.bundle import MapBundle
    from segvlad_edge.runtime.mapping import MapBuildError
    from segvlad_edge.runtime.tiling import split_map

    images = tmp_path / "images"
    images.mkdir()
    for p in sorted((datasets / "corridor" / "ref").iterdir())[:3]:
        (images / p.name).symlink_to(p)
    r = cli("build-map", images, "-o", tmp_path / "out", "--tile-m", "100")     # refused before the engine is opened
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "needs a lat/lon position for every image; 3 of 3" in r.stderr
    assert not (tmp_path / "out").exists()
    with pytest.raises(MapBuildError, match="needs a lat/lon position"):
        split_map(MapBundle.read(corridor_bundle), maps["loc"].pipeline, tmp_path / "f", TILE_M)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    from segvlad_edge.errors import FileSafetyError
    with pytest.raises(FileSafetyError, match="not empty"):
        split_map(MapBundle.read(maps["single"]), maps["loc"].pipeline, busy, TILE_M)
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]


def test_killed_split_leaves_no_folder(maps, monkeypatch, tmp_path):
    from segvlad_edge.runtime import tiling
    from segvlad_edge.runtime.mapfiles.bundle import MapBundle

    calls = []

    def dies(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)
    real = tiling._write_tile
    monkeypatch.setattr(tiling, "_write_tile", dies)
    with pytest.raises(KeyboardInterrupt):
        tiling.split_map(MapBundle.read(maps["single"]), maps["loc"].pipeline, tmp_path / "out", TILE_M)
    assert list(tmp_path.iterdir()) == []


def test_build_map_tile_m_and_localize_near_end_to_end(datasets, engines_dir, tmp_path):
    images, queries = tmp_path / "images", tmp_path / "queries"
    images.mkdir()
    queries.mkdir()
    ref = sorted((datasets / "corridor" / "ref").iterdir())[:60:5]            # 12 map images 250 m apart: tiles of 3, 2 x 4, 1
    rows = ["name,lat,lon"]
    for i, p in enumerate(ref):
        (images / p.name).symlink_to(p)
        rows.append(f"{p.name},{lat_of(5 * i):.8f},9.0")
    (tmp_path / "poses.csv").write_text("\n".join(rows) + "\n")
    for p in sorted((datasets / "corridor" / "query").iterdir())[:2]:
        (queries / p.name).symlink_to(p)
    out = tmp_path / "site"
    r = cli("build-map", images, "-o", out, "--tile-m", "510", "--metadata", tmp_path / "poses.csv", "--fit", "map",
            "--engines", engines_dir, "--quiet", "--threads", "2")
    assert r.returncode == 0, r.stderr
    assert "12 images" in r.stdout and "6 tiles of 510 m" in r.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "poses.csv", "queries", "site"]
    r = cli("verify", out, "--engines", engines_dir)
    assert r.returncode == 0 and "FAIL" not in r.stdout and r.stdout.count("ok  ") == 2 + 6 * 6, r.stdout
    r = cli("localize", "--map", out, "--near", f"{lat_of(0)},9.0,100", "--images", queries, "--engines", engines_dir,
            "--threads", "2")
    assert r.returncode == 0, r.stderr
    recs = [json.loads(line) for line in r.stdout.splitlines()]
    folder_id = hashlib.sha256((out / "tiles.json").read_bytes()).hexdigest()[:12]
    assert len(recs) == 2 and all(rec["map"] == {"file": "site", "id": folder_id}
                                  and rec["schema"] == "segvlad-edge/localize/2" for rec in recs)
    assert {e["name"] for rec in recs for e in rec["top"]} <= {p.name for p in ref[:3]}   # tile 0 only
    r = cli("localize", "--map", out, "--near", "91,9", "--images", queries, "--engines", engines_dir)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--near" in r.stderr
    r = cli("build-map", images, "-o", out, "--tile-m", "500", "--metadata", tmp_path / "poses.csv",
            "--engines", engines_dir, "--quiet")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "not an empty folder" in r.stderr


def test_map_argument_errors_are_one_line(maps, engines_dir, tmp_path):
    r = cli("localize", "--map", tmp_path, "--images", tmp_path)                      # a folder that is no map folder
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "without tiles.json" in r.stderr
    r = cli("localize", "--map", maps["single"], "--near", "45,9", "--images", tmp_path)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "--near selects the tiles of a map folder" in r.stderr
    r = cli("localize", "--map", maps["folder"], "--save-vis", tmp_path / "vis", "--images", tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--save-vis needs a map bundle" in r.stderr
    index = maps["folder"] / "tiles.json"
    before = index.read_bytes()
    for target in (index, maps["folder"] / "fit.domain"):               # a map folder's files are inputs
        r = cli("localize", "--map", maps["folder"], "--images", tmp_path, "--out", target, "--engines", engines_dir)
        assert r.returncode == 1 and r.stderr.count("\n") == 1 and "input of this command" in r.stderr, r.stderr
    assert index.read_bytes() == before
    r = cli("localize", "--map", maps["folder"], "--domain", maps["folder"] / "fit.domain", "--images", tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "a map folder carries its own fit" in r.stderr
    r = cli("build-map", tmp_path, "--add", maps["single"], "--tile-m", "100")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--tile-m writes a new map folder" in r.stderr


def test_tiles_and_positions_across_the_antimeridian():
    from segvlad_edge.runtime.mapfiles.tiles import bbox_distance_m
    from segvlad_edge.runtime.steps.position import MapPositions, from_plane, to_plane

    # a tile just west of 180 deg E is about 200 m from a point just east of it, not the globe away
    d = bbox_distance_m(np.array([[-17.0, -179.999, -16.99, -179.99]]), -17.0, 179.999)
    assert 150 < d[0] < 250, d
    assert bbox_distance_m(np.array([[-17.0, 179.99, -16.99, 179.999]]), -17.0, 179.995)[0] == 0
    en = to_plane(np.array([[-17.0, 179.999], [-17.0, -179.999]]), (-17.0, 180.0))
    assert abs(en[1, 0] - en[0, 0] - 212.7) < 1 and abs(en[0, 1]) < 1e-6
    ll = from_plane(en, (-17.0, 180.0))
    np.testing.assert_allclose(ll, [[-17.0, 179.999], [-17.0, -179.999]], atol=1e-9)
    pos = MapPositions.from_images([{"name": "a", "meta": {"gps": [-17.0, 179.999]}},
                                    {"name": "b", "meta": {"gps": [-17.0, -179.999]}}])
    assert abs(abs(pos.origin[1]) - 180.0) < 1e-6 and np.ptp(pos.xy[:, 0]) < 300


def test_eval_scores_a_map_folder_like_its_single_bundle(maps, datasets, engines_dir, tmp_path):
    """eval --map takes a map folder: every tile searched, the same recall and sizes as the bundle."""
    queries = tmp_path / "q"
    queries.mkdir()
    rows = ["name,lat,lon"]
    for i, p in enumerate(sorted((datasets / "corridor" / "query").iterdir())[:40:8]):
        (queries / p.name).symlink_to(p)
        rows.append(f"{p.name},{lat_of(i * 8):.8f},9.0")             # query i shows map image i; 50 m apart
    (tmp_path / "q.csv").write_text("\n".join(rows) + "\n")
    res = {}
    for kind in ("single", "folder"):
        r = cli("eval", "--map", maps[kind], queries, "--metadata", tmp_path / "q.csv", "--exact", "--json",
                "--engines", engines_dir, "--threads", "2")
        assert r.returncode == 0, r.stderr
        res[kind] = json.loads(r.stdout.strip().splitlines()[-1])
    single, folder = res["single"], res["folder"]
    assert folder["queries"] == 5 and folder["map_images"] == 111 and folder["layout"] == "gps"
    assert folder["recall@1"] > 0
    for key in ("recall@1", "recall@5", "recall@10", "answered", "recall@1_answered", "segments_per_image",
                "verification_bytes_per_image"):
        assert folder[key] == single[key], key
    assert folder["index"] == "exact" and folder["fit"] == "map folder's shared fit"
    assert folder["bundle_bytes"] > 0 and folder["descriptor_bytes_per_image"] > 0
    r = cli("eval", "--map", maps["folder"], queries, "--metadata", tmp_path / "q.csv", "--domain",
            maps["folder"] / "fit.domain", "--engines", engines_dir)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--domain" in r.stderr

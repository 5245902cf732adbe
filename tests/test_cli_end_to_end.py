"""build-map + localize + eval + inspect through the real CLI on a real set (corridor)."""
import json
import subprocess
import sys

import pytest

from segvlad_edge.runtime.mapfiles.bundle import MapBundle


def run(*args, check=True):
    r = subprocess.run([sys.executable, "-m", "segvlad_edge.apps.cli", *map(str, args)], capture_output=True, text=True)
    if check:
        assert r.returncode == 0, r.stderr
    return r


@pytest.fixture(scope="module")
def corridor_map(datasets, engines_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("map") / "corridor.segmap"
    r = run("build-map", datasets / "corridor" / "ref", "-o", out, "--engines", engines_dir, "--quiet")
    assert "111 images" in r.stdout
    return out


def test_build_map_and_localize_recall(datasets, engines_dir, corridor_map):
    b = MapBundle.read(corridor_map)
    assert len(b.images) == 111 and b.arrays["descriptors"].dtype.name == "float16"
    assert not list(corridor_map.parent.glob(".*work*")), "work folder must be removed"
    r = run("localize", "--map", corridor_map, "--images", datasets / "corridor" / "query", "--engines", engines_dir)
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(lines) == 111
    gt = json.loads((datasets / "corridor" / "gt.json").read_text())
    hits = 0
    for line in lines:
        assert set(line) >= {"query", "top"} and len(line["top"]) >= 1
        inliers = [t["inliers"] for t in line["top"]]               # the verified shortlist, best first
        assert inliers[1:] == sorted(inliers[1:], reverse=True) and min(t["score"] for t in line["top"]) > 0
        hits += f"ref/{line['top'][0]['name']}" in gt[f"query/{line['query']}"]
    assert hits / len(lines) >= 0.6


def test_localize_rival_ratio_zero_answers_on_inliers_alone(datasets, engines_dir, corridor_map):
    """--rival-ratio 0 turns the rival rule off: no frame's confidence drops, and on corridor's
    repeated structure some rise (their best other place verified almost as well); the records name
    that rival, and a frame refused only with the rule has a rival within 1.05x of its answer."""
    def records(*extra):
        r = run("localize", "--map", corridor_map, "--images", datasets / "corridor" / "query", "--every-n", "8",
                "--engines", engines_dir, *extra)
        return {line["query"]: line for line in map(json.loads, r.stdout.splitlines())}

    from segvlad_edge.runtime.steps.confidence import ANSWER_INLIERS, RIVAL_RATIO, WINDOW

    rule, alone = records(), records("--rival-ratio", "0")
    assert len(rule) == 14 and rule.keys() == alone.keys()
    assert all(alone[q]["confidence"] >= rule[q]["confidence"] for q in rule)
    lowered = [q for q in rule if alone[q]["confidence"] > rule[q]["confidence"]]
    assert lowered                                                  # and the record names the rival it weighed
    assert all(RIVAL_RATIO * rule[q]["rival"]["inliers"] > ANSWER_INLIERS["affine"] for q in lowered)
    frame = lambda name: int(name.split(".")[0])                    # noqa: E731  (corridor's map: ref/0000012.jpg)
    assert all(abs(frame(rule[q]["rival"]["name"]) - frame(rule[q]["top"][0]["name"])) > WINDOW for q in lowered)
    refused = [q for q in rule if rule[q]["match"] is None and alone[q]["match"] is not None]
    assert refused and all(RIVAL_RATIO * rule[q]["rival"]["inliers"] > rule[q]["top"][0]["inliers"] for q in refused)


def test_eval_json_contract(datasets, engines_dir):
    r = run("eval", datasets / "corridor", "--method", "segvlad", "--json", "--engines", engines_dir)
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["queries"] == 111
    assert 0.6 <= res["recall@1"] <= res["recall@5"] <= res["recall@10"] <= 1
    assert res["descriptor_bytes_per_image"] > 0 and res["verification_bytes_per_image"] == 192 * 64 * 2


def test_eval_an_existing_map_with_positions(datasets, engines_dir, tmp_path):
    """eval --map: ground truth from @utm@ names, 25 m radius; the same 8 places seen from the left
    and the right of the path (gardens_point_day), 100 m apart."""
    import shutil

    from segvlad_edge.runtime.inputs.images import list_images

    (tmp_path / "map").mkdir()
    (tmp_path / "q").mkdir()
    left = list_images(datasets / "gardens_point_day" / "day_left")[::25]
    right = list_images(datasets / "gardens_point_day" / "day_right")[::25]
    for i, (a, b) in enumerate(zip(left, right)):
        shutil.copy(a, tmp_path / "map" / f"@{500000 + 100 * i}@4000000@55@H@@@.jpg")
        shutil.copy(b, tmp_path / "q" / f"@{500000 + 100 * i + 10}@4000000@55@H@@@.jpg")     # 10 m off
    out = tmp_path / "m.segmap"
    run("build-map", tmp_path / "map", "-o", out, "--engines", engines_dir, "--quiet")
    r = run("eval", "--map", out, tmp_path / "q", "--json", "--engines", engines_dir)
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["queries"] == len(left) == 8 and res["layout"] == "utm"
    assert 0.5 <= res["recall@1"] <= res["recall@5"] <= 1
    assert res["verification_bytes_per_image"] > 0 and res["descriptor_bytes_per_image"] > 0
    shutil.copy(right[0], tmp_path / "q" / "no_position.jpg")
    r = run("eval", "--map", out, tmp_path / "q", "--engines", engines_dir, check=False)
    assert r.returncode == 1 and r.stderr.startswith("error:") and "position" in r.stderr


def test_inspect(corridor_map):
    r = run("inspect", corridor_map)
    assert "images 111" in r.stdout and "descriptors" in r.stdout and "verification: top 10" in r.stdout
    assert "answered from 18 inliers and 1.05x those of any other place (more than 2 map images away)" in r.stdout


def test_user_errors_are_one_line(tmp_path, datasets, engines_dir, corridor_map):
    cases = [
        ("localize", "--map", tmp_path / "none.segmap", "--images", tmp_path, "--engines", engines_dir),
        ("build-map", tmp_path / "missing", "-o", tmp_path / "m.segmap", "--engines", engines_dir),
        ("build-map", datasets / "corridor" / "ref", "-o", tmp_path / "m.segmap", "--engines", tmp_path),
        ("eval", datasets / "toy_unlabelled", "--engines", engines_dir),
        ("build-engines", "--dinov2", tmp_path / "nope.pth", "--out", tmp_path),
        ("engines", tmp_path / "nothing"),
    ]
    (tmp_path / "empty").mkdir()
    cases.append(("build-map", tmp_path / "empty", "-o", tmp_path / "m.segmap", "--engines", engines_dir))
    for args in cases:
        r = run(*args, check=False)
        assert r.returncode == 1, (args, r.stderr)
        assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
        assert "Traceback" not in r.stderr
    assert not (tmp_path / "m.segmap").exists()


def test_map_from_other_engine_is_refused(tmp_path, corridor_map, engines_dir):
    from segvlad_edge.export import build_engines
    other = tmp_path / "other"
    build_engines.build_engines({"sizes": [(224, 168)], "block": 9}, other)
    r = run("localize", "--map", corridor_map, "--images", tmp_path, "--engines", other, check=False)
    assert r.returncode == 1 and "another engine" in r.stderr


def test_eval_report_compares_methods(datasets, engines_dir, tmp_path):
    import csv

    import cv2

    r = run("eval", datasets / "corridor", "--method", "segvlad", "--method", "global", "--json", "--report",
            tmp_path / "report", "--engines", engines_dir)
    results = [json.loads(line) for line in r.stdout.strip().splitlines()]
    assert [x["method"] for x in results] == ["segvlad", "global"]
    assert "report:" in r.stderr
    png = cv2.imread(str(tmp_path / "report" / "recall.png"))
    assert png is not None and png.shape[:2] == (420, 640)
    for x in results:
        rows = list(csv.DictReader(open(tmp_path / "report" / f"failures-{x['method']}.csv")))
        assert len(rows) == round((1 - x["recall@1"]) * x["queries"])
        assert all(row["query"].startswith("query/") and row["answered"].startswith("ref/") for row in rows)
        table = cv2.imread(str(tmp_path / "report" / f"failures-{x['method']}.png"))
        assert table is not None and table.shape[0] > 132 * min(len(rows), 12)


def test_usage_errors_are_one_line_too(tmp_path, corridor_map, engines_dir):
    cases = [(("localize", "--map", corridor_map, "--engines", engines_dir), 1, "exactly one frame source"),
             (("localize", "--images", tmp_path), 2, "Missing option '--map'"),
             (("explain", tmp_path / "none.jpg", "--map", corridor_map), 2, "does not exist"),
             (("no-such-command",), 2, "No such command")]
    for args, code, text in cases:
        r = run(*args, check=False)
        assert r.returncode == code, (args, r.stderr)
        assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1 and text in r.stderr
    r = run("--version")
    assert r.stdout.startswith("segvlad-edge, version")

import pytest

from segvlad_edge.runtime.mapfiles.metadata import MetadataError, from_name, read_csv

AT_NAME = "@0543256.96@4178906.70@10@S@037.75591@-122.50892@3lBcJNQLVTpEA8JEIsCzHQ@@000@@@@201311@@.jpg"


def test_at_style_names():
    m = from_name("sub/" + AT_NAME)
    assert m["utm"] == [543256.96, 4178906.70] and m["utm_zone"] == "10S"
    assert m["gps"] == [37.75591, -122.50892] and m["heading"] == 0 and m["timestamp"] == "201311"
    assert from_name("Image001.jpg") == {} and from_name("a@b.jpg") == {}


def test_csv(tmp_path):
    p = tmp_path / "meta.csv"
    p.write_text("Name,lat,lon,alt,label,floor\n"
                 "a.jpg,48.1,11.5,520,door,2\n"
                 "b.jpg,,,,corner,\n", encoding="utf-8")
    m = read_csv(p, ["a.jpg", "b.jpg", "c.jpg"])
    assert m == {"a.jpg": {"gps": [48.1, 11.5, 520.0], "label": "door", "floor": 2.0}, "b.jpg": {"label": "corner"}}
    p.write_text("image,x,y,z,qw,qx,qy,qz\nc.jpg,1,2,3,1,0,0,0\n")
    assert read_csv(p, ["c.jpg"])["c.jpg"]["pose"] == [1, 2, 3, 1, 0, 0, 0]


@pytest.mark.parametrize("text, why", [
    ("file,lat\nzzz.jpg,1\n", "not an image of this map"),
    ("name,lat,lon\na.jpg,north,1\n", "must be numbers"),
    ("name,label\na.jpg,x\na.jpg,y\n", "twice"),
    ("where,lat\na.jpg,1\n", "no 'name' column"),
    ("name,x,y\na.jpg,1,2\n", "pose needs"),
])
def test_bad_csv(tmp_path, text, why):
    p = tmp_path / "m.csv"
    p.write_text(text)
    with pytest.raises(MetadataError, match=why):
        read_csv(p, ["a.jpg"])


def test_unreadable_csv(tmp_path):
    p = tmp_path / "m.csv"
    p.write_bytes(b"name,label\n\xff\xfe\x00bad")
    with pytest.raises(MetadataError, match="UTF-8"):
        read_csv(p, ["a.jpg"])
    with pytest.raises(MetadataError, match="cannot read"):
        read_csv(tmp_path / "missing.csv", ["a.jpg"])


def test_metadata_travels_from_names_and_csv_to_answers(datasets, engines_dir, tmp_path):
    """build-map reads @-style names and a CSV; localize reports the metadata of the places it names."""
    import json
    import shutil
    import subprocess
    import sys

    from segvlad_edge.runtime.inputs.images import list_images

    maps = tmp_path / "map"
    maps.mkdir()
    rows = ["name,label"]
    for i, p in enumerate(list_images(datasets / "corridor" / "ref")[:12]):
        name = f"@{500000 + 3 * i:.2f}@4100000.00@33@T@{45 + i * 1e-4:.5f}@9.10000@@@{90 + i}@@@@@@.jpg"
        shutil.copy(p, maps / name)
        rows.append(f"{name},corridor-{i}")
    (tmp_path / "meta.csv").write_text("\n".join(rows) + "\n")

    def cli(*args):
        r = subprocess.run([sys.executable, "-m", "segvlad_edge.apps.cli", *map(str, args)], capture_output=True,
                           text=True)
        assert r.returncode == 0, r.stderr
        return r.stdout
    cli("build-map", maps, "-o", tmp_path / "m.segmap", "--metadata", tmp_path / "meta.csv", "--engines", engines_dir,
        "--fit", "map", "--quiet")
    queries = tmp_path / "q"
    queries.mkdir()
    shutil.copy(datasets / "corridor" / "query" / "0000005.jpg", queries / "q.jpg")
    line = json.loads(cli("localize", "--map", tmp_path / "m.segmap", "--images", queries, "--engines", engines_dir))
    best = line["top"][0]
    i = int(best["meta"]["label"].split("-")[1])
    assert best["meta"]["gps"] == [pytest.approx(45 + i * 1e-4), 9.1] and best["meta"]["utm_zone"] == "33T"
    assert best["meta"]["heading"] == 90 + i and abs(i - 5) <= 2

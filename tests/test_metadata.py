import pytest

from segvlad_edge.runtime.metadata import MetadataError, from_name, read_csv

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

"""EXIF GPS and capture time of geotagged photos (drone surveys), and build-map reading them."""
import os
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

from segvlad_edge.runtime.inputs.exif import Exif, read_exif

PIL = pytest.importorskip("PIL.Image")


def geotag(src, dst, lat=(45.0, 30.0, 15.5), lat_ref="N", lon=(9.0, 10.0, 0.0), lon_ref="E", alt=123.4, below=False):
    """A real photo re-saved as JPEG with EXIF GPS (as a drone camera writes it) and a capture time."""
    exif = PIL.Exif()
    exif[0x8825] = {1: lat_ref, 2: lat, 3: lon_ref, 4: lon, 5: b"\x01" if below else b"\x00", 6: alt}
    exif[0x8769] = {0x9003: "2024:05:06 07:08:09"}
    PIL.open(src).save(dst, exif=exif)


def test_gps_and_time_from_a_geotagged_jpeg(datasets, tmp_path):
    src = datasets / "corridor" / "ref" / "0000003.jpg"
    geotag(src, tmp_path / "n.jpg")
    e = read_exif(tmp_path / "n.jpg")
    assert e.gps == pytest.approx([45 + 30 / 60 + 15.5 / 3600, 9 + 10 / 60, 123.4])
    assert e.time == time.mktime((2024, 5, 6, 7, 8, 9, 0, 0, -1))          # no offset tag: local time
    geotag(src, tmp_path / "s.jpg", lat_ref="S", lon_ref="W", below=True)
    assert read_exif(tmp_path / "s.jpg").gps == pytest.approx([-45.50430556, -9.16666667, -123.4])
    assert read_exif(src) == Exif()                                          # a photo without EXIF


def test_big_endian_tiff_block():
    """Motorola byte order, as some cameras write: IFD0 -> GPS IFD with lat/lon rationals, no altitude."""
    e = ">"
    gps_ifd_at, data_at = 26, 26 + 2 + 4 * 12 + 4
    ifd0 = struct.pack(e + "H", 1) + struct.pack(e + "HHII", 0x8825, 4, 1, gps_ifd_at) + struct.pack(e + "I", 0)
    lat = struct.pack(e + "6I", 12, 1, 30, 1, 0, 1)
    lon = struct.pack(e + "6I", 77, 1, 15, 1, 36, 1)
    entries = [struct.pack(e + "HHI", 1, 2, 2) + b"N\x00\x00\x00", struct.pack(e + "HHII", 2, 5, 3, data_at),
               struct.pack(e + "HHI", 3, 2, 2) + b"E\x00\x00\x00", struct.pack(e + "HHII", 4, 5, 3, data_at + 24)]
    tiff = b"MM\x00*" + struct.pack(e + "I", 8) + ifd0
    tiff = tiff.ljust(gps_ifd_at, b"\x00") + struct.pack(e + "H", 4) + b"".join(entries) + b"\x00" * 4 + lat + lon
    app1 = b"Exif\x00\x00" + tiff
    jpeg = b"\xff\xd8" + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + b"\xff\xd9"
    from segvlad_edge.runtime.inputs.exif import _parse, _tiff_block
    assert _tiff_block(jpeg) == tiff
    assert _parse(tiff).gps == pytest.approx([12.5, 77.26])


def test_broken_or_special_files_give_no_exif_and_never_hang(datasets, tmp_path):
    geotag(datasets / "corridor" / "ref" / "0000003.jpg", tmp_path / "g.jpg")
    data = (tmp_path / "g.jpg").read_bytes()
    for cut in range(0, 400, 7):                      # every truncation of the header: no exception
        (tmp_path / "t.jpg").write_bytes(data[:cut])
        assert isinstance(read_exif(tmp_path / "t.jpg"), Exif)
    os.mkfifo(tmp_path / "fifo.jpg")
    assert read_exif(tmp_path / "fifo.jpg") == Exif() and read_exif(tmp_path / "missing.jpg") == Exif()


def test_build_map_reads_gps_from_geotagged_photos(datasets, engines_dir, tmp_path):
    from segvlad_edge.runtime.mapfiles.bundle import MapBundle
    from segvlad_edge.runtime.inputs.images import list_images

    photos = tmp_path / "survey"
    photos.mkdir()
    for i, p in enumerate(list_images(datasets / "corridor" / "ref")[:12]):
        geotag(p, photos / f"DJI_{i:04d}.JPG", lat=(45.0, 0.0, 0.1 * i))
    r = subprocess.run([sys.executable, "-m", "segvlad_edge.apps.cli", "build-map", photos, "-o", tmp_path / "m.segmap",
                        "--engines", engines_dir, "--fit", "map", "--quiet"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    images = MapBundle.read(tmp_path / "m.segmap").images
    got = np.array([img["meta"]["gps"] for img in images])
    assert np.abs(got - [[45 + 0.1 * i / 3600, 9 + 10 / 60, 123.4] for i in range(12)]).max() < 1e-9
    r = subprocess.run([sys.executable, "-m", "segvlad_edge.apps.cli", "inspect", tmp_path / "m.segmap"],
                       capture_output=True, text=True)
    assert "metadata: 12 of 12 images (gps 12); positions: gps (lat/lon), map spacing 3.09 m" in r.stdout

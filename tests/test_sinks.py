"""Output sinks: every --out gets every record; targets are checked at start; inputs are never written."""
import hashlib
import json
import os
import shutil
import socket
import stat
import subprocess
import sys

import pytest

from segvlad_edge.apps.sinks import FileSink, SinkError, open_sinks


def cli(*args):
    return subprocess.run([sys.executable, "-m", "segvlad_edge.apps.cli", *map(str, args)], capture_output=True,
                          text=True)


def one_error_line(r, *words):
    assert r.returncode == 1 and "Traceback" not in r.stderr
    errors = [x for x in r.stderr.strip().splitlines() if not x.startswith("info: ")]
    assert len(errors) == 1 and errors[0].startswith("error: "), r.stderr
    for w in words:
        assert w in errors[0], errors[0]


def test_every_output_gets_identical_records_naming_the_map(datasets, corridor_bundle, engines_dir, tmp_path):
    queries = tmp_path / "q"
    queries.mkdir()
    for p in sorted((datasets / "corridor" / "query").iterdir())[:3]:
        shutil.copy(p, queries / p.name)
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(5)
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text('{"earlier": "run"}\n')                        # appended to, never truncated
    r = cli("localize", "--map", corridor_bundle, "--images", queries, "--engines", engines_dir, "--out", "-",
            "--out", a, "--out", f"udp://127.0.0.1:{rx.getsockname()[1]}", "--out", b)
    assert r.returncode == 0, r.stderr
    stdout = r.stdout.splitlines()
    assert len(stdout) == 3
    assert a.read_text().splitlines() == ['{"earlier": "run"}'] + stdout and b.read_text().splitlines() == stdout
    assert [rx.recv(65536).decode() for _ in stdout] == stdout
    raw = corridor_bundle.read_bytes()                  # the map's id: its sealed header's sha256 (prefix <16sIQ32s)
    header_len = int.from_bytes(raw[20:28], "little")
    map_id = hashlib.sha256(raw[60:60 + header_len]).hexdigest()[:12]
    assert raw[28:60].hex()[:12] == map_id
    for line in map(json.loads, stdout):
        assert line["map"] == {"file": corridor_bundle.name, "id": map_id}
        assert "position" in line and line["position"] is None          # this map carries no positions
        rival = line["rival"]
        assert rival is None or (set(rival) == {"name", "inliers"} and isinstance(rival["name"], str)
                                 and rival["inliers"] > 0)
    assert f"id {map_id}," in cli("inspect", corridor_bundle).stdout


@pytest.mark.parametrize("target, words", [("udp://127.0.0.1:99999", ["99999", "port from 1 to 65535"]),
                                           ("udp://invalid.invalid:9999", ["invalid.invalid", "cannot resolve"]),
                                           ("mavlink:tcp:1.2.3.4:5", ["mavlink:udp:HOST:PORT"])])
def test_bad_network_targets_fail_at_start(datasets, corridor_bundle, engines_dir, target, words):
    r = cli("localize", "--map", corridor_bundle, "--images", datasets / "corridor" / "query", "--engines",
            engines_dir, "--out", target)
    one_error_line(r, *words)
    assert r.stdout == ""                                            # before the first frame


def test_the_map_is_never_an_output(datasets, corridor_bundle, engines_dir, tmp_path):
    m = tmp_path / "m.segmap"
    shutil.copy(corridor_bundle, m)
    before = hashlib.sha256(m.read_bytes()).hexdigest()
    r = cli("localize", "--map", m, "--images", datasets / "corridor" / "query", "--engines", engines_dir,
            "--out", m)
    one_error_line(r, "input of this command")
    assert hashlib.sha256(m.read_bytes()).hexdigest() == before


def test_file_sink_refuses_inputs_folders_and_same_target_twice(tmp_path):
    img = tmp_path / "q.jpg"
    img.write_bytes(b"jpeg")
    link = tmp_path / "link.jsonl"
    link.symlink_to(img)
    for target in (img, link):
        with pytest.raises(SinkError, match="input of this command"):
            FileSink(str(target), [img])
    assert img.read_bytes() == b"jpeg"
    with pytest.raises(SinkError, match="is a folder"):
        FileSink(str(tmp_path), [])
    with pytest.raises(SinkError, match="twice"):
        open_sinks([str(tmp_path / "x"), str(tmp_path / "." / "x")])


def test_special_files_are_written_as_they_are_never_replaced(tmp_path):
    s = FileSink("/dev/null", [])
    s.write({"a": 1})
    s.close()
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(SinkError, match="FIFO without a reader"):
        FileSink(str(fifo), [])
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        s = FileSink(str(fifo), [])
        s.write({"b": 2})
        s.close()
        assert json.loads(os.read(reader, 1000)) == {"b": 2}
    finally:
        os.close(reader)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)

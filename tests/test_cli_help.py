"""Help texts and inspect: what a user reads before running anything."""
import re
import subprocess
import sys

from segvlad_edge.runtime.settings import CONFS

COMMANDS = ("build-engines", "engines", "build-domain", "build-map", "localize", "explain", "eval", "inspect",
            "verify", "demo")


def run(*args):
    r = subprocess.run([sys.executable, "-m", "segvlad_edge.apps.cli", *map(str, args)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_every_option_is_explained_for_its_own_command():
    for cmd in COMMANDS:
        text = run(cmd, "--help")
        assert "_SIZE" not in text and "TEXT" not in text.replace("--video TEXT", ""), (cmd, text)
        options = re.findall(r"^  (?:-\w, )?(--[a-z-]+)(.*)$", text, re.M)
        for name, rest in options:                       # each option has a help text (same line or the next)
            block = text.split(name, 1)[1].split("\n  -", 1)[0]
            words = [w for w in block.split() if not w.isupper() and not w.startswith("[")]   # not the metavar
            assert words, (cmd, name, block)
        if cmd != "eval":
            assert "eval" not in text.split("Options:", 1)[1], (cmd, text)
    flat = " ".join(run("build-map", "--help").split())
    seg = CONFS["segvlad"]
    assert f"default: {seg['segmenter']} for segvlad, {CONFS['grid']['segmenter']} for grid" in flat
    assert f"(default: {seg['order']}; global: {CONFS['global']['order']})" in flat
    assert f"(default: {seg['pca_dims']}; global: no PCA)" in flat and CONFS["global"]["pca_dims"] is None
    assert "repeat to compare" in " ".join(run("eval", "--help").split())
    assert "repeatable, each gets every record" in " ".join(run("localize", "--help").split())


def test_inspect_says_how_many_images_carry_metadata_and_positions(corridor_bundle, positioned_bundle):
    assert "  metadata: 0 of 111 images; positions: none (answers carry no position)" in run("inspect", corridor_bundle)
    text = run("inspect", positioned_bundle("gps"))
    assert "  metadata: 111 of 111 images (gps 111); positions: gps (lat/lon), map spacing 1 m" in text


def test_index_option_names_the_size_rule_and_is_refused_where_it_cannot_apply(tmp_path):
    from segvlad_edge.runtime.steps.index import HNSWSQ_FROM, IVFPQ_FROM

    for cmd in ("build-map", "eval"):
        assert f"auto: hnsw under {HNSWSQ_FROM} segments, hnswsq under {IVFPQ_FROM}, else ivfpq" in \
            " ".join(run(cmd, "--help").split())
    (tmp_path / "m.segmap").write_bytes(b"x")                     # never read: the options are refused first
    for args in (("build-map", tmp_path, "--add", tmp_path / "m.segmap", "--index", "ivfpq"),
                 ("eval", tmp_path, "--map", tmp_path / "m.segmap", "--index", "hnsw")):
        r = subprocess.run([sys.executable, "-m", "segvlad_edge.apps.cli", *map(str, args)], capture_output=True,
                           text=True)
        assert r.returncode == 2 and "--index" in r.stderr and r.stderr.count("\n") == 1, r.stderr

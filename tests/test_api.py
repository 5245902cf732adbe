"""The README's Python API example, run as written on a real frame and a geotagged map."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

from segvlad_edge.runtime.steps.position import AGREE_SPACINGS

ROOT = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- api-example -->\n```python\n(.*?)```", text, re.S)
    assert m, "the README lost its Python API example"
    return m.group(1)


def test_readme_python_api_example_runs(positioned_bundle, engines_dir, datasets, tmp_path):
    code = readme_example()
    assert len(code.strip().splitlines()) <= 12 and "from segvlad_edge import Localizer, MapBundle" in code
    shutil.copy(positioned_bundle("gps"), tmp_path / "site.segmap")
    shutil.copy(datasets / "corridor" / "query" / "0000030.jpg", tmp_path / "frame.jpg")
    env = {"SEGVLAD_ENGINES": str(engines_dir), "PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    first, second = r.stdout.splitlines()
    assert first == "111 map images"
    name, confidence, lat, lon, sigma = second.split()
    assert (tmp_path / "frame.jpg").exists() and name.endswith(".jpg") and 0.7 <= float(confidence) <= 1
    # map image i lies i metres north of 45 N (spacing 1 m): the estimate sits within the agreement radius
    assert abs((float(lat) - 45) * 111_195 - int(name[:7])) <= AGREE_SPACINGS and float(lon) == 9.0 and float(sigma) >= 0.5


def test_localize_and_eval_run_numpy_with_one_blas_thread():
    """apps/cli.one_blas_thread: the per-frame products are small; idle BLAS workers would spin."""
    import os
    import subprocess
    import sys

    code = ("import numpy; from threadpoolctl import threadpool_info; from segvlad_edge.apps.cli import one_blas_thread; "
            "one_blas_thread(); print(sorted({i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={
        **os.environ, "OPENBLAS_NUM_THREADS": "2"}, check=True).stdout
    assert out.strip() == "[1]"

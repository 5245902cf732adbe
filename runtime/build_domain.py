"""Step ``build-domain``: fit the vocabulary/PCA once on a broad image set and write the domain
file (``runtime/mapfiles/domain.py``) that small maps then reference."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from segvlad_edge.files import check_output
from segvlad_edge.runtime.mapfiles.domain import save_domain
from segvlad_edge.runtime.fitting import FitError, fit_models
from segvlad_edge.runtime.frame_cache import extract_frames, load_frame
from segvlad_edge.runtime.models import Models
from segvlad_edge.runtime.pipeline import FramePipeline


def build_domain(images: list[tuple[str, Path]], pipeline: FramePipeline, work: Path, sources: list[str],
                 progress: bool = True, out: Path | None = None) -> tuple[Path, int, int, list, Models]:
    """Fit the models on ``images`` ([(name, path)]) with ``pipeline``'s engine and settings
    (work files in ``work``) and write the domain file (``out``, default beside the engine).
    Returns (path, bytes, images used, skipped [(name, reason)], the fitted models)."""
    if not images:
        raise FitError("no images to fit a domain vocabulary on")
    if out is not None:
        check_output(out, [p for _, p in images])
    kept, skipped, _ = extract_frames(images, work, pipeline, progress)
    models = fit_models(pipeline.conf, lambda: (load_frame(wf, pipeline.conf) for _, wf in kept), len(kept),
                        np.random.default_rng(0), progress)
    path, size = save_domain(models, pipeline.extractor.manifest, pipeline.conf, sources, len(kept), out,
                             inputs=[p for _, p in images])
    return path, size, len(kept), skipped, models

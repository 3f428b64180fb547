"""Open the engine the settings ask for: model name or path, device, precision, threads."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pipeline.asr.catalog import resolve_name
from pipeline.asr.engine import Engine, configure_cpu_threads
from pipeline.asr.store import ModelNotFound, Progress, pull, resolve_model
from pipeline.settings import Settings

log = logging.getLogger(__name__)


def ensure_model(settings: Settings, *, download: bool = False, progress: Progress | None = None) -> Path:
    """The checkpoint GIGAAM_MODEL names. With `download`, a catalog name that is not in the model
    directory is pulled first (MD5-checked), so a fresh `gigaam-transcriber up` works out of the box
    where the network allows."""
    try:
        return resolve_model(settings.model, settings.model_dir)
    except ModelNotFound:
        if not download or settings.model.endswith(".ckpt") or os.sep in settings.model:
            raise
        info = resolve_name(settings.model)
        log.info("model %s not in %s: downloading it", info.name, settings.model_dir)
        return pull(info, settings.model_dir, base_url=settings.model_base_url or None, progress=progress)


def load_engine(settings: Settings, *, download: bool = False) -> Engine:
    configure_cpu_threads(settings.cpu_threads)
    path = ensure_model(settings, download=download)
    return Engine.from_checkpoint(
        path, device=settings.device, precision=settings.precision, max_batch=settings.infer_batch_size
    )

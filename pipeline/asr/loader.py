"""Open the engine the settings ask for: model name or path, device, precision, threads."""

from __future__ import annotations

from pipeline.asr.engine import Engine, configure_cpu_threads
from pipeline.asr.store import resolve_model
from pipeline.settings import Settings


def load_engine(settings: Settings) -> Engine:
    configure_cpu_threads(settings.cpu_threads)
    path = resolve_model(settings.model, settings.model_dir)
    return Engine.from_checkpoint(
        path, device=settings.device, precision=settings.precision, max_batch=settings.infer_batch_size
    )

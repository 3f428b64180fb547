"""Infer service: PCM object + segments -> transcript object -> format job.

One engine per process; `GIGAAM_INFER_CONCURRENCY` jobs in flight share it through the segment
batcher. More processes or hosts simply bind the same durable consumer.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily

from pipeline.asr.catalog import UnknownModel, resolve_name
from pipeline.asr.checkpoint import CheckpointError
from pipeline.asr.engine import Engine
from pipeline.asr.loader import load_engine
from pipeline.asr.store import DownloadError, ModelNotFound
from pipeline.bus import Delivery, ObjectMissing, PermanentError, get_to_file, publish_job, put_bytes
from pipeline.batcher import SegmentBatcher
from pipeline.logs import task_logger
from pipeline.service import ServiceContext, main
from pipeline.stages import PROGRESS, transcribing_progress
from pipeline.stages.infer import transcribe_job
from schemas.messages import FormatJob, InferJob, decode, encode
from schemas.subjects import object_name

log = logging.getLogger(__name__)

RETRY_MODEL_S = 30.0


def serves(requested: str | None, served: str) -> bool:
    if not requested:
        return True
    try:
        return resolve_name(requested).name == served
    except UnknownModel:
        return requested == served


async def open_engine(ctx: ServiceContext) -> Engine | None:
    """Keeps trying (one clear log line per attempt) instead of crash-looping without a model."""
    while not ctx.stop.is_set():
        try:
            return await asyncio.to_thread(load_engine, ctx.settings, download=True)
        except (ModelNotFound, CheckpointError, UnknownModel, DownloadError, ValueError, OSError) as exc:
            ctx.info["error"] = f"GIGAAM_MODEL={ctx.settings.model}: {exc}"  # /health shows it
            log.error("cannot load the model GIGAAM_MODEL=%s: %s (retrying in %.0f s)", ctx.settings.model, exc, RETRY_MODEL_S)
        try:
            await asyncio.wait_for(ctx.stop.wait(), RETRY_MODEL_S)
        except asyncio.TimeoutError:
            pass
    return None


def watch_batcher(ctx: ServiceContext, batcher: SegmentBatcher) -> None:
    """Mirrors the batcher's cumulative stats into metrics at each scrape: engine speed and batch fill."""
    ctx.metrics.register(_BatcherCollector(batcher))


class _BatcherCollector:
    """A prometheus_client collector: the counts live in the batcher, read when scraped."""

    def __init__(self, batcher: SegmentBatcher) -> None:
        self.batcher = batcher

    def describe(self) -> list:
        return []  # families are created at collect time; nothing to check for duplicates

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        stats = self.batcher.stats
        yield CounterMetricFamily("gigaam_infer_batches", "Engine batches run", value=stats.batches)
        yield CounterMetricFamily("gigaam_infer_segments", "Speech segments transcribed", value=stats.segments)
        yield CounterMetricFamily("gigaam_infer_audio_seconds", "Seconds of audio transcribed", value=stats.audio_seconds)
        yield CounterMetricFamily("gigaam_infer_busy_seconds", "Seconds the engine spent on batches", value=stats.busy_seconds)
        rtf = stats.busy_seconds / stats.audio_seconds if stats.audio_seconds else 0.0
        yield GaugeMetricFamily(
            "gigaam_infer_real_time_factor", "Engine seconds per second of audio, since start (lower is faster)", value=rtf
        )
        mean = stats.segments / stats.batches if stats.batches else 0.0
        yield GaugeMetricFamily("gigaam_infer_batch_size_mean", "Segments per engine batch, since start", value=mean)


async def serve(ctx: ServiceContext) -> None:
    settings = ctx.settings
    ctx.info["ready"] = False  # pings answer, but say the model is not loaded yet
    engine = await open_engine(ctx)
    if engine is None:
        return
    ctx.info.pop("error", None)
    ctx.info.update(ready=True, model=engine.name, device=str(engine.device), precision=engine.precision)
    log.info("engine ready: %s on %s (%s)", engine.name, engine.device, engine.precision)
    batcher = SegmentBatcher(engine.transcribe, max_batch=settings.infer_batch_size, max_wait=settings.infer_batch_wait)

    async def handle(data: bytes, delivery: Delivery) -> None:
        job = decode(InferJob, data)
        tlog = task_logger(log, job.task_id, "infer")
        if not serves(job.options.model, engine.name):
            raise PermanentError(f"model {job.options.model!r} is not served here (this deployment runs {engine.name})")
        await ctx.event(job.task_id, "stage", stage="transcribing", progress=PROGRESS["transcribing"])
        last = PROGRESS["transcribing"]

        async def on_progress(done: int, total: int) -> None:
            nonlocal last
            value = transcribing_progress(done, total)
            if value > last:
                last = value
                await ctx.event(job.task_id, "progress", stage="transcribing", progress=value)

        with tempfile.TemporaryDirectory(dir=ctx.work_dir) as tmp:
            pcm = Path(tmp) / "audio.pcm"
            try:
                await get_to_file(ctx.store, job.audio, pcm)
            except ObjectMissing:
                raise PermanentError("the decoded audio is gone (task deleted or expired)") from None
            transcript = await transcribe_job(batcher, pcm, job, model=engine.name, on_progress=on_progress)
        name = object_name(job.task_id, "transcript.json")
        await put_bytes(ctx.store, name, encode(transcript))
        if await ctx.deleted(job.task_id, purge=True):  # deleted while it was being transcribed
            return
        tlog.info("transcribed %d segments, %d characters", len(job.segments), len(transcript.text))
        await publish_job(ctx.js, "format", FormatJob(job.task_id, name, job.filename, job.options), job.task_id)

    watch_batcher(ctx, batcher)
    try:
        await ctx.consume("infer", handle, concurrency=settings.infer_concurrency, failed_stage="transcribing")
    finally:
        await batcher.close()


if __name__ == "__main__":
    main("infer", serve)

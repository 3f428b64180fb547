"""Decode service: media object -> 16 kHz PCM object + speech segments -> infer job."""

from __future__ import annotations

import asyncio
import logging
import tempfile
from pathlib import Path

import torch

from pipeline.bus import Delivery, ObjectMissing, PermanentError, get_to_file, publish_job, put_file
from pipeline.decode import MediaError
from pipeline.logs import task_logger
from pipeline.service import ServiceContext, main
from pipeline.stages import PROGRESS
from pipeline.stages.decode import decode_to_pcm
from schemas.messages import DecodeJob, InferJob, decode
from schemas.subjects import object_name

log = logging.getLogger(__name__)


async def serve(ctx: ServiceContext) -> None:
    settings = ctx.settings
    # Decoding and VAD are light; several one-thread jobs beat one two-thread job, and a shared
    # machine's contention makes torch's multi-threaded small ops many times slower.
    torch.set_num_threads(1)

    async def handle(data: bytes, delivery: Delivery) -> None:
        job = decode(DecodeJob, data)
        tlog = task_logger(log, job.task_id, "decode")
        await ctx.event(job.task_id, "stage", stage="decoding", progress=PROGRESS["decoding"])
        with tempfile.TemporaryDirectory(dir=ctx.work_dir) as tmp:
            media, pcm = Path(tmp) / "media", Path(tmp) / "audio.pcm"
            try:
                await get_to_file(ctx.store, job.media, media)
            except ObjectMissing:
                raise PermanentError("the uploaded file is gone (deleted or expired)") from None
            try:
                outcome = await asyncio.to_thread(
                    decode_to_pcm, media, pcm, vad=job.options.vad, max_segment_s=settings.segment_max
                )
            except MediaError as exc:
                raise PermanentError(f"cannot decode {job.filename}: {exc.reason}") from None
            audio = object_name(job.task_id, "audio.pcm")
            await put_file(ctx.store, audio, pcm)
        if await ctx.deleted(job.task_id, purge=True):  # deleted while it was being decoded
            return
        tlog.info("decoded %.1f s of audio into %d segments", outcome.duration, len(outcome.segments))
        await ctx.event(
            job.task_id, "progress", stage="decoding", progress=PROGRESS["transcribing"] - 1,
            media_duration=outcome.duration,
        )
        infer = InferJob(
            task_id=job.task_id, audio=audio, num_samples=outcome.num_samples, duration=outcome.duration,
            segments=outcome.segments, filename=job.filename, options=job.options,
        )
        await publish_job(ctx.js, "infer", infer, job.task_id)

    await ctx.consume("decode", handle, concurrency=settings.decode_concurrency, failed_stage="decoding")


if __name__ == "__main__":
    main("decode", serve)

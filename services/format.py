"""Format service: transcript object -> txt/timecodes/srt/vtt/json objects, output folder files, and the
completion event NATS subscribers receive."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from pipeline.bus import Delivery, ObjectMissing, PermanentError, get_bytes, put_bytes
from pipeline.formats import EXTENSIONS
from pipeline.logs import task_logger
from pipeline.output import ensure_stignore
from pipeline.service import ServiceContext, main
from pipeline.stages import PROGRESS
from pipeline.stages.format import render_all, write_to_output_dir
from schemas.messages import FormatJob, Transcript, decode
from schemas.subjects import object_name

log = logging.getLogger(__name__)


def result_object(task_id: str, fmt: str) -> str:
    return object_name(task_id, f"result{EXTENSIONS[fmt]}")


async def serve(ctx: ServiceContext) -> None:
    settings = ctx.settings
    if settings.output_dir:  # peers must know the temp names before the first result is written
        await asyncio.to_thread(ensure_stignore, Path(settings.output_dir))

    async def handle(data: bytes, delivery: Delivery) -> None:
        job = decode(FormatJob, data)
        tlog = task_logger(log, job.task_id, "format")
        await ctx.event(job.task_id, "stage", stage="formatting", progress=PROGRESS["formatting"])
        try:
            transcript = decode(Transcript, await get_bytes(ctx.store, job.transcript))
        except ObjectMissing:
            raise PermanentError("the transcript is gone (task deleted or expired)") from None
        rendered = await asyncio.to_thread(render_all, transcript)
        outputs = {}
        for fmt, body in rendered.items():
            outputs[fmt] = result_object(job.task_id, fmt)
            await put_bytes(ctx.store, outputs[fmt], body)
        if await ctx.deleted(job.task_id, purge=True):  # deleted while it was being formatted
            return
        paths: list[str] = []
        wanted = job.options.write_output or (settings.output_rest and job.options.source == "api")
        if settings.output_dir and wanted:
            paths = await asyncio.to_thread(write_to_output_dir, settings.output_dir, transcript, job.options, rendered)
        tlog.info("formatted %d characters; %d output file(s)", len(transcript.text), len(paths))
        await ctx.event(
            job.task_id, "completed", stage="done", progress=PROGRESS["done"], text=transcript.text,
            outputs=outputs, output_paths=tuple(paths), media_duration=transcript.duration,
        )

    await ctx.consume("format", handle, concurrency=settings.format_concurrency, failed_stage="formatting")


if __name__ == "__main__":
    main("format", serve)

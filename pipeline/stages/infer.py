"""Infer stage: PCM file + segments -> Transcript, through the process-wide segment batcher."""

from __future__ import annotations

import os

from pipeline.batcher import OnProgress, SegmentBatcher
from pipeline.decode import read_pcm
from pipeline.transcribe import assemble, cut
from schemas.messages import InferJob, Transcript


async def transcribe_job(
    batcher: SegmentBatcher,
    pcm_path: str | os.PathLike,
    job: InferJob,
    *,
    model: str,
    on_progress: OnProgress | None = None,
) -> Transcript:
    samples = read_pcm(pcm_path, mmap=True)
    pieces = cut(samples, job.segments)
    results = await batcher.transcribe(pieces, on_progress)
    return assemble(
        job.segments, results, duration=job.duration, model=model, task_id=job.task_id, filename=job.filename
    )

"""From decoded audio and segment spans to a `Transcript`: the part of the work shared by the infer
service and `gigaam-transcriber local`, so both produce identical results.
"""

from __future__ import annotations

import logging
import os
from typing import Callable, Sequence

import numpy as np

from pipeline.asr.engine import MAX_SEGMENT_SECONDS, EngineResult
from pipeline.decode import SAMPLE_RATE, decode_media
from pipeline.vad import fixed_segments, segment_speech
from schemas.messages import SegmentText, Span, Transcript, Word

log = logging.getLogger(__name__)

Recognizer = Callable[[list[np.ndarray]], list[EngineResult]]


def cut(samples: np.ndarray, spans: Sequence[Span]) -> list[np.ndarray]:
    """float32 pieces of int16 audio; span times are exact sample positions."""
    pieces = []
    for span in spans:
        a, b = round(span.start * SAMPLE_RATE), round(span.end * SAMPLE_RATE)
        pieces.append(samples[a:b].astype(np.float32) / 32768.0)
    return pieces


def plan_segments(samples: np.ndarray, *, vad: bool, max_segment_s: float) -> list[Span]:
    duration = samples.shape[0] / SAMPLE_RATE
    if vad:
        return segment_speech(samples, SAMPLE_RATE, max_segment_s)
    if duration <= MAX_SEGMENT_SECONDS:
        return fixed_segments(duration, MAX_SEGMENT_SECONDS)
    log.warning("--no-vad with %.1f s of audio: cutting into equal pieces of at most %.0f s", duration, max_segment_s)
    return fixed_segments(duration, max_segment_s)


def assemble(
    spans: Sequence[Span],
    results: Sequence[EngineResult],
    *,
    duration: float,
    model: str,
    task_id: str = "",
    filename: str = "",
) -> Transcript:
    segments = []
    for span, res in zip(spans, results):
        text = res.text.strip()
        if not text:
            continue
        words = tuple(
            Word(w.word, round(span.start + w.start, 3), round(span.start + w.end, 3)) for w in res.words
        )
        segments.append(SegmentText(round(span.start, 3), round(span.end, 3), text, words))
    return Transcript(
        text=" ".join(s.text for s in segments),
        duration=round(duration, 3),
        model=model,
        segments=tuple(segments),
        task_id=task_id,
        filename=filename,
    )


def transcribe_file(
    recognize: Recognizer,
    path: str | os.PathLike,
    *,
    model: str,
    vad: bool = True,
    max_segment_s: float = 25.0,
) -> Transcript:
    audio = decode_media(path)
    spans = plan_segments(audio.samples, vad=vad, max_segment_s=max_segment_s)
    results = recognize(cut(audio.samples, spans)) if spans else []
    return assemble(spans, results, duration=audio.duration, model=model, filename=os.path.basename(path))

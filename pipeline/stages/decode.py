"""Decode stage: media file -> 16 kHz int16 PCM file plus the speech segments to transcribe."""

from __future__ import annotations

import os
from dataclasses import dataclass

from pipeline.decode import decode_media, write_pcm
from pipeline.transcribe import plan_segments
from schemas.messages import Span


@dataclass(frozen=True)
class DecodeOutcome:
    num_samples: int
    duration: float
    segments: tuple[Span, ...]


def decode_to_pcm(
    media_path: str | os.PathLike, pcm_path: str | os.PathLike, *, vad: bool, max_segment_s: float
) -> DecodeOutcome:
    """Raises `pipeline.decode.MediaError` for input that can never decode (not worth a retry)."""
    audio = decode_media(media_path)
    write_pcm(pcm_path, audio.samples)
    spans = plan_segments(audio.samples, vad=vad, max_segment_s=max_segment_s)
    return DecodeOutcome(audio.num_samples, audio.duration, tuple(spans))

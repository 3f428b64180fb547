"""Render a `Transcript` into the files users download or find in the output folder.

Word and segment times are seconds from the start of the file. Timestamps round to the nearest
millisecond, half up on the decimal value, so `1.0005` reads `00:00:01,001` as a person would expect
rather than whatever the binary float happens to be.

`EXTENSIONS` are suffixes added to a file stem. Timecodes get `_timecodes.txt`: the file stays plain
text that every peer's editor opens, and it sits beside the `.txt` of the same stem instead of
replacing it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

import orjson

from schemas.messages import ALL_FORMATS, SegmentText, Transcript, Word

# Subtitle cues longer than this are hard to read; segments are cut at word boundaries to fit.
MAX_CUE_SECONDS = 7.0
MAX_CUE_CHARS = 84

CONTENT_TYPES: dict[str, str] = {
    "txt": "text/plain; charset=utf-8",
    "timecodes": "text/plain; charset=utf-8",
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
    "json": "application/json",
}

EXTENSIONS: dict[str, str] = {
    "txt": ".txt",
    "timecodes": "_timecodes.txt",
    "srt": ".srt",
    "vtt": ".vtt",
    "json": ".json",
}


@dataclass(frozen=True, slots=True)
class Cue:
    start: float
    end: float
    text: str


def render(transcript: Transcript, fmt: str) -> str:
    try:
        renderer = _RENDERERS[fmt]
    except KeyError:
        raise ValueError(f"unknown output format {fmt!r}; choose from {list(ALL_FORMATS)}") from None
    return renderer(transcript)


def build_cues(transcript: Transcript) -> list[Cue]:
    """Subtitle cues shared by srt and vtt, so both formats always agree on timing."""
    return [cue for segment in transcript.segments for cue in _segment_cues(segment)]


def _segment_cues(segment: SegmentText) -> list[Cue]:
    text = _squash(segment.text)
    if not text:
        return []
    tokens = _tokens(segment, text)
    fits = segment.end - segment.start <= MAX_CUE_SECONDS and len(text) <= MAX_CUE_CHARS
    if fits or not tokens:
        return [Cue(segment.start, max(segment.start, segment.end), text)]
    groups: list[list[tuple[str, float, float]]] = [[]]
    for token in tokens:
        current = groups[-1]
        too_long = current and (
            token[2] - current[0][1] > MAX_CUE_SECONDS
            or sum(len(t[0]) + 1 for t in current) + len(token[0]) > MAX_CUE_CHARS
        )
        if too_long:
            groups.append([])
        groups[-1].append(token)
    return [Cue(g[0][1], max(g[0][1], g[-1][2]), " ".join(t[0] for t in g)) for g in groups]


def _tokens(segment: SegmentText, text: str) -> list[tuple[str, float, float]]:
    """Words with their times; spelled as in the segment text when the two line up one to one,
    so cue text keeps the segment's punctuation and casing."""
    words = [w for w in segment.words if w.word.strip()]
    spelled = text.split()
    if len(spelled) != len(words):
        spelled = [_squash(w.word) for w in words]
    return [(s, w.start, w.end) for s, w in zip(spelled, words)]


def _squash(text: str) -> str:
    """One line, single spaces: a newline or blank line inside a cue would end it early."""
    return " ".join(text.split())


def _millis(seconds: float) -> int:
    return max(0, int((Decimal(repr(float(seconds))) * 1000).quantize(Decimal(1), ROUND_HALF_UP)))


def _clock(seconds: float, decimal_mark: str) -> str:
    ms = _millis(seconds)
    return f"{_hms(ms // 1000)}{decimal_mark}{ms % 1000:03d}"


def _hms(seconds: int) -> str:
    hours, rest = divmod(seconds, 3600)
    return f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"


def _txt(transcript: Transcript) -> str:
    text = _squash(" ".join(s.text for s in transcript.segments) if transcript.segments else transcript.text)
    return f"{text}\n" if text else ""


def _timecodes(transcript: Transcript) -> str:
    """Start floored and end ceiled to whole seconds, so the bracket always covers the speech."""
    lines = []
    for segment in transcript.segments:
        text = _squash(segment.text)
        if text:
            start = _millis(segment.start) // 1000
            end = math.ceil(_millis(segment.end) / 1000)
            lines.append(f"[{_hms(start)} - {_hms(max(start, end))}] {text}\n")
    return "".join(lines)


def _srt(transcript: Transcript) -> str:
    return "\n".join(
        f"{n}\n{_clock(c.start, ',')} --> {_clock(c.end, ',')}\n{c.text}\n"
        for n, c in enumerate(build_cues(transcript), start=1)
    )


def _vtt(transcript: Transcript) -> str:
    cues = [f"{_clock(c.start, '.')} --> {_clock(c.end, '.')}\n{_vtt_escape(c.text)}\n" for c in build_cues(transcript)]
    return "\n".join(["WEBVTT\n", *cues])


def _vtt_escape(text: str) -> str:
    """`<` opens a tag and `&` an entity in WebVTT cue text; escaping `>` also defuses `-->`."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _json(transcript: Transcript) -> str:
    doc = {
        "text": transcript.text,
        "duration": round(transcript.duration, 3),
        "model": transcript.model,
        "task_id": transcript.task_id,
        "filename": transcript.filename,
        "segments": [
            {
                "start": round(s.start, 3),
                "end": round(s.end, 3),
                "text": s.text,
                "words": [_word(w) for w in s.words],
            }
            for s in transcript.segments
        ],
        "words": [_word(w) for w in transcript.words],
    }
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE).decode()


def _word(word: Word) -> dict[str, object]:
    return {"word": word.word, "start": round(word.start, 3), "end": round(word.end, 3)}


_RENDERERS: dict[str, Callable[[Transcript], str]] = {
    "txt": _txt,
    "timecodes": _timecodes,
    "srt": _srt,
    "vtt": _vtt,
    "json": _json,
}

__all__ = ["CONTENT_TYPES", "EXTENSIONS", "MAX_CUE_CHARS", "MAX_CUE_SECONDS", "Cue", "build_cues", "render"]

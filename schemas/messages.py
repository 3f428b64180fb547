"""Message, event and record types. orjson on the wire; `decode(Type, data)` rebuilds typed objects.

Version 1. Adding an optional field with a default is compatible; anything else bumps `SCHEMA_VERSION`
and gets a new `schemas/vN/` folder.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import orjson

SCHEMA_VERSION = 1

Status = Literal["pending", "processing", "completed", "failed"]
Stage = Literal["queued", "decoding", "transcribing", "formatting", "done"]
EventType = Literal["submitted", "stage", "progress", "completed", "failed", "deleted"]
OutputFormat = Literal["txt", "timecodes", "srt", "vtt", "json"]

ALL_FORMATS: tuple[str, ...] = ("txt", "timecodes", "srt", "vtt", "json")
TERMINAL_STATUSES = ("completed", "failed")


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """What the submitter asked for; travels with every job of the task."""

    model: str | None = None  # None: the infer service's default model
    formats: tuple[str, ...] = ("txt", "srt", "json")  # formats written to the output folder
    write_output: bool = False  # write results into GIGAAM_OUTPUT_DIR
    output_dir: str = ""  # relative folder under the output root (inbox subfolders)
    output_stem: str = ""  # file stem of the written results (default: the upload's stem)
    vad: bool = True  # False: the file (<= one segment) goes to the engine whole
    source: str = "api"  # api | inbox | cli


@dataclass(frozen=True, slots=True)
class Span:
    """A stretch of the decoded audio, in seconds from its start."""

    start: float
    end: float


@dataclass(frozen=True, slots=True)
class DecodeJob:
    task_id: str
    media: str  # object name of the uploaded file
    filename: str
    file_size: int
    options: TaskOptions = TaskOptions()
    v: int = SCHEMA_VERSION


@dataclass(frozen=True, slots=True)
class InferJob:
    task_id: str
    audio: str  # object name: 16 kHz mono int16 little-endian PCM
    num_samples: int
    duration: float
    segments: tuple[Span, ...]
    filename: str
    options: TaskOptions = TaskOptions()
    v: int = SCHEMA_VERSION


@dataclass(frozen=True, slots=True)
class FormatJob:
    task_id: str
    transcript: str  # object name of the Transcript JSON
    filename: str
    options: TaskOptions = TaskOptions()
    v: int = SCHEMA_VERSION


@dataclass(frozen=True, slots=True)
class Word:
    word: str
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class SegmentText:
    start: float
    end: float
    text: str
    words: tuple[Word, ...] = ()


@dataclass(frozen=True, slots=True)
class Transcript:
    """The engine's answer for one file; the `json` output format is this object."""

    text: str
    duration: float
    model: str
    segments: tuple[SegmentText, ...]
    task_id: str = ""
    filename: str = ""
    v: int = SCHEMA_VERSION

    @property
    def words(self) -> list[Word]:
        return [w for s in self.segments for w in s.words]


@dataclass(frozen=True, slots=True)
class TaskEvent:
    """One change of a task's state. The registry folds these into a row; subscribers get them as-is.

    Subject: `gigaam.events.<type>.<task_id>`.
    """

    task_id: str
    type: str  # EventType
    ts: float  # unix seconds
    stage: str | None = None
    progress: int | None = None  # 0-100, never decreases in the registry
    filename: str | None = None
    file_size: int | None = None
    owner: str | None = None
    options: TaskOptions | None = None
    media_duration: float | None = None
    processing_time: float | None = None
    error: str | None = None
    text: str | None = None  # completed: full transcript text
    outputs: dict[str, str] | None = None  # completed: format -> object name
    output_paths: tuple[str, ...] = ()  # completed: files written into the output folder
    v: int = SCHEMA_VERSION


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """A registry row as answered over request-reply."""

    task_id: str
    status: str  # Status
    stage: str  # Stage
    progress: int
    created_at: float | None
    started_at: float | None = None
    completed_at: float | None = None
    filename: str = ""
    file_size: int = 0
    media_duration: float | None = None
    processing_time: float | None = None
    error: str | None = None
    owner: str | None = None
    options: TaskOptions | None = None
    text: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    output_paths: tuple[str, ...] = ()
    v: int = SCHEMA_VERSION


@dataclass(frozen=True, slots=True)
class RegistryRequest:
    op: str  # get | list | delete | ping
    task_id: str | None = None
    owner: str | None = None  # None: operator access, sees every task
    status: str | None = None
    limit: int = 100
    offset: int = 0
    v: int = SCHEMA_VERSION


@dataclass(frozen=True, slots=True)
class RegistryReply:
    ok: bool
    error: str | None = None  # machine code: not_found | bad_request | internal
    message: str | None = None  # human-readable reason for `error`
    task: TaskRecord | None = None
    tasks: tuple[TaskRecord, ...] = ()
    total: int = 0
    v: int = SCHEMA_VERSION


T = TypeVar("T")


def encode(obj: Any) -> bytes:
    return orjson.dumps(obj)


def decode(cls: type[T], data: bytes | str | dict) -> T:
    """Rebuild a typed message; unknown keys are ignored so newer producers stay readable."""
    raw = orjson.loads(data) if isinstance(data, (bytes, bytearray, memoryview, str)) else data
    return _build(cls, raw)


def _build(tp: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _build(args[0], value) if len(args) == 1 else value
    if origin is Literal:
        return value
    if origin is tuple:
        (item, *_rest) = typing.get_args(tp)
        return tuple(_build(item, v) for v in value)
    if origin is list:
        (item,) = typing.get_args(tp)
        return [_build(item, v) for v in value]
    if origin is dict:
        return dict(value)
    if dataclasses.is_dataclass(tp):
        hints = _hints(tp)
        kwargs = {f.name: _build(hints[f.name], value[f.name]) for f in dataclasses.fields(tp) if f.name in value}
        return tp(**kwargs)
    if tp is float and isinstance(value, int):
        return float(value)
    return value


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(tp: type) -> dict[str, Any]:
    if tp not in _HINTS:
        _HINTS[tp] = typing.get_type_hints(tp)
    return _HINTS[tp]


__all__ = [
    "SCHEMA_VERSION",
    "ALL_FORMATS",
    "TERMINAL_STATUSES",
    "TaskOptions",
    "Span",
    "DecodeJob",
    "InferJob",
    "FormatJob",
    "Word",
    "SegmentText",
    "Transcript",
    "TaskEvent",
    "TaskRecord",
    "RegistryRequest",
    "RegistryReply",
    "encode",
    "decode",
]

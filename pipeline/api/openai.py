"""`POST /v1/audio/transcriptions`, shaped like OpenAI's endpoint so its clients (the official SDKs,
tools built on them) work with our base URL: it waits for the pipeline and answers with the text.

`model`, `language`, `prompt` and `temperature` are accepted for compatibility; the deployment's
GigaAM model transcribes (Russian). The task stays listed under the key like any other upload.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import orjson
from sanic import Blueprint, HTTPResponse, Request
from sanic.response import json, text
from sanic_ext import openapi

from pipeline.api import openapi as docs
from pipeline.api.context import api_of
from pipeline.api.errors import ApiError
from pipeline.api.i18n import Both, one_of
from pipeline.api.intake import accept
from pipeline.api.ratelimit import UPLOAD
from pipeline.api.uploads import check_declared_size
from pipeline.bus import ObjectMissing, get_bytes
from pipeline.submit import new_task_id, wait_for_task
from schemas.messages import TaskEvent

bp = Blueprint("openai", url_prefix="/v1")

FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
GRANULARITIES = ("word", "segment")
FIELDS = frozenset(
    {
        "model",
        "response_format",
        "timestamp_granularities[]",
        "timestamp_granularities",
        "language",
        "prompt",
        "temperature",
        "stream",
    }
)
_TEXT_TYPES = {"text": ("txt", "text/plain"), "srt": ("srt", "text/plain"), "vtt": ("vtt", "text/vtt")}


@bp.post("/audio/transcriptions", stream=True, ctx_rate=UPLOAD)
@openapi.definition(
    summary="Transcribe a file (OpenAI-compatible)",
    description="Same request and response as OpenAI's audio transcription endpoint; waits for the result.",
    tag="openai",
    body=docs.upload_body(
        {
            "model": {"type": "string", "description": "accepted for compatibility, e.g. whisper-1"},
            "response_format": {"type": "string", "enum": list(FORMATS), "default": "json"},
            "timestamp_granularities[]": {
                "type": "array",
                "items": {"type": "string", "enum": list(GRANULARITIES)},
                "description": "with verbose_json: word and/or segment",
            },
            "language": {"type": "string", "description": "accepted; the model transcribes Russian"},
            "prompt": {"type": "string", "description": "accepted and ignored"},
            "temperature": {"type": "number", "description": "accepted and ignored"},
        }
    ),
    response=[
        {
            "status": 200,
            "description": "the transcript in the requested format",
            "content": {
                "application/json": {
                    "schema": {
                        "oneOf": [
                            {"$ref": "#/components/schemas/OpenAITranscription"},
                            {"$ref": "#/components/schemas/OpenAIVerboseTranscription"},
                        ]
                    },
                    "example": docs.EXAMPLES["OpenAITranscription"],
                },
                "text/plain": {"schema": {"type": "string"}, "example": docs.EXAMPLE_TRANSCRIPT},
                "text/vtt": {"schema": {"type": "string"}, "example": "WEBVTT\n\n..."},
            },
        },
        *docs.errors(400, 401, 413, 429, 500, 504),
    ],
)
@docs.secured
async def transcriptions(request: Request) -> HTTPResponse:
    api = api_of(request)
    check_declared_size(request, api.settings.api_max_upload_bytes)
    choice: dict[str, Any] = {}
    accepted = await accept(request, new_task_id(), FIELDS, lambda fields: choice.update(_options(fields)))
    try:
        event = await wait_for_task(api.bus, accepted.task_id, timeout=api.settings.api_sync_timeout)
    except asyncio.TimeoutError:
        raise ApiError(504, "timeout", seconds=f"{api.settings.api_sync_timeout:g}", task_id=accepted.task_id) from None
    if event.type == "deleted":  # by another request of the same key while this one waited
        raise ApiError(404, "task_not_found", task_id=accepted.task_id)
    if event.type != "completed":
        # a decoding failure is the file's fault; any later one is ours
        status = 400 if event.stage == "decoding" else 500
        raise ApiError(status, "transcription_failed", error=event.error or "?")
    return await _render(request, event, choice["format"], choice["granularities"])


def _options(fields: dict[str, list[str]]) -> dict[str, Any]:
    """Checked before the upload is submitted, so a bad option costs no transcription."""
    fmt = (fields.get("response_format") or ["json"])[0] or "json"
    if fmt not in FORMATS:
        raise ApiError(400, "bad_parameter", name="response_format", reason=one_of(FORMATS))
    granularities = [*fields.get("timestamp_granularities[]", []), *fields.get("timestamp_granularities", [])]
    unknown = [g for g in granularities if g not in GRANULARITIES]
    if unknown:
        raise ApiError(400, "bad_parameter", name="timestamp_granularities[]", reason=one_of(GRANULARITIES))
    if (fields.get("stream") or ["false"])[0].lower() in ("true", "1"):
        raise ApiError(
            400,
            "bad_parameter",
            name="stream",
            reason=Both("потоковый ответ не поддерживается", "streaming is not supported"),
        )
    temperature = (fields.get("temperature") or [""])[0]
    if temperature:
        try:
            float(temperature)
        except ValueError:
            raise ApiError(400, "bad_parameter", name="temperature", reason=Both("нужно число", "a number")) from None
    return {"format": fmt, "granularities": set(granularities)}


async def _render(request: Request, event: TaskEvent, fmt: str, granularities: set[str]) -> HTTPResponse:
    outputs = event.outputs or {}
    if fmt in _TEXT_TYPES:
        name, content_type = _TEXT_TYPES[fmt]
        return text(
            (await _object(request, outputs, name)).decode("utf-8"), content_type=f"{content_type}; charset=utf-8"
        )
    doc = orjson.loads(await _object(request, outputs, "json"))
    usage = {"type": "duration", "seconds": math.ceil(doc.get("duration") or 0)}
    if fmt == "json":
        return json({"text": doc["text"], "usage": usage})
    body: dict[str, Any] = {
        "task": "transcribe",
        "language": "russian",
        "duration": doc["duration"],
        "text": doc["text"],
    }
    if "segment" in granularities or not granularities:
        body["segments"] = [
            {
                "id": i,
                "seek": 0,
                "start": s["start"],
                "end": s["end"],
                "text": s["text"],
                "tokens": [],
                "temperature": 0.0,
                "avg_logprob": 0.0,
                "compression_ratio": 0.0,
                "no_speech_prob": 0.0,
            }
            for i, s in enumerate(doc["segments"])
        ]
    if "word" in granularities:
        body["words"] = doc["words"]
    body["usage"] = usage
    return json(body)


async def _object(request: Request, outputs: dict[str, str], fmt: str) -> bytes:
    try:
        return await get_bytes(api_of(request).store, outputs[fmt], timeout=30.0)
    except (KeyError, ObjectMissing):
        raise ApiError(500, "internal_error") from None

"""The OpenAPI document behind `/docs` (Swagger UI from sanic-ext): schemas, examples, security.

Schemas are written out as OpenAPI 3.0 objects rather than derived from types, so they say exactly
what goes over the wire: which fields are required or nullable, 64-bit sizes, the enums, and an
example for every response, errors included.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from sanic import Sanic
from sanic_ext import openapi

from pipeline.api.i18n import text
from schemas.messages import ALL_FORMATS

F = TypeVar("F", bound=Callable[..., Any])

API_KEY = "ApiKeyAuth"
BEARER = "BearerAuth"

TASK_ID = "3f2b6c0e9d7a4e51b8c2a1f0e6d5c4b3"
STATUSES = ["pending", "processing", "completed", "failed"]
STAGES = ["queued", "decoding", "transcribing", "formatting", "done"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(kind: str, **extra: Any) -> dict[str, Any]:
    return {"type": kind, "nullable": True, **extra}


_TIME = _nullable("string", format="date-time", description="ISO 8601, UTC")

SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": {
        "type": "object",
        "required": ["error", "detail"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message", "type"],
                "properties": {
                    "code": {"type": "string", "description": "stable machine code", "example": "task_not_found"},
                    "message": {
                        "type": "string",
                        "description": "for people; Russian unless Accept-Language asks for en",
                    },
                    "type": {"type": "string", "description": "error class, as in OpenAI's error object"},
                },
            },
            "detail": {"type": "string", "description": "the message again, where FastAPI-style clients look"},
        },
    },
    "TaskAccepted": {
        "type": "object",
        "required": ["task_id", "message", "filename", "file_size", "estimated_time", "estimated_seconds"],
        "properties": {
            "task_id": {"type": "string"},
            "message": {"type": "string"},
            "filename": {"type": "string", "description": "the uploaded name, sanitised"},
            "file_size": {"type": "integer", "format": "int64"},
            "estimated_time": {"type": "string", "description": "readable estimate until the result is ready"},
            "estimated_seconds": {"type": "number", "nullable": True, "description": "the same estimate in seconds; null while no speech model is ready"},
        },
    },
    "TaskStatus": {
        "type": "object",
        "required": ["task_id", "status", "stage", "created_at", "progress", "filename", "file_size", "message"],
        "properties": {
            "task_id": {"type": "string"},
            "status": {"type": "string", "enum": STATUSES},
            "stage": {"type": "string", "enum": STAGES},
            "created_at": _TIME,
            "started_at": _TIME,
            "completed_at": _TIME,
            "progress": {"type": "integer", "minimum": 0, "maximum": 100},
            "filename": {"type": "string"},
            "file_size": {"type": "integer", "format": "int64"},
            "message": {"type": "string"},
            "error": _nullable("string"),
        },
    },
    "TaskResult": {
        "type": "object",
        "required": ["task_id", "status", "filename", "transcription", "transcription_with_timecodes"],
        "properties": {
            "task_id": {"type": "string"},
            "status": {"type": "string", "enum": ["completed"]},
            "filename": {"type": "string"},
            "transcription": {"type": "string"},
            "transcription_with_timecodes": {"type": "string", "description": "`[HH:MM:SS - HH:MM:SS] text` lines"},
            "processing_time": _nullable("number", description="seconds"),
            "media_duration": _nullable("number", description="seconds"),
        },
    },
    "TaskList": {
        "type": "object",
        "required": ["total", "tasks"],
        "properties": {
            "total": {"type": "integer", "description": "all matching tasks, for paging"},
            "tasks": {"type": "array", "items": _ref("TaskStatus")},
        },
    },
    "Message": {"type": "object", "required": ["message"], "properties": {"message": {"type": "string"}}},
    "ApiInfo": {
        "type": "object",
        "required": ["name", "version", "docs", "health"],
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "docs": {"type": "string"},
            "health": {"type": "string"},
            "openai_base_url": {"type": "string"},
            "max_upload_bytes": {"type": "integer", "format": "int64"},
            "supported_formats": {"type": "array", "items": {"type": "string"}},
        },
    },
    "Health": {
        "type": "object",
        "required": ["status", "checks", "missing"],
        "properties": {
            "status": {"type": "string", "enum": ["healthy", "unhealthy"]},
            "checks": {
                "type": "object",
                "additionalProperties": {"type": "object"},
                "description": "per component: ok, and what its ping answered",
            },
            "missing": {"type": "array", "items": {"type": "string"}, "description": "components that did not answer"},
        },
    },
    "OpenAITranscription": {
        "type": "object",
        "required": ["text"],
        "properties": {
            "text": {"type": "string"},
            "usage": {
                "type": "object",
                "properties": {"type": {"type": "string", "enum": ["duration"]}, "seconds": {"type": "integer"}},
            },
        },
    },
    "OpenAIVerboseTranscription": {
        "type": "object",
        "required": ["task", "language", "duration", "text"],
        "properties": {
            "task": {"type": "string", "enum": ["transcribe"]},
            "language": {"type": "string", "example": "russian"},
            "duration": {"type": "number"},
            "text": {"type": "string"},
            "segments": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "integer"},
                        "seek": {"type": "integer"},
                        "start": {"type": "number"},
                        "end": {"type": "number"},
                        "text": {"type": "string"},
                        "tokens": {"type": "array", "items": {"type": "integer"}},
                        "temperature": {"type": "number"},
                        "avg_logprob": {"type": "number"},
                        "compression_ratio": {"type": "number"},
                        "no_speech_prob": {"type": "number"},
                    },
                },
            },
            "words": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"word": {"type": "string"}, "start": {"type": "number"}, "end": {"type": "number"}},
                },
            },
        },
    },
}

EXAMPLE_STATUS = {
    "task_id": TASK_ID,
    "status": "processing",
    "stage": "transcribing",
    "created_at": "2025-11-29T00:00:00+00:00",
    "started_at": "2025-11-29T00:00:05+00:00",
    "completed_at": None,
    "progress": 45,
    "filename": "Запись встречи.mp3",
    "file_size": 12345678,
    "message": text("status_transcribing", "ru"),
    "error": None,
}
EXAMPLE_TRANSCRIPT = "Доброе утро, уважаемые коллеги."
EXAMPLES: dict[str, Any] = {
    "TaskAccepted": {
        "task_id": TASK_ID,
        "message": text("upload_accepted", "ru"),
        "filename": "Запись встречи.mp3",
        "file_size": 12345678,
        "estimated_time": text("estimate", "ru", minutes=2, seconds=30),
        "estimated_seconds": 150.0,
    },
    "TaskStatus": EXAMPLE_STATUS,
    "TaskResult": {
        "task_id": TASK_ID,
        "status": "completed",
        "filename": "Запись встречи.mp3",
        "transcription": EXAMPLE_TRANSCRIPT,
        "transcription_with_timecodes": f"[00:00:00 - 00:00:03] {EXAMPLE_TRANSCRIPT}\n",
        "processing_time": 3.2,
        "media_duration": 2.3,
    },
    "TaskList": {"total": 1, "tasks": [EXAMPLE_STATUS]},
    "Deleted": {"message": text("task_deleted", "ru", task_id=TASK_ID)},
    "ApiInfo": {
        "name": "GigaAM v3 Transcriber API",
        "version": "0.1.0",
        "docs": "/docs",
        "health": "/health",
        "openai_base_url": "/v1",
        "max_upload_bytes": 2147483648,
        "supported_formats": ["mp3", "wav"],
    },
    "Healthy": {
        "status": "healthy",
        "checks": {"nats": {"ok": True}, "registry": {"ok": True}, "infer": {"ok": True, "model": "v3_e2e_rnnt"}},
        "missing": [],
    },
    "Unhealthy": {
        "status": "unhealthy",
        "checks": {"nats": {"ok": True}, "registry": {"ok": True}, "infer": {"ok": False}},
        "missing": ["infer"],
    },
    "OpenAITranscription": {"text": EXAMPLE_TRANSCRIPT, "usage": {"type": "duration", "seconds": 3}},
}

# One example per status the API answers with an error body.
ERROR_EXAMPLES: dict[int, tuple[str, dict[str, Any]]] = {
    400: ("unsupported_format", {"extension": ".exe", "supported": "flac, mp3, wav"}),
    401: ("invalid_api_key", {}),
    404: ("task_not_found", {"task_id": TASK_ID}),
    409: ("task_not_completed", {"status": "processing", "progress": 45}),
    413: ("file_too_large", {"limit": 2147483648}),
    429: ("rate_limited", {"limit": 30, "window": "60", "retry_after": 12}),
    500: ("internal_error", {}),
    503: ("service_unavailable", {"reason": "the task registry does not answer"}),
    504: ("timeout", {"seconds": 3600, "task_id": TASK_ID}),
}


def json_response(status: int, schema: str, description: str, example: str | None = None) -> dict[str, Any]:
    return {
        "status": status,
        "description": description,
        "content": {"application/json": {"schema": _ref(schema), "example": EXAMPLES[example or schema]}},
    }


def errors(*statuses: int) -> list[dict[str, Any]]:
    out = []
    for status in statuses:
        code, params = ERROR_EXAMPLES[status]
        message = text(code, "ru", **params)
        example = {"error": {"code": code, "message": message, "type": "..."}, "detail": message}
        out.append(
            {
                "status": status,
                "description": f"error `{code}` and others; see the error codes in docs/api.md",
                "content": {"application/json": {"schema": _ref("Error"), "example": example}},
            }
        )
    return out


def text_response(status: int, description: str, types: dict[str, str]) -> dict[str, Any]:
    return {
        "status": status,
        "description": description,
        "content": {media: {"schema": {"type": "string"}, "example": sample} for media, sample in types.items()},
    }


def sse_response() -> dict[str, Any]:
    sample = (
        'event: status\ndata: {"task_id": "...", "status": "processing", "progress": 45, ...}\n\n'
        'event: completed\ndata: {"task_id": "...", "status": "completed", "progress": 100, ...}\n\n'
    )
    return text_response(200, "an event stream", {"text/event-stream": sample})


def upload_body(fields: dict[str, dict[str, Any]]) -> dict[str, Any]:
    properties = {"file": {"type": "string", "format": "binary", "description": "audio or video, up to the size cap"}}
    properties.update(fields)
    return {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": properties}}
        },
    }


def secured(func: F) -> F:
    """Either scheme works on every protected route: two requirement objects mean OR."""
    return openapi.secured(BEARER)(openapi.secured(API_KEY)(func))


FORMAT_PARAMETER = {
    "name": "format",
    "location": "query",
    "schema": openapi.String(enum=list(ALL_FORMATS), default="txt"),
    "description": "txt, timecodes (`[HH:MM:SS - HH:MM:SS] text` lines), srt, vtt or json",
}


def document(app: Sanic, version: str) -> None:
    spec = app.ext.openapi
    spec.describe(
        "GigaAM v3 Transcriber API",
        version,
        description=(
            "Russian speech to text with GigaAM v3. Upload a file, poll its status (or follow its events), "
            "fetch the transcript. Also speaks the OpenAI audio API under /v1. Every error is JSON with a "
            "stable `error.code`; messages are Russian unless `Accept-Language: en`."
        ),
    )
    spec.add_security_scheme(API_KEY, "apiKey", location="header", name="X-API-Key", description="`gam_...` key")
    spec.add_security_scheme(BEARER, "http", scheme="bearer", description="the same key, as OpenAI clients send it")
    spec.tag("tasks", description="the original /api/v1 contract")
    spec.tag("openai", description="OpenAI-compatible transcription")
    spec.tag("service", description="info and health")
    for name, schema in SCHEMAS.items():
        spec.add_component("schemas", name, schema)

"""The original `/api/v1` contract of the GigaAM v3 Transcriber API guide: same paths, field names,
status codes and shapes, so existing clients keep working; hardened underneath."""

from __future__ import annotations

import math
from pathlib import PurePath
from urllib.parse import quote

from sanic import Blueprint, HTTPResponse, Request
from sanic.response import json, raw
from sanic_ext import openapi

from pipeline.api import openapi as docs
from pipeline.api.context import api_of
from pipeline.api.errors import ApiError, language
from pipeline.api.i18n import Both, one_of, text
from pipeline.api.idempotency import MAX_KEY_LENGTH, Claim
from pipeline.api.intake import CALLBACK_FIELD, accept, drain
from pipeline.api.ratelimit import UPLOAD
from pipeline.api.tasks import get_task, registry_call, require_completed, status_body
from pipeline.api.uploads import check_declared_size
from pipeline.bus import ObjectMissing, get_bytes
from pipeline.formats import CONTENT_TYPES, EXTENSIONS
from pipeline.submit import new_task_id
from schemas.messages import ALL_FORMATS, TERMINAL_STATUSES, RegistryRequest

bp = Blueprint("v1", url_prefix="/api/v1")

MAX_LIST_LIMIT = 1000
MAX_LIST_OFFSET = 1_000_000_000  # far past any real list; keeps the registry query within 64-bit integers
REPLAY_WAIT = 30.0  # seconds a repeated Idempotency-Key waits for the first request to finish


@bp.post("/transcribe", stream=True, ctx_rate=UPLOAD)
@openapi.definition(
    summary="Upload a file for transcription",
    description="multipart/form-data with the file in `file`. Answers 202 at once; poll the task, follow "
    "its events, or pass `callback_url` to be called when it ends. The same `Idempotency-Key` within 24 h "
    "answers with the first task.",
    tag="tasks",
    body=docs.upload_body(
        {
            CALLBACK_FIELD: {
                "type": "string",
                "format": "uri",
                "description": "POSTed the final status and result links, signed (X-Signature)",
            },
        }
    ),
    parameter=[
        {
            "name": "Idempotency-Key",
            "location": "header",
            "schema": openapi.String(maxLength=MAX_KEY_LENGTH),
            "description": "repeat-safe uploads: the same key within 24 h returns the first task",
        }
    ],
    response=[
        docs.json_response(202, "TaskAccepted", "accepted and queued"),
        *docs.errors(400, 401, 409, 413, 429, 500, 503),
    ],
)
@docs.secured
async def transcribe(request: Request) -> HTTPResponse:
    api = api_of(request)
    limit = api.settings.api_max_upload_bytes
    check_declared_size(request, limit)
    claim = await _claim(request)
    if claim is not None and not claim.fresh:
        await drain(request, limit)
        return json(await _replay(request, claim), status=202, headers={"Idempotent-Replayed": "true"})
    task_id = claim.task_id if claim is not None else new_task_id()
    try:
        accepted = await accept(request, task_id, frozenset({CALLBACK_FIELD}))
    except BaseException:
        if claim is not None:
            await api.idempotency.release(claim)
        raise
    lang = language(request)
    seconds = await api.estimator.estimate(accepted.media_duration)
    body = {
        "task_id": task_id,
        "message": text("upload_accepted", lang),
        "filename": accepted.filename,
        "file_size": accepted.file_size,
        "estimated_time": _readable(seconds, lang),
        "estimated_seconds": round(seconds, 1),
    }
    waiting = await api.readiness.waiting_reason()
    if waiting is not None:
        body.update(
            message=text("upload_waiting_model", lang, reason=waiting),
            estimated_time=text("estimate_unknown", lang),
            estimated_seconds=None,
        )
    if claim is not None:
        await api.idempotency.complete(claim, body)
    return json(body, status=202)


async def _claim(request: Request) -> Claim | None:
    header = request.headers.get("idempotency-key")
    if header is None:
        return None
    if not 0 < len(header) <= MAX_KEY_LENGTH or not header.isprintable():
        raise ApiError(
            400,
            "bad_parameter",
            name="Idempotency-Key",
            reason=Both(f"от 1 до {MAX_KEY_LENGTH} печатных символов", f"1 to {MAX_KEY_LENGTH} printable characters"),
        )
    return await api_of(request).idempotency.claim(request.ctx.principal.owner, header)


async def _replay(request: Request, claim: Claim) -> dict:
    """The first request's answer; if it was lost (its worker died after submitting), rebuilt from the task."""
    api = api_of(request)
    body = claim.response or await api.idempotency.wait_response(claim, REPLAY_WAIT)
    if body is not None:
        return body
    try:
        record = await get_task(api.bus, claim.task_id, request.ctx.principal.owner)
    except ApiError:
        raise ApiError(409, "idempotency_in_progress") from None
    lang = language(request)
    return {
        "task_id": record.task_id,
        "message": text("upload_accepted", lang),
        "filename": record.filename,
        "file_size": record.file_size,
        "estimated_time": _readable(0.0, lang),
        "estimated_seconds": 0.0,
    }


def _readable(seconds: float, lang: str) -> str:
    total = max(1, math.ceil(seconds))
    if total < 60:
        return text("estimate_short", lang, seconds=total)
    return text("estimate", lang, minutes=total // 60, seconds=total % 60)


@bp.get("/tasks/<task_id:str>")
@openapi.definition(
    summary="Task status",
    tag="tasks",
    response=[docs.json_response(200, "TaskStatus", "the task"), *docs.errors(401, 404, 429)],
)
@docs.secured
async def task_status(request: Request, task_id: str) -> HTTPResponse:
    record = await get_task(api_of(request).bus, task_id, request.ctx.principal.owner)
    waiting = None if record.status in TERMINAL_STATUSES else await api_of(request).readiness.waiting_reason()
    return json(status_body(record, language(request), waiting))


@bp.get("/tasks/<task_id:str>/result")
@openapi.definition(
    summary="Transcript of a completed task",
    tag="tasks",
    response=[docs.json_response(200, "TaskResult", "the transcript"), *docs.errors(401, 404, 409, 429)],
)
@docs.secured
async def task_result(request: Request, task_id: str) -> HTTPResponse:
    api = api_of(request)
    record = await get_task(api.bus, task_id, request.ctx.principal.owner)
    require_completed(record)
    timecodes = await _result_object(request, record.outputs, task_id, "timecodes")
    return json(
        {
            "task_id": record.task_id,
            "status": record.status,
            "filename": record.filename,
            "transcription": record.text or "",
            "transcription_with_timecodes": timecodes.decode("utf-8"),
            "processing_time": record.processing_time,
            "media_duration": record.media_duration,
        }
    )


@bp.get("/tasks/<task_id:str>/download")
@openapi.definition(
    summary="Download the result as a file",
    tag="tasks",
    parameter=[docs.FORMAT_PARAMETER],
    response=[
        docs.text_response(200, "the result as an attachment", {CONTENT_TYPES[f]: "..." for f in ALL_FORMATS}),
        *docs.errors(400, 401, 404, 409, 429),
    ],
)
@docs.secured
async def task_download(request: Request, task_id: str) -> HTTPResponse:
    api = api_of(request)
    fmt = request.args.get("format", "txt")
    if fmt not in ALL_FORMATS:
        raise ApiError(400, "bad_parameter", name="format", reason=one_of(ALL_FORMATS))
    record = await get_task(api.bus, task_id, request.ctx.principal.owner)
    require_completed(record)
    body = await _result_object(request, record.outputs, task_id, fmt)
    name = (PurePath(record.filename).stem or task_id) + EXTENSIONS[fmt]
    content_type = CONTENT_TYPES[fmt] if "charset" in CONTENT_TYPES[fmt] else f"{CONTENT_TYPES[fmt]}; charset=utf-8"
    return raw(body, content_type=content_type, headers={"Content-Disposition": attachment(name)})


async def _result_object(request: Request, outputs: dict[str, str], task_id: str, fmt: str) -> bytes:
    api = api_of(request)
    try:
        return await get_bytes(api.store, outputs[fmt], timeout=30.0)
    except (KeyError, ObjectMissing):
        raise ApiError(404, "result_not_found", task_id=task_id, format=fmt) from None


def attachment(filename: str) -> str:
    """ASCII fallback for old clients plus the exact UTF-8 name (RFC 6266), so Cyrillic names survive."""
    fallback = "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in filename)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


@bp.get("/tasks")
@openapi.definition(
    summary="List your tasks, newest first",
    description="Without transcripts; `total` counts every match for paging.",
    tag="tasks",
    parameter=[
        {"name": "status_filter", "location": "query", "schema": openapi.String(enum=docs.STATUSES)},
        {
            "name": "limit",
            "location": "query",
            "schema": openapi.Integer(minimum=1, maximum=MAX_LIST_LIMIT, default=100),
        },
        {
            "name": "offset",
            "location": "query",
            "schema": openapi.Integer(minimum=0, maximum=MAX_LIST_OFFSET, default=0),
        },
    ],
    response=[docs.json_response(200, "TaskList", "a page of tasks"), *docs.errors(400, 401, 429)],
)
@docs.secured
async def task_list(request: Request) -> HTTPResponse:
    status = request.args.get("status_filter") or None
    if status is not None and status not in docs.STATUSES:
        raise ApiError(400, "bad_parameter", name="status_filter", reason=one_of(docs.STATUSES))
    limit = _int_arg(request, "limit", 100, 1, MAX_LIST_LIMIT)
    offset = _int_arg(request, "offset", 0, 0, MAX_LIST_OFFSET)
    query = RegistryRequest(op="list", owner=request.ctx.principal.owner, status=status, limit=limit, offset=offset)
    reply = await registry_call(api_of(request).bus, query)
    lang = language(request)
    return json({"total": reply.total, "tasks": [status_body(t, lang) for t in reply.tasks]})


def _int_arg(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw_value = request.args.get(name)
    if raw_value is None or raw_value == "":
        return default
    try:
        value = int(raw_value)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        bounds = f"{low}..{high}"
        raise ApiError(400, "bad_parameter", name=name, reason=Both(f"целое число {bounds}", f"an integer {bounds}"))
    return value


@bp.delete("/tasks/<task_id:str>")
@openapi.definition(
    summary="Delete a task and all its files",
    tag="tasks",
    response=[docs.json_response(200, "Message", "deleted", "Deleted"), *docs.errors(401, 404, 429)],
)
@docs.secured
async def task_delete(request: Request, task_id: str) -> HTTPResponse:
    await registry_call(
        api_of(request).bus, RegistryRequest(op="delete", task_id=task_id, owner=request.ctx.principal.owner)
    )
    return json({"message": text("task_deleted", language(request), task_id=task_id)})

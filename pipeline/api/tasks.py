"""Task state for the routers: registry calls (owner-scoped, so a key never sees another key's task)
and the JSON shapes of the original API guide, built from registry records."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone
from typing import Any

from pipeline.api.errors import ApiError
from pipeline.api.i18n import Both, text
from pipeline.bus import Bus, BusTimeout, request
from schemas.messages import TERMINAL_STATUSES, RegistryReply, RegistryRequest, TaskRecord, decode, encode
from schemas.subjects import registry_subject

REGISTRY_TIMEOUT = 5.0
_STAGE_TEXTS = {"decoding": "status_decoding", "transcribing": "status_transcribing", "formatting": "status_formatting"}


async def registry_call(bus: Bus, query: RegistryRequest) -> RegistryReply:
    try:
        raw = await request(bus.nc, registry_subject(query.op), encode(query), REGISTRY_TIMEOUT)
    except BusTimeout:
        raise ApiError(
            503, "service_unavailable", reason=Both("реестр задач не отвечает", "the task registry does not answer")
        ) from None
    reply = decode(RegistryReply, raw)
    if reply.ok:
        return reply
    if reply.error == "not_found":
        raise ApiError(404, "task_not_found", task_id=query.task_id)
    if reply.error == "bad_request":
        raise ApiError(400, "bad_parameter", name="query", reason=reply.message or "")
    raise ApiError(500, "internal_error")


async def get_task(bus: Bus, task_id: str, owner: str) -> TaskRecord:
    reply = await registry_call(bus, RegistryRequest(op="get", task_id=task_id, owner=owner))
    assert reply.task is not None
    return reply.task


async def settled_task(bus: Bus, task_id: str, owner: str, timeout: float = 10.0) -> TaskRecord:
    """The record once the registry has folded the task's terminal event. Whoever has just seen that
    event on the bus (SSE, webhooks) waits here, so a client reacting to it never reads a stale row."""
    deadline = time.monotonic() + timeout
    while True:
        record = await get_task(bus, task_id, owner)
        if record.status in TERMINAL_STATUSES or time.monotonic() >= deadline:
            return record
        await asyncio.sleep(0.05)


async def wait_registered(bus: Bus, task_id: str, owner: str, timeout: float = 5.0) -> bool:
    """Read-your-writes for uploads: answer 202 only once the registry knows the task, so a client
    that asks for its status right away never gets a 404. False when the registry stayed behind."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await get_task(bus, task_id, owner)
            return True
        except ApiError as exc:
            if exc.code != "task_not_found" or time.monotonic() >= deadline:
                return False
        await asyncio.sleep(0.02)


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


def status_message(record: TaskRecord, lang: str, waiting: str | None = None) -> str:
    if waiting is not None and waits_for_model(record):
        return text("status_waiting_model", lang, reason=waiting)
    if record.status == "failed":
        return text("status_failed", lang, error=record.error or "?")
    if record.status == "processing":
        return text(_STAGE_TEXTS.get(record.stage, "status_transcribing"), lang)
    return text(f"status_{record.status}", lang)


def waits_for_model(record: TaskRecord) -> bool:
    return record.status not in TERMINAL_STATUSES and record.stage in (None, "queued", "decoding", "transcribing")


def status_body(record: TaskRecord, lang: str, waiting: str | None = None) -> dict[str, Any]:
    """`GET /api/v1/tasks/{id}`: the original guide's fields plus `stage`. `waiting`: why no infer
    worker is ready, told in the message of a task that has not been transcribed yet."""
    return {
        "task_id": record.task_id,
        "status": record.status,
        "stage": record.stage,
        "created_at": iso(record.created_at),
        "started_at": iso(record.started_at),
        "completed_at": iso(record.completed_at),
        "progress": record.progress,
        "filename": record.filename,
        "file_size": record.file_size,
        "message": status_message(record, lang, waiting),
        "error": record.error,
    }


def require_completed(record: TaskRecord) -> None:
    if record.status == "failed":
        raise ApiError(409, "task_failed", error=record.error or "?")
    if record.status != "completed":
        raise ApiError(409, "task_not_completed", status=record.status, progress=record.progress)

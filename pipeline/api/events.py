"""`GET /api/v1/tasks/{task_id}/events`: Server-Sent Events with status and progress until the end.

The task's events are replayed from the events stream from its first one, so a client connecting
late still gets the whole story in order and never misses the end. Each change of status, stage or
progress is one `status` event; the last one is `completed`, `failed` or `deleted`, sent only once
the registry shows the outcome too, so a client that fetches the result right away finds it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import replace
from typing import Any

import nats.errors
import orjson
from nats.js import api
from sanic import Blueprint, Request
from sanic_ext import openapi

from pipeline.api import openapi as docs
from pipeline.api.context import api_of
from pipeline.api.errors import ApiError, language
from pipeline.api.tasks import get_task, settled_task, status_body
from pipeline.bus import Bus
from pipeline.stages import PROGRESS
from schemas.messages import TERMINAL_STATUSES, TaskEvent, TaskRecord, decode
from schemas.subjects import EVENT_PREFIX, EVENTS_STREAM

log = logging.getLogger(__name__)

KEEPALIVE = 15.0  # seconds between comment lines that keep proxies from closing an idle stream

bp = Blueprint("events", url_prefix="/api/v1")


@bp.get("/tasks/<task_id:str>/events")
@openapi.definition(
    summary="Live status of a task (Server-Sent Events)",
    description="Streams `status` events (JSON like GET /api/v1/tasks/{task_id}) on every change, then "
    "one `completed`, `failed` or `deleted` event, and closes.",
    tag="tasks",
    response=[docs.sse_response(), *docs.errors(401, 404, 429)],
)
@docs.secured
async def task_events(request: Request, task_id: str) -> None:
    api = api_of(request)
    owner = request.ctx.principal.owner
    lang = language(request)
    record = await get_task(api.bus, task_id, owner)  # 404 for unknown and others' tasks
    response = await request.respond(
        content_type="text/event-stream; charset=utf-8",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
    await response.send(b"retry: 3000\n\n")
    await response.send(
        _frame(record.status if record.status in TERMINAL_STATUSES else "status", status_body(record, lang))
    )
    if record.status not in TERMINAL_STATUSES:
        await _stream(response, api.bus, record, owner, lang)
    await response.eof()


async def _stream(response: Any, bus: Bus, record: TaskRecord, owner: str, lang: str) -> None:
    view = {"status": record.status, "stage": record.stage, "progress": record.progress}
    sent = dict(view)
    async with aclosing(follow(bus, record.task_id)) as events:
        async for event in events:
            if event is None:
                await response.send(b": keepalive\n\n")
            elif event.type == "deleted":
                await response.send(_frame("deleted", {"task_id": record.task_id}))
                return
            elif event.type in TERMINAL_STATUSES:
                try:
                    final = await settled_task(bus, record.task_id, owner)
                except ApiError:  # deleted while we waited
                    await response.send(_frame("deleted", {"task_id": record.task_id}))
                    return
                await response.send(_frame(final.status, status_body(final, lang)))
                return
            else:
                fold(view, event)
                if view != sent:
                    sent = dict(view)
                    await response.send(_frame("status", status_body(replace(record, **view), lang)))


def fold(view: dict[str, Any], event: TaskEvent) -> None:
    """The registry's folding rules, reduced to what the stream shows: never backwards."""
    if event.type in ("stage", "progress"):
        view["status"] = "processing"
        if event.stage in PROGRESS and PROGRESS[event.stage] > PROGRESS.get(view["stage"], -1):
            view["stage"] = event.stage
        if event.progress is not None:
            view["progress"] = max(view["progress"], min(100, int(event.progress)))


async def follow(bus: Bus, task_id: str) -> AsyncIterator[TaskEvent | None]:
    """The task's events from the first, then live; None after every KEEPALIVE seconds of quiet."""
    config = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.ALL, ack_policy=api.AckPolicy.NONE)
    sub = await bus.js.subscribe(
        f"{EVENT_PREFIX}.*.{task_id}", stream=EVENTS_STREAM, config=config, ordered_consumer=True
    )
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=KEEPALIVE)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                yield None
                continue
            try:
                yield decode(TaskEvent, msg.data)
            except (ValueError, TypeError, KeyError):
                log.warning("malformed event for task %s skipped", task_id)
    finally:
        await sub.unsubscribe()


def _frame(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

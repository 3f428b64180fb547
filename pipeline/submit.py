"""Submitting work and waiting for it: used by the API, the inbox and `gigaam-transcriber submit`."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from pathlib import Path

import nats.errors
from nats.js import api

from pipeline.bus import Bus, object_exists, object_store, publish_event, publish_job, put_file
from schemas.messages import TERMINAL_STATUSES, DecodeJob, TaskEvent, TaskOptions, decode
from schemas.subjects import EVENT_PREFIX, EVENTS_STREAM, object_name


def new_task_id() -> str:
    return uuid.uuid4().hex


async def submit_file(
    bus: Bus,
    path: str | os.PathLike,
    *,
    filename: str | None = None,
    options: TaskOptions = TaskOptions(),
    owner: str | None = None,
    task_id: str | None = None,
) -> str:
    """Store the media object, record the task, queue the decode job. Safe to repeat with the same
    `task_id`: within minutes the job and event de-duplicate on their message ids, and later the
    stages drop a job whose task already ended (`ServiceContext.consume`)."""
    task_id = task_id or new_task_id()
    path = Path(path)
    size = path.stat().st_size
    media = object_name(task_id, "media")
    store = await object_store(bus.js)
    if not await object_exists(store, media):  # a repeat must not replace an object a worker may be reading
        await put_file(store, media, path)
    name = filename or path.name
    await publish_event(
        bus.js,
        TaskEvent(
            task_id=task_id, type="submitted", ts=time.time(), stage="queued", progress=0, filename=name,
            file_size=size, owner=owner, options=options,
        ),
    )
    await publish_job(bus.js, "decode", DecodeJob(task_id, media, name, size, options), task_id)
    return task_id


async def wait_for_task(bus: Bus, task_id: str, timeout: float | None = None, on_event=None) -> TaskEvent:  # noqa: ANN001
    """The task's terminal event (completed or failed, or deleted meanwhile), including one that
    happened before the call: the event stream is replayed for this task from its start."""
    config = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.ALL, ack_policy=api.AckPolicy.NONE)
    sub = await bus.js.subscribe(f"{EVENT_PREFIX}.*.{task_id}", stream=EVENTS_STREAM, config=config, ordered_consumer=True)
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise asyncio.TimeoutError(f"task {task_id} did not finish within {timeout}s")
            try:
                msg = await sub.next_msg(timeout=min(left, 5.0) if left is not None else 5.0)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                continue
            event = decode(TaskEvent, msg.data)
            if on_event is not None:
                on_event(event)
            if event.type in TERMINAL_STATUSES or event.type == "deleted":
                return event
    finally:
        await sub.unsubscribe()

"""Registry service: the only process that opens the DuckDB file.

It folds the task-event stream into rows (resuming after the last applied stream sequence, so a
fresh database rebuilds itself by replay), answers get/list/delete over request-reply, expires
finished tasks after the retention, and fails tasks whose job died with its worker on every try.
"""

from __future__ import annotations

import asyncio
import logging
import time

import nats.errors
import nats.js.errors
import orjson
from nats.js import api

from pipeline.bus import MAX_DELIVERIES_ADVISORY, delete_prefix, delete_tasks, fetch_batch, publish_event
from pipeline.registry import RegistryStore
from pipeline.service import ServiceContext, main
from schemas.messages import RegistryReply, RegistryRequest, TaskEvent, decode, encode
from schemas.subjects import DLQ_STREAM, EVENT_PREFIX, EVENTS_STREAM, JOBS_STREAM, REGISTRY_PREFIX

log = logging.getLogger(__name__)

BATCH = 256


async def follow_events(ctx: ServiceContext, store: RegistryStore) -> None:
    start = await asyncio.to_thread(store.last_seq) + 1
    config = api.ConsumerConfig(
        deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=start,
        ack_policy=api.AckPolicy.ALL,
        inactive_threshold=60.0,
    )
    sub = await ctx.js.pull_subscribe(f"{EVENT_PREFIX}.>", stream=EVENTS_STREAM, config=config)
    log.info("following task events from stream sequence %d", start)
    while not ctx.stop.is_set():
        msgs = await fetch_batch(sub, BATCH, "event")
        if not msgs:
            continue
        items = []
        for msg in msgs:
            try:
                items.append((decode(TaskEvent, msg.data), msg.metadata.sequence.stream))
            except (ValueError, TypeError, KeyError) as exc:
                log.warning("skipping malformed event at sequence %d: %s", msg.metadata.sequence.stream, exc)
        if items:
            await asyncio.to_thread(store.apply_many, items)
        await msgs[-1].ack()


async def answer_requests(ctx: ServiceContext, store: RegistryStore) -> None:
    async def on_request(msg) -> None:  # noqa: ANN001 - nats Msg
        try:
            request = decode(RegistryRequest, msg.data)
        except (ValueError, TypeError, KeyError) as exc:
            await msg.respond(encode(RegistryReply(ok=False, error="bad_request", message=f"malformed request: {exc}")))
            return
        reply = await asyncio.to_thread(store.handle, request)
        if request.op == "delete" and reply.ok:
            await delete_prefix(ctx.store, request.task_id or "")
            await publish_event(ctx.js, TaskEvent(task_id=request.task_id or "", type="deleted", ts=time.time()))
        await msg.respond(encode(reply))

    await ctx.bus.nc.subscribe(f"{REGISTRY_PREFIX}.*", queue="registry", cb=on_request)


async def sweep(ctx: ServiceContext, store: RegistryStore) -> None:
    """Rows and objects of tasks past the retention go; the streams expire their own messages."""
    every = min(60.0, max(0.5, ctx.settings.retention / 4))
    while not ctx.stop.is_set():
        try:
            await asyncio.wait_for(ctx.stop.wait(), every)
        except asyncio.TimeoutError:
            pass
        expired = await asyncio.to_thread(store.expire, time.time(), ctx.settings.retention)
        if not expired:
            continue
        try:
            await delete_tasks(ctx.store, expired)
        except (nats.errors.Error, nats.js.errors.Error, asyncio.TimeoutError) as exc:
            # the bucket's max_age still removes them
            log.warning("expired %d task(s) but could not delete their objects: %s", len(expired), exc)
        else:
            log.info("expired %d task(s)", len(expired))


async def fail_lost_jobs(ctx: ServiceContext) -> None:
    """A job whose worker died on every delivery is never settled by a worker: the server's
    max-deliveries advisory (kept in the dead-letter stream) is the only trace, so fail it here."""
    config = api.ConsumerConfig(ack_policy=api.AckPolicy.EXPLICIT, durable_name="gigaam-registry-lost")
    sub = await ctx.js.pull_subscribe(MAX_DELIVERIES_ADVISORY, durable="gigaam-registry-lost", stream=DLQ_STREAM, config=config)
    while not ctx.stop.is_set():
        msgs = await fetch_batch(sub, 16, "advisory")
        for msg in msgs:
            advisory = orjson.loads(msg.data)
            seq, consumer = advisory.get("stream_seq"), advisory.get("consumer", "")
            try:
                job = await ctx.js.get_msg(JOBS_STREAM, seq)
                task_id = orjson.loads(job.data)["task_id"]
            except (nats.js.errors.NotFoundError, KeyError, ValueError):
                await msg.ack()
                continue
            stage = consumer.removeprefix("gigaam-")
            reason = (
                f"the {stage} worker stopped {advisory.get('deliveries')} times while processing this task "
                "(crash or out of memory?)"
            )
            log.error("task %s: %s", task_id, reason, extra={"task_id": task_id, "stage": stage})
            await publish_event(ctx.js, TaskEvent(task_id=task_id, type="failed", ts=time.time(), stage=stage, error=reason))
            try:
                await ctx.js.delete_msg(JOBS_STREAM, seq)
            except nats.js.errors.NotFoundError:
                pass
            await msg.ack()


async def serve(ctx: ServiceContext) -> None:
    store = RegistryStore(ctx.settings.db_path)
    try:
        await answer_requests(ctx, store)
        async with asyncio.TaskGroup() as tg:  # one loop failing stops the process; the supervisor restarts it
            for loop in (follow_events(ctx, store), sweep(ctx, store), fail_lost_jobs(ctx)):
                tg.create_task(loop)
    finally:
        store.close()


if __name__ == "__main__":
    main("registry", serve)

"""The JetStream bus every service shares: connection, stream layout, jobs, events, objects and the
pull-consumer loop. Names come from `schemas.subjects` only."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Awaitable, Callable, Mapping, Sequence
from urllib.parse import quote, unquote

import nats.errors
import nats.js.errors
import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.object_store import OBJ_STREAM_TEMPLATE, ObjectStore

from schemas.messages import TaskEvent, encode
from schemas.subjects import (
    DLQ_PREFIX,
    DLQ_STREAM,
    EVENT_PREFIX,
    EVENTS_STREAM,
    JOB_PREFIX,
    JOBS_STREAM,
    OBJECT_BUCKET,
    STAGES,
    consumer_name,
    dlq_subject,
    event_subject,
    job_subject,
    msg_id,
)

log = logging.getLogger(__name__)

DUPLICATE_WINDOW = 120.0  # seconds a Nats-Msg-Id is remembered; capped by the retention
MAX_DELIVERIES_ADVISORY = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{JOBS_STREAM}.>"

ENDINGS = ("deleted", "completed", "failed")  # in order of precedence: a deleted task stays deleted

HDR_MSG_ID = "Nats-Msg-Id"
HDR_REASON = "Gigaam-Reason"  # dead-letter copies: why the job died, percent-encoded (`dead_reason`)
HDR_STAGE = "Gigaam-Stage"
HDR_DELIVERIES = "Gigaam-Deliveries"
HDR_STREAM_SEQ = "Gigaam-Stream-Seq"  # sequence of the job in the jobs stream

_STREAM_CONFIG_DIFFERS = 10058  # JetStream err_code: "stream name already in use with a different configuration"


class BusTimeout(TimeoutError):
    pass


class NoResponders(BusTimeout):
    """Nobody listens on the subject: fails at once instead of waiting out the timeout."""


class ObjectMissing(LookupError):
    def __init__(self, name: str) -> None:
        super().__init__(f"object {name!r} not found in bucket {OBJECT_BUCKET!r}")
        self.name = name


class PermanentError(Exception):
    """Raised by a handler when retrying cannot help: the job goes to the dead-letter stream at once."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------- connection


@dataclass(frozen=True)
class Bus:
    nc: Client
    js: JetStreamContext

    async def close(self) -> None:
        """Drain so buffered publishes and acks reach the server before the socket closes."""
        if self.nc.is_closed:
            return
        try:
            await self.nc.drain()
        except (nats.errors.Error, asyncio.TimeoutError) as exc:
            log.warning("nats drain failed (%s), closing", exc)
            await self.nc.close()

    async def __aenter__(self) -> Bus:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


def _reconnect_delay(servers: list[Any], _info: dict[str, Any]) -> tuple[Any, float]:
    """The server tried least, after an exponential backoff with jitter capped at 5 s, so a
    restarting broker is not hammered. Choosing matters: left to itself (None), nats-py retries the
    first server of its pool every time, which can be the cluster node that just died."""
    if not servers:
        return None, 1.0
    server = min(servers, key=lambda s: s.reconnects)  # ties keep the pool's (shuffled) order
    return server, min(5.0, 0.1 * 2**server.reconnects) * random.uniform(0.8, 1.2)


async def connect(url: str, name: str, *, first_connect_timeout: float | None = None) -> Bus:
    """Connects and keeps reconnecting forever. Without `first_connect_timeout` the first connection
    also waits forever, which lets services start before the broker."""
    nc = Client()
    last_warning = 0.0

    async def on_error(exc: Exception) -> None:
        # Every failed (re)connect attempt lands here: while disconnected, say so every 30 s only.
        nonlocal last_warning
        now = time.monotonic()
        if nc.is_connected or now - last_warning >= 30.0:
            last_warning = now
            log.warning("nats %s: %s", name, exc)
        else:
            log.debug("nats %s: %s", name, exc)

    async def on_disconnect() -> None:
        if not nc.is_closed:  # a deliberate close also reports a disconnect
            log.warning("nats %s: disconnected from %s", name, url)

    async def on_reconnect() -> None:
        log.info("nats %s: reconnected to %s", name, url)

    async def on_closed() -> None:
        log.info("nats %s: connection closed", name)

    connecting = nc.connect(
        servers=[u.strip() for u in url.split(",") if u.strip()],  # a cluster: comma-separated URLs
        name=name,
        max_reconnect_attempts=-1,
        drain_timeout=5,  # a drain waits on pending pull requests; do not hold a stopping service for 30 s
        reconnect_time_wait=1,  # between first-connect attempts; reconnects use _reconnect_delay
        reconnect_to_server_handler=_reconnect_delay,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        closed_cb=on_closed,
    )
    try:
        await asyncio.wait_for(connecting, first_connect_timeout)
    except asyncio.TimeoutError:
        await nc.close()
        raise BusTimeout(f"no NATS server answered at {url} within {first_connect_timeout}s") from None
    log.info("nats %s: connected to %s", name, url)
    return Bus(nc=nc, js=nc.jetstream())


# --------------------------------------------------------------------------- layout


async def ensure_layout(
    js: JetStreamContext,
    retention_s: float,
    replicas: int = 1,
    *,
    ack_wait: float = 60.0,
    max_deliver: int = 5,
    backoff: Sequence[float] | None = None,
) -> ObjectStore:
    """Creates or updates streams, bucket and stage consumers; every process may call it at start,
    concurrently: identical creates succeed and differing ones turn into updates."""
    window = min(DUPLICATE_WINDOW, retention_s)
    common: dict[str, Any] = dict(
        storage=api.StorageType.FILE, max_age=retention_s, duplicate_window=window, num_replicas=replicas
    )
    await _ensure_stream(
        js,
        api.StreamConfig(
            name=JOBS_STREAM, subjects=[f"{JOB_PREFIX}.>"], retention=api.RetentionPolicy.WORK_QUEUE, **common
        ),
    )
    await _ensure_stream(
        js,
        api.StreamConfig(
            name=EVENTS_STREAM, subjects=[f"{EVENT_PREFIX}.>"], retention=api.RetentionPolicy.LIMITS, **common
        ),
    )
    # The advisory catches jobs whose last delivery was lost with its worker (nobody could dead-letter them).
    await _ensure_stream(
        js,
        api.StreamConfig(
            name=DLQ_STREAM,
            subjects=[f"{DLQ_PREFIX}.>", MAX_DELIVERIES_ADVISORY],
            retention=api.RetentionPolicy.LIMITS,
            **common,
        ),
    )
    store = await _ensure_object_store(js, retention_s, replicas)
    for stage in STAGES:
        await ensure_consumer(js, stage, ack_wait=ack_wait, max_deliver=max_deliver, backoff=backoff)
    return store


async def _ensure_stream(js: JetStreamContext, config: api.StreamConfig) -> None:
    try:
        await js.add_stream(config)
    except nats.js.errors.BadRequestError as exc:
        if exc.err_code != _STREAM_CONFIG_DIFFERS:
            raise
        await js.update_stream(config)
        log.info("stream %s updated", config.name)


async def _ensure_object_store(js: JetStreamContext, retention_s: float, replicas: int) -> ObjectStore:
    config = api.ObjectStoreConfig(ttl=retention_s, storage=api.StorageType.FILE, replicas=replicas)
    try:
        return await js.create_object_store(OBJECT_BUCKET, config=config)
    except nats.js.errors.BadRequestError as exc:
        if exc.err_code != _STREAM_CONFIG_DIFFERS:
            raise
    # nats-py has no update for buckets: change the backing stream's limits directly.
    stream = await js.stream_info(OBJ_STREAM_TEMPLATE.format(bucket=OBJECT_BUCKET))
    stream.config.max_age = retention_s
    stream.config.duplicate_window = min(stream.config.duplicate_window, retention_s)  # server rule: <= max_age
    stream.config.num_replicas = replicas
    await js.update_stream(stream.config)
    log.info("object bucket %s updated", OBJECT_BUCKET)
    return await js.object_store(OBJECT_BUCKET)


async def ensure_consumer(
    js: JetStreamContext,
    stage: str,
    *,
    ack_wait: float,
    max_deliver: int,
    backoff: Sequence[float] | None = None,
) -> api.ConsumerInfo:
    """The server's consumer create is create-or-update, so this is idempotent and applies new limits."""
    if backoff and max_deliver > 0 and len(backoff) >= max_deliver:
        raise ValueError(f"backoff needs fewer than max_deliver={max_deliver} entries, got {len(backoff)}")
    name = consumer_name(stage)
    config = api.ConsumerConfig(
        name=name,
        durable_name=name,
        filter_subject=job_subject(stage),
        deliver_policy=api.DeliverPolicy.ALL,
        ack_policy=api.AckPolicy.EXPLICIT,
        ack_wait=ack_wait,
        max_deliver=max_deliver,
        backoff=list(backoff) if backoff else None,
    )
    return await js.add_consumer(JOBS_STREAM, config)


# --------------------------------------------------------------------------- jobs and events


async def publish_job(
    js: JetStreamContext, stage: str, msg: Any, task_id: str, *, timeout: float = 5.0
) -> api.PubAck:
    """`PubAck.duplicate` is True when the same task already queued this stage within the window."""
    data = msg if isinstance(msg, bytes) else encode(msg)
    return await js.publish(
        job_subject(stage),
        data,
        timeout=timeout,
        stream=JOBS_STREAM,
        headers={HDR_MSG_ID: msg_id(task_id, stage)},
    )


def event_msg_id(event: TaskEvent) -> str:
    """A redelivered job re-publishes exactly the same events: those collapse. Progress values and
    stages differ between steps, so each step keeps its own event; `ts` is left out on purpose
    because a re-run stamps a new time on the same step."""
    stage = event.stage or ""
    progress = "" if event.progress is None else str(event.progress)
    return f"{event.task_id}:{event.type}:{stage}:{progress}"


async def publish_event(js: JetStreamContext, event: TaskEvent, *, timeout: float = 5.0) -> api.PubAck:
    return await js.publish(
        event_subject(event.type, event.task_id),
        encode(event),
        timeout=timeout,
        stream=EVENTS_STREAM,
        headers={HDR_MSG_ID: event_msg_id(event)},
    )


async def task_outcome(js: JetStreamContext, task_id: str) -> str | None:
    """`deleted`, `completed` or `failed` once the task has ended, else None. Looked up in the events
    stream, which keeps them for the retention: a job that turns up after its task ended (a late
    redelivery, a resubmission past the duplicate window) is recognised by every stage."""
    found = await asyncio.gather(*(_has_event(js, kind, task_id) for kind in ENDINGS))
    return next((kind for kind, seen in zip(ENDINGS, found) if seen), None)


async def task_deleted(js: JetStreamContext, task_id: str) -> bool:
    """A deleted task keeps its `deleted` event for the retention: stages drop its work with it."""
    return await _has_event(js, "deleted", task_id)


async def _has_event(js: JetStreamContext, kind: str, task_id: str) -> bool:
    try:
        await js.get_last_msg(EVENTS_STREAM, event_subject(kind, task_id))
    except nats.js.errors.NotFoundError:
        return False
    return True


async def fetch_batch(sub: JetStreamContext.PullSubscription, batch: int, what: str, timeout: float = 1.0) -> list[Msg]:
    """One pull: [] when nothing came or the fetch hiccupped (logged, after a pause); a closed
    connection is raised so the caller's loop ends."""
    try:
        return await sub.fetch(batch, timeout=timeout)
    except (nats.errors.TimeoutError, asyncio.TimeoutError):  # nats-py raises both
        return []
    except nats.errors.ConnectionClosedError:
        raise
    except (nats.errors.Error, nats.js.errors.Error) as exc:
        log.warning("%s: fetch failed: %s", what, exc)
        await asyncio.sleep(1.0)
        return []


async def request(nc: Client, subject: str, payload: bytes, timeout: float) -> bytes:
    try:
        msg = await nc.request(subject, payload, timeout=timeout)
    except nats.errors.NoRespondersError:
        raise NoResponders(f"no service answers on {subject}") from None
    except nats.errors.TimeoutError:
        raise BusTimeout(f"no reply on {subject} within {timeout}s") from None
    return msg.data


# --------------------------------------------------------------------------- objects


async def object_store(js: JetStreamContext) -> ObjectStore:
    return await js.object_store(OBJECT_BUCKET)


async def put_file(store: ObjectStore, name: str, path: str | os.PathLike[str]) -> int:
    """Streams the file chunk by chunk (nats-py reads it in a thread); returns the size stored."""
    with open(path, "rb") as fh:
        info = await store.put(name, fh)
    return info.size or 0


async def put_bytes(store: ObjectStore, name: str, data: bytes) -> int:
    info = await store.put(name, data)
    return info.size or 0


async def get_to_file(
    store: ObjectStore, name: str, path: str | os.PathLike[str], *, timeout: float | None = 600.0
) -> None:
    """Writes to a temporary sibling and renames it, so `path` never holds a partial object."""
    target = Path(path)
    partial = target.with_name(f".{target.name}.partial")
    try:
        with open(partial, "wb") as fh:
            await _watched(store, name, store.get(name, writeinto=fh), timeout, fh.tell)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


async def get_bytes(store: ObjectStore, name: str, *, timeout: float | None = 600.0) -> bytes:
    result = await _watched(store, name, store.get(name), timeout, lambda: 0)
    return bytes(result.data or b"")


STALL_CHECK = 2.0  # seconds without progress before a read checks that its object still exists


async def _watched(
    store: ObjectStore,
    name: str,
    pending: Awaitable[ObjectStore.ObjectResult],
    timeout: float | None,
    progress: Callable[[], int],
) -> Any:
    """nats-py waits forever for chunks that vanish mid-read (the task deleted, or chunks expired
    before their metadata at the retention boundary). A read that stops advancing asks whether its
    object is still there and ends with ObjectMissing if not; `timeout` bounds it in any case."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    reading = asyncio.ensure_future(pending)
    seen = -1
    try:
        while True:
            wait = STALL_CHECK if deadline is None else max(0.0, min(STALL_CHECK, deadline - loop.time()))
            done, _ = await asyncio.wait({reading}, timeout=wait)
            if done:
                return reading.result()
            if deadline is not None and loop.time() >= deadline:
                raise BusTimeout(f"object {name!r} not read within {timeout}s")
            position = progress()
            if position == seen and not await object_exists(store, name):
                raise ObjectMissing(name)
            seen = position
    except nats.js.errors.NotFoundError:  # also ObjectNotFoundError and ObjectDeletedError
        raise ObjectMissing(name) from None
    finally:
        if not reading.done():
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)


async def object_exists(store: ObjectStore, name: str) -> bool:
    """Only complete objects have their info record, so a half-written put reads as missing."""
    try:
        await store.get_info(name)
    except nats.js.errors.NotFoundError:
        return False
    return True


async def object_names(store: ObjectStore, *, idle: float = 1.0) -> list[str]:
    """Names of the live objects. nats-py's `ObjectStore.list()` waits forever when the metadata it
    counted ages out (max_age) before its watcher starts, which is exactly when the retention sweep
    runs; a bounded pull over the metadata subjects cannot: expired records just stop arriving."""
    config = api.ConsumerConfig(
        deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
        ack_policy=api.AckPolicy.NONE,
        inactive_threshold=60.0,
    )
    sub = await store._js.pull_subscribe(f"$O.{store._name}.M.>", stream=store._stream, config=config)
    names: set[str] = set()
    try:
        if (await sub.consumer_info()).num_pending == 0:  # an empty bucket: no need to wait out `idle`
            return []
        while True:
            try:
                msgs = await sub.fetch(256, timeout=idle)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                break
            for msg in msgs:
                info = api.ObjectInfo.from_response(orjson.loads(msg.data))
                if info.name and not info.deleted:
                    names.add(info.name)
            if not msgs or msgs[-1].metadata.num_pending == 0:
                break
    finally:
        await _quietly(sub.unsubscribe(), "object listing unsubscribe")
    return sorted(names)


async def delete_prefix(store: ObjectStore, task_id: str) -> int:
    """Deletes every `<task_id>/...` object. Returns how many went."""
    return await delete_tasks(store, [task_id])


async def delete_tasks(store: ObjectStore, task_ids: Sequence[str]) -> int:
    """Deletes the objects of many tasks with one listing of the bucket. Returns how many went."""
    prefixes = tuple(f"{task_id}/" for task_id in task_ids if task_id)
    if not prefixes:
        return 0
    deleted = 0
    for name in await object_names(store):
        if not name.startswith(prefixes):
            continue
        try:
            await store.delete(name)
        except nats.js.errors.NotFoundError:
            continue  # deleted or expired concurrently
        deleted += 1
    return deleted


# --------------------------------------------------------------------------- consumer loop


@dataclass(frozen=True, slots=True)
class Delivery:
    num_delivered: int  # 1 on the first attempt
    max_deliver: int  # <= 0: unlimited
    stream_seq: int

    @property
    def final(self) -> bool:
        """No redelivery follows a failure now: the handler may want to report instead of retry."""
        return self.max_deliver > 0 and self.num_delivered >= self.max_deliver


Handler = Callable[[bytes, Delivery], Awaitable[None]]
OnDead = Callable[[bytes, str], Awaitable[None]]


async def run_consumer(
    js: JetStreamContext,
    stage: str,
    handler: Handler,
    *,
    concurrency: int,
    stop_event: asyncio.Event,
    max_deliver: int | None = None,
    in_progress_every: float | None = None,
    retry_delays: Sequence[float] = (2.0, 10.0, 30.0),
    on_dead: OnDead | None = None,
    fetch_timeout: float = 1.0,
    drain_timeout: float | None = None,
) -> None:
    """Pulls the stage's jobs and runs up to `concurrency` handlers at once.

    Success acks. `PermanentError`, or any failure on the final delivery, copies the job to
    `gigaam.dlq.<stage>`, awaits `on_dead(data, reason)` (the stage reports the task failed there)
    and terminates it. Other failures nak with `retry_delays[delivery-1]` (the last one repeats).

    `max_deliver` and `in_progress_every` default to the consumer's own settings (a third of its
    ack wait). Setting `stop_event` stops fetching and lets running handlers finish (up to
    `drain_timeout`); cancelling the task instead naks running jobs so another worker gets them now.
    """
    name = consumer_name(stage)
    while True:  # a broker that is restarting must not kill the service
        try:
            info = await js.consumer_info(JOBS_STREAM, name)
            break
        except nats.js.errors.NotFoundError:
            raise RuntimeError(f"consumer {name} on {JOBS_STREAM} does not exist: run ensure_layout first") from None
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError) as exc:
            log.warning("consumer %s: JetStream not answering (%s), retrying", name, type(exc).__name__)
            await _sleep_unless(stop_event, 1.0)
            if stop_event.is_set():
                return
    if max_deliver is None:
        max_deliver = info.config.max_deliver or -1
    if in_progress_every is None:
        waits = [info.config.ack_wait or 30.0, *(info.config.backoff or [])]
        in_progress_every = max(0.1, min(waits) / 3)
    worker = _Worker(js, stage, handler, max_deliver, in_progress_every, tuple(retry_delays), on_dead)

    sub = await js.pull_subscribe_bind(consumer=name, stream=JOBS_STREAM)
    running: set[asyncio.Task[None]] = set()
    log.info("consumer %s: started, concurrency %d", name, concurrency)
    try:
        while not stop_event.is_set():
            free = concurrency - len(running)
            if free <= 0:
                stopping = asyncio.ensure_future(stop_event.wait())
                await asyncio.wait({*running, stopping}, return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
                continue
            try:
                msgs = await sub.fetch(free, timeout=fetch_timeout)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):  # nats-py raises both
                continue  # no work right now
            except nats.errors.ConnectionClosedError:
                raise
            except (nats.errors.Error, nats.js.errors.Error) as exc:
                log.warning("consumer %s: fetch failed: %s", name, exc)
                await _sleep_unless(stop_event, 1.0)
                continue
            for msg in msgs:
                task = asyncio.create_task(worker.process(msg), name=f"{name}:{msg.metadata.sequence.stream}")
                running.add(task)
                task.add_done_callback(running.discard)
    finally:
        # Unsubscribe first: a job nak'd below must not be handed to a pull request of this dead inbox.
        try:
            await sub.unsubscribe()
        except nats.errors.Error as exc:
            log.debug("consumer %s: unsubscribe failed: %s", name, exc)
        await _finish(name, running, drain_timeout if stop_event.is_set() else 0.0)
        log.info("consumer %s: stopped", name)


async def _finish(name: str, running: set[asyncio.Task[None]], timeout: float | None) -> None:
    """Lets running jobs end within `timeout` (None: no limit), then cancels the rest, which naks them."""
    try:
        if running and timeout != 0:
            log.info("consumer %s: stopping, waiting for %d running job(s)", name, len(running))
            await asyncio.wait(set(running), timeout=timeout)
    finally:
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)


async def _sleep_unless(event: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(event.wait(), seconds)
    except asyncio.TimeoutError:
        pass


@dataclass(frozen=True)
class _Worker:
    js: JetStreamContext
    stage: str
    handler: Handler
    max_deliver: int
    in_progress_every: float
    retry_delays: tuple[float, ...]
    on_dead: OnDead | None

    async def process(self, msg: Msg) -> None:
        meta = msg.metadata
        delivery = Delivery(meta.num_delivered, self.max_deliver, meta.sequence.stream)
        try:
            await self._run(msg, delivery)
        except asyncio.CancelledError:
            if not msg.is_acked:
                await _quietly(msg.nak(), "nak")
            raise
        except Exception:
            # The broker is unreachable for the ack/nak/term: the job comes back after ack_wait.
            log.exception("%s job %d: settling failed, it will be redelivered", self.stage, delivery.stream_seq)

    async def _run(self, msg: Msg, delivery: Delivery) -> None:
        keepalive = asyncio.create_task(self._keep_alive(msg))
        try:
            try:
                await self.handler(msg.data, delivery)
            finally:
                keepalive.cancel()
        except PermanentError as exc:
            log.warning("%s job %d failed permanently: %s", self.stage, delivery.stream_seq, exc.reason)
            await self._dead(msg, delivery, exc.reason)
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            if delivery.final:
                log.exception(
                    "%s job %d failed on its last delivery (%d)",
                    self.stage,
                    delivery.stream_seq,
                    delivery.num_delivered,
                )
                await self._dead(msg, delivery, f"{reason} (after {delivery.num_delivered} deliveries)")
            else:
                delay = self._retry_delay(delivery)
                log.warning(
                    "%s job %d failed on delivery %d, retrying in %.1fs: %s",
                    self.stage,
                    delivery.stream_seq,
                    delivery.num_delivered,
                    delay,
                    reason,
                )
                await msg.nak(delay=delay)
        else:
            await msg.ack_sync()

    def _retry_delay(self, delivery: Delivery) -> float:
        if not self.retry_delays:
            return 0.0
        return self.retry_delays[min(delivery.num_delivered, len(self.retry_delays)) - 1]

    async def _keep_alive(self, msg: Msg) -> None:
        while True:
            await asyncio.sleep(self.in_progress_every)
            await _quietly(msg.in_progress(), "in_progress")

    async def _dead(self, msg: Msg, delivery: Delivery, reason: str) -> None:
        """Copy to the DLQ first so the job is never lost, then let the stage report, then terminate."""
        original_id = (msg.headers or {}).get(HDR_MSG_ID) or f"{self.stage}:{delivery.stream_seq}"
        headers = {
            HDR_MSG_ID: f"{original_id}:dead",  # a repeated final attempt leaves one copy
            HDR_REASON: _header_value(reason),
            HDR_STAGE: self.stage,
            HDR_DELIVERIES: str(delivery.num_delivered),
            HDR_STREAM_SEQ: str(delivery.stream_seq),
        }
        try:
            await self.js.publish(dlq_subject(self.stage), msg.data, stream=DLQ_STREAM, headers=headers)
        except (nats.errors.Error, nats.js.errors.Error, asyncio.TimeoutError) as exc:
            # Redelivered if deliveries remain; otherwise the max-deliveries advisory lands in the DLQ.
            log.error("%s job %d: dead-letter publish failed, nak'd: %s", self.stage, delivery.stream_seq, exc)
            await msg.nak(delay=self._retry_delay(delivery))
            return
        if self.on_dead is not None:
            try:
                await self.on_dead(msg.data, reason)
            except Exception:
                if not delivery.final:
                    log.exception("%s job %d: on_dead failed, will retry", self.stage, delivery.stream_seq)
                    await msg.nak(delay=self._retry_delay(delivery))
                    return
                log.exception("%s job %d: on_dead failed on the last delivery", self.stage, delivery.stream_seq)
        await msg.term()


_HEADER_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def _header_value(text: str, limit: int = 2048) -> str:
    """One line, bounded, ASCII: nats-py's direct get (`js.get_msg`) turns non-ASCII header values
    into `email.header.Header` objects, so anything else is percent-encoded (see `dead_reason`)."""
    flat = " ".join(text.split())
    flat = flat if len(flat) <= limit else flat[: limit - 1] + "…"
    return quote(flat, safe=_HEADER_SAFE)


def dead_reason(headers: Mapping[str, Any] | None) -> str:
    """The reason of a dead-letter copy, as the stage gave it (line breaks flattened)."""
    return unquote(str((headers or {}).get(HDR_REASON, "")))


async def _quietly(pending: Awaitable[None], what: str) -> None:
    try:
        await pending
    except (nats.errors.Error, asyncio.TimeoutError) as exc:
        log.debug("%s failed: %s", what, exc)

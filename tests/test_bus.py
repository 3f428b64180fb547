"""The bus layer against a real nats-server: layout, de-duplication, objects, the consumer loop."""

from __future__ import annotations

import asyncio
import time
import hashlib
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import nats.errors
import nats.js.api
import orjson
import pytest

from pipeline import bus
from pipeline.bus import Delivery, PermanentError
from pipeline.natsserver import EmbeddedNats, NatsServerError
from schemas.messages import DecodeJob, TaskEvent, encode
from schemas.subjects import (
    DLQ_STREAM,
    EVENTS_STREAM,
    JOBS_STREAM,
    OBJECT_BUCKET,
    STAGES,
    consumer_name,
    object_name,
)

RETRY = (0.1,)  # nak delay in consumer tests


async def open_bus(server: EmbeddedNats) -> bus.Bus:
    return await bus.connect(server.url, "test", first_connect_timeout=5)


async def wait_until(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


async def count(js, stream: str) -> int:
    return (await js.stream_info(stream)).state.messages


def job(task_id: str = "t1") -> bytes:
    return encode(DecodeJob(task_id=task_id, media=object_name(task_id, "media"), filename="a.wav", file_size=1))


class Consumer:
    """run_consumer in a background task with a recorded handler."""

    def __init__(self, b: bus.Bus, behaviour: Callable[[Delivery], Awaitable[None]], **kwargs) -> None:
        self.deliveries: list[Delivery] = []
        self.dead: list[tuple[bytes, str]] = []
        self.stop = asyncio.Event()

        async def handler(data: bytes, delivery: Delivery) -> None:
            assert data == job()
            self.deliveries.append(delivery)
            await behaviour(delivery)

        async def on_dead(data: bytes, reason: str) -> None:
            self.dead.append((data, reason))

        kwargs.setdefault("concurrency", 2)
        kwargs.setdefault("retry_delays", RETRY)
        self.task = asyncio.create_task(
            bus.run_consumer(b.js, "decode", handler, stop_event=self.stop, on_dead=on_dead, **kwargs)
        )

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 10)


async def layout(b: bus.Bus, **kwargs) -> None:
    await bus.ensure_layout(b.js, retention_s=3600, **kwargs)


# --------------------------------------------------------------------------- broker process


async def test_server_restart_keeps_data_and_consumers_recover(nats_server: EmbeddedNats) -> None:
    b = await open_bus(nats_server)
    await layout(b)
    await bus.publish_job(b.js, "infer", job(), "t1")  # nobody consumes infer here: it must survive

    async def ok(_: Delivery) -> None:
        return None

    consumer = Consumer(b, ok)
    await asyncio.sleep(0.3)  # the loop is fetching when the broker goes away
    url = nats_server.url
    await asyncio.to_thread(nats_server.restart)
    assert nats_server.url == url
    # The same connection comes back by itself, the job survived on disk and the loop pulls again.
    await wait_until(lambda: _reconnected(b))
    assert await count(b.js, JOBS_STREAM) == 1
    await bus.publish_job(b.js, "decode", job(), "t1")
    await wait_until(lambda: _has_deliveries(consumer, 1))
    await consumer.close()
    await b.close()


async def _has_deliveries(consumer: Consumer, n: int) -> bool:
    return len(consumer.deliveries) >= n


async def _reconnected(b: bus.Bus) -> bool:
    return b.nc.stats["reconnects"] >= 1 and b.nc.is_connected


def test_server_with_monitoring_and_clear_start_error(tmp_path: Path) -> None:
    with EmbeddedNats(tmp_path / "a", monitor_port=0) as server:
        assert server.monitor_url and server.monitor_url.startswith("http://127.0.0.1:")
        # The port is taken now: the second server must fail with its own log in the message.
        clash = EmbeddedNats(tmp_path / "b", port=server.port, start_timeout=5)
        with pytest.raises(NatsServerError, match="exited") as info:
            clash.start()
        assert "address already in use" in str(info.value).lower()
        assert not clash.running


async def test_connect_gives_up_when_asked() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(bus.BusTimeout):
        await bus.connect(f"nats://127.0.0.1:{port}", "test", first_connect_timeout=0.5)


# --------------------------------------------------------------------------- layout and publishing


async def test_layout_is_idempotent_and_updatable(nats_server: EmbeddedNats) -> None:
    b, other = await open_bus(nats_server), await open_bus(nats_server)
    # Two processes racing at start-up, then a plain repeat.
    await asyncio.gather(layout(b, ack_wait=30, max_deliver=4), layout(other, ack_wait=30, max_deliver=4))
    await layout(b, ack_wait=30, max_deliver=4)

    jobs = (await b.js.stream_info(JOBS_STREAM)).config
    assert jobs.retention == nats.js.api.RetentionPolicy.WORK_QUEUE
    assert jobs.storage == nats.js.api.StorageType.FILE
    assert (jobs.max_age, jobs.duplicate_window) == (3600, 120)
    events = (await b.js.stream_info(EVENTS_STREAM)).config
    assert events.retention == nats.js.api.RetentionPolicy.LIMITS and events.max_age == 3600
    dlq = (await b.js.stream_info(DLQ_STREAM)).config
    assert bus.MAX_DELIVERIES_ADVISORY in dlq.subjects
    assert (await (await bus.object_store(b.js)).status()).ttl == 3600
    for stage in STAGES:
        info = await b.js.consumer_info(JOBS_STREAM, consumer_name(stage))
        assert (info.config.ack_wait, info.config.max_deliver) == (30, 4)
        assert info.config.ack_policy == nats.js.api.AckPolicy.EXPLICIT

    # New settings on a later start update everything in place.
    await bus.ensure_layout(b.js, retention_s=60, ack_wait=10, max_deliver=2, backoff=[1])
    jobs = (await b.js.stream_info(JOBS_STREAM)).config
    assert (jobs.max_age, jobs.duplicate_window) == (60, 60)
    assert (await (await bus.object_store(b.js)).status()).ttl == 60
    info = await b.js.consumer_info(JOBS_STREAM, consumer_name("infer"))
    assert (info.config.max_deliver, info.config.backoff) == (2, [1])
    await other.close()
    await b.close()


async def test_publish_job_and_events_deduplicate(nats_server: EmbeddedNats) -> None:
    b = await open_bus(nats_server)
    await layout(b)
    first = await bus.publish_job(b.js, "decode", DecodeJob(task_id="t1", media="m", filename="a", file_size=1), "t1")
    again = await bus.publish_job(b.js, "decode", job(), "t1")  # other bytes, same task and stage
    other_stage = await bus.publish_job(b.js, "infer", job(), "t1")
    assert (first.duplicate, again.duplicate, other_stage.duplicate) == (None, True, None)
    assert await count(b.js, JOBS_STREAM) == 2

    progress = [TaskEvent(task_id="t1", type="progress", ts=float(i), stage="transcribing", progress=p)
                for i, p in enumerate([10, 10, 20])]
    for event in progress:
        await bus.publish_event(b.js, event)
    await bus.publish_event(b.js, TaskEvent(task_id="t1", type="completed", ts=9.0, text="привет"))
    assert await count(b.js, EVENTS_STREAM) == 3  # the repeated 10 % collapsed
    last = await b.js.get_last_msg(EVENTS_STREAM, "gigaam.events.completed.t1")
    assert "привет" in last.data.decode()
    await b.close()


async def test_request_helper(nats_server: EmbeddedNats) -> None:
    b = await open_bus(nats_server)

    async def echo(msg) -> None:
        await msg.respond(msg.data[::-1])

    async def ignore(msg) -> None:
        return None

    await b.nc.subscribe("gigaam.test.echo", cb=echo)
    await b.nc.subscribe("gigaam.test.silent", cb=ignore)
    assert await bus.request(b.nc, "gigaam.test.echo", b"abc", timeout=2) == b"cba"
    with pytest.raises(bus.NoResponders):
        await bus.request(b.nc, "gigaam.test.nobody", b"", timeout=2)
    with pytest.raises(bus.BusTimeout):
        await bus.request(b.nc, "gigaam.test.silent", b"", timeout=0.2)
    await b.close()


async def test_a_client_fails_over_when_its_server_dies(tmp_path: Path) -> None:
    """Losing the connected server must move the client to a live one. nats-py, given a reconnect
    handler that names no server, retried the first of its shuffled pool forever: often the dead one."""
    servers = [EmbeddedNats(tmp_path / f"n{i}").start() for i in range(3)]
    try:
        b = await bus.connect(",".join(s.url for s in servers), "failover", first_connect_timeout=5)
        for _ in range(2):  # two of three die in turn
            port = b.nc.connected_url.port
            next(s for s in servers if s.url.endswith(f":{port}")).stop()

            async def elsewhere(dead: int = port) -> bool:
                return b.nc.is_connected and b.nc.connected_url.port != dead

            await wait_until(elsewhere, timeout=10)
            await b.nc.flush(timeout=2)  # and it works there
        await b.close()
    finally:
        for server in servers:
            server.stop()


# --------------------------------------------------------------------------- objects


async def test_objects_round_trip_and_delete_prefix(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    b = await open_bus(nats_server)
    store = await bus.ensure_layout(b.js, retention_s=3600)
    assert await bus.delete_prefix(store, "nobody") == 0  # empty bucket

    source = tmp_path / "upload.bin"
    with open(source, "wb") as fh:
        for _ in range(20):
            fh.write(os.urandom(1 << 20))
    assert await bus.put_file(store, object_name("a", "media"), source) == 20 << 20
    await bus.put_bytes(store, object_name("a", "transcript.json"), b"{}")
    await bus.put_bytes(store, object_name("ab", "media"), b"other task")

    copy = tmp_path / "out" / "copy.bin"
    copy.parent.mkdir()
    await bus.get_to_file(store, object_name("a", "media"), copy)
    assert hashlib.sha256(copy.read_bytes()).digest() == hashlib.sha256(source.read_bytes()).digest()
    assert await bus.get_bytes(store, object_name("a", "transcript.json")) == b"{}"

    assert await bus.object_names(store) == ["a/media", "a/transcript.json", "ab/media"]
    assert await bus.delete_prefix(store, "a") == 2
    assert await bus.delete_prefix(store, "a") == 0
    with pytest.raises(bus.ObjectMissing):
        await bus.get_bytes(store, object_name("a", "transcript.json"))
    with pytest.raises(bus.ObjectMissing):
        await bus.get_to_file(store, object_name("a", "media"), tmp_path / "gone.bin")
    assert not (tmp_path / "gone.bin").exists() and list(tmp_path.glob(".*partial")) == []
    assert await bus.get_bytes(store, object_name("ab", "media")) == b"other task"  # `ab/` is not `a/`
    bucket = await b.js.stream_info(f"OBJ_{OBJECT_BUCKET}")
    assert bucket.state.bytes < 1 << 20  # the 20 MB of chunks were purged
    await b.close()


async def test_a_read_whose_object_is_deleted_midway_ends_instead_of_waiting(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    """nats-py waits forever for chunks a delete purged; a task deleted while a stage downloads its
    audio must free that stage within seconds, not at the 10-minute read timeout."""
    b = await open_bus(nats_server)
    store = await bus.ensure_layout(b.js, retention_s=3600)
    source = tmp_path / "big.bin"
    with open(source, "wb") as fh:
        for _ in range(96):
            fh.write(os.urandom(1 << 20))
    await bus.put_file(store, "gone/audio.pcm", source)
    target = tmp_path / "copy.bin"
    partial = target.with_name(f".{target.name}.partial")
    reading = asyncio.create_task(bus.get_to_file(store, "gone/audio.pcm", target))
    await wait_until(lambda: _has_bytes(partial), timeout=10)
    await store.delete("gone/audio.pcm")
    started = time.monotonic()
    with pytest.raises(bus.ObjectMissing):
        await asyncio.wait_for(reading, 15)
    assert time.monotonic() - started < 10 and not target.exists() and not partial.exists()
    await b.close()


async def _has_bytes(path: Path) -> bool:
    return path.exists() and path.stat().st_size > 0


async def test_listing_objects_while_they_expire_returns_instead_of_waiting(nats_server: EmbeddedNats) -> None:
    """The retention sweep lists the bucket just as its metadata ages out; that must not hang."""
    b = await open_bus(nats_server)
    store = await bus.ensure_layout(b.js, retention_s=1.0)
    for task_id in ("x1", "x2", "x3"):
        await bus.put_bytes(store, object_name(task_id, "media"), b"m")
        await bus.put_bytes(store, object_name(task_id, "transcript.json"), b"{}")
    assert await bus.delete_tasks(store, ["x1", "x3"]) == 4
    assert await bus.object_names(store) == ["x2/media", "x2/transcript.json"]
    deadline = time.monotonic() + 10
    while names := await asyncio.wait_for(bus.object_names(store), 5):
        assert time.monotonic() < deadline, names
        await asyncio.sleep(0.1)
    assert await asyncio.wait_for(bus.delete_tasks(store, ["x2"]), 5) == 0
    await b.close()


# --------------------------------------------------------------------------- consumer loop


async def test_success_acks(nats_server: EmbeddedNats) -> None:
    b = await open_bus(nats_server)
    await layout(b)
    await bus.publish_job(b.js, "decode", job(), "t1")

    async def ok(_: Delivery) -> None:
        return None

    consumer = Consumer(b, ok)
    await wait_until(lambda: _empty(b, JOBS_STREAM))
    await consumer.close()
    assert [d.num_delivered for d in consumer.deliveries] == [1]
    assert consumer.dead == [] and await count(b.js, DLQ_STREAM) == 0
    await b.close()


async def _empty(b: bus.Bus, stream: str) -> bool:
    return await count(b.js, stream) == 0


async def test_permanent_error_goes_to_dlq(nats_server: EmbeddedNats) -> None:
    b = await open_bus(nats_server)
    await layout(b)
    await bus.publish_job(b.js, "decode", job(), "t1")

    async def broken(_: Delivery) -> None:
        raise PermanentError("не аудио:\nbad media 100%")

    consumer = Consumer(b, broken)
    await wait_until(lambda: _has(b, DLQ_STREAM, 1))
    await wait_until(lambda: _empty(b, JOBS_STREAM))
    await consumer.close()
    dead = await b.js.get_msg(DLQ_STREAM, seq=1)
    assert dead.subject == "gigaam.dlq.decode" and dead.data == job()
    assert bus.dead_reason(dead.headers) == "не аудио: bad media 100%"
    assert dead.headers[bus.HDR_STAGE] == "decode" and dead.headers[bus.HDR_DELIVERIES] == "1"
    assert consumer.dead == [(job(), "не аудио:\nbad media 100%")]
    assert len(consumer.deliveries) == 1
    await b.close()


async def _has(b: bus.Bus, stream: str, n: int) -> bool:
    return await count(b.js, stream) >= n


async def test_transient_failures_retry_until_success(nats_server: EmbeddedNats) -> None:
    b = await open_bus(nats_server)
    await layout(b, max_deliver=5)
    await bus.publish_job(b.js, "decode", job(), "t1")

    async def flaky(delivery: Delivery) -> None:
        if delivery.num_delivered < 3:
            raise ConnectionError("model server busy")

    consumer = Consumer(b, flaky)
    await wait_until(lambda: _empty(b, JOBS_STREAM))
    await consumer.close()
    assert [d.num_delivered for d in consumer.deliveries] == [1, 2, 3]
    assert consumer.dead == [] and await count(b.js, DLQ_STREAM) == 0
    await b.close()


async def test_always_failing_ends_in_dlq_after_max_deliver(nats_server: EmbeddedNats) -> None:
    b = await open_bus(nats_server)
    await layout(b, max_deliver=3)
    await bus.publish_job(b.js, "decode", job(), "t1")

    async def failing(_: Delivery) -> None:
        raise ValueError("always")

    consumer = Consumer(b, failing)
    await wait_until(lambda: _has(b, DLQ_STREAM, 1))
    await wait_until(lambda: _empty(b, JOBS_STREAM))  # the job left the work queue: no fourth delivery can come
    await consumer.close()
    assert [(d.num_delivered, d.final) for d in consumer.deliveries] == [(1, False), (2, False), (3, True)]
    assert len(consumer.dead) == 1 and "ValueError: always" in consumer.dead[0][1]
    dead = await b.js.get_msg(DLQ_STREAM, seq=1)
    assert bus.dead_reason(dead.headers) == "ValueError: always (after 3 deliveries)"
    assert await count(b.js, DLQ_STREAM) == 1
    await b.close()


async def test_slow_job_is_kept_alive_past_ack_wait(nats_server: EmbeddedNats) -> None:
    b = await open_bus(nats_server)
    await layout(b, ack_wait=2)
    await bus.publish_job(b.js, "decode", job(), "t1")

    async def slow(_: Delivery) -> None:
        await asyncio.sleep(5)

    consumer = Consumer(b, slow, concurrency=2)  # a free slot would take a redelivery
    await wait_until(lambda: _empty(b, JOBS_STREAM), timeout=15)
    await consumer.close()
    assert [d.num_delivered for d in consumer.deliveries] == [1]
    await b.close()


async def test_graceful_stop_finishes_running_job(nats_server: EmbeddedNats) -> None:
    b = await open_bus(nats_server)
    await layout(b)
    await bus.publish_job(b.js, "decode", job(), "t1")
    started, release = asyncio.Event(), asyncio.Event()

    async def blocking(_: Delivery) -> None:
        started.set()
        await release.wait()

    consumer = Consumer(b, blocking)
    await asyncio.wait_for(started.wait(), 10)
    consumer.stop.set()
    await asyncio.sleep(0.3)
    assert not consumer.task.done()  # waits for the running job
    release.set()
    await asyncio.wait_for(consumer.task, 10)
    assert await count(b.js, JOBS_STREAM) == 0
    await b.close()


@pytest.mark.parametrize("crash", [False, True], ids=["cancelled", "connection-lost"])
async def test_interrupted_job_is_redelivered(nats_server: EmbeddedNats, crash: bool) -> None:
    """Cancelling naks the job at once; a worker that vanishes leaves it to ack_wait. Neither loses it."""
    first, second = await open_bus(nats_server), await open_bus(nats_server)
    await layout(first, ack_wait=2)
    await bus.publish_job(first.js, "decode", job(), "t1")
    started = asyncio.Event()

    async def hang(_: Delivery) -> None:
        started.set()
        await asyncio.Event().wait()

    doomed = Consumer(first, hang)
    await asyncio.wait_for(started.wait(), 10)
    if crash:
        await first.nc.close()  # no nak can reach the server now
    doomed.task.cancel()
    # nats-py turns a fetch cut short by close() into ConnectionClosedError, even when cancelled.
    with pytest.raises((asyncio.CancelledError, nats.errors.ConnectionClosedError)):
        await doomed.task

    async def ok(_: Delivery) -> None:
        return None

    survivor = Consumer(second, ok)
    await wait_until(lambda: _empty(second, JOBS_STREAM), timeout=10)
    await survivor.close()
    assert [d.num_delivered for d in survivor.deliveries] == [2]
    await first.close()
    await second.close()


async def test_job_lost_on_its_last_delivery_leaves_an_advisory(nats_server: EmbeddedNats) -> None:
    """Nobody is left to dead-letter it, so the server's max-deliveries advisory is what the DLQ keeps."""
    first, second = await open_bus(nats_server), await open_bus(nats_server)
    await layout(first, ack_wait=1, max_deliver=1)
    sent = await bus.publish_job(first.js, "decode", job(), "t1")
    started = asyncio.Event()

    async def hang(_: Delivery) -> None:
        started.set()
        await asyncio.Event().wait()

    doomed = Consumer(first, hang)
    await asyncio.wait_for(started.wait(), 10)
    await first.nc.close()
    doomed.task.cancel()
    await asyncio.gather(doomed.task, return_exceptions=True)

    async def unexpected(_: Delivery) -> None:
        raise AssertionError("no redelivery after max_deliver")

    survivor = Consumer(second, unexpected)  # its pulls make the server notice the expired delivery
    await wait_until(lambda: _has(second, DLQ_STREAM, 1))
    await survivor.close()
    advisory = await second.js.get_msg(DLQ_STREAM, seq=1)
    assert advisory.subject == f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{JOBS_STREAM}.{consumer_name('decode')}"
    assert orjson.loads(advisory.data)["stream_seq"] == sent.seq
    assert survivor.deliveries == []
    await second.close()

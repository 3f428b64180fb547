"""What every service process shares: settings, logging, the bus connection, the stream layout,
signal handling, a ping responder the health check uses and a metrics responder the API's `/metrics`
gathers. A service is `async def body(ctx)`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable

import orjson
from nats.js.object_store import ObjectStore

from pipeline.bus import (
    Bus,
    Delivery,
    Handler,
    PermanentError,
    connect,
    delete_prefix,
    ensure_layout,
    publish_event,
    run_consumer,
    task_deleted,
    task_outcome,
)
from pipeline.logs import setup_logging, task_logger
from pipeline.metrics import Metrics
from pipeline.settings import Settings, SettingsError, load_settings
from schemas.messages import TaskEvent
from schemas.subjects import METRICS_PREFIX, WORKER_PING_PREFIX

log = logging.getLogger(__name__)


@dataclass
class ServiceContext:
    name: str
    settings: Settings
    bus: Bus
    store: ObjectStore
    stop: asyncio.Event
    info: dict = field(default_factory=dict)  # extra facts for pings (model, device...)
    metrics: Metrics = field(default_factory=Metrics)  # answered on gigaam.metrics.<name>

    @property
    def js(self):  # noqa: ANN201 - JetStreamContext
        return self.bus.js

    @property
    def work_dir(self) -> Path:
        """Scratch space for objects being processed; on the data disk, not /tmp (may be small)."""
        path = Path(self.settings.data_dir) / "work" / self.name
        path.mkdir(parents=True, exist_ok=True)
        return path

    async def event(self, task_id: str, type_: str, **fields) -> None:  # noqa: ANN003
        await publish_event(self.js, TaskEvent(task_id=task_id, type=type_, ts=time.time(), **fields))

    async def deleted(self, task_id: str, *, purge: bool = False) -> bool:
        """Whether the task was deleted meanwhile; with `purge`, also removes objects this stage
        wrote after the registry's delete had already run."""
        if not await task_deleted(self.js, task_id):
            return False
        if purge:
            await delete_prefix(self.store, task_id)
        task_logger(log, task_id, self.name).info("the task was deleted: its job is dropped")
        return True

    async def consume(self, stage: str, handler: Handler, *, concurrency: int, failed_stage: str) -> None:
        """Runs the stage's job consumer. Every job is timed and its outcome counted (`ok`, `retry`,
        `permanent`, `deleted`, `repeat`), and a job that dies (permanent error or last delivery) fails
        its task with the reason, so no stage has to repeat that wiring. Jobs of tasks that already
        ended (deleted, completed, failed) are dropped: every stage is idempotent at any delay."""
        durations = self.metrics.histogram(
            "gigaam_stage_duration_seconds", "Time one job spent in a stage handler", ("stage", "outcome")
        )
        jobs = self.metrics.counter("gigaam_jobs_total", "Jobs handled, by outcome", ("stage", "outcome"))
        dead = self.metrics.counter("gigaam_jobs_failed_total", "Jobs that failed their task", ("stage",))

        async def timed(data: bytes, delivery: Delivery) -> None:
            started = time.perf_counter()
            outcome = "retry"
            task_id = _task_id(data)
            try:
                ended = await task_outcome(self.js, task_id) if task_id else None
                if ended is not None:
                    task_logger(log, task_id, self.name).info("the task was %s already: its job is dropped", ended)
                    outcome = "deleted" if ended == "deleted" else "repeat"
                    return
                await handler(data, delivery)
                outcome = "ok"
            except PermanentError:
                if task_id and await self.deleted(task_id, purge=True):  # its objects vanished under it
                    outcome = "deleted"
                    return
                outcome = "permanent"
                raise
            finally:
                durations.labels(stage=stage, outcome=outcome).observe(time.perf_counter() - started)
                jobs.labels(stage=stage, outcome=outcome).inc()

        async def on_dead(data: bytes, reason: str) -> None:
            dead.labels(stage=stage).inc()
            task_id = orjson.loads(data)["task_id"]  # every job message carries it
            await self.event(task_id, "failed", stage=failed_stage, error=reason)

        await run_consumer(self.js, stage, timed, concurrency=concurrency, stop_event=self.stop, on_dead=on_dead)


def _task_id(data: bytes) -> str | None:
    """Every job message carries its task id; a malformed one is left to the handler to refuse."""
    try:
        task_id = orjson.loads(data).get("task_id")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return task_id if isinstance(task_id, str) else None


async def _answer_pings(ctx: ServiceContext) -> None:
    started = time.time()

    async def reply(msg) -> None:  # noqa: ANN001 - nats Msg
        body = {"service": ctx.name, "pid": os.getpid(), "host": socket.gethostname(), "uptime": time.time() - started}
        await msg.respond(orjson.dumps({**body, **ctx.info}))

    await ctx.bus.nc.subscribe(f"{WORKER_PING_PREFIX}.{ctx.name}", cb=reply)


async def _answer_metrics(ctx: ServiceContext) -> None:
    """Every process answers (no queue group): the API gathers all replies into one scrape."""
    started = time.time()
    uptime = ctx.metrics.gauge("gigaam_process_uptime_seconds", "Seconds since the service started")
    uptime.set_function(lambda: time.time() - started)
    ctx.metrics.gauge("gigaam_process_resident_memory_bytes", "Resident memory of the process").set_function(_rss_bytes)

    async def reply(msg) -> None:  # noqa: ANN001 - nats Msg
        await msg.respond(ctx.metrics.render().encode())

    await ctx.bus.nc.subscribe(f"{METRICS_PREFIX}.{ctx.name}", cb=reply)


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # not Linux
        return 0


async def run_service(
    name: str, body: Callable[[ServiceContext], Awaitable[None]], settings: Settings | None = None
) -> None:
    settings = settings or load_settings()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread (tests)
            pass
    bus = await connect(settings.resolved_nats_url(), f"gigaam-{name}-{os.getpid()}")
    try:
        store = await ensure_layout(
            bus.js, settings.retention, settings.nats_replicas, ack_wait=settings.ack_wait, max_deliver=settings.max_deliver
        )
        metrics = Metrics(service=name, host=socket.gethostname(), pid=str(os.getpid()))
        ctx = ServiceContext(name, settings, bus, store, stop, metrics=metrics)
        await _answer_pings(ctx)
        await _answer_metrics(ctx)
        log.info("%s service ready", name)
        await body(ctx)
    finally:
        await bus.close()
        log.info("%s service stopped", name)


class FatalConfig(Exception):
    """The service cannot run as configured (a port in use, say): restarting would fail the same
    way, so it prints one line and exits with EXIT_CONFIG, which the supervisor does not restart."""


EXIT_CONFIG = 78  # EX_CONFIG from sysexits.h


def main(name: str, body: Callable[[ServiceContext], Awaitable[None]]) -> None:
    """Process entry point: `python -m services.<name>` and `gigaam-transcriber serve <name>`."""
    try:
        settings = load_settings()
        setup_logging(settings.log_level, settings.log_json, service=name)
        asyncio.run(run_service(name, body, settings))
    except (FatalConfig, SettingsError) as exc:
        if logging.getLogger().handlers:  # logging is set up (a bad setting fails before it is)
            log.error("%s service cannot start: %s", name, exc)
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)

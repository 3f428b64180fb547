"""What every service process shares: settings, logging, the bus connection, the stream layout,
signal handling and a ping responder the health check uses. A service is `async def body(ctx)`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable

import orjson
from nats.js.object_store import ObjectStore

from pipeline.bus import Bus, connect, ensure_layout, publish_event
from pipeline.logs import setup_logging
from pipeline.settings import Settings, load_settings
from schemas.messages import TaskEvent
from schemas.subjects import WORKER_PING_PREFIX

log = logging.getLogger(__name__)


@dataclass
class ServiceContext:
    name: str
    settings: Settings
    bus: Bus
    store: ObjectStore
    stop: asyncio.Event
    info: dict = field(default_factory=dict)  # extra facts for pings (model, device...)

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


async def _answer_pings(ctx: ServiceContext) -> None:
    started = time.time()

    async def reply(msg) -> None:  # noqa: ANN001 - nats Msg
        body = {"service": ctx.name, "pid": os.getpid(), "host": socket.gethostname(), "uptime": time.time() - started}
        await msg.respond(orjson.dumps({**body, **ctx.info}))

    await ctx.bus.nc.subscribe(f"{WORKER_PING_PREFIX}.{ctx.name}", cb=reply)


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
        ctx = ServiceContext(name, settings, bus, store, stop)
        await _answer_pings(ctx)
        log.info("%s service ready", name)
        await body(ctx)
    finally:
        await bus.close()
        log.info("%s service stopped", name)


def main(name: str, body: Callable[[ServiceContext], Awaitable[None]]) -> None:
    """Process entry point: `python -m services.<name>` and `gigaam-transcriber serve <name>`."""
    settings = load_settings()
    setup_logging(settings.log_level, settings.log_json, service=name)
    asyncio.run(run_service(name, body, settings))

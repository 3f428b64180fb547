"""`GET /metrics` (Prometheus, no key, like /health) and the request counting behind it.

One scrape of any API worker shows the whole deployment: the shared state read at scrape time (queue
depth per stage from the JetStream consumers, tasks by status from the registry, dead letters) plus
the metrics every service process answers on `gigaam.metrics.<service>`, labelled service/host/pid,
this worker's request counts among them. See docs/metrics.md.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import nats.errors
import nats.js.errors
from sanic import Blueprint, HTTPResponse, Request
from sanic.response import raw
from sanic_ext import openapi

from pipeline.api.context import api_of
from pipeline.bus import Bus, BusTimeout
from pipeline.bus import request as bus_request
from pipeline.metrics import CONTENT_TYPE, Metrics, merge
from schemas.messages import RegistryReply, RegistryRequest, decode, encode
from schemas.subjects import DLQ_STREAM, JOBS_STREAM, METRICS_PREFIX, SERVICES, STAGES, consumer_name, registry_subject

log = logging.getLogger(__name__)

bp = Blueprint("observe")

GATHER_WINDOW = 0.5  # seconds the scrape collects worker replies; there is no count of workers to wait for
STATE_TIMEOUT = 2.0  # seconds for the registry and JetStream reads
STATUSES = ("pending", "processing", "completed", "failed")
_BUS_ERRORS = (BusTimeout, asyncio.TimeoutError, nats.errors.Error, nats.js.errors.Error)


def request_counter(metrics: Metrics) -> Callable[[Request, HTTPResponse], None]:
    """Request and error counters of this worker, recorded by an app-wide response middleware."""
    requests = metrics.counter(
        "gigaam_api_requests_total", "HTTP requests answered, by route pattern", ("method", "route", "status")
    )
    errors = metrics.counter("gigaam_api_errors_total", "Error answers, by machine code", ("code",))

    def count(request: Request, response: HTTPResponse) -> None:
        route = "/" + request.route.path if request.route is not None else "unmatched"
        status = response.status if response is not None else 0
        requests.labels(method=request.method, route=route.replace("//", "/"), status=str(status)).inc()
        code = getattr(request.ctx, "error_code", None)
        if code is not None:
            errors.labels(code=code).inc()

    return count


@bp.get("/metrics")
@openapi.exclude()  # for Prometheus, not API clients: docs/metrics.md describes it
async def metrics(request: Request) -> HTTPResponse:
    api = api_of(request)
    shared = Metrics()
    await asyncio.gather(_queues(api.bus, shared), _tasks(api.bus, shared))
    workers = await _gather_workers(api.bus, shared)
    return raw(merge([shared.render(), *workers]).encode(), content_type=CONTENT_TYPE)


async def _queues(bus: Bus, shared: Metrics) -> None:
    depth = shared.gauge("gigaam_queue_depth", "Jobs waiting or being processed, per stage", ("stage",))
    in_flight = shared.gauge("gigaam_queue_in_flight", "Jobs handed to a worker and not yet acked", ("stage",))
    dead = shared.gauge("gigaam_dead_letters", "Jobs kept in the dead-letter stream")

    async def one(stage: str) -> None:
        info = await asyncio.wait_for(bus.js.consumer_info(JOBS_STREAM, consumer_name(stage)), STATE_TIMEOUT)
        depth.labels(stage=stage).set(info.num_pending + info.num_ack_pending)
        in_flight.labels(stage=stage).set(info.num_ack_pending)

    async def dlq() -> None:
        info = await asyncio.wait_for(bus.js.stream_info(DLQ_STREAM), STATE_TIMEOUT)
        dead.set(info.state.messages)

    for outcome in await asyncio.gather(*(one(stage) for stage in STAGES), dlq(), return_exceptions=True):
        if isinstance(outcome, _BUS_ERRORS):
            log.warning("metrics: JetStream state unavailable: %s", outcome or type(outcome).__name__)
        elif isinstance(outcome, BaseException):
            raise outcome


async def _tasks(bus: Bus, shared: Metrics) -> None:
    """Totals of `list` per status (limit 1): the registry counts every match for paging anyway."""
    tasks = shared.gauge("gigaam_tasks", "Tasks known to the registry, by status", ("status",))

    async def one(status: str) -> None:
        query = RegistryRequest(op="list", status=status, limit=1)
        reply = decode(RegistryReply, await bus_request(bus.nc, registry_subject("list"), encode(query), STATE_TIMEOUT))
        if reply.ok:
            tasks.labels(status=status).set(reply.total)

    try:
        await asyncio.gather(*(one(status) for status in STATUSES))
    except _BUS_ERRORS as exc:
        log.warning("metrics: the registry does not answer: %s", exc or type(exc).__name__)


async def _gather_workers(bus: Bus, shared: Metrics) -> list[str]:
    """Scatter-gather: every service process answers, so replies are collected for GATHER_WINDOW."""
    workers = shared.gauge("gigaam_workers", "Service processes that answered this scrape", ("service",))
    replies: list[str] = []
    counts = dict.fromkeys(SERVICES, 0)
    inbox = bus.nc.new_inbox()

    async def collect(msg) -> None:  # noqa: ANN001 - nats Msg
        counts[msg.subject.rsplit(".", 1)[1]] += 1
        replies.append(msg.data.decode("utf-8", errors="replace"))

    sub = await bus.nc.subscribe(f"{inbox}.*", cb=collect)
    try:
        for service in SERVICES:  # the reply subject names the service that answers
            await bus.nc.publish(f"{METRICS_PREFIX}.{service}", b"", reply=f"{inbox}.{service}")
        await bus.nc.flush()
        await asyncio.sleep(GATHER_WINDOW)
    finally:
        await sub.unsubscribe()
    for service, count in counts.items():
        workers.labels(service=service).set(count)
    return replies

"""How long a new upload will take: the work queued ahead of it plus its own processing, both from
measured history rather than a constant.

History: the registry's most recent completed tasks give a least-squares fit of processing time
against media duration (`seconds = overhead + rtf * duration`). Queue: jobs waiting or in flight on
the decode and infer consumers, served `infer_concurrency` at a time. Both are refreshed lazily and
cached for a while, so an upload burst costs no extra round trips.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import nats.errors
import nats.js.errors

from pipeline.bus import Bus, BusTimeout, request
from schemas.messages import RegistryReply, RegistryRequest, decode, encode
from schemas.subjects import JOBS_STREAM, consumer_name, registry_subject

log = logging.getLogger(__name__)

HISTORY = 50  # recent completed tasks the fit uses
HISTORY_TTL = 30.0  # seconds a fit is reused
QUEUE_TTL = 2.0  # seconds a queue depth is reused
PRIOR_RTF = 0.15  # processing seconds per media second before anything was measured
PRIOR_OVERHEAD = 2.0  # seconds per task before anything was measured


@dataclass(frozen=True, slots=True)
class Fit:
    overhead: float
    rtf: float
    mean_task: float  # mean processing time of a task, for the queue ahead


def fit(samples: list[tuple[float, float]]) -> Fit:
    """(media duration, processing time) pairs -> the cost model; priors when there are none."""
    if not samples:
        return Fit(PRIOR_OVERHEAD, PRIOR_RTF, PRIOR_OVERHEAD + PRIOR_RTF * 60)
    n = len(samples)
    mean_d = sum(d for d, _ in samples) / n
    mean_p = sum(p for _, p in samples) / n
    var_d = sum((d - mean_d) ** 2 for d, _ in samples)
    if n >= 3 and var_d > 1e-9:
        rtf = sum((d - mean_d) * (p - mean_p) for d, p in samples) / var_d
        overhead = mean_p - rtf * mean_d
        if rtf >= 0 and overhead >= 0:
            return Fit(overhead, rtf, mean_p)
    # too few or too alike to separate overhead from speed: attribute it all to speed
    total_d = sum(d for d, _ in samples)
    rtf = sum(p for _, p in samples) / total_d if total_d > 0 else PRIOR_RTF
    return Fit(0.0, rtf, mean_p)


def estimate_seconds(model: Fit, queued: int, parallel: int, media_duration: float | None) -> float:
    """`queued` counts the new task itself; the rest run ahead of it, `parallel` at a time. Pure so
    the arithmetic is testable without a bus."""
    ahead = max(0, queued - 1)
    own = model.overhead + model.rtf * (media_duration or 0.0)
    return ahead * model.mean_task / max(1, parallel) + own


class Estimator:
    def __init__(self, bus: Bus, parallel: int) -> None:
        self.bus = bus
        self.parallel = max(1, parallel)
        self._fit: tuple[float, Fit] | None = None
        self._queue: tuple[float, int] | None = None
        self._lock = asyncio.Lock()

    async def estimate(self, media_duration: float | None) -> float:
        """Seconds from now until the new task completes (it is already counted in the queue)."""
        async with self._lock:
            model = await self._model()
            queued = await self._queued()
        return estimate_seconds(model, queued, self.parallel, media_duration)

    async def _model(self) -> Fit:
        now = time.monotonic()
        if self._fit is None or now - self._fit[0] > HISTORY_TTL:
            self._fit = (now, fit(await self._history()))
        return self._fit[1]

    async def _history(self) -> list[tuple[float, float]]:
        query = RegistryRequest(op="list", status="completed", limit=HISTORY)
        try:
            reply = decode(RegistryReply, await request(self.bus.nc, registry_subject("list"), encode(query), 2.0))
        except BusTimeout as exc:
            log.debug("no history for the estimate: %s", exc)
            return []
        return [
            (t.media_duration, t.processing_time)
            for t in reply.tasks
            if t.media_duration and t.processing_time is not None and t.media_duration > 0
        ]

    async def _queued(self) -> int:
        now = time.monotonic()
        if self._queue is None or now - self._queue[0] > QUEUE_TTL:
            depth = 0
            for stage in ("decode", "infer"):
                try:
                    info = await self.bus.js.consumer_info(JOBS_STREAM, consumer_name(stage), timeout=2.0)
                except (nats.errors.Error, nats.js.errors.Error, asyncio.TimeoutError) as exc:
                    log.debug("no queue depth for %s: %s", stage, exc)
                    continue
                depth += (info.num_pending or 0) + (info.num_ack_pending or 0)
            self._queue = (now, depth)
        return self._queue[1]

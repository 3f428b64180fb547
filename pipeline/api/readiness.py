"""Whether an inference worker has its model. Asked over the worker ping and kept for a few seconds,
so an upload or a status read while no model is loaded says that the task waits for the model, and
why, instead of promising seconds."""

from __future__ import annotations

import time

import orjson

from pipeline.bus import Bus, BusTimeout
from pipeline.bus import request as bus_request
from schemas.subjects import WORKER_PING_PREFIX

TTL = 3.0  # seconds an answer is reused
TIMEOUT = 1.0


class ModelReadiness:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self._cached: tuple[float, str | None] | None = None

    async def waiting_reason(self) -> str | None:
        """None when some infer worker is ready; otherwise the reason work waits (the worker's error)."""
        now = time.monotonic()
        if self._cached is None or now - self._cached[0] > TTL:
            self._cached = (now, await self._ask())
        return self._cached[1]

    async def _ask(self) -> str | None:
        try:
            facts = orjson.loads(await bus_request(self.bus.nc, f"{WORKER_PING_PREFIX}.infer", b"", TIMEOUT))
        except BusTimeout:
            return "no inference worker answers"
        if facts.get("ready", True) is not False:
            return None
        return str(facts.get("error") or "the model is still loading")

"""`Idempotency-Key` on uploads: the same header from the same API key within 24 h answers with the
first task instead of making a new one.

The claim (with the task id it will use) is written before the upload is processed, guarded by the
KV revision, so two concurrent requests with one key can never both submit. A failed upload
releases its claim so the client can retry with the same key.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass
from typing import Any

import orjson
from nats.js.kv import KeyValue

from pipeline.kvstore import cas, read
from pipeline.submit import new_task_id

TTL = 86400.0
MAX_KEY_LENGTH = 255


@dataclass(frozen=True, slots=True)
class Claim:
    entry: str
    task_id: str
    fresh: bool  # True: this request owns the claim and does the upload
    response: dict[str, Any] | None  # the first request's answer, once it is known


class Idempotency:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    async def claim(self, owner: str, header: str) -> Claim:
        entry = "k." + hashlib.sha256(f"{owner}\0{header}".encode()).hexdigest()
        now = time.time()
        task_id = new_task_id()

        def take(current: dict | None) -> dict | None:
            if current is None or now - current["created"] > TTL:
                return {"task_id": task_id, "created": now, "response": None}
            return None

        current, new = await cas(self.kv, entry, take)
        if new is not None:
            return Claim(entry, task_id, True, None)
        assert current is not None
        return Claim(entry, current["task_id"], False, current.get("response"))

    async def complete(self, claim: Claim, response: dict[str, Any]) -> None:
        value = {"task_id": claim.task_id, "created": time.time(), "response": response}
        await self.kv.put(claim.entry, orjson.dumps(value))

    async def release(self, claim: Claim) -> None:
        await self.kv.delete(claim.entry)

    async def wait_response(self, claim: Claim, timeout: float) -> dict[str, Any] | None:
        """The first request's answer, waiting while it is still uploading."""
        deadline = time.monotonic() + timeout
        while True:
            again, _revision = await read(self.kv, claim.entry)
            if again is None or again.get("task_id") != claim.task_id:
                return None  # released: the first attempt failed
            if again.get("response") is not None or time.monotonic() >= deadline:
                return again.get("response")
            await asyncio.sleep(0.2)

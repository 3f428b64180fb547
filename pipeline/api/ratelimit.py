"""Per-key rate limits that hold across API worker processes and hosts.

Each (key, kind) has one KV entry `{start, count}`: a fixed window that opens with the first request
and lasts `window` seconds. Counting is a revision-guarded write, so two workers can never both take
the last slot. The entry carries its own start, so correctness does not depend on the bucket TTL
(that only sweeps idle entries) nor on a shared clock tick.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass

from nats.js.kv import KeyValue
from sanic import HTTPResponse, Request

from pipeline.api.context import api_of
from pipeline.api.errors import ApiError
from pipeline.kvstore import Contention, cas

UPLOAD = "upload"
CALL = "call"


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int  # 0: unlimited
    remaining: int
    reset: float  # seconds until the window closes


class RateLimiter:
    def __init__(self, kv: KeyValue, *, uploads: int, calls: int, window: float) -> None:
        self.kv = kv
        self.limits = {UPLOAD: uploads, CALL: calls}
        self.window = window

    async def hit(self, identity: str, kind: str) -> Decision:
        limit = self.limits[kind]
        if limit <= 0:
            return Decision(True, 0, 0, 0.0)
        now = time.time()

        def count(current: dict | None) -> dict | None:
            stale = current is None or not (current["start"] - self.window <= now < current["start"] + self.window)
            if stale:  # expired, or written by a host whose clock runs more than a window ahead
                return {"start": now, "count": 1}
            if current["count"] >= limit:
                return None
            return {"start": current["start"], "count": current["count"] + 1}

        try:
            current, new = await cas(self.kv, f"{kind}.{_kv_safe(identity)}", count)
        except Contention:  # a storm on one key: refusing is the safe answer
            return Decision(False, limit, 0, 1.0)
        state = new or current
        assert state is not None
        reset = max(0.0, state["start"] + self.window - now)
        return Decision(new is not None, limit, limit - state["count"], reset)


def _kv_safe(identity: str) -> str:
    """Key ids are KV-safe already; anything else (client addresses) is hashed into a safe token."""
    if identity.replace("_", "").replace("-", "").isalnum() and identity.isascii():
        return identity
    return "h" + hashlib.sha256(identity.encode()).hexdigest()[:32]


async def enforce(request: Request) -> None:
    """Blueprint request middleware, after authentication. The route's `ctx_rate` picks the kind."""
    api = api_of(request)
    kind = getattr(request.route.ctx, "rate", CALL)
    decision = await api.limiter.hit(request.ctx.principal.rate_id, kind)
    request.ctx.rate = decision
    if not decision.allowed:
        retry_after = max(1, math.ceil(decision.reset))
        raise ApiError(
            429,
            "rate_limited",
            headers={"Retry-After": str(retry_after), **_headers(decision)},
            limit=decision.limit,
            window=f"{api.limiter.window:g}",
            retry_after=retry_after,
        )


def add_headers(request: Request, response: HTTPResponse) -> None:
    """Blueprint response middleware: lets well-behaved clients slow down before they hit 429."""
    decision = getattr(request.ctx, "rate", None)
    if decision is not None and decision.limit:
        response.headers.update(_headers(decision))


def _headers(decision: Decision) -> dict[str, str]:
    return {
        "X-RateLimit-Limit": str(decision.limit),
        "X-RateLimit-Remaining": str(max(0, decision.remaining)),
        "X-RateLimit-Reset": str(math.ceil(decision.reset)),
    }

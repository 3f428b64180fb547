"""What the request handlers share in one worker: settings, the bus, and the parts that keep shared
state in NATS. Routers reach it through `api_of(request)`, so they stay free of globals."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from nats.js.object_store import ObjectStore
from sanic import Request

from pipeline.bus import Bus
from pipeline.metrics import Metrics
from pipeline.settings import Settings

if TYPE_CHECKING:
    from pipeline.api.auth import KeyCache
    from pipeline.api.estimate import Estimator
    from pipeline.api.idempotency import Idempotency
    from pipeline.api.ratelimit import RateLimiter
    from pipeline.api.readiness import ModelReadiness
    from pipeline.api.webhooks import Webhooks


@dataclass
class Api:
    settings: Settings
    bus: Bus
    store: ObjectStore
    keys: KeyCache
    limiter: RateLimiter
    idempotency: Idempotency
    webhooks: Webhooks
    estimator: Estimator
    upload_dir: Path  # this worker's scratch folder for uploads in flight
    metrics: Metrics  # this process's metrics, answered on gigaam.metrics.api
    readiness: ModelReadiness  # whether an infer worker has its model (uploads and statuses say so)


def api_of(request: Request) -> Api:
    return request.app.ctx.api

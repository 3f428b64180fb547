"""The Sanic application: routers, the guard on protected routes, errors, the OpenAPI document.

`open_api` binds the shared state (KV buckets, caches) for one worker; `create_app` builds the app
around it. Protected routers get authentication, then the rate limit, as blueprint middleware that
runs before a streamed body is read, so a refused upload costs nothing.
"""

from __future__ import annotations

from pathlib import Path

import orjson
from nats.js.object_store import ObjectStore
from sanic import Blueprint, Sanic

from pipeline.api import errors, events, meta, observe, openai, routes_v1
from pipeline.api import openapi as docs
from pipeline.api.auth import KeyCache, authenticate
from pipeline.api.context import Api
from pipeline.api.estimate import Estimator
from pipeline.api.idempotency import Idempotency
from pipeline.api.idempotency import TTL as IDEMPOTENCY_TTL
from pipeline.api.ratelimit import RateLimiter, add_headers, enforce
from pipeline.api.readiness import ModelReadiness
from pipeline.api.webhooks import Webhooks
from pipeline.bus import Bus
from pipeline.keys import keys_bucket
from pipeline.kvstore import open_bucket
from pipeline.metrics import Metrics
from pipeline.settings import Settings
from schemas.subjects import IDEMPOTENCY_BUCKET, RATE_BUCKET, WEBHOOKS_BUCKET

PROTECTED = Blueprint.group(routes_v1.bp, events.bp, openai.bp)
PROTECTED.middleware(authenticate, "request")
PROTECTED.middleware(enforce, "request")
PROTECTED.middleware(add_headers, "response")


async def open_api(
    settings: Settings, bus: Bus, store: ObjectStore, upload_dir: Path, metrics: Metrics | None = None
) -> Api:
    replicas = settings.nats_replicas
    rate_kv = await open_bucket(bus.js, RATE_BUCKET, ttl=max(120.0, 2 * settings.api_rate_window), replicas=replicas)
    idempotency_kv = await open_bucket(bus.js, IDEMPOTENCY_BUCKET, ttl=IDEMPOTENCY_TTL, replicas=replicas)
    webhooks_kv = await open_bucket(bus.js, WEBHOOKS_BUCKET, ttl=settings.retention, replicas=replicas)
    return Api(
        settings=settings,
        bus=bus,
        store=store,
        keys=KeyCache(await keys_bucket(bus, replicas)),
        limiter=RateLimiter(
            rate_kv, uploads=settings.api_rate_uploads, calls=settings.api_rate_calls, window=settings.api_rate_window
        ),
        idempotency=Idempotency(idempotency_kv),
        webhooks=Webhooks(bus, webhooks_kv, settings),
        estimator=Estimator(bus, settings.infer_concurrency),
        upload_dir=upload_dir,
        metrics=metrics or Metrics(),
        readiness=ModelReadiness(bus),
    )


def _dumps(value: object) -> bytes:
    """UTF-8 as is (not \\u escapes); integer keys occur in the OpenAPI document's responses."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)


CORS_REQUEST_HEADERS = "x-api-key,authorization,idempotency-key,content-type,accept-language,last-event-id"
CORS_RESPONSE_HEADERS = (
    "retry-after,x-ratelimit-limit,x-ratelimit-remaining,x-ratelimit-reset,content-disposition,idempotent-replayed"
)


def create_app(api: Api, name: str = "gigaam_api") -> Sanic:
    app = Sanic(name, configure_logging=False, dumps=_dumps)
    app.config.update(
        MOTD=False,
        # A request handler may legitimately wait this long for its transcript (OpenAI endpoint);
        # Sanic's timeouts count idle time, so a slow upload that keeps sending is never cut.
        RESPONSE_TIMEOUT=max(60.0, api.settings.api_sync_timeout + 60.0),
        # sanic-ext's automatic HEAD routes would call handlers without the blueprint middleware,
        # i.e. without authentication: HEAD answers 405 instead.
        HTTP_AUTO_HEAD=False,
        OAS_UI_DEFAULT="swagger",
        OAS_AUTODOC=False,
        OAS_URL_PREFIX="/docs",
        # Behind N trusted proxies the client address (anonymous rate limits, logs) comes from
        # X-Forwarded-For; 0 ignores the header, which a direct client could forge.
        PROXIES_COUNT=api.settings.api_proxies,
        # Browsers on these origins may call the API with a key; none by default (sanic-ext's CORS).
        CORS=bool(api.settings.api_cors_origins),
        CORS_ORIGINS=api.settings.api_cors_origins,
        CORS_ALLOW_HEADERS=CORS_REQUEST_HEADERS,
        CORS_EXPOSE_HEADERS=CORS_RESPONSE_HEADERS,
        CORS_MAX_AGE=600,
    )
    app.ctx.api = api
    errors.install(app)
    app.blueprint(meta.bp)
    app.blueprint(observe.bp)
    app.register_middleware(observe.request_counter(api.metrics), "response")
    app.blueprint(PROTECTED)
    docs.document(app, meta.package_version())
    return app

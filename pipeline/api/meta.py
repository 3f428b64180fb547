"""`GET /` (what this is) and `GET /health` (can it work right now), both without a key.

Healthy means a task would go through: NATS is connected, the registry answers, and at least one
worker of every stage answers its ping. Otherwise 503 names what is missing.
"""

from __future__ import annotations

import asyncio
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import orjson
from sanic import Blueprint, HTTPResponse, Request
from sanic.response import json
from sanic_ext import openapi

from pipeline.api import openapi as docs
from pipeline.api.context import api_of
from pipeline.api.uploads import SUPPORTED
from pipeline.bus import Bus, BusTimeout
from pipeline.bus import request as bus_request
from schemas.messages import RegistryReply, RegistryRequest, decode, encode
from schemas.subjects import STAGES, WORKER_PING_PREFIX, registry_subject

bp = Blueprint("meta")

PING_TIMEOUT = 1.0
# What a health reply may repeat from a worker's ping; pids and host names stay private.
PUBLIC_PING_FIELDS = ("model", "device", "precision", "error")  # error: why an infer worker is not ready


def package_version() -> str:
    try:
        return version("gigaam-transcriber")
    except PackageNotFoundError:
        return "unknown"


@bp.get("/")
@openapi.definition(
    summary="API information", tag="service", response=[docs.json_response(200, "ApiInfo", "about this API")]
)
async def info(request: Request) -> HTTPResponse:
    return json(
        {
            "name": "GigaAM v3 Transcriber API",
            "version": package_version(),
            "docs": "/docs",
            "health": "/health",
            "openai_base_url": "/v1",
            "max_upload_bytes": api_of(request).settings.api_max_upload_bytes,
            "supported_formats": SUPPORTED.split(", "),
        }
    )


@bp.get("/health")
@openapi.definition(
    summary="Health of the whole pipeline",
    tag="service",
    response=[
        docs.json_response(200, "Health", "every part answers", "Healthy"),
        docs.json_response(503, "Health", "something is missing", "Unhealthy"),
    ],
)
async def health(request: Request) -> HTTPResponse:
    checks = await check_all(api_of(request).bus)
    missing = [name for name, check in checks.items() if not check["ok"]]
    body = {"status": "unhealthy" if missing else "healthy", "checks": checks, "missing": missing}
    return json(body, status=503 if missing else 200)


async def check_all(bus: Bus) -> dict[str, dict[str, Any]]:
    checks: dict[str, dict[str, Any]] = {"nats": {"ok": bus.nc.is_connected}}
    if not bus.nc.is_connected:
        return {**checks, "registry": {"ok": False}, **{stage: {"ok": False} for stage in STAGES}}
    names = ["registry", *STAGES]
    answers = await asyncio.gather(_registry(bus), *(_worker(bus, stage) for stage in STAGES))
    checks.update(zip(names, answers, strict=True))
    return checks


async def _registry(bus: Bus) -> dict[str, Any]:
    try:
        raw = await bus_request(bus.nc, registry_subject("ping"), encode(RegistryRequest(op="ping")), PING_TIMEOUT)
    except BusTimeout:
        return {"ok": False}
    return {"ok": decode(RegistryReply, raw).ok}


async def _worker(bus: Bus, stage: str) -> dict[str, Any]:
    try:
        raw = await bus_request(bus.nc, f"{WORKER_PING_PREFIX}.{stage}", b"", PING_TIMEOUT)
    except BusTimeout:
        return {"ok": False}
    facts = orjson.loads(raw)
    ready = facts.get("ready", True) is not False  # an infer worker still loading its model is not
    return {"ok": ready, **{k: facts[k] for k in PUBLIC_PING_FIELDS if k in facts}}

"""CORS: browsers on the configured origins may call the API with a key (the preflight needs none,
error bodies stay readable); other origins, and every origin by default, get no CORS headers."""

from __future__ import annotations

from pathlib import Path

import httpx

from pipeline import bus
from pipeline.api import server
from pipeline.api.app import create_app, open_api
from pipeline.natsserver import EmbeddedNats
from pipeline.settings import load_settings

APP_ORIGIN = "https://app.example"


async def _responses(nats_server: EmbeddedNats, tmp_path: Path, origins: str) -> dict[str, httpx.Response]:
    settings = load_settings({"GIGAAM_DATA_DIR": str(tmp_path), "GIGAAM_API_CORS_ORIGINS": origins})
    async with await bus.connect(nats_server.url, "test", first_connect_timeout=5) as b:
        store = await bus.ensure_layout(b.js, retention_s=3600)
        api = await open_api(settings, b, store, tmp_path / "uploads")
        app = create_app(api, name=f"cors_{tmp_path.name}_{bool(origins)}")
        sock = server.bind("127.0.0.1", 0, reuse_port=False)
        running = await server.start(app, sock)
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{sock.getsockname()[1]}", timeout=10) as c:
                preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "x-api-key"}
                return {
                    "preflight": await c.options("/api/v1/transcribe", headers={"Origin": APP_ORIGIN, **preflight}),
                    "call": await c.get("/api/v1/tasks", headers={"Origin": APP_ORIGIN}),
                    "other": await c.get("/api/v1/tasks", headers={"Origin": "https://evil.example"}),
                }
        finally:
            await server.stop(running)


async def test_configured_origin_gets_preflight_and_readable_errors(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    got = await _responses(nats_server, tmp_path, f"{APP_ORIGIN},https://other.example")
    preflight = got["preflight"]
    assert preflight.status_code == 204  # no key needed to ask
    assert preflight.headers["access-control-allow-origin"] == APP_ORIGIN
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "x-api-key" in preflight.headers["access-control-allow-headers"]
    call = got["call"]
    assert call.status_code == 401 and call.json()["error"]["code"] == "missing_api_key"
    assert call.headers["access-control-allow-origin"] == APP_ORIGIN  # the browser may read why
    assert "retry-after" in call.headers["access-control-expose-headers"]
    assert "access-control-allow-origin" not in got["other"].headers


async def test_no_cors_by_default(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    got = await _responses(nats_server, tmp_path, "")
    assert all("access-control-allow-origin" not in r.headers for r in got.values())
    assert got["call"].status_code == 401

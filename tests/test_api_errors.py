"""Unexpected exceptions leave the real API app as the documented 500 JSON error, in the client's
language, with the traceback in the log and never in the body.

The app is the one `create_app` builds (on a real embedded broker, as `open_api` needs its buckets)
with one extra route that fails, served by Sanic on a free socket in the test's event loop.
"""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest
from sanic import Request
from sanic.exceptions import ServerError

from pipeline import bus
from pipeline.api import server
from pipeline.api.app import create_app, open_api
from pipeline.api.i18n import text
from pipeline.natsserver import EmbeddedNats
from pipeline.settings import load_settings

SECRET = "password=hunter2 in /srv/db"  # what the failing code knows and clients must not see


async def test_unhandled_exception_is_a_clean_500(
    nats_server: EmbeddedNats, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = load_settings({"GIGAAM_DATA_DIR": str(tmp_path)})
    async with await bus.connect(nats_server.url, "test", first_connect_timeout=5) as b:
        store = await bus.ensure_layout(b.js, retention_s=3600)
        api = await open_api(settings, b, store, tmp_path / "uploads")
        app = create_app(api, name=f"errors_{tmp_path.name}")

        @app.get("/boom")
        async def boom(_request: Request) -> None:
            raise RuntimeError(SECRET)

        @app.get("/server-error")
        async def server_error(_request: Request) -> None:
            raise ServerError(SECRET)  # Sanic's own 5xx type: same answer as any other failure

        sock = server.bind("127.0.0.1", 0, reuse_port=False)
        base = "http://127.0.0.1:%d" % sock.getsockname()[1]
        running = await server.start(app, sock)
        try:
            async with httpx.AsyncClient(base_url=base, timeout=10) as client:
                with caplog.at_level(logging.ERROR, logger="pipeline.api.errors"):
                    default = await client.get("/boom")
                english = await client.get("/boom", headers={"Accept-Language": "en"})
                sanic_5xx = await client.get("/server-error", headers={"Accept-Language": "en-GB, ru;q=0.5"})
        finally:
            await server.stop(running)

    for response, lang in ((default, "ru"), (english, "en"), (sanic_5xx, "en")):
        assert response.status_code == 500
        assert response.headers["content-type"].startswith("application/json")
        message = text("internal_error", lang)
        assert response.json() == {
            "error": {"code": "internal_error", "message": message, "type": "server_error"},
            "detail": message,
        }
        for leak in ("Traceback", SECRET, "RuntimeError", "ServerError", "boom"):
            assert leak not in response.text
    assert default.json()["detail"] == "Внутренняя ошибка сервера"
    assert english.json()["detail"] == "Internal server error"

    # the operator still gets the whole story, and the error is counted by its code
    logged = [r for r in caplog.records if r.name == "pipeline.api.errors"]
    assert logged and "/boom" in logged[0].getMessage()
    assert logged[0].exc_info is not None and str(logged[0].exc_info[1]) == SECRET
    assert 'gigaam_api_errors_total{code="internal_error"} 3' in api.metrics.render()

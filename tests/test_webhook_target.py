"""Webhook targets: the checked addresses are the ones connected to (no DNS rebinding window)."""

from __future__ import annotations

import asyncio
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from pipeline.api.webhooks import TargetRefused, check_target, pinned


def test_pinned_request_keeps_the_host_name_for_http_and_tls() -> None:
    url, headers, extensions = pinned("https://пример.рф:8443/hook?x=1", "2001:db8::7")
    assert str(url) == "https://[2001:db8::7]:8443/hook?x=1"
    assert headers == {"Host": "xn--e1afmkfd.xn--p1ai:8443"}
    assert extensions == {"sni_hostname": "xn--e1afmkfd.xn--p1ai"}
    url, headers, _ = pinned("http://hooks.example.com/a", "93.184.216.34")
    assert str(url) == "http://93.184.216.34/a" and headers == {"Host": "hooks.example.com"}


def test_check_target_returns_only_checked_addresses() -> None:
    addresses = asyncio.run(check_target("http://localhost:8080/x", allow_private=True))
    assert addresses and set(addresses) <= {"127.0.0.1", "::1"}
    with pytest.raises(TargetRefused, match="non-public"):
        asyncio.run(check_target("http://localhost:8080/x", allow_private=False))
    assert asyncio.run(check_target("http://8.8.8.8/", allow_private=False)) == ["8.8.8.8"]


def test_a_pinned_post_reaches_the_checked_address_with_the_original_host() -> None:
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server naming
            self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(self.headers["Host"])
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        # the name would resolve anywhere; the request goes where the check said
        url, headers, extensions = pinned(f"http://hooks.example.com:{server.server_address[1]}/h", "127.0.0.1")
        with httpx.Client(trust_env=False) as http:
            response = http.post(url, content=b"{}", headers=headers, extensions=extensions)
        assert response.status_code == 204
        assert seen == [f"hooks.example.com:{server.server_address[1]}"]
    finally:
        server.shutdown()

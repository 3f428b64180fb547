"""Sanic's HTTP server inside the service's own event loop: one loop and one NATS connection per worker
process, started and stopped like every other service (`pipeline.service.run_service`)."""

from __future__ import annotations

import asyncio
import logging
import socket

from sanic import Sanic
from sanic.server.async_server import AsyncioServer

log = logging.getLogger(__name__)

GRACE = 5.0  # seconds running requests get to finish at shutdown (the supervisor waits 15 s in all)


def bind(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    """With `reuse_port`, several worker processes share one port and the kernel spreads connections."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


async def start(app: Sanic, sock: socket.socket) -> AsyncioServer:
    server = await app.create_server(sock=sock, access_log=False, return_asyncio_server=True)
    assert server is not None
    await server.startup()
    await server.before_start()
    await server.after_start()
    host, port = sock.getsockname()[:2]
    log.info("API listening on http://%s:%d", host, port)
    return server


async def stop(server: AsyncioServer) -> None:
    """Stop accepting, let requests in flight finish for up to GRACE seconds, then cut the rest."""
    await server.before_stop()
    if server.server is not None:
        server.server.close()
    deadline = asyncio.get_running_loop().time() + GRACE
    while server.connections and asyncio.get_running_loop().time() < deadline:
        for connection in list(server.connections):
            connection.close_if_idle()
        await asyncio.sleep(0.1)
    for connection in list(server.connections):
        connection.abort()
    await server.after_stop()

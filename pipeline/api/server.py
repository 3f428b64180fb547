"""Sanic's HTTP server inside the service's own event loop: one loop and one NATS connection per worker
process, started and stopped like every other service (`pipeline.service.run_service`)."""

from __future__ import annotations

import asyncio
import logging
import errno
import socket

from sanic import Sanic
from sanic.server.async_server import AsyncioServer

from pipeline.service import FatalConfig

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


def bind_port(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    """`bind` for a service: an address in use or not ours is a configuration error naming the setting."""
    try:
        return bind(host, port, reuse_port=reuse_port)
    except OSError as exc:
        raise FatalConfig(port_problem(host, port, exc)) from None


def port_problem(host: str, port: int, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return (f"port {port} on {host} is already in use (GIGAAM_API_PORT): stop what listens there "
                f"or choose another port")
    return f"cannot listen on {host}:{port} (GIGAAM_API_HOST, GIGAAM_API_PORT): {exc.strerror or exc}"


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

#!/usr/bin/env python3
"""Health check for one GigaAM process: compose `healthcheck`, systemd `ExecStartPost`, monitoring.

    healthcheck.py nats                       the broker answers and JetStream is enabled
    healthcheck.py nats --monitor URL         the same through the broker's monitoring port
                                              (GET URL/healthz; needs no client credentials)
    healthcheck.py registry|decode|infer|format|ingest
                                              a worker of that service on THIS host answers
                                              `gigaam.ping.<service>` (request-reply, JSON reply)
                                              and does not say `"ready": false`
    healthcheck.py api [--path /]             GET http://<GIGAAM_API_HOST>:<GIGAAM_API_PORT>/health is 200:
                                              the whole pipeline can work (every stage answers);
                                              `--path /` only asks whether the API process serves

Exit status 0: healthy; 1: not (one line on stderr says why); 2: bad usage.

Why "on this host": several processes of a stage answer the same ping subject (scale-out), so any
reply would make every container of that stage look healthy while its own process is dead. Each
reply carries the worker's hostname, which inside a container is the container's own. `--any-host`
accepts any reply (a cluster-wide "is somebody serving this stage" probe).

Standard library and nats-py only, and nothing from `pipeline/`, so a check can never hang on model
or torch imports. Reads `GIGAAM_NATS_URL` (a comma-separated list is fine), `GIGAAM_API_HOST` and
`GIGAAM_API_PORT` from the environment; the TOML config file is not read.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import sys
import time
import urllib.error
import urllib.request

PING_PREFIX = "gigaam.ping"  # schemas/subjects.py WORKER_PING_PREFIX
WORKERS = ("registry", "decode", "infer", "format", "ingest")
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"


class Unhealthy(Exception):
    pass


def redact(url: str) -> str:
    """nats://user:secret@host -> nats://user:***@host: messages end up in logs."""
    return re.sub(r"(//[^:/@,]*:)[^@/,]*@", r"\1***@", url)


async def _connect(url: str, timeout: float):  # noqa: ANN202 - nats.aio.client.Client
    import nats

    async def quiet(exc: Exception) -> None:  # the reason is reported once, by us
        pass

    try:
        return await nats.connect(
            servers=[u.strip() for u in url.split(",") if u.strip()],
            name="gigaam-healthcheck",
            connect_timeout=timeout,
            allow_reconnect=False,
            reconnect_time_wait=0.1,
            max_reconnect_attempts=1,  # 0 would mean "forever" inside nats-py's server selection
            error_cb=quiet,
        )
    except Exception as exc:  # noqa: BLE001 - any failure to connect is "unhealthy"
        raise Unhealthy(f"cannot connect to NATS at {redact(url)}: {exc or type(exc).__name__}") from None


async def check_nats(url: str, timeout: float) -> str:
    nc = await _connect(url, timeout)
    server = redact(nc.connected_url.geturl()) if nc.connected_url else redact(url)
    try:
        info = await nc.jetstream(timeout=timeout).account_info()
    except Exception as exc:  # noqa: BLE001
        raise Unhealthy(f"NATS at {server} answers but JetStream does not: {exc or type(exc).__name__}") from None
    finally:
        await nc.close()
    return f"NATS at {server}: JetStream up, {info.streams} streams"


async def check_worker(url: str, service: str, timeout: float, any_host: bool) -> str:
    me = socket.gethostname()
    nc = await _connect(url, timeout)
    try:
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        # A plain publish with our own inbox, not nc.request(): request() returns the first reply,
        # and we need to look at every reply until one comes from this host.
        await nc.publish(f"{PING_PREFIX}.{service}", b"", reply=inbox)
        await nc.flush(timeout)
        hosts: list[str] = []
        not_ready = ""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                msg = await sub.next_msg(timeout=left)
            except Exception:  # noqa: BLE001 - nats TimeoutError: nobody (else) answered in time
                break
            if msg.headers and msg.headers.get("Status") == "503":
                break  # the server says: no subscribers on that subject at all
            try:
                body = json.loads(msg.data)
            except ValueError:
                continue
            host = str(body.get("host", "?"))
            if not (any_host or host == me):
                hosts.append(host)
                continue
            if body.get("ready") is False:  # infer answers while its model still loads
                not_ready = f"{service} on {host} answers but is not ready yet (model loading?)"
                continue
            return f"{service} on {host} (pid {body.get('pid', '?')}) answered"
    finally:
        await nc.close()
    if not_ready:
        raise Unhealthy(not_ready)
    if hosts:
        raise Unhealthy(f"no {service} worker on {me} answered within {timeout:g}s (only on: {', '.join(sorted(set(hosts)))})")
    raise Unhealthy(f"no {service} worker answered {PING_PREFIX}.{service} within {timeout:g}s")


def check_http(url: str, timeout: float) -> str:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return f"{url}: {resp.status}"
    except urllib.error.HTTPError as exc:
        raise Unhealthy(f"{url}: HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise Unhealthy(f"{url}: {getattr(exc, 'reason', exc)}") from None


def check_api(host: str, port: int, path: str, timeout: float) -> str:
    if host in ("", "0.0.0.0", "::"):  # bound to every address: loopback is one of them
        host = "127.0.0.1"
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return check_http(f"http://{netloc}{path}", timeout)


def check_once(args: argparse.Namespace) -> str:
    if args.target == "api":
        port = args.port or int(os.environ.get("GIGAAM_API_PORT") or 8000)
        host = args.host if args.host is not None else os.environ.get("GIGAAM_API_HOST", "127.0.0.1")
        return check_api(host, port, args.path, args.timeout)
    if args.target == "nats" and args.monitor:
        # /healthz answers 200 once JetStream is up and its streams are recovered
        return check_http(f"{args.monitor.rstrip('/')}/healthz", args.timeout)
    url = args.url or os.environ.get("GIGAAM_NATS_URL") or DEFAULT_NATS_URL
    if args.target == "nats":
        coro = check_nats(url, args.timeout)
    else:
        coro = check_worker(url, args.target, args.timeout, args.any_host)
    try:  # a hard cap, whatever the client library does with its own timeouts
        return asyncio.run(asyncio.wait_for(coro, args.timeout * 3))
    except asyncio.TimeoutError:
        raise Unhealthy(f"{args.target}: no answer within {args.timeout * 3:g}s") from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="healthcheck.py", description=__doc__.split("\n\n")[0])
    p.add_argument("target", choices=("nats", "api", *WORKERS))
    p.add_argument("--url", help=f"NATS URL(s) (default: $GIGAAM_NATS_URL or {DEFAULT_NATS_URL})")
    p.add_argument("--monitor", metavar="URL", help="nats: ask the monitoring port instead (http://127.0.0.1:8222)")
    p.add_argument("--host", help="API address (default: $GIGAAM_API_HOST, loopback when it is 0.0.0.0)")
    p.add_argument("--port", type=int, help="API port (default: $GIGAAM_API_PORT or 8000)")
    p.add_argument("--path", default="/health", help="API path to GET (default /health)")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds for one attempt (default 3)")
    p.add_argument("--any-host", action="store_true", help="a worker on any host will do")
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="retry until healthy or SECONDS have passed (start-up ordering)")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing when healthy")
    args = p.parse_args(argv)

    deadline = time.monotonic() + args.wait
    while True:
        try:
            message = check_once(args)
        except Unhealthy as exc:
            if time.monotonic() + 0.5 >= deadline:
                print(f"unhealthy: {exc}", file=sys.stderr)
                return 1
            time.sleep(0.5)
            continue
        if not args.quiet:
            print(f"healthy: {message}")
        return 0


if __name__ == "__main__":
    sys.exit(main())

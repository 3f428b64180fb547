"""`callback_url`: a POST with the task's final status and result links once it completes or fails.

Registrations live in a KV bucket (task id -> target), so any API worker can deliver them and none
is lost when the one that took the upload stops. Delivery follows the events stream through one
durable consumer that all API workers share: each terminal event goes to exactly one worker, and a
failed POST is retried by nak with exponential backoff, surviving restarts. Delivery is at least
once; receivers deduplicate on `X-Webhook-Id`.

The body is signed: `X-Signature: sha256=<hex HMAC-SHA256 of the raw body>`, keyed with the hex
SHA-256 of the API key that uploaded the file (what the server stores; the client computes it from
its key). Targets on loopback, private, link-local or otherwise non-global addresses are refused,
when registered and again before every attempt, unless `GIGAAM_WEBHOOK_ALLOW_PRIVATE` is set; each
attempt connects to the very addresses it checked, so DNS rebinding cannot slip past the check.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import socket
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
import nats.errors
import nats.js.errors
import orjson
from nats.aio.msg import Msg
from nats.js import api
from nats.js.kv import KeyValue
from sanic import Request

from pipeline.api.errors import ApiError
from pipeline.api.tasks import iso, settled_task
from pipeline.bus import Bus, fetch_batch
from pipeline.kvstore import read
from pipeline.logs import task_logger
from pipeline.settings import Settings
from schemas.messages import ALL_FORMATS, TERMINAL_STATUSES, TaskEvent, TaskRecord, decode
from schemas.subjects import EVENTS_STREAM, WEBHOOKS_CONSUMER, event_subject

log = logging.getLogger(__name__)

CONCURRENCY = 16  # deliveries in flight per worker
MAX_URL = 2048
MAX_BACKOFF = 3600.0


class TargetRefused(ValueError):
    pass


def sign(key_hash: str, body: bytes) -> str:
    """The HMAC key is the hex SHA-256 of the API key: what the server stores, never the key itself."""
    return "sha256=" + hmac.new(key_hash.encode(), body, hashlib.sha256).hexdigest()


def base_url(request: Request, settings: Settings) -> str:
    """Where clients reach this API: the configured public URL (behind a proxy) or the request's own."""
    return settings.api_public_url.rstrip("/") or f"{request.scheme}://{request.host}"


def links(base: str, task_id: str) -> dict[str, Any]:
    task = f"{base}/api/v1/tasks/{task_id}"
    return {
        "status": task,
        "result": f"{task}/result",
        "events": f"{task}/events",
        "downloads": {fmt: f"{task}/download?format={fmt}" for fmt in ALL_FORMATS},
    }


async def check_target(url: str, allow_private: bool) -> list[str]:
    """The addresses the host resolves to, all of them allowed; else TargetRefused with a reason fit
    to show. A name that points at an internal address is as dangerous as the address itself."""
    if len(url) > MAX_URL:
        raise TargetRefused(f"longer than {MAX_URL} characters")
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise TargetRefused(f"not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise TargetRefused("only http and https URLs are allowed")
    if not parts.hostname:
        raise TargetRefused("the URL has no host")
    if parts.username or parts.password:
        raise TargetRefused("credentials in the URL are not allowed")
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise TargetRefused(f"cannot resolve {parts.hostname} ({exc})") from None
    addresses: list[str] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if address.is_multicast or address.is_unspecified:
            raise TargetRefused(f"{parts.hostname} resolves to {address}, which cannot receive requests")
        if not allow_private and not address.is_global:
            raise TargetRefused(f"{parts.hostname} resolves to the non-public address {address}")
        if str(address) not in addresses:
            addresses.append(str(address))
    return addresses


def pinned(url: str, address: str) -> tuple[httpx.URL, dict[str, str], dict[str, Any]]:
    """The request aimed at an address already checked, so a DNS answer that changes after the check
    (rebinding) cannot redirect it: the URL carries the IP, while the Host header and the TLS server
    name (SNI and certificate check) keep the original host."""
    original = httpx.URL(url)
    host = original.raw_host.decode("ascii")
    return original.copy_with(host=address), {"Host": original.netloc.decode("ascii")}, {"sni_hostname": host}


class Webhooks:
    def __init__(self, bus: Bus, kv: KeyValue, settings: Settings) -> None:
        self.bus = bus
        self.kv = kv
        self.settings = settings

    async def register(self, task_id: str, url: str, key_hash: str, owner: str, base: str) -> None:
        value = {"url": url, "key_hash": key_hash, "owner": owner, "base": base, "created": time.time()}
        await self.kv.put(task_id, orjson.dumps(value))

    async def forget(self, task_id: str) -> None:
        await self.kv.delete(task_id)

    async def run(self, stop: asyncio.Event) -> None:
        """Delivers until `stop`; jobs in flight at the end are nak'd and go to another worker."""
        await self._ensure_consumer()
        sub = await self.bus.js.pull_subscribe_bind(WEBHOOKS_CONSUMER, stream=EVENTS_STREAM)
        running: set[asyncio.Task[None]] = set()
        # No kept-alive connections: the pool keys on the pinned IP, so a TLS connection verified for
        # one host name could otherwise carry a request for another name on the same address.
        async with httpx.AsyncClient(
            timeout=self.settings.webhook_timeout,
            follow_redirects=False,
            trust_env=False,
            limits=httpx.Limits(max_keepalive_connections=0),
        ) as client:
            try:
                while not stop.is_set():
                    free = CONCURRENCY - len(running)
                    if free <= 0:
                        await asyncio.wait(running, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
                        continue
                    msgs = await fetch_batch(sub, free, "webhook")
                    for msg in msgs:
                        task = asyncio.create_task(self._deliver(client, msg))
                        running.add(task)
                        task.add_done_callback(running.discard)
            finally:
                for task in running:
                    task.cancel()
                await asyncio.gather(*running, return_exceptions=True)
                try:
                    await sub.unsubscribe()
                except nats.errors.Error:
                    pass

    async def _ensure_consumer(self) -> None:
        config = api.ConsumerConfig(
            durable_name=WEBHOOKS_CONSUMER,
            filter_subjects=[event_subject(kind, "*") for kind in TERMINAL_STATUSES],
            deliver_policy=api.DeliverPolicy.NEW,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=self.settings.webhook_timeout + 30.0,  # one POST plus the registry catching up
            max_deliver=-1,  # the attempts are counted here, so the registration is cleaned up at the end
        )
        await self.bus.js.add_consumer(EVENTS_STREAM, config)

    async def _deliver(self, client: httpx.AsyncClient, msg: Msg) -> None:
        attempt = msg.metadata.num_delivered or 1
        try:
            event = decode(TaskEvent, msg.data)
            try:
                target, _revision = await read(self.kv, event.task_id)
            except nats.js.errors.InvalidKeyError:  # an id no upload could have registered
                target = None
            if target is None:
                await msg.ack()
                return
            tlog = task_logger(log, event.task_id, "webhook")
            outcome = await self._attempt(client, event, target, attempt)
            if outcome is None or attempt >= self.settings.webhook_max_attempts:
                if outcome is not None:
                    tlog.warning("webhook to %s given up after %d attempts: %s", target["url"], attempt, outcome)
                await self.forget(event.task_id)
                await msg.ack()
                return
            delay = min(MAX_BACKOFF, self.settings.webhook_backoff * 2 ** (attempt - 1))
            tlog.info(
                "webhook attempt %d to %s failed (%s); retrying in %.1f s", attempt, target["url"], outcome, delay
            )
            await msg.nak(delay=delay)
        except asyncio.CancelledError:
            await _quietly(msg.nak())
            raise
        except Exception:
            # Redelivered like a failed POST; the attempt count bounds it, so a poison event cannot loop.
            log.exception("webhook delivery crashed (attempt %d)", attempt)
            if attempt >= self.settings.webhook_max_attempts:
                await _quietly(msg.ack())
            else:
                await _quietly(msg.nak(delay=self.settings.webhook_backoff))

    async def _attempt(self, client: httpx.AsyncClient, event: TaskEvent, target: dict, attempt: int) -> str | None:
        """None when delivered (or pointless to retry); otherwise why this attempt failed."""
        tlog = task_logger(log, event.task_id, "webhook")
        try:
            record = await settled_task(self.bus, event.task_id, target["owner"])
        except ApiError as exc:
            if exc.code == "task_not_found":
                return None  # deleted meanwhile: nobody to tell
            return f"registry: {exc.code}"
        if record.status not in TERMINAL_STATUSES:
            return "the registry has not recorded the outcome yet"
        try:
            addresses = await check_target(target["url"], self.settings.webhook_allow_private)
        except TargetRefused as exc:
            tlog.warning("webhook to %s refused: %s", target["url"], exc)
            return None
        body = orjson.dumps(payload(record, target["base"]))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "gigaam-transcriber-webhook",
            "X-Signature": sign(target["key_hash"], body),
            "X-Webhook-Id": f"{record.task_id}.{record.status}",
            "X-Webhook-Attempt": str(attempt),
        }
        response, failure = None, "the host resolved to no address"
        for address in addresses:  # in resolver order, like a browser falling back from IPv6
            url, host, extensions = pinned(target["url"], address)
            try:
                response = await client.post(url, content=body, headers={**headers, **host}, extensions=extensions)
                break
            except httpx.ConnectError as exc:
                failure = f"{type(exc).__name__}: {exc}"
            except httpx.HTTPError as exc:
                return f"{type(exc).__name__}: {exc}"
        if response is None:
            return failure
        if 200 <= response.status_code < 300:
            tlog.info("webhook delivered to %s (attempt %d)", target["url"], attempt)
            return None
        return f"HTTP {response.status_code}"


def payload(record: TaskRecord, base: str) -> dict[str, Any]:
    return {
        "event": f"task.{record.status}",
        "task_id": record.task_id,
        "status": record.status,
        "filename": record.filename,
        "file_size": record.file_size,
        "created_at": iso(record.created_at),
        "started_at": iso(record.started_at),
        "completed_at": iso(record.completed_at),
        "processing_time": record.processing_time,
        "media_duration": record.media_duration,
        "error": record.error,
        "links": links(base, record.task_id),
        "sent_at": iso(time.time()),
    }


async def _quietly(pending: Any) -> None:
    try:
        await pending
    except (nats.errors.Error, asyncio.TimeoutError):
        pass

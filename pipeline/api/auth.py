"""Who is calling: API keys from `X-API-Key` or `Authorization: Bearer` (what OpenAI clients send).

Every worker holds all key records in memory, fed by a watch on the keys bucket, so checking a key
costs no network round trip and a revocation reaches every worker within milliseconds. The watch
restarts (a full reload) every minute and after any error, so even a missed update heals quickly.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from dataclasses import dataclass

import nats.errors
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue
from sanic import Request

from pipeline.api.context import api_of
from pipeline.api.errors import ApiError
from pipeline.keys import RECORD_PREFIX, ApiKey, find_by_hash, hash_secret, parse_record, touch_key, well_formed

log = logging.getLogger(__name__)

ANONYMOUS = "anonymous"
TOUCH_EVERY = 60.0  # seconds between last-used writes per key and worker: keeps KV traffic flat
RELOAD_EVERY = 60.0


@dataclass(frozen=True, slots=True)
class Principal:
    owner: str  # the registry's task owner: the key id, or "anonymous"
    rate_id: str  # whose rate-limit counters this request uses
    key_hash: str | None  # signs this caller's webhooks; None for anonymous callers


class KeyCache:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv
        self._by_hash: dict[str, ApiKey] = {}
        self._loaded = asyncio.Event()
        self._touched: dict[str, float] = {}
        self._pending: set[asyncio.Task[None]] = set()

    def lookup(self, secret: str) -> ApiKey | None:
        """Active key for the secret. The dict finds the candidate by the digest, which tells an attacker
        nothing about the secret; the final comparison is constant-time all the same."""
        if not well_formed(secret):
            return None
        digest = hash_secret(secret)
        record = self._by_hash.get(digest)
        if record is None or not hmac.compare_digest(record.hash, digest) or not record.active:
            return None
        return record

    async def resolve(self, secret: str) -> ApiKey | None:
        """`lookup`, falling back to one direct read for a key this worker's watch has not seen yet."""
        record = self.lookup(secret)
        if record is None and well_formed(secret) and hash_secret(secret) not in self._by_hash:
            found = await find_by_hash(self.kv, hash_secret(secret))
            if found is not None:
                self._by_hash.setdefault(found.hash, found)
                record = self.lookup(secret)
        return record

    async def wait_loaded(self, timeout: float) -> None:
        await asyncio.wait_for(self._loaded.wait(), timeout)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self._watch(stop)
            except (nats.errors.Error, asyncio.TimeoutError, OSError) as exc:
                log.warning("API key watch failed (%s); reloading in 1 s", exc)
                await _sleep_unless(stop, 1.0)

    async def _watch(self, stop: asyncio.Event) -> None:
        """One watch session: the current records, then live changes, for up to RELOAD_EVERY seconds."""
        watcher = await self.kv.watch(RECORD_PREFIX + ">")
        fresh: dict[str, ApiKey] | None = {}  # built until the initial marker, then swapped in
        deadline = time.monotonic() + RELOAD_EVERY
        try:
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    entry = await watcher.updates(timeout=1.0)
                except nats.errors.TimeoutError:
                    continue
                if entry is None:  # initial state complete
                    if fresh is not None:
                        self._by_hash, fresh = fresh, None
                        self._loaded.set()
                    continue
                target = fresh if fresh is not None else self._by_hash
                key_id = entry.key.removeprefix(RECORD_PREFIX)
                for digest in [d for d, r in target.items() if r.id == key_id]:
                    del target[digest]
                record = None if entry.operation in (KV_DEL, KV_PURGE) else parse_record(entry.value)
                if record is not None:
                    target[record.hash] = record
        finally:
            await watcher.stop()

    def touch(self, record: ApiKey) -> None:
        """Last-used time, written in the background at most once a minute per key and worker."""
        now = time.time()
        if now - self._touched.get(record.id, 0.0) < TOUCH_EVERY:
            return
        self._touched[record.id] = now
        task = asyncio.create_task(self._touch(record.id, now))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _touch(self, key_id: str, when: float) -> None:
        try:
            await touch_key(self.kv, key_id, when)
        except Exception as exc:  # bookkeeping only: never fail or log a trace for it
            log.debug("last-used update of %s failed: %s", key_id, exc)


def presented_secret(request: Request) -> str | None:
    secret = request.headers.get("x-api-key")
    if secret:
        return secret.strip()
    scheme, _, credentials = (request.headers.get("authorization") or "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return None


async def authenticate(request: Request) -> None:
    """Blueprint request middleware: runs before the body is read, so a refused upload costs nothing."""
    api = api_of(request)
    secret = presented_secret(request)
    if secret is None:
        if api.settings.api_keys_required:
            raise ApiError(401, "missing_api_key", headers={"WWW-Authenticate": "Bearer"})
        request.ctx.principal = Principal(ANONYMOUS, f"ip-{request.remote_addr or request.ip}", None)
        return
    record = await api.keys.resolve(secret)
    if record is None:
        raise ApiError(401, "invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
    api.keys.touch(record)
    request.ctx.principal = Principal(record.id, record.id, record.hash)


async def _sleep_unless(event: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(event.wait(), seconds)
    except asyncio.TimeoutError:
        pass

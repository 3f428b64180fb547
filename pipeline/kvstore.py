"""NATS KV helpers for state that every API worker on every host must share (keys, rate counters,
idempotency claims, webhook registrations). Values are JSON objects; writers that may race use
`cas`, which guards each write with the revision it read."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import nats.js.errors
import orjson
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue

_STREAM_CONFIG_DIFFERS = 10058  # JetStream err_code: the bucket exists with other limits


class Contention(RuntimeError):
    """Other writers kept changing the entry between our read and our write."""


async def open_bucket(js: JetStreamContext, name: str, *, ttl: float | None = None, replicas: int = 1) -> KeyValue:
    """Binds to the bucket, creating it on first use. An existing bucket keeps its limits: callers
    use the TTL only to collect garbage, never for correctness, so a changed setting is harmless."""
    try:
        return await js.key_value(name)
    except nats.js.errors.BucketNotFoundError:
        pass
    config = api.KeyValueConfig(bucket=name, history=1, ttl=ttl, storage=api.StorageType.FILE, replicas=replicas)
    try:
        return await js.create_key_value(config)
    except nats.js.errors.BadRequestError as exc:  # another process created it with other limits
        if exc.err_code != _STREAM_CONFIG_DIFFERS:
            raise
        return await js.key_value(name)


async def read(kv: KeyValue, key: str) -> tuple[dict[str, Any] | None, int]:
    """The value and its revision; `(None, 0)` when the key is absent or deleted."""
    try:
        entry = await kv.get(key)
    except nats.js.errors.KeyNotFoundError:
        return None, 0
    return orjson.loads(entry.value or b"null"), entry.revision or 0


async def write(kv: KeyValue, key: str, value: dict[str, Any], revision: int) -> int:
    """Writes only if the entry is still at `revision` (0: does not exist yet), else raises
    `KeyWrongLastSequenceError`."""
    data = orjson.dumps(value)
    if revision:
        return await kv.update(key, data, last=revision)
    return await kv.create(key, data)


Change = Callable[[dict[str, Any] | None], dict[str, Any] | None]


async def cas(kv: KeyValue, key: str, change: Change, *, attempts: int = 20) -> tuple[dict | None, dict | None]:
    """Read-modify-write. `change(current)` returns the new value, or None to leave the entry alone.
    Returns `(current, new)` as of the successful round."""
    for _ in range(attempts):
        current, revision = await read(kv, key)
        new = change(current)
        if new is None:
            return current, None
        try:
            await write(kv, key, new, revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            continue
        return current, new
    raise Contention(f"KV entry {key!r} changed on every one of {attempts} attempts")

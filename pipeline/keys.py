"""API keys, shared by every API worker through a NATS KV bucket.

A key is `gam_` + 32 random letters and digits (about 190 bits). Only its SHA-256 is stored: with
that much randomness no dictionary or brute force applies, so a slow salted hash buys nothing.
Records are `key.<id>` entries; revoking rewrites the record, and workers learn it from a KV watch.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import string
import time
from dataclasses import asdict, dataclass

import nats.js.errors
import orjson
from nats.js.kv import KeyValue

from pipeline.bus import Bus
from pipeline.kvstore import cas, open_bucket
from schemas.subjects import KEYS_BUCKET

RECORD_PREFIX = "key."
HASH_PREFIX = "hash."  # hash.<sha256> -> key id: lets a worker find a key its watch has not seen yet
SECRET_PREFIX = "gam_"
SECRET_LENGTH = 32
_ALPHABET = string.ascii_letters + string.digits
_SECRET_RE = re.compile(rf"^{SECRET_PREFIX}[A-Za-z0-9]{{{SECRET_LENGTH}}}$")
_BOOTSTRAP = "meta.bootstrap"  # created once, by whichever worker made the first key
MAX_NAME = 100


class UnknownKey(LookupError):
    pass


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    name: str
    hash: str  # hex SHA-256 of the secret
    created: float
    last_used: float | None = None
    revoked: float | None = None  # when it was revoked; None while active

    @property
    def active(self) -> bool:
        return self.revoked is None


def new_secret() -> str:
    return SECRET_PREFIX + "".join(secrets.choice(_ALPHABET) for _ in range(SECRET_LENGTH))


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


def well_formed(secret: str) -> bool:
    """Cheap shape check so garbage never reaches the lookup."""
    return bool(_SECRET_RE.match(secret))


def parse_record(value: bytes | None) -> ApiKey | None:
    if not value:
        return None
    doc = orjson.loads(value)
    return ApiKey(**{k: doc.get(k) for k in ApiKey.__dataclass_fields__})


async def keys_bucket(bus: Bus, replicas: int = 1) -> KeyValue:
    """No TTL: keys live until revoked. `replicas` matters only to whoever creates the bucket first
    (the API service, at start)."""
    return await open_bucket(bus.js, KEYS_BUCKET, replicas=replicas)


async def create_key(bus: Bus, name: str) -> tuple[str, ApiKey]:
    """Returns the secret (shown once, never stored) and the stored record."""
    name = " ".join(name.split())[:MAX_NAME] or "unnamed"
    kv = await keys_bucket(bus)
    secret = new_secret()
    record = ApiKey(id=f"key_{secrets.token_hex(4)}", name=name, hash=hash_secret(secret), created=time.time())
    await kv.create(RECORD_PREFIX + record.id, orjson.dumps(asdict(record)))
    await kv.put(HASH_PREFIX + record.hash, record.id.encode())
    await _mark_bootstrapped(kv)  # a key made by an operator means no "first key" is printed later
    return secret, record


async def _mark_bootstrapped(kv: KeyValue) -> bool:
    """True for the one caller that set the marker."""
    try:
        await kv.create(_BOOTSTRAP, orjson.dumps({"at": time.time()}))
    except nats.js.errors.KeyWrongLastSequenceError:
        return False
    return True


async def find_by_hash(kv: KeyValue, digest: str) -> ApiKey | None:
    """Direct read for a key created a moment ago, before every worker's watch delivered it."""
    try:
        key_id = (await kv.get(HASH_PREFIX + digest)).value
        record = parse_record((await kv.get(RECORD_PREFIX + (key_id or b"").decode())).value)
    except (nats.js.errors.KeyNotFoundError, nats.js.errors.InvalidKeyError):
        return None
    return record if record is not None and record.hash == digest else None


async def list_keys(bus: Bus) -> list[ApiKey]:
    """Every key, revoked ones included, oldest first."""
    kv = await keys_bucket(bus)
    watcher = await kv.watch(RECORD_PREFIX + ">", ignore_deletes=True)
    records = []
    try:
        while (entry := await watcher.updates(timeout=10.0)) is not None:
            record = parse_record(entry.value)
            if record is not None:
                records.append(record)
    finally:
        await watcher.stop()
    return sorted(records, key=lambda r: r.created)


async def revoke_key(bus: Bus, key_id: str) -> ApiKey:
    """Idempotent: revoking a revoked key keeps its first revocation time."""
    kv = await keys_bucket(bus)
    now = time.time()

    def revoke(current: dict | None) -> dict | None:
        if current is None:
            raise UnknownKey(f"no API key with id {key_id!r}")
        return None if current.get("revoked") else {**current, "revoked": now}

    try:
        current, new = await cas(kv, RECORD_PREFIX + key_id, revoke)
    except nats.js.errors.InvalidKeyError:
        raise UnknownKey(f"no API key with id {key_id!r}") from None
    record = parse_record(orjson.dumps(new or current))
    assert record is not None
    return record


async def touch_key(kv: KeyValue, key_id: str, when: float) -> None:
    """Records the last use; never resurrects a revoked key because the write is revision-guarded."""

    def touch(current: dict | None) -> dict | None:
        if current is None or current.get("revoked") or (current.get("last_used") or 0) >= when:
            return None
        return {**current, "last_used": when}

    await cas(kv, RECORD_PREFIX + key_id, touch, attempts=3)


async def bootstrap_key(bus: Bus) -> tuple[str, ApiKey] | None:
    """The first key of a fresh deployment, made by exactly one of the workers starting together;
    the others, every later start and a deployment whose operator already made a key get None."""
    kv = await keys_bucket(bus)
    if not await _mark_bootstrapped(kv):
        return None
    return await create_key(bus, "first key")


async def any_key_made(bus: Bus) -> bool:
    """Whether a key was ever created here, by the first start or by an operator."""
    kv = await keys_bucket(bus)
    try:
        await kv.get(_BOOTSTRAP)
    except nats.js.errors.KeyNotFoundError:
        return False
    return True

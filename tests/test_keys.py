"""API key records in NATS KV: the first-key bootstrap happens once, and never after an operator
made a key (install.sh does, before the API first starts under systemd)."""

from __future__ import annotations

from pathlib import Path

from pipeline.bus import connect
from pipeline.keys import any_key_made, bootstrap_key, create_key, find_by_hash, hash_secret, keys_bucket
from pipeline.natsserver import EmbeddedNats
from tests.apistack import ApiStack


async def test_bootstrap_makes_one_first_key_once(nats_server: EmbeddedNats) -> None:
    bus = await connect(nats_server.url, "test", first_connect_timeout=5)
    try:
        assert not await any_key_made(bus)
        first = await bootstrap_key(bus)
        assert first is not None
        secret, record = first
        assert record.name == "first key" and record.hash == hash_secret(secret) and secret not in record.hash
        assert await find_by_hash(await keys_bucket(bus), hash_secret(secret)) == record
        assert await bootstrap_key(bus) is None  # a restart, or a second worker
        assert await any_key_made(bus)
    finally:
        await bus.close()


async def test_an_operator_key_means_no_first_key(nats_server: EmbeddedNats) -> None:
    bus = await connect(nats_server.url, "test", first_connect_timeout=5)
    try:
        await create_key(bus, "admin")
        assert await any_key_made(bus)
        assert await bootstrap_key(bus) is None
    finally:
        await bus.close()


def test_first_key_off_prints_no_key_and_says_how_to_make_one(tmp_path: Path) -> None:
    api = ApiStack(tmp_path, services="registry,api", GIGAAM_API_FIRST_KEY="0").start(stages=("registry", "api"))
    try:
        output = api.stack.log.read_text()
        assert "gam_" not in output and "FIRST API KEY" not in output
        assert "no API key exists yet: create one with `gigaam-transcriber keys create NAME`" in output
    finally:
        api.stop()

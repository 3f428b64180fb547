"""Scale-out: the stack on a 3-node NATS cluster (three local nats-servers on loopback) with every
stream and bucket replicated three times, surviving the loss of one node."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats.errors
import pytest

from pipeline.bus import connect
from pipeline.natsserver import EmbeddedNats
from pipeline.submit import submit_file, wait_for_task
from schemas.subjects import EVENTS_STREAM, JOBS_STREAM, OBJECT_BUCKET, RATE_BUCKET
from tests.stack import Stack, free_port, speech, write_wav

pytestmark = [pytest.mark.timeout(240)]


async def test_stack_on_a_three_node_cluster_with_replicated_streams(tmp_path: Path) -> None:
    routes = [free_port() for _ in range(3)]
    nodes = []
    for i, port in enumerate(routes):
        others = ",".join(f"nats://127.0.0.1:{p}" for j, p in enumerate(routes) if j != i)
        flags = ["--name", f"n{i}", "--cluster_name", "gigaam", "--cluster", f"nats://127.0.0.1:{port}", "--routes", others]
        nodes.append(EmbeddedNats(tmp_path / f"n{i}", extra_args=flags, start_timeout=30))
    for node in nodes:
        node.start()
    url = ",".join(n.url for n in nodes)
    stack = Stack(tmp_path / "stack", nats_url=url, GIGAAM_NATS_REPLICAS="3")
    stack.root.mkdir()
    try:
        probe = await connect(url, "probe", first_connect_timeout=10)
        for _ in range(100):  # JetStream needs a meta leader before anything can be created
            try:
                await probe.js.account_info()
                break
            except Exception:  # noqa: BLE001 - not ready yet, any flavour
                await asyncio.sleep(0.3)
        await probe.close()
        stack.start()
        bus = await stack.ready(timeout=120)
        try:
            for stream in (JOBS_STREAM, EVENTS_STREAM, f"OBJ_{OBJECT_BUCKET}", "KV_gigaam_keys", f"KV_{RATE_BUCKET}"):
                info = await bus.js.stream_info(stream)
                assert info.config.num_replicas == 3, stream
            wav = write_wav(tmp_path / "a.wav", speech("02_speech_5s"))
            first = await wait_for_task(bus, await submit_file(bus, wav), timeout=120)
            assert first.type == "completed"
            nodes[2].stop()  # lose one node: two of three replicas keep the quorum
            for attempt in range(10):  # a client on the lost node reconnects first; submit is idempotent
                try:
                    task_id = await submit_file(bus, wav, task_id="after-failover")
                    break
                except (asyncio.TimeoutError, nats.errors.Error):
                    await asyncio.sleep(1.0)
            second = await wait_for_task(bus, task_id, timeout=120)
            assert second.type == "completed" and second.text == first.text
        finally:
            await bus.close()
            stack.stop()
    finally:
        for node in nodes:
            node.stop()

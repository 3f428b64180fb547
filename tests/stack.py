"""A real stack for end-to-end tests: `gigaam-transcriber up` as a subprocess (embedded nats-server on a
random port, temp data dir, a tiny golden checkpoint), plus helpers to talk to it over NATS."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orjson

from pipeline.bus import Bus, BusTimeout, connect, get_bytes, object_store, request
from schemas.messages import RegistryReply, RegistryRequest, TaskEvent, TaskRecord, decode, encode
from schemas.subjects import WORKER_PING_PREFIX, registry_subject
from tests.test_engine_conformance import GOLDEN, read_wav

TINY_MODEL = GOLDEN / "models" / "v3_e2e_ctc.ckpt"


def speech(*names: str, gap_s: float = 0.5) -> np.ndarray:
    """int16 16 kHz speech from the kit's recordings, with pauses between them."""
    gap = np.zeros(int(gap_s * 16000), dtype=np.float32)
    parts = []
    for name in names:
        parts += [read_wav(name), gap]
    return (np.concatenate(parts) * 32767).astype(np.int16)


def write_wav(path: Path, samples: np.ndarray) -> Path:
    import wave

    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(samples.tobytes())
    return path


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    def __init__(self, root: Path, services: str | None = None, nats_url: str = "", **env: str) -> None:
        self.root = root
        self.data_dir = root / "data"
        self.output_dir = root / "output"
        self.env = {
            **os.environ,
            "GIGAAM_DATA_DIR": str(self.data_dir),
            "GIGAAM_OUTPUT_DIR": str(self.output_dir),
            "GIGAAM_MODEL": str(TINY_MODEL),
            "GIGAAM_DEVICE": "cpu",
            "GIGAAM_ACK_WAIT": "4",
            "GIGAAM_CPU_THREADS": "1",
            "GIGAAM_LOG_LEVEL": "INFO",
            "GIGAAM_API_PORT": str(free_port()),  # stacks of parallel runs must not share a port
            **env,
        }
        self.env.pop("GIGAAM_NATS_URL", None)
        if nats_url:  # an external NATS (cluster) instead of the embedded server
            self.env["GIGAAM_NATS_URL"] = nats_url
        self.services = services
        self.proc: subprocess.Popen | None = None
        self.log = root / "stack.log"

    @property
    def url(self) -> str:
        return (self.data_dir / "nats.url").read_text().strip()

    def start(self) -> "Stack":
        args = [sys.executable, "-m", "pipeline.cli", "up"]
        if self.services:
            args += ["--services", self.services]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(args, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        return self

    async def ready(self, stages: tuple[str, ...] = ("registry", "decode", "infer", "format"), timeout: float = 90.0) -> Bus:
        deadline = time.monotonic() + timeout
        while not (self.data_dir / "nats.url").exists():
            self._check_alive(deadline)
            await asyncio.sleep(0.2)
        bus = await connect(self.url, "gigaam-test", first_connect_timeout=10)
        for stage in stages:
            while True:
                self._check_alive(deadline)
                try:
                    reply = await request(bus.nc, f"{WORKER_PING_PREFIX}.{stage}", b"", timeout=1.0)
                    if orjson.loads(reply).get("ready", True) is not False:  # infer: model loaded
                        break
                except BusTimeout:
                    pass
                await asyncio.sleep(0.3)
        return bus

    def _check_alive(self, deadline: float) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"stack exited with {self.proc.returncode}:\n{self.log_tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"stack not ready:\n{self.log_tail()}")

    async def wait_log(self, text: str, what: str, timeout: float = 60.0) -> None:
        """Until a service has logged `text`; fails with `what` and the log's tail."""
        deadline = time.monotonic() + timeout
        while text not in self.log.read_text(errors="replace"):
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}:\n{self.log_tail()}")
            await asyncio.sleep(0.5)

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def pid(self, service: str) -> int:
        return int((self.data_dir / "run" / f"{service}.pid").read_text())

    def kill9(self, service: str) -> int:
        pid = self.pid(service)
        os.kill(pid, signal.SIGKILL)
        return pid

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


async def registry_get(bus: Bus, task_id: str, owner: str | None = None) -> TaskRecord | None:
    reply = decode(
        RegistryReply,
        await request(bus.nc, registry_subject("get"), encode(RegistryRequest(op="get", task_id=task_id, owner=owner)), 5.0),
    )
    return reply.task


async def wait_record(bus: Bus, task_id: str, statuses: tuple[str, ...] = ("completed", "failed"), timeout: float = 90.0) -> TaskRecord:
    """Polls the registry until the task reaches one of `statuses` (the registry lags the events)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            record = await registry_get(bus, task_id)
        except BusTimeout:  # the registry is (re)starting
            record = None
        if record is not None and record.status in statuses:
            return record
        if time.monotonic() > deadline:
            raise TimeoutError(f"task {task_id} still {record and record.status} after {timeout}s")
        await asyncio.sleep(0.2)


async def task_events(bus: Bus, task_id: str) -> list[TaskEvent]:
    """Every event of the task still in the events stream, in order."""
    from nats.js import api

    from schemas.subjects import EVENT_PREFIX, EVENTS_STREAM

    config = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.ALL, ack_policy=api.AckPolicy.NONE)
    sub = await bus.js.pull_subscribe(f"{EVENT_PREFIX}.*.{task_id}", stream=EVENTS_STREAM, config=config)
    events: list[TaskEvent] = []
    try:
        while True:
            try:
                msgs = await sub.fetch(100, timeout=0.5)
            except (asyncio.TimeoutError, Exception):  # nats-py: TimeoutError once drained
                break
            if not msgs:
                break
            events += [decode(TaskEvent, m.data) for m in msgs]
    finally:
        await sub.unsubscribe()
    return events


async def result_object(bus: Bus, record: TaskRecord, fmt: str) -> bytes:
    return await get_bytes(await object_store(bus.js), record.outputs[fmt])

"""The real stack with the API service on a free port, for the API tests and the API benchmark:
embedded nats-server, every service as a supervised process, tiny model, real uploads over HTTP."""

from __future__ import annotations

import asyncio
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from pipeline.bus import connect
from pipeline.keys import create_key
from tests.stack import Stack, free_port, speech, write_wav


class ApiStack:
    """`Stack` plus the API: its base URL, keys made over NATS, extra API workers on other ports."""

    def __init__(self, root: Path, services: str | None = None, **env: str) -> None:
        self.port = free_port()
        self.stack = Stack(root, services=services, GIGAAM_API_PORT=str(self.port), **env)
        self.root = root
        self.base = f"http://127.0.0.1:{self.port}"
        self.workers: list[subprocess.Popen] = []

    def start(self, stages: tuple[str, ...] = ("registry", "decode", "infer", "format", "api")) -> ApiStack:
        self.stack.start()

        async def ready() -> None:
            bus = await self.stack.ready(stages=stages, timeout=120.0)
            await bus.close()

        asyncio.run(ready())
        wait_http(self.base)
        return self

    def key(self, name: str = "test") -> str:
        async def make() -> str:
            bus = await connect(self.stack.url, "gigaam-test-keys", first_connect_timeout=10)
            try:
                secret, _record = await create_key(bus, name)
                return secret
            finally:
                await bus.close()

        return asyncio.run(make())

    def add_worker(self, **env: str) -> str:
        """One more API worker process on its own port, sharing NATS and the data dir; its URL."""
        port = free_port()
        worker_env = {
            **self.stack.env,
            "GIGAAM_NATS_URL": self.stack.url,
            "GIGAAM_API_PORT": str(port),
            **env,
        }
        log = open(self.root / f"api-{port}.log", "ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.api"], env=worker_env, stdout=log, stderr=subprocess.STDOUT
        )
        self.workers.append(proc)
        url = f"http://127.0.0.1:{port}"
        wait_http(url, proc)
        return url

    def api_pid(self) -> int:
        return self.stack.pid("api")

    def stop(self) -> None:
        for proc in self.workers:
            proc.send_signal(signal.SIGTERM)
        for proc in self.workers:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.stack.stop()


def wait_http(base: str, proc: subprocess.Popen | None = None, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{base}/", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"API worker exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{base} did not answer within {timeout}s")
        time.sleep(0.2)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def speech_wav(path: Path, *names: str) -> Path:
    return write_wav(path, speech(*(names or ("01_speech_2s",))))


def wav_header(data_bytes: int, rate: int = 16000) -> bytes:
    """A 44-byte PCM WAV header for `data_bytes` of 16-bit mono samples."""
    return (
        b"RIFF"
        + struct.pack("<I", 36 + data_bytes)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
        + b"data"
        + struct.pack("<I", data_bytes)
    )


def wav_of_size(path: Path, total_bytes: int) -> Path:
    """A valid WAV of exactly `total_bytes` bytes (quiet noise), for cap boundary tests."""
    data = total_bytes - 44
    samples = (np.random.default_rng(7).normal(0, 300, data // 2)).astype(np.int16).tobytes()
    path.write_bytes(wav_header(len(samples)) + samples + b"\0" * (data - len(samples)))
    return path


def upload_dir_files(data_dir: Path) -> list[Path]:
    """Files in every API worker's upload folder: must be empty once requests are done."""
    root = data_dir / "work" / "api"
    return [p for p in root.glob("uploads-*/*")] if root.exists() else []

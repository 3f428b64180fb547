"""The REST API's own costs, on the real stack (tiny model; rate limits off).

    python -m bench.api [--upload-mib 512] [--clients 50] [--seconds 10]

Reports upload throughput (MB/s) two ways: the HTTP path alone (streamed body, multipart parsing,
temporary file; measured by streaming just past a worker's cap, which refuses with 413 after reading
it all) and the full upload until 202 (plus media probe and the copy into the object store); then
status polls (`GET /api/v1/tasks/{id}`) from N concurrent clients: p50/p95/p99 latency, requests/s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.apistack import ApiStack, speech_wav, wav_header

MiB = 1024 * 1024
BOUNDARY = "benchboundary"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def body(prefix: bytes, size: int) -> Iterator[bytes]:
    """A multipart body with a `size`-byte file that starts with `prefix`, made as it is sent."""
    yield f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="bench.wav"\r\n\r\n'.encode()
    yield prefix
    chunk, left = os.urandom(MiB), size - len(prefix)
    while left > 0:
        yield chunk[: min(left, MiB)]
        left -= MiB
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


def upload(base: str, key: str, prefix: bytes, size: int) -> tuple[int, float]:
    headers = {"X-API-Key": key, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    started = time.perf_counter()
    response = httpx.post(f"{base}/api/v1/transcribe", content=body(prefix, size), headers=headers, timeout=600)
    return response.status_code, time.perf_counter() - started


async def poll(base: str, key: str, task_id: str, clients: int, seconds: float) -> tuple[list[float], int]:
    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal errors
        async with httpx.AsyncClient(base_url=base, headers={"X-API-Key": key}, timeout=30) as http:
            while time.perf_counter() < stop:
                started = time.perf_counter()
                response = await http.get(f"/api/v1/tasks/{task_id}")
                latencies.append(time.perf_counter() - started)
                errors += response.status_code != 200

    await asyncio.gather(*(client() for _ in range(clients)))
    return latencies, errors


def run(root: Path, upload_mib: int, clients: int, seconds: float) -> None:
    api = ApiStack(root, GIGAAM_API_RATE_UPLOADS="0", GIGAAM_API_RATE_CALLS="0", GIGAAM_LOG_LEVEL="WARNING").start()
    try:
        size = upload_mib * MiB
        capped = api.add_worker(GIGAAM_API_MAX_UPLOAD_BYTES=str(size - 1))
        key = api.key("bench")
        speech = speech_wav(root / "speech.wav").read_bytes()[44:]
        prefix = wav_header(len(speech)) + speech  # short audio, then bytes the decoder never reads

        status, wall = upload(capped, key, prefix, size)
        assert status == 413, status
        print(
            f"upload, HTTP path only ({upload_mib} MiB streamed, multipart parsed, written to disk): "
            f"{size / wall / 1e6:.0f} MB/s"
        )
        status, wall = upload(api.base, key, prefix, size)
        assert status == 202, status
        print(f"upload until 202 ({upload_mib} MiB, + probe + object store): {size / wall / 1e6:.0f} MB/s")

        with open(root / "speech.wav", "rb") as fh:
            task_id = httpx.post(
                f"{api.base}/api/v1/transcribe", headers={"X-API-Key": key}, files={"file": fh}
            ).json()["task_id"]
        latencies, errors = asyncio.run(poll(api.base, key, task_id, clients, seconds))
        print(
            f"status polls, {clients} concurrent clients for {seconds:g} s: {len(latencies) / seconds:.0f} req/s, "
            f"p50 {statistics.median(latencies) * 1000:.1f} ms, p95 {percentile(latencies, 0.95) * 1000:.1f} ms, "
            f"p99 {percentile(latencies, 0.99) * 1000:.1f} ms, {errors} errors"
        )
    finally:
        api.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--upload-mib", type=int, default=512)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="gigaam-bench-api-") as tmp:
        run(Path(tmp), args.upload_mib, args.clients, args.seconds)


if __name__ == "__main__":
    main()

"""The pipeline's own cost, with the tiny model so the engine hardly counts.

    python -m bench.pipeline [--latency-runs 20] [--burst 200]

Runs the real stack (`gigaam-transcriber up`: embedded nats-server, every service as a process)
and reports p50/p95 latency from submit to the completion event for a 10 s WAV, one at a time,
and throughput (tasks per second) for a burst of small files submitted at once.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from pipeline.submit import submit_file, wait_for_task
from tests.stack import Stack, speech, write_wav


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run(root: Path, latency_runs: int, burst: int) -> None:
    stack = Stack(root, GIGAAM_LOG_LEVEL="WARNING").start()
    bus = await stack.ready()
    try:
        ten = speech("02_speech_5s", "01_speech_2s", "01_speech_2s")[: 10 * 16000]
        wav10 = write_wav(root / "ten.wav", ten)
        await wait_for_task(bus, await submit_file(bus, wav10), timeout=120)  # warm-up
        latencies = []
        for _ in range(latency_runs):
            t0 = time.perf_counter()
            event = await wait_for_task(bus, await submit_file(bus, wav10), timeout=120)
            latencies.append(time.perf_counter() - t0)
            assert event.type == "completed", event.error
        print(f"10 s WAV, submit -> completion event, {latency_runs} runs one at a time: "
              f"p50 {statistics.median(latencies) * 1000:.0f} ms, p95 {percentile(latencies, 0.95) * 1000:.0f} ms")

        small = speech("01_speech_2s")
        files = [write_wav(root / f"s{i}.wav", small[: small.size - i]) for i in range(burst)]
        t0 = time.perf_counter()
        ids = await asyncio.gather(*(submit_file(bus, f) for f in files))
        submitted = time.perf_counter() - t0
        events = await asyncio.gather(*(wait_for_task(bus, t, timeout=900) for t in ids))
        wall = time.perf_counter() - t0
        done = sum(e.type == "completed" for e in events)
        print(f"{burst} files of {small.size / 16000:.1f} s submitted at once: {done} completed in {wall:.1f} s "
              f"({burst / wall:.1f} tasks/s; submitting took {submitted:.1f} s)")
    finally:
        await bus.close()
        stack.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latency-runs", type=int, default=20)
    ap.add_argument("--burst", type=int, default=200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(Path(tmp), args.latency_runs, args.burst))


if __name__ == "__main__":
    main()

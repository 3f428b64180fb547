"""Inbox latency: from a file's last write to its transcript appearing in the output folder.

    python -m bench.inbox_latency [--runs 20] [--stable SECONDS] [--polling]

Runs the real stack (`gigaam-transcriber up` with an inbox, tiny model, so the pipeline's own cost
shows) and drops a 10 s WAV into the inbox, one at a time, as a user's copy would: written under its
final name and closed. Reports p50/p95 of last write -> `<output>/<name>.txt` present, and of last
write -> task created, which is mostly the stability wait (`GIGAAM_INBOX_STABLE_INTERVAL`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

from pipeline.settings import Settings
from schemas.messages import RegistryReply, RegistryRequest, decode, encode
from schemas.subjects import registry_subject
from tests.stack import Stack, speech, write_wav


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def created_at(bus, filename: str) -> float:  # noqa: ANN001 - Bus
    """When the registry saw the task's submission (it lags the output by a little)."""
    body = encode(RegistryRequest(op="list", limit=1000))
    while True:
        reply = decode(RegistryReply, (await bus.nc.request(registry_subject("list"), body, timeout=5)).data)
        for task in reply.tasks:
            if task.filename == filename and task.created_at:
                return task.created_at
        await asyncio.sleep(0.05)


async def run(root: Path, runs: int, stable: float, polling: bool) -> None:
    env = {"GIGAAM_INBOX_DIR": str(root / "inbox"), "GIGAAM_INBOX_STABLE_INTERVAL": str(stable)}
    if polling:
        env["GIGAAM_INBOX_POLLING"] = "1"
    stack = Stack(root, GIGAAM_LOG_LEVEL="WARNING", **env).start()
    bus = await stack.ready(stages=("registry", "decode", "infer", "format", "ingest"))
    try:
        ten = speech("02_speech_5s", "01_speech_2s", "01_speech_2s")[: 10 * 16000]
        wav = write_wav(root / "ten.wav", ten).read_bytes()
        totals, waits = [], []
        for i in range(runs + 1):  # the first run warms up every service
            name = f"take{i:03d}"
            target, out = root / "inbox" / f"{name}.wav", stack.output_dir / f"{name}.txt"
            with open(target, "wb") as fh:
                fh.write(wav)
            last_write = time.time()
            while not os.path.exists(out):
                await asyncio.sleep(0.005)
            total = time.time() - last_write
            if i:
                totals.append(total)
                waits.append(await created_at(bus, f"{name}.wav") - last_write)
        mode = "polling" if polling else "inotify"
        print(
            f"10 s WAV dropped into the inbox ({mode}, stable interval {stable:g} s), {runs} runs one at a time:\n"
            f"  last write -> transcript in the output folder: p50 {statistics.median(totals) * 1000:.0f} ms, "
            f"p95 {percentile(totals, 0.95) * 1000:.0f} ms\n"
            f"  last write -> task submitted:                   p50 {statistics.median(waits) * 1000:.0f} ms, "
            f"p95 {percentile(waits, 0.95) * 1000:.0f} ms"
        )
    finally:
        await bus.close()
        stack.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--stable", type=float, default=Settings().inbox_stable_interval, help="stable interval, seconds")
    ap.add_argument("--polling", action="store_true", help="GIGAAM_INBOX_POLLING=1")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(Path(tmp), args.runs, args.stable, args.polling))


if __name__ == "__main__":
    main()

"""Cross-job batching for the infer service: segments of every job in flight share engine batches.

One engine per process runs on one worker thread (torch releases the GIL, so the event loop keeps
sending heartbeats). Each batch is anchored on the oldest waiting segment, so no job starves, and
filled with the waiting segments closest to it in length, so padding stays small.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Sequence

import numpy as np

from pipeline.asr.engine import EngineResult

log = logging.getLogger(__name__)

Recognize = Callable[[list[np.ndarray]], list[EngineResult]]
OnProgress = Callable[[int, int], Awaitable[None]]  # (segments done, segments total)


@dataclass(eq=False)
class _Item:
    audio: np.ndarray
    future: asyncio.Future
    seq: int
    size: int = field(init=False)

    def __post_init__(self) -> None:
        self.size = int(self.audio.shape[0])


@dataclass
class BatcherStats:
    batches: int = 0
    segments: int = 0
    audio_seconds: float = 0.0
    busy_seconds: float = 0.0


class SegmentBatcher:
    def __init__(self, recognize: Recognize, *, max_batch: int = 16, max_wait: float = 0.05) -> None:
        self._recognize = recognize
        self.max_batch = max_batch
        self.max_wait = max_wait
        self._pending: list[_Item] = []
        self._wakeup = asyncio.Event()
        self._seq = 0
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="engine")
        self._runner: asyncio.Task | None = None
        self.stats = BatcherStats()

    async def transcribe(self, pieces: Sequence[np.ndarray], on_progress: OnProgress | None = None) -> list[EngineResult]:
        """Results in input order; `on_progress` is awaited after each batch that finished some of them.

        A job keeps at most `max_batch` segments waiting at a time, so a long file cannot queue
        hundreds of segments ahead of a short job that arrives after it: jobs in flight take turns.
        """
        if not pieces:
            return []
        self._ensure_runner()
        loop = asyncio.get_running_loop()
        items = [_Item(piece, loop.create_future(), 0) for piece in pieces]
        queued = 0
        waiting: set[asyncio.Future] = set()
        try:
            while queued < len(items) or waiting:
                if queued < len(items) and len(waiting) < self.max_batch:
                    fresh = items[queued : queued + self.max_batch - len(waiting)]
                    for item in fresh:
                        self._seq += 1
                        item.seq = self._seq  # its turn starts now
                    queued += len(fresh)
                    self._pending.extend(fresh)
                    waiting |= {item.future for item in fresh}
                    self._wakeup.set()
                done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                for fut in done:
                    fut.result()  # raise the engine's error for this job
                if on_progress is not None:
                    await on_progress(queued - len(waiting), len(items))
        except BaseException:
            self._drop(items)  # a cancelled or failed job must not leave work behind
            raise
        return [item.future.result() for item in items]

    def _drop(self, items: list[_Item]) -> None:
        gone = set(map(id, items))
        self._pending = [p for p in self._pending if id(p) not in gone]
        for item in items:
            if not item.future.done():
                item.future.cancel()

    def _ensure_runner(self) -> None:
        if self._runner is None or self._runner.done():
            self._runner = asyncio.get_running_loop().create_task(self._run(), name="segment-batcher")

    def _take_batch(self) -> list[_Item]:
        anchor = min(self._pending, key=lambda it: it.seq)
        ranked = sorted(self._pending, key=lambda it: (abs(it.size - anchor.size), it.seq))
        batch = ranked[: self.max_batch]
        chosen = set(map(id, batch))
        self._pending = [p for p in self._pending if id(p) not in chosen]
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            if len(self._pending) < self.max_batch and self.max_wait > 0:
                await asyncio.sleep(self.max_wait)  # let other jobs' segments join this batch
            self._wakeup.clear()
            while self._pending:
                batch = [it for it in self._take_batch() if not it.future.done()]
                if not batch:
                    continue
                started = time.perf_counter()
                try:
                    results = await loop.run_in_executor(self._executor, self._recognize, [it.audio for it in batch])
                except Exception as exc:  # the jobs owning these segments fail (and are retried by the bus)
                    log.exception("engine batch of %d segments failed", len(batch))
                    for it in batch:
                        if not it.future.done():
                            it.future.set_exception(exc)
                    continue
                self.stats.batches += 1
                self.stats.segments += len(batch)
                self.stats.audio_seconds += sum(it.size for it in batch) / 16000
                self.stats.busy_seconds += time.perf_counter() - started
                for it, res in zip(batch, results):
                    if not it.future.done():
                        it.future.set_result(res)

    async def close(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            try:
                await self._runner
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True, cancel_futures=True)

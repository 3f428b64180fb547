"""Ingest service: files dropped into the inbox folder become tasks, each file exactly once.

watchfiles events (inotify, or polling for network and FUSE mounts) say where to look; a full rescan
at start and every `inbox_rescan_interval` finds whatever events missed (files added while the
service was down, inotify overflow). A file is taken once it has stopped changing, copied and hashed
in one read, probed, and submitted under a task id derived from its content, so that a restart, a
rescan or a duplicate event finds the existing task instead of making a second one. A ledger in
the data dir remembers where each taken file went, so that a task failing later can still move its
file to failed/, and so that files left in place are not taken again. The rules live in
`pipeline.inbox`; this module connects them to the bus. Run one ingester per inbox.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
import uuid
from dataclasses import replace
from pathlib import Path, PurePosixPath

import nats.errors
import nats.js.errors
from watchfiles import Change, awatch

from pipeline.bus import BusTimeout, ObjectMissing, get_to_file, request
from pipeline.decode import MediaError, probe_media
from pipeline.inbox import (
    COMPLETED,
    FAILED,
    SUBMITTED,
    TASK_PREFIX,
    Completeness,
    FolderOptions,
    InboxConfig,
    Ledger,
    LedgerEntry,
    OptionsError,
    StabilityTracker,
    after_submission,
    fail_file,
    folder_options,
    is_media,
    snapshot,
    task_id_for,
    task_options,
)
from pipeline.logs import task_logger
from pipeline.service import ServiceContext, main
from pipeline.submit import submit_file
from schemas.messages import RegistryReply, RegistryRequest, TaskEvent, TaskOptions, TaskRecord, decode, encode
from schemas.subjects import event_subject, object_name, registry_subject

log = logging.getLogger(__name__)

STAGE = "ingest"
WORKERS = 2  # files hashed and submitted at once; more only contends for the disk
_BUS_ERRORS = (BusTimeout, nats.errors.Error, nats.js.errors.Error, asyncio.TimeoutError)


class _Retry(Exception):
    """The bus or the registry cannot answer now: the file goes back to waiting."""


class Ingester:
    def __init__(self, ctx: ServiceContext, config: InboxConfig) -> None:
        self.ctx = ctx
        self.config = config
        self.tracker = StabilityTracker(config.stable_interval)
        # One ledger per inbox path: pointing the service at another folder starts a fresh one.
        key = hashlib.sha256(str(config.root).encode()).hexdigest()[:12]
        self.ledger = Ledger(Path(ctx.settings.data_dir) / "ingest" / f"ledger-{key}.jsonl")
        self.base = FolderOptions(model=None, formats=config.formats)
        self.queue: asyncio.Queue[Path] = asyncio.Queue()
        self.busy: set[Path] = set()  # queued or being taken
        self.told: set[Path] = set()  # files left alone whose reason was logged once already
        self.retries: dict[Path, int] = {}
        # Task ids between their submit and their ledger entry, with the reason if they failed meanwhile.
        self.submitting: dict[str, str | None] = {}
        self.settling = asyncio.Lock()  # one outcome at a time: an event and a rescan may report the same one

    async def run(self) -> None:
        await asyncio.to_thread(self.config.root.mkdir, parents=True, exist_ok=True)
        for leftover in self.ctx.work_dir.iterdir():  # snapshots of a process that died mid-take
            leftover.unlink(missing_ok=True)
        for kind in (COMPLETED, FAILED):
            await self.ctx.bus.nc.subscribe(event_subject(kind, "*"), cb=self._on_event)
        log.info(
            "watching %s (%s, stable after %.1fs, rescan every %.0fs, then %s)",
            self.config.root, "polling" if self.config.polling else "inotify", self.config.stable_interval,
            self.config.rescan_interval, self.config.after,
        )
        loops = [self._watch(), self._rescans(), self._checks(), *(self._work() for _ in range(WORKERS))]
        tasks = [asyncio.create_task(loop) for loop in loops]
        stopping = asyncio.create_task(self.ctx.stop.wait())
        done, _ = await asyncio.wait([*tasks, stopping], return_when=asyncio.FIRST_COMPLETED)
        for task in (*tasks, stopping):
            task.cancel()
        await asyncio.gather(*tasks, stopping, return_exceptions=True)
        for task in done:  # a loop that died takes the process down; the supervisor restarts it
            if task is not stopping and not task.cancelled() and task.exception() is not None:
                raise task.exception()

    # ------------------------------------------------------------------ finding files

    def _note(self, path: Path) -> None:
        """Every path an event or a scan turns up comes here; a candidate starts its stability checks."""
        if path in self.busy or path in self.tracker:
            return
        rel = self.config.rel(path)
        if rel is None:
            return
        if not is_media(rel.name):
            if path not in self.told:
                self.told.add(path)
                log.info("leaving %s in place: not a supported media file", rel)
            return
        try:
            st = path.stat()
        except OSError:
            self.retries.pop(path, None)
            return
        if self.ledger.kept(path, st.st_size, st.st_mtime_ns) is not None:
            return  # taken before and left in place (keep, or a read-only inbox), unchanged since
        self.tracker.note(path)
        self.tracker.check(path, time.monotonic())  # the stable interval starts now, not at the next tick

    async def _watch(self) -> None:
        root = self.config.root
        while not self.ctx.stop.is_set():
            try:
                async for changes in awatch(
                    root,
                    watch_filter=lambda _change, path: self.config.rel(path) is not None,
                    force_polling=self.config.polling,
                    recursive=True,
                    stop_event=self.ctx.stop,
                ):
                    for change, raw in changes:
                        path = Path(raw)
                        if change == Change.deleted:
                            self.tracker.forget(path)
                            self.told.discard(path)
                        elif path.is_dir():  # a folder moved in brings files no event names
                            for found in await asyncio.to_thread(lambda: list(self.config.scan(path))):
                                self._note(found)
                        else:
                            self._note(path)
            except Exception as exc:  # noqa: BLE001 - the inbox vanished or the watcher broke: rescans go on
                log.warning("watching %s failed (%s); retrying in 5 s", root, exc)
                await _sleep(self.ctx.stop, 5.0)

    async def _rescans(self) -> None:
        first = True
        while not self.ctx.stop.is_set():
            found = await asyncio.to_thread(lambda: list(self.config.scan()))
            for path in found:
                self._note(path)
            await self._reconcile()
            if first or self.ledger.bloated:
                dropped = await asyncio.to_thread(self.ledger.compact, self._worth_keeping)
                log.debug("ledger compacted: %d entries kept, %d dropped", len(self.ledger), dropped)
            first = False
            await _sleep(self.ctx.stop, self.config.rescan_interval)

    async def _checks(self) -> None:
        tick = min(0.1, max(0.02, self.config.stable_interval / 10))
        while not self.ctx.stop.is_set():
            now = time.monotonic()
            for path in self.tracker.pending():
                state = self.tracker.check(path, now)
                if state is Completeness.COMPLETE:
                    self.busy.add(path)
                    self.queue.put_nowait(path)
                elif state is Completeness.GONE:
                    self.told.discard(path)
                elif state is Completeness.UNREADABLE and path not in self.told:
                    self.told.add(path)
                    log.warning("%s stopped changing but cannot be opened (locked or no permission); waiting", path)
            await _sleep(self.ctx.stop, tick)

    # ------------------------------------------------------------------ taking files

    async def _work(self) -> None:
        while True:
            path = await self.queue.get()
            try:
                await self._take(path)
                self.retries.pop(path, None)
            except Exception as exc:  # noqa: BLE001 - never lose the file: it is tried again later
                attempt = self.retries[path] = self.retries.get(path, 0) + 1
                delay = min(60.0, 2.0**attempt)
                if isinstance(exc, _Retry):
                    log.warning("%s: %s; trying again in %.0f s", path, exc, delay)
                else:
                    log.exception("taking %s failed; trying again in %.0f s", path, delay)
                asyncio.get_running_loop().call_later(delay, self._note, path)
            finally:
                self.busy.discard(path)

    async def _take(self, path: Path) -> None:
        rel = self.config.rel(path)
        if rel is None:
            return
        try:
            st = path.stat()
        except FileNotFoundError:
            return
        try:
            options = task_options(rel, folder_options(self.config.root, rel.parent, self.base))
        except OptionsError as exc:
            await self._refuse(path, rel, str(exc))
            return
        snap = self.ctx.work_dir / f"{uuid.uuid4().hex}{rel.suffix.lower()}"
        try:
            digest = await asyncio.to_thread(snapshot, path, snap)
            now = path.stat()
            if (now.st_size, now.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
                log.info("%s changed while it was read; waiting for it to settle", rel)
                self.tracker.note(path)
                return
            await self._submit(path, rel, st, snap, task_id_for(digest, rel, options), options)
        finally:
            snap.unlink(missing_ok=True)

    async def _submit(
        self, path: Path, rel: PurePosixPath, st: os.stat_result, snap: Path, task_id: str, options: TaskOptions
    ) -> None:
        tlog = task_logger(log, task_id, STAGE)
        known = self.ledger.for_task(task_id)
        if known:
            state, error = known[-1].state, known[-1].error
        else:
            record = await self._registry_get(task_id)
            state, error = _state_of(record), (record.error or "") if record else ""
        if state == FAILED:
            tlog.info("%s is the same as a task that failed; moving it to the failed folder", rel)
            error = error or "the task failed"
            dest = await asyncio.to_thread(fail_file, path, self.config.failed, rel, error, task_id)
            self.ledger.record(
                LedgerEntry(task_id, str(rel), FAILED, str(dest), st.st_size, st.st_mtime_ns, time.time(), error)
            )
            return
        self.submitting.setdefault(task_id, None)
        try:
            if state is None:
                try:
                    await asyncio.to_thread(probe_media, snap)
                except MediaError as exc:
                    await self._refuse(path, rel, f"cannot decode {rel.name}: {exc.reason}")
                    return
                try:
                    await submit_file(self.ctx.bus, snap, filename=rel.name, options=options, task_id=task_id)
                except _BUS_ERRORS as exc:
                    raise _Retry(f"cannot submit ({exc or type(exc).__name__})") from None
                tlog.info("submitted %s (%d bytes)", rel, st.st_size)
                state = SUBMITTED
            else:
                tlog.info("%s is already a task (%s); not submitting it again", rel, state)
            try:
                where = await asyncio.to_thread(after_submission, self.config.after, path, self.config.processed, rel)
            except OSError as exc:  # a read-only share: GIGAAM_INBOX_AFTER=keep is the setting for it
                tlog.warning("cannot %s %s (%s); leaving it in place", self.config.after, rel, exc.strerror or exc)
                where = path
            self.ledger.record(
                LedgerEntry(task_id, str(rel), state, str(where or ""), st.st_size, st.st_mtime_ns, time.time())
            )
        finally:
            early = self.submitting.pop(task_id, None)
        if early is not None:
            await self._settle(task_id, FAILED, early)

    async def _refuse(self, path: Path, rel: PurePosixPath, reason: str) -> None:
        """Fails a file before it becomes a task: nothing to tell the bus."""
        dest = await asyncio.to_thread(fail_file, path, self.config.failed, rel, reason)
        log.warning("refused %s: %s (moved to %s)", rel, reason, dest)

    # ------------------------------------------------------------------ finished tasks

    async def _on_event(self, msg) -> None:  # noqa: ANN001 - nats Msg
        task_id = msg.subject.rsplit(".", 1)[-1]
        if not task_id.startswith(TASK_PREFIX):
            return
        try:
            event = decode(TaskEvent, msg.data)
            if event.type == FAILED:
                reason = event.error or "the task failed"
                if not self.ledger.for_task(task_id) and task_id in self.submitting:
                    self.submitting[task_id] = reason  # the worker settles it once its ledger entry exists
                    return
                await self._settle(task_id, FAILED, reason)
            else:
                if self.ledger.for_task(task_id):
                    written = ", ".join(event.output_paths) or "no files"
                    task_logger(log, task_id, STAGE).info("transcribed: %s", written)
                await self._settle(task_id, COMPLETED)
        except Exception:  # noqa: BLE001 - the rescan reconciles whatever this missed
            log.exception("handling the %s event of %s failed", msg.subject.split(".")[2], task_id)

    async def _settle(self, task_id: str, state: str, error: str = "") -> None:
        async with self.settling:
            for entry in self.ledger.for_task(task_id):
                if entry.state != SUBMITTED:
                    continue
                if state == COMPLETED:
                    self.ledger.record(replace(entry, state=COMPLETED))
                else:
                    await self._fail_entry(entry, error)

    async def _fail_entry(self, entry: LedgerEntry, reason: str) -> None:
        """The file was handed over already: take it from where it went, or back from the object
        store when it was deleted (or replaced) since."""
        rel = PurePosixPath(entry.rel)
        tlog = task_logger(log, entry.task_id, STAGE)
        src = Path(entry.location) if entry.location else None
        if src is not None and not _unchanged(src, entry):
            src = None
        restored = None
        if src is None:
            restored = self.ctx.work_dir / f"{entry.task_id}.restore"
            try:  # a bus error propagates: the entry stays submitted and the next rescan tries again
                await get_to_file(self.ctx.store, object_name(entry.task_id, "media"), restored)
                src = restored
            except ObjectMissing:
                tlog.warning("%s is gone from the object store too; writing only its error file", rel)
        try:
            dest = await asyncio.to_thread(fail_file, src, self.config.failed, rel, reason, entry.task_id)
        finally:
            if restored is not None:
                restored.unlink(missing_ok=True)
        self.ledger.record(replace(entry, state=FAILED, location=str(dest) if src else "", error=reason))
        tlog.warning("%s failed: %s (moved to %s)", rel, reason, dest)

    async def _reconcile(self) -> None:
        """Catches the completions and failures that happened while this process was not listening."""
        for entry in self.ledger.pending():
            try:
                record = await self._registry_get(entry.task_id)
            except _Retry as exc:
                log.warning("cannot check submitted tasks now: %s", exc)
                return
            state = _state_of(record)
            if state not in (COMPLETED, FAILED):
                continue
            try:
                await self._settle(entry.task_id, state, (record.error or "the task failed") if record else "")
            except Exception:  # noqa: BLE001 - stays submitted: the next rescan tries again
                log.exception("settling %s failed", entry.task_id)

    def _worth_keeping(self, entry: LedgerEntry) -> bool:
        """A file left in the inbox is remembered while it stays there unchanged; a submitted one until
        its outcome is known, or until long after the registry must have forgotten its task."""
        if entry.location and self.config.rel(entry.location) is not None and _unchanged(Path(entry.location), entry):
            return True
        return entry.state == SUBMITTED and time.time() - entry.ts < 2 * self.ctx.settings.retention

    async def _registry_get(self, task_id: str) -> TaskRecord | None:
        body = encode(RegistryRequest(op="get", task_id=task_id))
        try:
            reply = decode(RegistryReply, await request(self.ctx.bus.nc, registry_subject("get"), body, timeout=5.0))
        except _BUS_ERRORS as exc:
            raise _Retry(f"the registry does not answer ({exc or type(exc).__name__})") from None
        if reply.ok:
            return reply.task
        if reply.error == "not_found":
            return None
        raise _Retry(f"the registry refused the lookup: {reply.message}")


def _state_of(record: TaskRecord | None) -> str | None:
    if record is None:
        return None
    return {"completed": COMPLETED, "failed": FAILED}.get(record.status, SUBMITTED)


def _unchanged(path: Path, entry: LedgerEntry) -> bool:
    try:
        st = path.stat()
    except OSError:
        return False
    return (st.st_size, st.st_mtime_ns) == (entry.size, entry.mtime_ns)


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except asyncio.TimeoutError:
        pass


async def serve(ctx: ServiceContext) -> None:
    if not ctx.settings.inbox_dir:
        log.info("GIGAAM_INBOX_DIR is empty: no inbox to watch, idling")
        await ctx.stop.wait()
        return
    await Ingester(ctx, InboxConfig.from_settings(ctx.settings)).run()


if __name__ == "__main__":
    main("ingest", serve)

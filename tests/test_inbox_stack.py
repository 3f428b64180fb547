"""The watched inbox end to end: the real stack (embedded nats-server, every service supervised, tiny
model) with files dropped into its inbox folder the ways users and Syncthing drop them."""

from __future__ import annotations

import asyncio
import collections
import fnmatch
import hashlib
import os
import threading
import time
from pathlib import Path, PurePosixPath

import nats.errors
import numpy as np
import orjson
import pytest
from nats.js import api

from pipeline.bus import Bus
from pipeline.inbox import FolderOptions, task_id_for, task_options
from pipeline.output import TEMP_PATTERNS
from pipeline.settings import Settings
from pipeline.submit import submit_file
from schemas.messages import RegistryReply, RegistryRequest, TaskEvent, TaskRecord, decode, encode
from schemas.subjects import EVENT_PREFIX, EVENTS_STREAM, registry_subject
from tests.stack import Stack, registry_get, speech, write_wav

pytestmark = [
    pytest.mark.timeout(240),
]

STAGES = ("registry", "decode", "infer", "format", "ingest")
STABLE = 1.0  # seconds; the slow writers below pause well below it, or well above it
SPEECH = speech("01_speech_2s", "02_speech_5s")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("inbox")
    s = Stack(
        root, GIGAAM_INBOX_DIR=str(root / "inbox"), GIGAAM_INBOX_STABLE_INTERVAL=str(STABLE),
        GIGAAM_INBOX_RESCAN_INTERVAL="3",
    ).start()
    yield s
    s.stop()


# --------------------------------------------------------------------------- helpers


def clip(i: int, seconds: float = 1.0) -> np.ndarray:
    """Distinct short speech for file i: the content hash tells files apart."""
    start = (i * 397) % (SPEECH.size - int(seconds * 16000))
    return SPEECH[start : start + int(seconds * 16000)]


def wav_bytes(samples: np.ndarray, tmp: Path) -> bytes:
    return write_wav(tmp, samples).read_bytes()


async def eventually(check, timeout: float = 90.0, every: float = 0.2, what: str = ""):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what or check}")
        await asyncio.sleep(every)


async def inbox_tasks(bus: Bus, folder: str) -> list[TaskRecord]:
    """Registry rows of inbox tasks whose file was in `folder` ("" for the inbox root)."""
    body = encode(RegistryRequest(op="list", limit=1000))
    reply = decode(RegistryReply, (await bus.nc.request(registry_subject("list"), body, timeout=5)).data)
    return [t for t in reply.tasks if t.options and t.options.source == "inbox" and t.options.output_dir == folder]


async def completed_per_task(bus: Bus) -> collections.Counter:
    """How many completion events each task published, from the whole events stream."""
    config = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.ALL, ack_policy=api.AckPolicy.NONE)
    sub = await bus.js.pull_subscribe(f"{EVENT_PREFIX}.completed.>", stream=EVENTS_STREAM, config=config)
    counts: collections.Counter = collections.Counter()
    try:
        while True:
            try:
                msgs = await sub.fetch(500, timeout=1.0)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                break
            counts.update(decode(TaskEvent, m.data).task_id for m in msgs)
    finally:
        await sub.unsubscribe()
    return counts


async def settled(bus: Bus, folder: str, count: int) -> list[TaskRecord] | None:
    """The folder's task rows once `count` of them exist and all are finished (the registry lags)."""
    tasks = await inbox_tasks(bus, folder)
    return tasks if len(tasks) >= count and all(t.status in ("completed", "failed") for t in tasks) else None


def visible(root: Path) -> list[Path]:
    """Files a Syncthing peer would receive: no temp names, no ownership records, no .stignore."""
    if not root.exists():
        return []
    out = []
    for path in root.rglob("*"):
        parts = path.relative_to(root).parts
        hidden = any(fnmatch.fnmatchcase(p, pattern) for p in parts for pattern in TEMP_PATTERNS)
        if path.is_file() and path.name != ".stignore" and not hidden:
            out.append(path)
    return out


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --------------------------------------------------------------------------- completeness


async def test_a_file_copied_slowly_is_taken_only_once_complete(stack: Stack, tmp_path: Path) -> None:
    bus = await stack.ready(STAGES)
    try:
        data = wav_bytes(speech("02_speech_5s"), tmp_path / "slow.wav")
        target = stack.root / "inbox" / "slow" / "slow.wav"
        target.parent.mkdir(parents=True)
        step = len(data) // 20
        with open(target, "wb") as fh:  # pauses well below the stable interval, 3+ s in all
            for start in range(0, len(data), step):
                fh.write(data[start : start + step])
                fh.flush()
                await asyncio.sleep(STABLE / 6)
                assert target.exists(), "taken while still being written"
        last_write = time.time()
        out = stack.output_dir / "slow" / "slow.txt"
        await eventually(out.exists, what="slow.txt")
        [task] = await eventually(lambda: settled(bus, "slow", 1), what="the task row")
        assert task.status == "completed" and task.file_size == len(data)
        assert task.created_at >= last_write - 0.05
        assert (stack.root / "processed" / "slow" / "slow.wav").read_bytes() == data
        assert out.read_text().strip() == task.text.strip() and task.text
    finally:
        await bus.close()


async def test_a_syncthing_temp_file_renamed_into_place_is_taken_once(stack: Stack, tmp_path: Path) -> None:
    bus = await stack.ready(STAGES)
    try:
        folder = stack.root / "inbox" / "phone"
        folder.mkdir(parents=True)
        temps = {".syncthing.rec.wav.tmp": "rec.wav", "~syncthing~memo.m4a.wav.tmp": "memo.wav"}
        contents = {final: wav_bytes(clip(i, 3.0), tmp_path / final) for i, final in enumerate(temps.values())}
        handles = {temp: open(folder / temp, "wb") for temp in temps}
        try:  # pauses longer than the stable interval: only the name keeps them from being taken
            for part in range(3):
                for temp, final in temps.items():
                    data = contents[final]
                    handles[temp].write(data[part * len(data) // 3 : (part + 1) * len(data) // 3])
                    handles[temp].flush()
                await asyncio.sleep(STABLE * 1.3)
        finally:
            for fh in handles.values():
                fh.close()
        assert sorted(names(folder)) == sorted(temps) and await inbox_tasks(bus, "phone") == []
        for temp, final in temps.items():
            os.rename(folder / temp, folder / final)
        for final in temps.values():
            await eventually((stack.output_dir / "phone" / final.replace(".wav", ".txt")).exists, what=final)
        # A rescan that rightly submits nothing leaves no trace to wait for: the bound is one rescan
        # interval plus the stability interval, the longest a wrong second submission could take.
        await asyncio.sleep(3.5)
        tasks = await inbox_tasks(bus, "phone")
        assert sorted(t.filename for t in tasks) == ["memo.wav", "rec.wav"]
        assert all(t.status == "completed" for t in tasks)
        assert names(stack.root / "processed" / "phone") == ["memo.wav", "rec.wav"] and names(folder) == []
        assert sorted(p.name for p in visible(stack.output_dir / "phone")) == sorted(
            f"{stem}{ext}" for stem in ("memo", "rec") for ext in (".json", ".srt", ".txt")
        )
    finally:
        await bus.close()


# --------------------------------------------------------------------------- layout and options


async def test_nested_folders_and_folder_options(stack: Stack, tmp_path: Path) -> None:
    bus = await stack.ready(STAGES)
    try:
        inbox = stack.root / "inbox"
        (inbox / "team" / "sub").mkdir(parents=True)
        (inbox / "team" / ".gigaam.toml").write_text('formats = ["txt", "vtt"]\n')
        (inbox / "wrongmodel").mkdir()
        (inbox / "wrongmodel" / ".gigaam.toml").write_text('model = "v3_rnnt"\n')
        write_wav(inbox / "team" / "sub" / "Встреча.wav", clip(1, 2.0))
        write_wav(inbox / "team" / "top.wav", clip(2, 2.0))
        write_wav(inbox / "wrongmodel" / "c.wav", clip(3, 2.0))
        out = stack.output_dir
        both = (out / "team" / "sub" / "Встреча.vtt", out / "team" / "top.vtt")
        await eventually(lambda: all(p.exists() for p in both), what="the nested outputs")
        assert sorted(str(p.relative_to(out / "team")) for p in visible(out / "team")) == [
            "sub/Встреча.txt", "sub/Встреча.vtt", "top.txt", "top.vtt"
        ]
        [task] = await inbox_tasks(bus, "team/sub")
        assert task.options.formats == ("txt", "vtt") and task.options.output_stem == "Встреча"
        # the model the folder asked for is not served here: the task fails and says so
        note = stack.root / "failed" / "wrongmodel" / "c.wav.error.txt"
        await eventually(note.exists, what="c.wav.error.txt")
        assert "v3_rnnt" in note.read_text() and "not served" in note.read_text()
        assert (stack.root / "failed" / "wrongmodel" / "c.wav").exists()
        assert not (stack.root / "processed" / "wrongmodel" / "c.wav").exists()
        [failed] = await eventually(lambda: settled(bus, "wrongmodel", 1), what="the failed row")
        assert failed.status == "failed" and failed.options.model == "v3_rnnt" and failed.task_id in note.read_text()
    finally:
        await bus.close()


async def test_undecodable_files_land_in_failed_with_their_reason(stack: Stack) -> None:
    bus = await stack.ready(STAGES)
    try:
        folder = stack.root / "inbox" / "broken"
        folder.mkdir(parents=True)
        (folder / "garbage.mp3").write_bytes(b"not audio at all " * 500)  # refused by the local probe
        write_wav(folder / "empty.wav", np.zeros(0, dtype=np.int16))  # probes fine, fails in decode
        (folder / "readme.txt").write_text("not media: stays")
        (stack.root / "inbox" / "badopts").mkdir()
        (stack.root / "inbox" / "badopts" / ".gigaam.toml").write_text("formats = [docx]\n")
        write_wav(stack.root / "inbox" / "badopts" / "d.wav", clip(4))
        failed = stack.root / "failed"
        notes = [failed / "broken" / "garbage.mp3.error.txt", failed / "broken" / "empty.wav.error.txt",
                 failed / "badopts" / "d.wav.error.txt"]
        await eventually(lambda: all(n.exists() for n in notes), what="error notes")
        assert "not a media file" in notes[0].read_text()
        assert "empty" in notes[1].read_text() and "inbox-" in notes[1].read_text()
        assert ".gigaam.toml" in notes[2].read_text() and "not valid TOML" in notes[2].read_text()
        assert names(failed / "broken") == ["empty.wav", "empty.wav.error.txt", "garbage.mp3", "garbage.mp3.error.txt"]
        assert names(folder) == ["readme.txt"]
        # only the file that passed the local probe became a task
        [task] = await eventually(lambda: settled(bus, "broken", 1), what="the failed row")
        assert task.filename == "empty.wav" and task.status == "failed"
    finally:
        await bus.close()


# --------------------------------------------------------------------------- output folder


async def test_outputs_appear_atomically(stack: Stack, tmp_path: Path) -> None:
    """A peer scanning the output folder at any moment sees whole files or nothing."""
    bus = await stack.ready(STAGES)
    out = stack.output_dir / "atomic"
    first_seen: dict[Path, bytes] = {}
    broken: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            for path in visible(out):
                try:
                    data = path.read_bytes()
                except FileNotFoundError:
                    continue
                first_seen.setdefault(path, data)
                if path.suffix == ".json":
                    try:
                        orjson.loads(data)
                    except orjson.JSONDecodeError:
                        broken.append(path.name)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        folder = stack.root / "inbox" / "atomic"
        folder.mkdir(parents=True)
        for i in range(6):
            write_wav(folder / f"part{i}.wav", clip(10 + i, 4.0))
        await eventually(lambda: len(visible(out)) == 18, what="18 outputs")
        await asyncio.sleep(0.5)
    finally:
        stop.set()
        watcher.join()
        await bus.close()
    assert not broken
    assert len(first_seen) == 18
    assert {p: p.read_bytes() for p in first_seen} == first_seen  # what was first seen was already final


# --------------------------------------------------------------------------- bursts and crashes


async def burst(stack: Stack, tmp_path: Path, folder: str, count: int) -> tuple[Path, list[str]]:
    """Writes `count` distinct short WAVs into `inbox/<folder>` at once (txt output only)."""
    inbox = stack.root / "inbox" / folder
    staging = tmp_path / folder
    staging.mkdir()
    stems = [f"f{i:03d}" for i in range(count)]
    for i, stem in enumerate(stems):
        write_wav(staging / f"{stem}.wav", clip(100 + i, 0.6))
    (staging / ".gigaam.toml").write_text('formats = ["txt"]\n')
    os.rename(staging, inbox)  # every file appears at the same moment
    return inbox, stems


async def assert_each_exactly_once(stack: Stack, bus: Bus, folder: str, stems: list[str]) -> None:
    out = stack.output_dir / folder
    await eventually(lambda: len(visible(out)) >= len(stems), timeout=150, every=0.5, what=f"{len(stems)} outputs")
    await asyncio.sleep(1.0)
    assert sorted(p.name for p in visible(out)) == [f"{s}.txt" for s in stems]  # no "f001 (2).txt"
    assert names(stack.root / "processed" / folder) == [f"{s}.wav" for s in stems]
    assert names(stack.root / "inbox" / folder) == [".gigaam.toml"]
    tasks = await eventually(lambda: settled(bus, folder, len(stems)), timeout=30, what="registry rows")
    assert all(t.status == "completed" for t in tasks)
    assert sorted(t.filename for t in tasks) == [f"{s}.wav" for s in stems]
    completed = await completed_per_task(bus)
    assert [completed[t.task_id] for t in tasks] == [1] * len(stems)


async def test_a_hundred_files_dropped_at_once_complete_exactly_once(stack: Stack, tmp_path: Path) -> None:
    bus = await stack.ready(STAGES)
    try:
        _, stems = await burst(stack, tmp_path, "hundred", 100)
        await assert_each_exactly_once(stack, bus, "hundred", stems)
    finally:
        await bus.close()


async def test_the_ingester_killed_mid_burst_misses_none_and_duplicates_none(stack: Stack, tmp_path: Path) -> None:
    bus = await stack.ready(STAGES)
    try:
        victim = stack.pid("ingest")
        _, stems = await burst(stack, tmp_path, "crash", 60)
        processed = stack.root / "processed" / "crash"
        await eventually(lambda: len(names(processed)) >= 15, every=0.02, what="a quarter taken")
        stack.kill9("ingest")
        assert len(names(processed)) < 60, "too late to test a crash mid-burst"
        await assert_each_exactly_once(stack, bus, "crash", stems)
        assert stack.pid("ingest") != victim
    finally:
        await bus.close()


async def test_a_file_whose_task_exists_is_not_submitted_again(stack: Stack, tmp_path: Path) -> None:
    """The crash window between submitting a file and moving it: on restart the file is still in the
    inbox and its task already exists."""
    bus = await stack.ready(STAGES)
    try:
        rel = PurePosixPath("window/w.wav")
        source = write_wav(tmp_path / "w.wav", clip(5, 2.0))
        options = task_options(rel, FolderOptions(None, Settings().output_formats))
        task_id = task_id_for(hashlib.sha256(source.read_bytes()).hexdigest(), rel, options)
        await submit_file(bus, source, filename="w.wav", options=options, task_id=task_id)
        await eventually(lambda: registry_get(bus, task_id), what="the task row")
        (stack.root / "inbox" / "window").mkdir()
        write_wav(stack.root / "inbox" / "window" / "w.wav", clip(5, 2.0))
        await eventually((stack.root / "processed" / "window" / "w.wav").exists, what="the file moved")
        [task] = await eventually(lambda: settled(bus, "window", 1), what="the task done")
        assert task.task_id == task_id and task.status == "completed"
        log = stack.log.read_text()
        assert "window/w.wav is already a task" in log and "submitted window/w.wav" not in log
        assert (await completed_per_task(bus))[task_id] == 1
        assert sorted(p.name for p in visible(stack.output_dir / "window")) == ["w.json", "w.srt", "w.txt"]
    finally:
        await bus.close()


# --------------------------------------------------------------------------- polling, keep, delete


async def test_polling_mode_keeps_files_and_never_resubmits_them(tmp_path: Path) -> None:
    """`GIGAAM_INBOX_POLLING=1` (network and FUSE mounts) with `GIGAAM_INBOX_AFTER=keep`: the kept file
    is seen by every rescan and by a restarted ingester, yet submitted once, even after the
    registry forgot its task."""
    stack = Stack(
        tmp_path, GIGAAM_INBOX_DIR=str(tmp_path / "inbox"), GIGAAM_INBOX_POLLING="1", GIGAAM_INBOX_AFTER="keep",
        GIGAAM_INBOX_STABLE_INTERVAL="0.5", GIGAAM_INBOX_RESCAN_INTERVAL="1",
    ).start()
    bus = await stack.ready(STAGES)
    try:
        (tmp_path / "inbox" / "a").mkdir(parents=True)
        kept = write_wav(tmp_path / "inbox" / "a" / "kept.wav", clip(7, 2.0))
        await eventually((stack.output_dir / "a" / "kept.txt").exists, what="kept.txt")
        [task] = await eventually(lambda: inbox_tasks(bus, "a"), what="the task row")
        await asyncio.sleep(2.5)  # bound, not an event: two rescans (1 s each) see the kept file again and must not resubmit
        body = encode(RegistryRequest(op="delete", task_id=task.task_id))
        assert decode(RegistryReply, (await bus.nc.request(registry_subject("delete"), body, timeout=5)).data).ok
        victim = stack.kill9("ingest")
        await eventually(lambda: _restarted(stack, victim), what="the ingester's restart")
        await stack.ready(("ingest",))
        await asyncio.sleep(2.5)  # bound: two rescans of the restarted ingester; only its ledger knows the file
        log = stack.log.read_text()
        assert "(polling," in log
        assert log.count("submitted a/kept.wav") == 1
        assert kept.exists()
        assert sorted(p.name for p in visible(stack.output_dir / "a")) == ["kept.json", "kept.srt", "kept.txt"]
        assert not (tmp_path / "processed").exists()
    finally:
        await bus.close()
        stack.stop()


def _restarted(stack: Stack, victim: int) -> bool:
    try:
        return stack.pid("ingest") != victim
    except (FileNotFoundError, ValueError):
        return False


async def test_delete_mode_restores_a_failed_file_from_the_object_store(tmp_path: Path) -> None:
    """`GIGAAM_INBOX_AFTER=delete` removes files once submitted; one whose task fails later still
    lands in failed/, fetched back from the uploaded copy."""
    stack = Stack(tmp_path, GIGAAM_INBOX_DIR=str(tmp_path / "inbox"), GIGAAM_INBOX_AFTER="delete",
                  GIGAAM_INBOX_STABLE_INTERVAL="0.5").start()
    bus = await stack.ready(STAGES)
    try:
        (tmp_path / "inbox").mkdir(exist_ok=True)
        good = write_wav(tmp_path / "inbox" / "good.wav", clip(8, 2.0))
        empty = write_wav(tmp_path / "inbox" / "empty.wav", np.zeros(0, dtype=np.int16))
        data = empty.read_bytes()
        note = tmp_path / "failed" / "empty.wav.error.txt"
        await eventually(lambda: note.exists() and (stack.output_dir / "good.txt").exists(), what="both outcomes")
        assert not good.exists() and not empty.exists() and not (tmp_path / "processed").exists()
        assert (tmp_path / "failed" / "empty.wav").read_bytes() == data
        assert "zero duration" in note.read_text()
    finally:
        await bus.close()
        stack.stop()

"""End to end on the real stack: embedded nats-server, every service as a supervised process, tiny model."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from pipeline.bus import object_names, object_store
from pipeline.submit import submit_file, wait_for_task
from schemas.messages import TaskOptions, Transcript, decode
from tests.stack import Stack, registry_get, result_object, speech, task_events, wait_record, write_wav
from tests.test_decode import encode

pytestmark = [pytest.mark.timeout(300)]


@pytest.fixture
def stack(tmp_path: Path):
    s = Stack(tmp_path).start()
    yield s
    s.stop()


CONTAINERS = [  # file name, audio codec, sample rate, video codec
    ("talk-mp3.mp3", "libmp3lame", 16000, None),
    ("talk-m4a.m4a", "aac", 16000, None),
    ("talk-ogg.ogg", "libopus", 48000, None),
    ("talk-flac.flac", "flac", 16000, None),
    ("talk-webm.webm", "libopus", 48000, None),
    ("clip-mp4.mp4", "aac", 16000, "libx264"),
    ("clip-mkv.mkv", "libmp3lame", 16000, "mpeg4"),
]


def make_media(root: Path, name: str, codec: str, rate: int, video: str | None, samples: np.ndarray) -> Path:
    if rate != 16000:
        samples = np.repeat(samples, rate // 16000)  # crude upsampling is fine: only decodability matters
    path = root / name
    encode(path, samples, rate, codec, video=video)
    return path


async def test_media_in_every_container_completes_with_all_outputs(stack: Stack, tmp_path: Path) -> None:
    bus = await stack.ready()
    try:
        samples = speech("02_speech_5s", "01_speech_2s")
        files = [make_media(tmp_path, n, c, r, v, samples) for n, c, r, v in CONTAINERS]
        files.append(write_wav(tmp_path / "Запись встречи.wav", samples))
        opts = TaskOptions(write_output=True, formats=("txt", "srt", "json"), output_dir="team")
        ids = [await submit_file(bus, f, options=opts) for f in files]
        events = await asyncio.gather(*(wait_for_task(bus, t, timeout=180) for t in ids))
        assert [e.type for e in events] == ["completed"] * len(files), [e.error for e in events]
        for task_id, path, event in zip(ids, files, events):
            record = await wait_record(bus, task_id)
            assert (record.status, record.stage, record.progress) == ("completed", "done", 100)
            assert record.filename == path.name and record.file_size == path.stat().st_size
            assert record.media_duration == pytest.approx(samples.size / 16000, abs=0.1)
            assert record.created_at <= record.started_at <= record.completed_at
            assert record.processing_time > 0
            assert record.text == event.text and record.text
            assert set(record.outputs) == {"txt", "timecodes", "srt", "vtt", "json"}
            transcript = decode(Transcript, await result_object(bus, record, "json"))
            assert transcript.text == record.text and transcript.task_id == task_id
            assert (await result_object(bus, record, "txt")).decode().split() == record.text.split()
            assert "-->" in (await result_object(bus, record, "srt")).decode()
            written = sorted(Path(p).name for p in event.output_paths)
            assert written == sorted(f"{path.stem}{ext}" for ext in (".txt", ".srt", ".json"))
            assert all(Path(p).parent == stack.output_dir / "team" for p in event.output_paths)
        # lossless containers carry the same samples, so they give the same transcript
        by_name = {p.name: e.text for p, e in zip(files, events)}
        assert by_name["talk-flac.flac"] == by_name["Запись встречи.wav"]
    finally:
        await bus.close()


async def test_bad_input_fails_fast_with_a_reason_and_is_not_retried(stack: Stack, tmp_path: Path) -> None:
    bus = await stack.ready()
    try:
        bad = tmp_path / "report.mp3"
        bad.write_bytes(b"definitely not an mp3 " * 100)
        silent_video = tmp_path / "silent.mp4"
        encode(silent_video, None, 16000, "aac", video="libx264")
        empty = tmp_path / "empty.wav"
        write_wav(empty, np.zeros(0, dtype=np.int16))
        for path, reason in ((bad, "not a media file"), (silent_video, "no audio stream"), (empty, "")):
            task_id = await submit_file(bus, path)
            event = await wait_for_task(bus, task_id, timeout=60)
            assert event.type == "failed" and path.name in event.error and reason in event.error
            record = await wait_record(bus, task_id)
            assert record.status == "failed" and record.error == event.error
            stages = [e.stage for e in await task_events(bus, task_id) if e.type == "stage"]
            assert stages == ["decoding"]  # one attempt, no retries
    finally:
        await bus.close()


async def test_repeated_submit_with_the_same_id_makes_one_task(stack: Stack, tmp_path: Path) -> None:
    bus = await stack.ready()
    try:
        wav = write_wav(tmp_path / "a.wav", speech("01_speech_2s"))
        first = await submit_file(bus, wav, task_id="fixed-id-1")
        again = await submit_file(bus, wav, task_id="fixed-id-1")
        assert first == again == "fixed-id-1"
        await wait_for_task(bus, first, timeout=60)
        await asyncio.sleep(1.0)
        events = await task_events(bus, first)
        assert [e.type for e in events].count("completed") == 1
        assert [e.type for e in events].count("submitted") == 1
        assert [(e.type, e.stage) for e in events].count(("stage", "decoding")) == 1
    finally:
        await bus.close()


async def test_silence_completes_with_an_empty_transcript(stack: Stack, tmp_path: Path) -> None:
    bus = await stack.ready()
    try:
        wav = write_wav(tmp_path / "quiet.wav", np.zeros(16000 * 4, dtype=np.int16))
        event = await wait_for_task(bus, await submit_file(bus, wav), timeout=60)
        assert event.type == "completed" and event.text == ""
    finally:
        await bus.close()


@pytest.mark.parametrize("victim,when", [("decode", "decoding"), ("infer", "transcribing"), ("format", "formatting"), ("registry", "decoding")])
async def test_kill9_mid_task_still_completes_once(tmp_path: Path, victim: str, when: str) -> None:
    stack = Stack(tmp_path).start()
    bus = await stack.ready()
    try:
        wav = write_wav(tmp_path / "long.wav", speech("04_speech_23s", "03_speech_9s", "04_speech_23s", "02_speech_5s"))
        task_id = await submit_file(bus, wav, options=TaskOptions(write_output=True, formats=("txt",)))
        killed = None

        def on_event(event) -> None:  # noqa: ANN001
            nonlocal killed
            if killed is None and event.stage == when:
                killed = stack.kill9(victim)

        event = await wait_for_task(bus, task_id, timeout=180, on_event=on_event)
        assert killed is not None
        assert event.type == "completed", event.error
        record = await wait_record(bus, task_id)
        assert record.status == "completed" and record.text == event.text
        assert stack.pid(victim) != killed  # the supervisor restarted it
        assert [e.type for e in await task_events(bus, task_id)].count("completed") == 1
        outputs = sorted(p.name for p in stack.output_dir.rglob("*.txt"))
        assert outputs == ["long.txt"]  # exactly one set of outputs, no duplicate with a suffix
    finally:
        await bus.close()
        stack.stop()


async def test_stack_restart_with_queued_tasks_completes_them_all(tmp_path: Path) -> None:
    stack = Stack(tmp_path, services="registry,decode").start()  # no infer: tasks queue up
    bus = await stack.ready(stages=("registry", "decode"))
    wavs = [write_wav(tmp_path / f"q{i}.wav", speech("01_speech_2s", "02_speech_5s")[i * 800 :]) for i in range(4)]
    ids = [await submit_file(bus, w) for w in wavs]
    await bus.close()
    stack.stop()

    stack = Stack(tmp_path).start()  # same data dir: same NATS store and DuckDB
    bus = await stack.ready()
    try:
        events = await asyncio.gather(*(wait_for_task(bus, t, timeout=180) for t in ids))
        assert [e.type for e in events] == ["completed"] * 4
        for task_id in ids:
            assert (await wait_record(bus, task_id)).status == "completed"
    finally:
        await bus.close()
        stack.stop()


async def test_retention_removes_rows_objects_and_events(tmp_path: Path) -> None:
    stack = Stack(tmp_path, GIGAAM_RETENTION="6").start()
    bus = await stack.ready()
    try:
        wav = write_wav(tmp_path / "short.wav", speech("01_speech_2s"))
        task_id = await submit_file(bus, wav)
        assert (await wait_for_task(bus, task_id, timeout=60)).type == "completed"
        store = await object_store(bus.js)
        for _ in range(60):
            await asyncio.sleep(0.5)
            names = [name for name in await object_names(store) if name.startswith(f"{task_id}/")]
            if await registry_get(bus, task_id) is None and not names and not await task_events(bus, task_id):
                break
        else:
            raise AssertionError("task data outlived the retention")
    finally:
        await bus.close()
        stack.stop()


async def test_a_job_that_keeps_failing_is_dead_lettered_and_its_task_failed(tmp_path: Path) -> None:
    from nats.js import api

    from pipeline.bus import HDR_STAGE, dead_reason, object_store, publish_job, put_bytes
    from schemas.subjects import DLQ_STREAM, dlq_subject

    stack = Stack(tmp_path, GIGAAM_MAX_DELIVER="2").start()
    bus = await stack.ready()
    try:
        # a job whose segments cannot be read: every delivery fails the same (non-permanent) way
        job = b'{"task_id": "broken-1", "audio": "broken-1/audio.pcm", "num_samples": 16000, "duration": 1.0,' \
              b' "segments": [{"start": "soon", "end": 1.0}], "filename": "x.wav"}'
        await put_bytes(await object_store(bus.js), "broken-1/audio.pcm", b"\0\0" * 16000)
        await publish_job(bus.js, "infer", job, "broken-1")
        record = await wait_record(bus, "broken-1", ("failed",), timeout=60)
        assert "after 2 deliveries" in record.error and "TypeError" in record.error
        config = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.ALL, ack_policy=api.AckPolicy.NONE)
        sub = await bus.js.pull_subscribe(dlq_subject("infer"), stream=DLQ_STREAM, config=config)
        (dead,) = await sub.fetch(1, timeout=5)
        assert dead.data == job and dead.headers[HDR_STAGE] == "infer"
        assert "TypeError" in dead_reason(dead.headers)
    finally:
        await bus.close()
        stack.stop()


async def test_two_infer_processes_share_the_work(tmp_path: Path) -> None:
    import subprocess
    import sys

    stack = Stack(tmp_path).start()
    bus = await stack.ready()
    extra_log = tmp_path / "infer2.log"
    env = {**stack.env, "GIGAAM_NATS_URL": stack.url}
    with open(extra_log, "wb") as log:
        extra = subprocess.Popen([sys.executable, "-m", "services.infer"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        while "consumer gigaam-infer: started" not in extra_log.read_text(errors="replace"):
            assert extra.poll() is None, extra_log.read_text()
            await asyncio.sleep(0.3)
        wav = write_wav(tmp_path / "w.wav", speech("04_speech_23s", "03_speech_9s"))
        ids = [await submit_file(bus, wav, task_id=f"share-{i}") for i in range(12)]
        events = await asyncio.gather(*(wait_for_task(bus, t, timeout=240) for t in ids))
        assert all(e.type == "completed" for e in events)
        ours = extra_log.read_text(errors="replace").count("transcribed ")
        theirs = stack.log.read_text(errors="replace").count("infer __main__: transcribed ")
        assert ours >= 1 and theirs >= 1 and ours + theirs == 12, (ours, theirs)
    finally:
        extra.terminate()
        extra.wait(30)
        await bus.close()
        stack.stop()


async def test_delete_removes_objects_and_a_lost_database_is_rebuilt_from_events(tmp_path: Path) -> None:
    from pipeline.bus import request
    from schemas.messages import RegistryReply, RegistryRequest, encode
    from schemas.subjects import registry_subject

    stack = Stack(tmp_path).start()
    bus = await stack.ready()
    wav = write_wav(tmp_path / "a.wav", speech("01_speech_2s"))
    keep, drop = await submit_file(bus, wav), await submit_file(bus, wav)
    for t in (keep, drop):
        assert (await wait_for_task(bus, t, timeout=60)).type == "completed"
    store = await object_store(bus.js)
    assert any(name.startswith(drop) for name in await object_names(store))
    reply = decode(RegistryReply, await request(
        bus.nc, registry_subject("delete"), encode(RegistryRequest(op="delete", task_id=drop)), 5.0))
    assert reply.ok and reply.task.task_id == drop
    assert not any(name.startswith(drop) for name in await object_names(store))  # gone at once, not at expiry
    assert await registry_get(bus, drop) is None
    assert "deleted" in [e.type for e in await task_events(bus, drop)]
    await bus.close()
    stack.stop()

    (stack.data_dir / "registry.duckdb").unlink()
    for wal in stack.data_dir.glob("registry.duckdb.*"):
        wal.unlink()
    stack = Stack(tmp_path).start()
    bus = await stack.ready()
    try:
        rebuilt = await wait_record(bus, keep, timeout=30)
        assert rebuilt.status == "completed" and rebuilt.text
        assert await registry_get(bus, drop) is None  # the deletion replays too
    finally:
        await bus.close()
        stack.stop()


async def test_a_task_deleted_mid_transcription_leaves_no_results_behind(tmp_path: Path) -> None:
    """Infer and format are frozen mid-task, the task is deleted, then they resume: the work they
    finish is dropped, not written back (no objects, no output files, no completion event)."""
    import os
    import signal

    from pipeline.bus import request
    from schemas.messages import RegistryReply, RegistryRequest, encode
    from schemas.subjects import registry_subject

    stack = Stack(tmp_path, GIGAAM_ACK_WAIT="20").start()  # no redelivered copy races the frozen job
    bus = await stack.ready()
    frozen: list[int] = []
    try:
        wav = write_wav(tmp_path / "long.wav", speech(*["04_speech_23s", "03_speech_9s"] * 6))
        task_id = await submit_file(bus, wav, options=TaskOptions(write_output=True, formats=("txt",)))

        def on_event(event) -> None:  # noqa: ANN001
            if not frozen and event.stage == "transcribing":
                for service in ("infer", "format"):
                    frozen.append(stack.pid(service))
                    os.kill(frozen[-1], signal.SIGSTOP)

        waiting = asyncio.create_task(wait_for_task(bus, task_id, timeout=120, on_event=on_event))
        for _ in range(600):
            if frozen or waiting.done():
                break
            await asyncio.sleep(0.1)
        assert frozen and not waiting.done(), "the task finished before infer could be frozen"
        reply = decode(RegistryReply, await request(
            bus.nc, registry_subject("delete"), encode(RegistryRequest(op="delete", task_id=task_id)), 5.0))
        assert reply.ok
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
        frozen.clear()
        assert (await waiting).type == "deleted"  # waiters learn of it too
        # until a stage has met the deletion and dropped its work
        await stack.wait_log("its job is dropped", "no stage dropped the deleted task's job")
        await asyncio.sleep(1.0)
        store = await object_store(bus.js)
        assert [name for name in await object_names(store) if name.startswith(f"{task_id}/")] == []
        assert "completed" not in [e.type for e in await task_events(bus, task_id)]
        assert list(stack.output_dir.rglob("*.txt")) == []
        assert await registry_get(bus, task_id) is None
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
        await bus.close()
        stack.stop()


async def test_a_job_repeated_after_the_duplicate_window_is_dropped(tmp_path: Path) -> None:
    """Msg-Id deduplication lasts minutes; a job that comes back later (resubmission, a redelivery
    after a long stall) must still not transcribe a finished task again or announce it twice."""
    from pipeline.bus import HDR_MSG_ID
    from schemas.messages import DecodeJob, encode
    from schemas.subjects import JOBS_STREAM, job_subject, object_name

    stack = Stack(tmp_path).start()
    bus = await stack.ready()
    try:
        wav = write_wav(tmp_path / "once.wav", speech("01_speech_2s"))
        task_id = await submit_file(bus, wav)
        assert (await wait_for_task(bus, task_id, timeout=60)).type == "completed"
        again = DecodeJob(task_id=task_id, media=object_name(task_id, "media"), filename="once.wav", file_size=1)
        ack = await bus.js.publish(
            job_subject("decode"), encode(again), stream=JOBS_STREAM, headers={HDR_MSG_ID: "outside-the-window"}
        )
        assert not ack.duplicate  # the broker's deduplication no longer covers it
        await stack.wait_log("the task was completed already: its job is dropped", "the repeated job was not dropped", 30)
        await asyncio.sleep(1.0)
        types = [e.type for e in await task_events(bus, task_id)]
        assert types.count("completed") == 1 and types.count("submitted") == 1
        assert [e for e in await task_events(bus, task_id) if e.stage == "decoding"][-1].ts < \
            [e for e in await task_events(bus, task_id) if e.type == "completed"][0].ts  # no decoding after it
    finally:
        await bus.close()
        stack.stop()


async def test_at_most_infer_concurrency_tasks_transcribe_at_once_and_the_rest_queue(tmp_path: Path) -> None:
    """The original service ran 3 tasks at a time; more wait in the queue instead of being refused."""
    import os
    import signal

    stack = Stack(tmp_path).start()  # GIGAAM_INFER_CONCURRENCY default: 3, one infer process
    bus = await stack.ready()
    infer = stack.pid("infer")
    os.kill(infer, signal.SIGSTOP)  # all 7 are decoded and waiting before infer takes any
    try:
        wav = write_wav(tmp_path / "long.wav", speech(*["04_speech_23s", "03_speech_9s"] * 3))
        ids = await asyncio.gather(*(submit_file(bus, wav) for _ in range(7)))
        for task_id in ids:
            await wait_record(bus, task_id, ("processing",), timeout=60)
            while not any(e.media_duration for e in await task_events(bus, task_id)):  # decoded
                await asyncio.sleep(0.2)
        os.kill(infer, signal.SIGCONT)
        events = await asyncio.gather(*(wait_for_task(bus, t, timeout=240) for t in ids))
        assert [e.type for e in events] == ["completed"] * 7
        spans = []  # inside the infer handler: its first event to its last progress event
        for task_id in ids:
            mine = [e for e in await task_events(bus, task_id) if e.stage == "transcribing"]
            spans.append((mine[0].ts, mine[-1].ts))
        overlap = max(sum(start <= t <= end for start, end in spans) for t, _ in spans)
        assert overlap <= 3
        assert overlap >= 2  # they did share the engine, not run one by one
    finally:
        os.kill(infer, signal.SIGCONT)
        await bus.close()
        stack.stop()


async def test_unloadable_model_is_reported_once_per_attempt_without_crash_looping(tmp_path: Path) -> None:
    """`up` refuses a model file that is missing (tests/test_first_run.py); one that is there but does
    not load (a truncated copy) keeps infer alive and waiting, saying why."""
    broken = tmp_path / "v3_ctc.ckpt"
    broken.write_bytes(b"PK\x03\x04 truncated")
    stack = Stack(tmp_path, GIGAAM_MODEL=str(broken)).start()
    bus = await stack.ready(stages=("registry", "decode", "format"))
    try:
        import orjson

        from pipeline.bus import BusTimeout, request

        for _ in range(100):  # infer answers pings while it waits, saying it is not ready
            try:
                ping = orjson.loads(await request(bus.nc, "gigaam.ping.infer", b"", 1.0))
                break
            except BusTimeout:
                await asyncio.sleep(0.3)
        assert ping["ready"] is False
        first = stack.pid("infer")
        task_id = await submit_file(bus, write_wav(tmp_path / "a.wav", speech("01_speech_2s")))
        # A bound, not an event: a crashed child is restarted within 1 s, so 4 s would show a crash loop.
        await asyncio.sleep(4)
        assert stack.pid("infer") == first  # alive and waiting, not restarting
        assert f"cannot load the model GIGAAM_MODEL={broken}" in stack.log.read_text(errors="replace")
        assert (await registry_get(bus, task_id)).status in ("pending", "processing")  # queued, not failed
        assert (stack.output_dir / ".stignore").is_file()  # written at start, before any result
    finally:
        await bus.close()
        stack.stop()


async def test_api_workers_setting_runs_that_many_api_processes_on_one_port(tmp_path: Path) -> None:
    import httpx

    stack = Stack(tmp_path, GIGAAM_API_WORKERS="2").start()
    bus = await stack.ready(stages=("registry", "api"))
    try:
        first, second = stack.pid("api"), stack.pid("api-2")
        assert first != second
        port = stack.env["GIGAAM_API_PORT"]
        async with httpx.AsyncClient() as client:
            for _ in range(100):
                try:
                    answers = [await client.get(f"http://127.0.0.1:{port}/") for _ in range(6)]
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.3)
        assert all(r.status_code == 200 for r in answers)
        stack.kill9("api-2")
        for _ in range(100):
            await asyncio.sleep(0.3)
            if stack.pid("api-2") != second:
                break
        assert stack.pid("api-2") != second  # supervised like any other service
    finally:
        await bus.close()
        stack.stop()


async def test_a_worker_dying_on_the_last_delivery_still_fails_the_task(tmp_path: Path) -> None:
    """No worker can report it: the server's max-deliveries advisory reaches the registry instead."""
    stack = Stack(tmp_path, GIGAAM_MAX_DELIVER="1", GIGAAM_ACK_WAIT="2").start()
    bus = await stack.ready()
    try:
        wav = write_wav(tmp_path / "long.wav", speech("04_speech_23s", "03_speech_9s", "04_speech_23s"))
        task_id = await submit_file(bus, wav)
        killed = None

        def on_event(event) -> None:  # noqa: ANN001
            nonlocal killed
            if killed is None and event.stage == "transcribing":
                killed = stack.kill9("infer")

        event = await wait_for_task(bus, task_id, timeout=120, on_event=on_event)
        assert killed is not None
        assert event.type == "failed" and "infer worker stopped" in event.error
        record = await wait_record(bus, task_id)
        assert record.status == "failed" and "crash or out of memory" in record.error
    finally:
        await bus.close()
        stack.stop()

"""The registry's task-state store against real DuckDB files: folding rules, queries, persistence."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import duckdb
import pytest

from pipeline.registry import BadRequest, RegistryStore
from schemas.messages import (
    RegistryReply,
    RegistryRequest,
    TaskEvent,
    TaskOptions,
    TaskRecord,
    decode,
    encode,
)

OPTIONS = TaskOptions(formats=("txt", "srt"), source="api")


@pytest.fixture
def store(tmp_path: Path):
    with RegistryStore(tmp_path / "data" / "registry.duckdb") as s:
        yield s


def submitted(task_id: str, ts: float, owner: str | None = "key1", filename: str = "a.mp3") -> TaskEvent:
    return TaskEvent(task_id, "submitted", ts, filename=filename, file_size=1234, owner=owner, options=OPTIONS)


def history(task_id: str, t0: float, owner: str | None = "key1") -> list[TaskEvent]:
    """One task's full, in-order history, as the workers publish it."""
    return [
        submitted(task_id, t0, owner),
        TaskEvent(task_id, "stage", t0 + 1, stage="decoding"),
        TaskEvent(task_id, "progress", t0 + 2, stage="transcribing", progress=10, media_duration=42.5),
        TaskEvent(task_id, "progress", t0 + 3, stage="transcribing", progress=70),
        TaskEvent(task_id, "stage", t0 + 4, stage="formatting"),
        TaskEvent(
            task_id,
            "completed",
            t0 + 5,
            text="привет мир",
            outputs={"txt": f"{task_id}/result.txt", "srt": f"{task_id}/result.srt"},
            output_paths=(f"/out/{task_id}.txt",),
        ),
    ]


def all_records(store: RegistryStore) -> list[TaskRecord]:
    return store.list(limit=1000)[0]


def test_lifecycle_submitted_stage_progress_completed(store: RegistryStore) -> None:
    events = history("t1", 100.0)

    assert store.apply(events[0])
    rec = store.get("t1")
    assert rec is not None
    assert (rec.status, rec.stage, rec.progress, rec.created_at) == ("pending", "queued", 0, 100.0)
    assert (rec.filename, rec.file_size, rec.owner, rec.options) == ("a.mp3", 1234, "key1", OPTIONS)
    assert rec.started_at is None and rec.completed_at is None

    assert store.apply(events[1])
    rec = store.get("t1")
    assert (rec.status, rec.stage, rec.started_at) == ("processing", "decoding", 101.0)

    assert store.apply(events[2])
    rec = store.get("t1")
    assert (rec.stage, rec.progress, rec.media_duration) == ("transcribing", 10, 42.5)

    for ev in events[3:]:
        assert store.apply(ev)
    rec = store.get("t1")
    assert (rec.status, rec.stage, rec.progress) == ("completed", "done", 100)
    assert rec.completed_at == 105.0
    assert rec.processing_time == pytest.approx(4.0)  # completed_at - started_at
    assert rec.text == "привет мир"
    assert rec.outputs == {"txt": "t1/result.txt", "srt": "t1/result.srt"}
    assert rec.output_paths == ("/out/t1.txt",)
    assert rec.media_duration == 42.5
    assert rec.created_at == 100.0


def test_completed_keeps_given_processing_time(store: RegistryStore) -> None:
    store.apply(submitted("t1", 100.0))
    store.apply(TaskEvent("t1", "stage", 101.0, stage="decoding"))
    store.apply(TaskEvent("t1", "completed", 110.0, text="x", processing_time=3.25, media_duration=7.0))
    rec = store.get("t1")
    assert rec.processing_time == 3.25
    assert rec.media_duration == 7.0


def test_progress_and_stage_never_go_back(store: RegistryStore) -> None:
    store.apply(submitted("t1", 100.0))
    assert store.apply(TaskEvent("t1", "progress", 102.0, stage="formatting", progress=60))
    assert not store.apply(TaskEvent("t1", "progress", 103.0, stage="transcribing", progress=30))
    assert not store.apply(TaskEvent("t1", "stage", 104.0, stage="decoding"))
    rec = store.get("t1")
    assert (rec.progress, rec.stage) == (60, "formatting")
    assert store.apply(TaskEvent("t1", "progress", 105.0, progress=250))  # clamped, still raised
    assert store.get("t1").progress == 100


def test_duplicates_and_out_of_order_converge(tmp_path: Path) -> None:
    events = history("t1", 100.0)
    with RegistryStore(tmp_path / "ordered.duckdb") as ordered:
        for ev in events:
            ordered.apply(ev)
        expected = ordered.get("t1")

    rng = random.Random(7)
    for attempt in range(5):
        live = events[:-1] * 2  # everything before completion, each delivered twice
        rng.shuffle(live)
        with RegistryStore(tmp_path / f"shuffled{attempt}.duckdb") as shuffled:
            for ev in live:
                shuffled.apply(ev)
            assert shuffled.apply(events[-1])
            assert not shuffled.apply(events[-1])  # redelivered completion
            assert shuffled.get("t1") == expected


def test_duplicate_event_reports_no_change(store: RegistryStore) -> None:
    ev = TaskEvent("t1", "progress", 101.0, stage="transcribing", progress=40)
    assert store.apply(ev)
    before = store.get("t1")
    assert not store.apply(ev)
    assert store.get("t1") == before


def test_events_for_unknown_task_create_the_row(store: RegistryStore) -> None:
    """A replay starting mid-history still converges once the submit (or nothing more) arrives."""
    assert store.apply(TaskEvent("t1", "progress", 110.0, stage="transcribing", progress=50, media_duration=9.0))
    rec = store.get("t1")
    assert (rec.status, rec.stage, rec.progress, rec.created_at, rec.started_at) == (
        "processing",
        "transcribing",
        50,
        110.0,
        110.0,
    )
    assert rec.filename == "" and rec.owner is None

    assert store.apply(submitted("t1", 100.0, owner="key9", filename="late.wav"))
    rec = store.get("t1")
    assert (rec.status, rec.progress) == ("processing", 50)  # a late submit never rewinds
    assert (rec.created_at, rec.filename, rec.owner, rec.options) == (100.0, "late.wav", "key9", OPTIONS)

    assert store.apply(TaskEvent("t2", "completed", 200.0, text="t", outputs={"txt": "t2/r.txt"}))
    rec = store.get("t2")
    assert (rec.status, rec.stage, rec.progress, rec.completed_at) == ("completed", "done", 100, 200.0)


def test_owner_is_never_reassigned(store: RegistryStore) -> None:
    store.apply(submitted("t1", 100.0, owner="key1"))
    store.apply(submitted("t1", 100.0, owner="key2"))
    store.apply(TaskEvent("t1", "stage", 101.0, stage="decoding", owner="key2"))
    assert store.get("t1").owner == "key1"
    assert store.get("t1", owner="key2") is None


def test_terminal_state_is_sticky(store: RegistryStore) -> None:
    for ev in history("t1", 100.0):
        store.apply(ev)
    done = store.get("t1")
    assert not store.apply(TaskEvent("t1", "progress", 200.0, stage="transcribing", progress=20))
    assert not store.apply(TaskEvent("t1", "stage", 201.0, stage="decoding"))
    assert not store.apply(TaskEvent("t1", "failed", 202.0, error="late failure"))
    assert store.get("t1") == done

    store.apply(submitted("t2", 100.0))
    store.apply(TaskEvent("t2", "stage", 101.0, stage="decoding"))
    assert store.apply(TaskEvent("t2", "failed", 102.0, error="decode: bad file"))
    assert not store.apply(TaskEvent("t2", "completed", 103.0, text="too late"))
    assert not store.apply(TaskEvent("t2", "progress", 104.0, progress=90))
    rec = store.get("t2")
    assert (rec.status, rec.stage, rec.error, rec.completed_at, rec.text) == (
        "failed",
        "decoding",
        "decode: bad file",
        102.0,
        None,
    )


def test_second_terminal_event_of_same_type_only_fills_gaps(store: RegistryStore) -> None:
    store.apply(submitted("t1", 100.0))
    store.apply(TaskEvent("t1", "completed", 110.0, text="first"))
    assert store.apply(TaskEvent("t1", "completed", 120.0, text="second", outputs={"txt": "t1/r.txt"}))
    rec = store.get("t1")
    assert (rec.text, rec.completed_at, rec.outputs) == ("first", 110.0, {"txt": "t1/r.txt"})

    store.apply(TaskEvent("t2", "failed", 100.0))
    assert store.apply(TaskEvent("t2", "failed", 101.0, error="infer: out of memory"))
    rec = store.get("t2")
    assert (rec.error, rec.completed_at) == ("infer: out of memory", 100.0)


def test_deleted_event_leaves_tombstone(store: RegistryStore) -> None:
    for ev in history("t1", 100.0):
        store.apply(ev)
    assert store.apply(TaskEvent("t1", "deleted", 300.0))
    assert store.get("t1") is None
    for late in [*history("t1", 100.0), TaskEvent("t1", "progress", 400.0, progress=5)]:
        assert not store.apply(late)
    assert store.get("t1") is None
    assert not store.apply(TaskEvent("t1", "deleted", 300.0))

    assert not store.apply(TaskEvent("t9", "deleted", 50.0))  # no row yet: only the tombstone
    assert not store.apply(submitted("t9", 40.0))
    assert store.get("t9") is None
    assert store.counts()["completed"] == 0


def test_delete_method_tombstones_too(store: RegistryStore) -> None:
    store.apply(submitted("t1", 100.0))
    assert store.delete("t1", now=150.0)
    assert not store.delete("t1")
    assert not store.apply(TaskEvent("t1", "stage", 160.0, stage="decoding"))
    assert store.get("t1") is None
    assert not store.delete("never-existed")


def test_delete_inside_a_batch(store: RegistryStore) -> None:
    batch = [(ev, None) for ev in history("t1", 100.0)]
    batch.insert(3, (TaskEvent("t1", "deleted", 102.5), None))
    batch.append((submitted("t2", 100.0), None))
    assert store.apply_many(batch) == 5  # t1: submitted, stage, progress, deleted; then t2
    assert store.get("t1") is None
    assert store.get("t2").status == "pending"


def test_owner_isolation(store: RegistryStore) -> None:
    store.apply(submitted("a1", 100.0, owner="alice"))
    store.apply(submitted("a2", 101.0, owner="alice"))
    store.apply(submitted("b1", 102.0, owner="bob"))
    store.apply(submitted("c1", 103.0, owner=None))  # inbox task: operators only

    assert store.get("a1", owner="alice").task_id == "a1"
    assert store.get("a1", owner="bob") is None
    assert store.get("c1", owner="alice") is None
    assert store.get("c1").task_id == "c1"

    tasks, total = store.list(owner="alice")
    assert [t.task_id for t in tasks] == ["a2", "a1"] and total == 2
    tasks, total = store.list()
    assert total == 4 and {t.task_id for t in tasks} == {"a1", "a2", "b1", "c1"}

    assert not store.delete("a1", owner="bob")
    assert store.get("a1") is not None
    assert store.delete("a1", owner="alice")
    assert store.get("a1") is None
    assert store.list(owner="alice")[1] == 1


def test_list_filter_limit_offset_total(store: RegistryStore) -> None:
    for i in range(6):
        store.apply(submitted(f"t{i}", 100.0 + i))
    store.apply(submitted("tx", 105.0))  # same created_at as t5: task_id breaks the tie
    for tid in ("t1", "t3"):
        store.apply(TaskEvent(tid, "completed", 200.0, text="ok"))
    store.apply(TaskEvent("t4", "failed", 200.0, error="boom"))
    store.apply(TaskEvent("t2", "stage", 150.0, stage="decoding"))

    tasks, total = store.list()
    assert [t.task_id for t in tasks] == ["t5", "tx", "t4", "t3", "t2", "t1", "t0"]
    assert total == 7

    tasks, total = store.list(limit=2, offset=1)
    assert [t.task_id for t in tasks] == ["tx", "t4"] and total == 7
    tasks, total = store.list(limit=5, offset=6)
    assert [t.task_id for t in tasks] == ["t0"] and total == 7
    assert store.list(offset=50) == ([], 7)

    tasks, total = store.list(status="completed")
    assert [t.task_id for t in tasks] == ["t3", "t1"] and total == 2
    tasks, total = store.list(status="pending", limit=1)
    assert [t.task_id for t in tasks] == ["t5"] and total == 3
    assert store.list(status="processing")[1] == 1

    for bad in ({"status": "running"}, {"limit": 0}, {"limit": 1001}, {"limit": True}, {"offset": -1}):
        with pytest.raises(BadRequest):
            store.list(**bad)


def test_counts(store: RegistryStore) -> None:
    assert store.counts() == {"pending": 0, "processing": 0, "completed": 0, "failed": 0}
    store.apply(submitted("t1", 1.0))
    store.apply(submitted("t2", 1.0))
    store.apply(TaskEvent("t2", "stage", 2.0, stage="decoding"))
    store.apply(TaskEvent("t3", "failed", 3.0, error="x"))
    assert store.counts() == {"pending": 1, "processing": 1, "completed": 0, "failed": 1}


def test_expire_removes_old_rows_and_returns_ids(store: RegistryStore) -> None:
    now, retention = 10_000.0, 1_000.0
    store.apply(submitted("old-done", 100.0))
    store.apply(TaskEvent("old-done", "completed", 8_000.0, text="x"))
    store.apply(TaskEvent("old-failed", "failed", 8_500.0, error="x"))
    store.apply(submitted("stale-pending", 8_999.0))
    store.apply(submitted("recent-done", 100.0))  # created long ago, finished recently: kept
    store.apply(TaskEvent("recent-done", "completed", 9_500.0, text="x"))
    store.apply(TaskEvent("busy", "stage", 9_100.0, stage="transcribing"))

    removed = store.expire(now, retention)
    assert removed == ["old-done", "old-failed", "stale-pending"]
    assert {t.task_id for t in all_records(store)} == {"recent-done", "busy"}
    assert store.expire(now, retention) == []

    assert not store.apply(TaskEvent("old-done", "progress", 8_001.0, progress=5))  # tombstoned
    assert store.get("old-done") is None

    # tombstones expire a retention later; by then the stream has forgotten the task too
    assert store.expire(now + 2 * retention, retention) == ["busy", "recent-done"]
    assert store.apply(submitted("old-done", now + 2 * retention))
    assert store.get("old-done").status == "pending"


def test_data_persists_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "registry.duckdb"
    with RegistryStore(path) as first:
        for seq, ev in enumerate(history("t1", 100.0), start=1):
            first.apply(ev, seq=seq)
        first.apply(TaskEvent("t2", "deleted", 50.0), seq=7)
        expected = first.get("t1")
    with pytest.raises(duckdb.Error):
        first.counts()  # closed by the context manager

    second = RegistryStore(path)
    try:
        assert second.get("t1") == expected
        assert second.last_seq() == 7
        assert not second.apply(submitted("t2", 40.0))  # the tombstone survived too
        assert second.counts()["completed"] == 1
    finally:
        second.close()
        second.close()  # closing twice is harmless


def test_seq_checkpoint_skips_applied_events(store: RegistryStore) -> None:
    assert store.last_seq() == 0
    assert store.apply(submitted("t1", 100.0), seq=5)
    assert store.last_seq() == 5
    assert not store.apply(submitted("t2", 100.0), seq=5)  # at or below the checkpoint: already seen
    assert not store.apply(submitted("t3", 100.0), seq=2)
    assert store.get("t2") is None and store.get("t3") is None
    assert store.apply(TaskEvent("t1", "stage", 101.0, stage="decoding"))  # no seq: applied, checkpoint kept
    assert store.last_seq() == 5
    batch = [(submitted("t2", 100.0), 4), (submitted("t4", 100.0), 6), (submitted("t5", 100.0), 9)]
    assert store.apply_many(batch) == 2
    assert store.last_seq() == 9
    assert store.get("t2") is None and store.get("t5") is not None


def test_reset_and_replay_reproduce_identical_rows(tmp_path: Path) -> None:
    rng = random.Random(1)
    events: list[TaskEvent] = []
    for i in range(12):
        events += history(f"t{i:02d}", 1_000.0 + 10 * i, owner=f"key{i % 3}")
    events += [
        TaskEvent("t03", "deleted", 2_000.0),
        TaskEvent("t05", "failed", 1_052.5, error="infer: boom"),
        TaskEvent("ghost", "progress", 1_500.0, progress=30, stage="transcribing"),
    ]
    rng.shuffle(events)
    events += events[:10]  # redeliveries

    path = tmp_path / "registry.duckdb"
    with RegistryStore(path) as store:
        for seq, ev in enumerate(events, start=1):
            store.apply(ev, seq=seq)
        before = all_records(store)
        counts = store.counts()
        assert store.last_seq() == len(events)
        assert len(before) == 12  # t03 deleted, ghost created

        store.reset()
        assert all_records(store) == [] and store.last_seq() == 0
        assert store.counts() == {"pending": 0, "processing": 0, "completed": 0, "failed": 0}

        store.apply_many((ev, seq) for seq, ev in enumerate(events, start=1))
        assert all_records(store) == before
        assert store.counts() == counts
        assert store.last_seq() == len(events)


def test_schema_version_mismatch_empties_store_for_rebuild(tmp_path: Path) -> None:
    path = tmp_path / "registry.duckdb"
    with RegistryStore(path) as store:
        store.apply(submitted("t1", 100.0), seq=3)
    conn = duckdb.connect(str(path))
    conn.execute("UPDATE meta SET value = 99 WHERE key = 'schema_version'")
    conn.close()
    with RegistryStore(path) as store:
        assert store.get("t1") is None
        assert store.last_seq() == 0  # the service replays the stream from the start


def test_handle_dispatch_and_errors(store: RegistryStore) -> None:
    store.apply(submitted("t1", 100.0, owner="alice"))
    store.apply(TaskEvent("t1", "completed", 110.0, text="hi", outputs={"txt": "t1/r.txt"}))
    store.apply(submitted("t2", 101.0, owner="bob"))

    ping = store.handle(RegistryRequest(op="ping"))
    assert ping.ok and ping.total == 2

    reply = store.handle(RegistryRequest(op="get", task_id="t1", owner="alice"))
    assert reply.ok and reply.task.text == "hi"
    assert decode(RegistryReply, encode(reply)) == reply  # survives the wire

    hidden = store.handle(RegistryRequest(op="get", task_id="t1", owner="bob"))
    assert (hidden.ok, hidden.error, hidden.task) == (False, "not_found", None)
    assert "t1" in hidden.message
    assert store.handle(RegistryRequest(op="get", task_id="nope")).error == "not_found"

    listed = store.handle(RegistryRequest(op="list", owner="bob"))
    assert listed.ok and [t.task_id for t in listed.tasks] == ["t2"] and listed.total == 1
    listed = store.handle(RegistryRequest(op="list", status="completed", limit=1000))
    assert [t.task_id for t in listed.tasks] == ["t1"]

    bad = [
        RegistryRequest(op="explode"),
        RegistryRequest(op="get"),
        RegistryRequest(op="delete", task_id=""),
        RegistryRequest(op="list", status="done"),
        RegistryRequest(op="list", limit=0),
        RegistryRequest(op="list", limit=1001),
        RegistryRequest(op="list", offset=-1),
        RegistryRequest(op="list", owner=7),  # type: ignore[arg-type]  # as a bad client could send it
    ]
    for request in bad:
        reply = store.handle(request)
        assert (reply.ok, reply.error, reply.task) == (False, "bad_request", None), request
        assert reply.message, request

    assert store.handle(RegistryRequest(op="delete", task_id="t1", owner="bob")).error == "not_found"
    deleted = store.handle(RegistryRequest(op="delete", task_id="t1", owner="alice"))
    assert deleted.ok and deleted.task.outputs == {"txt": "t1/r.txt"}  # the service deletes these objects
    assert store.handle(RegistryRequest(op="delete", task_id="t1")).error == "not_found"
    assert store.handle(RegistryRequest(op="ping")).total == 1


def test_concurrent_callers_share_one_store(store: RegistryStore) -> None:
    def worker(n: int) -> None:
        for i in range(15):
            store.apply(submitted(f"w{n}-{i}", 100.0 + i, owner=f"key{n}"))
            store.get(f"w{n}-{i}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.counts()["pending"] == 60
    assert all(store.list(owner=f"key{n}")[1] == 15 for n in range(4))


def test_throughput_of_2000_events(store: RegistryStore) -> None:
    events = [ev for i in range(400) for ev in history(f"t{i:03d}", 1_000.0 + i)][:2000]
    items = [(ev, seq) for seq, ev in enumerate(events, start=1)]
    started = time.perf_counter()
    for chunk in range(0, len(items), 100):  # as a pull consumer would fetch them
        store.apply_many(items[chunk : chunk + 100])
    for ev, seq in items[-5:]:  # redelivered tail: skipped by the checkpoint
        assert not store.apply(ev, seq=seq)
    elapsed = time.perf_counter() - started
    assert elapsed < 20.0, f"2000 events took {elapsed:.1f} s"
    assert store.last_seq() == 2000
    counts = store.counts()
    assert counts["completed"] == 333 and sum(counts.values()) == 334

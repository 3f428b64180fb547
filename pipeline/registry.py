"""Task-state store of the registry service: folds `TaskEvent`s into one DuckDB row per task.

The registry service is the only process that opens the file. The rows are derived state: the events
stream is the source of truth, so the store can always be rebuilt with `reset()` and a replay.

Folding rules (every rule is safe under duplicate and out-of-order delivery):

- `submitted` creates the row (pending/queued) or fills fields still missing; it never changes status.
- `stage`/`progress` move a live task to processing. Stage only moves forward
  (queued < decoding < transcribing < formatting < done) and progress never decreases, so a redelivered
  older event cannot rewind them. `started_at` is the earliest time an event reported a working stage.
- `completed`/`failed` make the task terminal. The first terminal event wins: later stage/progress
  events and terminal events of the other type are ignored; a terminal event of the same type only fills
  fields the first one left empty.
- `deleted` removes the row and leaves a tombstone, so no late event can resurrect the task.
- An event for an unknown task (a replay that starts mid-history) creates the row from what it carries.
- `created_at` is the earliest event time seen for the task (the submit, unless clocks disagree).
- Ownership is set once: no event can move a task to another owner.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import duckdb
import orjson

from schemas.messages import (
    TERMINAL_STATUSES,
    RegistryReply,
    RegistryRequest,
    TaskEvent,
    TaskOptions,
    TaskRecord,
    decode,
)

log = logging.getLogger(__name__)

STORE_SCHEMA_VERSION = 1  # layout of the tables below; a mismatch rebuilds the store from the event stream
STATUSES = ("pending", "processing", "completed", "failed")
STAGE_RANK = {"queued": 0, "decoding": 1, "transcribing": 2, "formatting": 3, "done": 4}
MAX_LIST_LIMIT = 1000

COLUMNS = (
    "task_id",
    "status",
    "stage",
    "progress",
    "created_at",
    "started_at",
    "completed_at",
    "filename",
    "file_size",
    "media_duration",
    "processing_time",
    "error",
    "owner",
    "options",
    "text",
    "outputs",
    "output_paths",
    "updated_at",
)
COLUMN_TYPES = {
    "task_id": "VARCHAR",
    "status": "VARCHAR",
    "stage": "VARCHAR",
    "progress": "INTEGER",
    "created_at": "DOUBLE",
    "started_at": "DOUBLE",
    "completed_at": "DOUBLE",
    "filename": "VARCHAR",
    "file_size": "BIGINT",
    "media_duration": "DOUBLE",
    "processing_time": "DOUBLE",
    "error": "VARCHAR",
    "owner": "VARCHAR",
    "options": "VARCHAR",  # JSON of TaskOptions
    "text": "VARCHAR",
    "outputs": "VARCHAR",  # JSON object: format -> object name
    "output_paths": "VARCHAR",  # JSON list
    "updated_at": "DOUBLE",
}
_NOT_NULL = {"task_id", "status", "stage", "progress", "filename", "file_size", "outputs", "output_paths", "updated_at"}

_DDL = (
    "CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS tasks ("
    + ", ".join(
        f"{c} {COLUMN_TYPES[c]}{' NOT NULL' if c in _NOT_NULL else ''}{' PRIMARY KEY' if c == 'task_id' else ''}"
        for c in COLUMNS
    )
    + ")",
    "CREATE TABLE IF NOT EXISTS tombstones (task_id VARCHAR PRIMARY KEY, deleted_at DOUBLE NOT NULL)",
)
_TABLES = ("tasks", "tombstones", "meta")
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM tasks"
# DuckDB spends ~0.5 ms per statement: one row goes through plain parameters (about twice as cheap as
# unnesting one-element lists), a batch through one statement over unnested column lists.
_INSERT_ONE = f"INSERT INTO tasks ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)})"
_INSERT_MANY = f"INSERT INTO tasks ({', '.join(COLUMNS)}) SELECT " + ", ".join(
    f"unnest(?::{COLUMN_TYPES[c]}[])" for c in COLUMNS
)
_UPDATE_ONE = (
    "UPDATE tasks SET "
    + ", ".join(f"{c} = ${i + 1}" for i, c in enumerate(COLUMNS) if c != "task_id")
    + " WHERE task_id = $1"
)
_UPDATE_MANY = (
    "UPDATE tasks SET "
    + ", ".join(f"{c} = n.{c}" for c in COLUMNS if c != "task_id")
    + " FROM (SELECT "
    + ", ".join(f"unnest(?::{COLUMN_TYPES[c]}[]) AS {c}" for c in COLUMNS)
    + ") AS n WHERE tasks.task_id = n.task_id"
)
_TERMINAL_SQL = "status IN ('completed', 'failed')"

Row = dict[str, Any]  # a task row with JSON columns kept as Python objects


class BadRequest(ValueError):
    """A query argument the caller must fix; `handle` answers it as `bad_request`."""


class RegistryStore:
    """One DuckDB connection, serialised by a lock so the service may call from threads or the loop."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = duckdb.connect(str(path))
        self._closed = False
        try:
            self._open()
        except BaseException:
            self._conn.close()
            raise

    def _open(self) -> None:
        self._create()
        version = self._meta("schema_version")
        if version is None:
            self._conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", [STORE_SCHEMA_VERSION])
        elif version != STORE_SCHEMA_VERSION:
            log.warning(
                "registry store schema %s, expected %s: emptying it for a rebuild from the event stream",
                version,
                STORE_SCHEMA_VERSION,
            )
            self._reset()
        self._last_seq = self._meta("last_seq") or 0

    # ---- lifecycle -------------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()

    def __enter__(self) -> RegistryStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def reset(self) -> None:
        """Empty the store before a rebuild; `last_seq()` drops to 0 so the replay starts at the beginning."""
        with self._lock:
            self._reset()
        log.info("registry store reset")

    def last_seq(self) -> int:
        """Stream sequence of the last applied event; the service resumes its consumer after it."""
        with self._lock:
            return self._last_seq

    # ---- events ----------------------------------------------------------------------------------

    def apply(self, event: TaskEvent, seq: int | None = None) -> bool:
        """Fold one event, durable on return; True when a task row was created, changed or removed.

        With `seq`, an event at or below `last_seq()` is skipped unread: the stream delivers in order,
        so it has been applied before. Each call is a DuckDB commit (an fsync, milliseconds): feed
        anything more than a trickle through `apply_many`.
        """
        return self.apply_many([(event, seq)]) == 1

    def apply_many(self, items: Iterable[tuple[TaskEvent, int | None]]) -> int:
        """Fold a batch in one transaction with a few bulk statements: 10k events take well under a second.

        The path for a replay and for whatever a consumer fetch returns. Returns how many events changed
        a task row; the checkpoint advances to the batch's highest seq in the same commit.
        """
        with self._lock:
            batch = [(ev, seq) for ev, seq in items if seq is None or seq > self._last_seq]
            if not batch:
                return 0
            ids = list({ev.task_id for ev, _ in batch})
            with self._transaction():
                where, params = _match_ids(ids)
                loaded = {r["task_id"]: r for r in self._rows(f"{_SELECT} WHERE {where}", params)}
                tombstoned = self._tombstoned([tid for tid in ids if tid not in loaded])
                state: dict[str, Row | None] = dict(loaded)
                new_tombstones: dict[str, float] = {}
                changed = 0
                for ev, _ in batch:
                    if ev.task_id in tombstoned:
                        log.debug("event %s for deleted task %s ignored", ev.type, ev.task_id)
                        continue
                    if ev.type == "deleted":
                        tombstoned.add(ev.task_id)
                        new_tombstones[ev.task_id] = ev.ts
                        changed += state.pop(ev.task_id, None) is not None
                        continue
                    old = state.get(ev.task_id)
                    new = _fold(old, ev)
                    if new is not old:
                        state[ev.task_id] = new
                        changed += 1
                self._write(loaded, state, new_tombstones)
                top = max((seq for _, seq in batch if seq is not None), default=None)
                if top is not None:
                    self._conn.execute("UPDATE meta SET value = ? WHERE key = 'last_seq'", [top])
            if top is not None:
                self._last_seq = top
            return changed

    # ---- queries ---------------------------------------------------------------------------------

    def get(self, task_id: str, owner: str | None = None) -> TaskRecord | None:
        """With `owner`, another owner's task reads as missing: a key sees only its own tasks."""
        with self._lock:
            row = self._get(task_id, owner)
        return _record(row) if row else None

    def list(
        self, owner: str | None = None, status: str | None = None, limit: int = 100, offset: int = 0
    ) -> tuple[list[TaskRecord], int]:
        """Newest first; the total counts every match so that clients can page."""
        if status is not None and status not in STATUSES:
            raise BadRequest(f"status must be one of {', '.join(STATUSES)}, not {status!r}")
        if not _is_int(limit) or not 1 <= limit <= MAX_LIST_LIMIT:
            raise BadRequest(f"limit must be an integer in 1..{MAX_LIST_LIMIT}, not {limit!r}")
        if not _is_int(offset) or offset < 0:
            raise BadRequest(f"offset must be a non-negative integer, not {offset!r}")
        where, params = _filters(owner, status)
        with self._lock:
            rows = self._rows(
                f"{_SELECT}{where} ORDER BY created_at DESC NULLS LAST, task_id LIMIT ? OFFSET ?",
                [*params, limit, offset],
            )
            total = self._count(owner, status)
        return [_record(r) for r in rows], total

    def delete(self, task_id: str, owner: str | None = None, now: float | None = None) -> bool:
        """Remove a task and tombstone it so that in-flight events for it are dropped."""
        with self._lock:
            return self._delete(task_id, owner, time.time() if now is None else now) is not None

    def expire(self, now: float, retention: float) -> list[str]:
        """Drop terminal rows finished (and live rows created) before `now - retention`.

        The removed ids are tombstoned at `now`, so a late event cannot bring them back before the stream
        forgets it; tombstones older than the cutoff go. Returns the removed ids so the service can
        delete their objects.
        """
        cutoff = now - retention
        with self._lock, self._transaction():
            ids = [
                r[0]
                for r in self._conn.execute(
                    f"SELECT task_id FROM tasks WHERE ({_TERMINAL_SQL} AND coalesce(completed_at, created_at) < ?)"
                    f" OR (NOT {_TERMINAL_SQL} AND created_at < ?) ORDER BY task_id",
                    [cutoff, cutoff],
                ).fetchall()
            ]
            self._conn.execute("DELETE FROM tombstones WHERE deleted_at < ?", [cutoff])
            if ids:
                where, params = _match_ids(ids)
                self._conn.execute(f"DELETE FROM tasks WHERE {where}", params)
                self._insert_tombstones(dict.fromkeys(ids, now))
        if ids:
            log.info("expired %d task(s) older than %.0f s", len(ids), retention)
        return ids

    def counts(self) -> dict[str, int]:
        """Tasks per status, every status present, for the metrics gauge."""
        with self._lock:
            found = dict(self._conn.execute("SELECT status, count(*) FROM tasks GROUP BY status").fetchall())
        return {s: int(found.get(s, 0)) for s in STATUSES}

    def handle(self, request: RegistryRequest) -> RegistryReply:
        """Answer one request-reply call; never raises for a bad request."""
        try:
            if request.owner is not None and not isinstance(request.owner, str):
                raise BadRequest(f"owner must be a string, not {request.owner!r}")
            if request.op == "ping":
                with self._lock:
                    return RegistryReply(ok=True, total=self._count(request.owner, None))
            if request.op == "list":
                tasks, total = self.list(request.owner, request.status, request.limit, request.offset)
                return RegistryReply(ok=True, tasks=tuple(tasks), total=total)
            if request.op in ("get", "delete"):
                if not isinstance(request.task_id, str) or not request.task_id:
                    raise BadRequest(f"{request.op} needs a task_id")
                with self._lock:
                    if request.op == "get":
                        row = self._get(request.task_id, request.owner)
                    else:
                        row = self._delete(request.task_id, request.owner, time.time())
                if row is None:
                    return RegistryReply(ok=False, error="not_found", message=f"task {request.task_id} not found")
                return RegistryReply(ok=True, task=_record(row), total=1)
            raise BadRequest(f"unknown op {request.op!r}; expected get, list, delete or ping")
        except BadRequest as exc:
            log.info("registry request rejected: %s", exc)
            return RegistryReply(ok=False, error="bad_request", message=str(exc))
        except duckdb.Error:
            log.exception("registry request %s failed", request.op)
            return RegistryReply(ok=False, error="internal", message="registry database error")

    # ---- internals (caller holds the lock) -------------------------------------------------------

    def _create(self) -> None:
        for stmt in _DDL:
            self._conn.execute(stmt)
        self._conn.execute("INSERT INTO meta VALUES ('last_seq', 0) ON CONFLICT DO NOTHING")

    def _reset(self) -> None:
        with self._transaction():
            for table in _TABLES:
                self._conn.execute(f"DROP TABLE IF EXISTS {table}")
            self._create()
            self._conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", [STORE_SCHEMA_VERSION])
        self._last_seq = 0

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._conn.begin()
        try:
            yield
        except BaseException:
            self._conn.rollback()
            raise
        self._conn.commit()

    def _meta(self, key: str) -> int | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return None if row is None else int(row[0])

    def _rows(self, sql: str, params: list[Any]) -> list[Row]:
        return [_from_db(r) for r in self._conn.execute(sql, params).fetchall()]

    def _get(self, task_id: str, owner: str | None) -> Row | None:
        rows = self._rows(f"{_SELECT} WHERE task_id = ?", [task_id])
        if not rows or (owner is not None and rows[0]["owner"] != owner):
            return None
        return rows[0]

    def _count(self, owner: str | None, status: str | None) -> int:
        where, params = _filters(owner, status)
        return int(self._conn.execute(f"SELECT count(*) FROM tasks{where}", params).fetchone()[0])

    def _delete(self, task_id: str, owner: str | None, now: float) -> Row | None:
        with self._transaction():
            row = self._get(task_id, owner)
            if row is not None:
                self._conn.execute("DELETE FROM tasks WHERE task_id = ?", [task_id])
                self._insert_tombstones({task_id: now})
        return row

    def _insert_tombstones(self, tombstones: dict[str, float]) -> None:
        self._conn.execute(
            "INSERT INTO tombstones SELECT unnest(?::VARCHAR[]), unnest(?::DOUBLE[]) ON CONFLICT DO NOTHING",
            [list(tombstones), list(tombstones.values())],
        )

    def _tombstoned(self, ids: list[str]) -> set[str]:
        """Only ids without a row can have a tombstone, so the caller asks about those alone."""
        if not ids:
            return set()
        where, params = _match_ids(ids)
        return {r[0] for r in self._conn.execute(f"SELECT task_id FROM tombstones WHERE {where}", params).fetchall()}

    def _write(self, loaded: dict[str, Row], state: dict[str, Row | None], tombstones: dict[str, float]) -> None:
        gone = [tid for tid in loaded if state.get(tid) is None]
        if gone:
            where, params = _match_ids(gone)
            self._conn.execute(f"DELETE FROM tasks WHERE {where}", params)
        if tombstones:
            self._insert_tombstones(tombstones)
        changed = [(tid, row) for tid, row in state.items() if row is not None and row is not loaded.get(tid)]
        self._execute_rows(_UPDATE_ONE, _UPDATE_MANY, [_to_db(row) for tid, row in changed if tid in loaded])
        self._execute_rows(_INSERT_ONE, _INSERT_MANY, [_to_db(row) for tid, row in changed if tid not in loaded])

    def _execute_rows(self, one: str, many: str, rows: list[list[Any]]) -> None:
        if len(rows) == 1:
            self._conn.execute(one, rows[0])
        elif rows:
            self._conn.execute(many, [list(column) for column in zip(*rows)])


# ---- folding ---------------------------------------------------------------------------------------


def _fold(row: Row | None, ev: TaskEvent) -> Row | None:
    """The row after `ev`; returns `row` itself (same object) when the event changes nothing."""
    if ev.type not in ("submitted", "stage", "progress", "completed", "failed"):
        log.warning("unknown event type %r for task %s ignored", ev.type, ev.task_id)
        return row
    if row is not None and row["status"] in TERMINAL_STATUSES and ev.type not in ("submitted", row["status"]):
        log.debug("%s event for %s task %s ignored", ev.type, row["status"], ev.task_id)
        return row
    new = dict(row) if row is not None else _blank(ev)
    _fill_metadata(new, ev)
    new["created_at"] = _min(new["created_at"], ev.ts)
    if ev.type in ("stage", "progress"):
        _advance(new, ev)
    elif ev.type == "completed":
        _complete(new, ev)
    elif ev.type == "failed":
        _fail(new, ev)
    if row is not None and new == row:
        return row
    new["updated_at"] = max(new["updated_at"], ev.ts)
    return new


def _blank(ev: TaskEvent) -> Row:
    return {
        "task_id": ev.task_id,
        "status": "pending",
        "stage": "queued",
        "progress": 0,
        "created_at": ev.ts,
        "started_at": None,
        "completed_at": None,
        "filename": "",
        "file_size": 0,
        "media_duration": None,
        "processing_time": None,
        "error": None,
        "owner": None,
        "options": None,
        "text": None,
        "outputs": {},
        "output_paths": (),
        "updated_at": ev.ts,
    }


def _fill_metadata(row: Row, ev: TaskEvent) -> None:
    """Submit-time facts are written once; later copies never overwrite them."""
    if not row["filename"] and ev.filename:
        row["filename"] = ev.filename
    if not row["file_size"] and ev.file_size:
        row["file_size"] = int(ev.file_size)
    if row["owner"] is None and ev.owner is not None:
        row["owner"] = ev.owner
    if row["options"] is None and ev.options is not None:
        row["options"] = ev.options


def _advance(row: Row, ev: TaskEvent) -> None:
    row["status"] = "processing"
    if ev.stage is not None:
        if ev.stage not in STAGE_RANK:
            log.warning("unknown stage %r for task %s ignored", ev.stage, ev.task_id)
        else:
            if STAGE_RANK[ev.stage] > STAGE_RANK[row["stage"]]:
                row["stage"] = ev.stage
            if ev.stage != "queued":
                row["started_at"] = _min(row["started_at"], ev.ts)
    if ev.progress is not None:
        row["progress"] = max(row["progress"], _clamp(ev.progress))
    if ev.media_duration is not None:
        row["media_duration"] = float(ev.media_duration)


def _complete(row: Row, ev: TaskEvent) -> None:
    if row["status"] == "completed":  # a second completion only fills what the first left empty
        for key, value in (
            ("text", ev.text),
            ("media_duration", ev.media_duration),
            ("processing_time", ev.processing_time),
        ):
            if row[key] is None and value is not None:
                row[key] = value
        if not row["outputs"] and ev.outputs:
            row["outputs"] = dict(ev.outputs)
        if not row["output_paths"] and ev.output_paths:
            row["output_paths"] = tuple(ev.output_paths)
        return
    row.update(status="completed", stage="done", progress=100, completed_at=ev.ts)
    if ev.text is not None:
        row["text"] = ev.text
    if ev.outputs is not None:
        row["outputs"] = dict(ev.outputs)
    if ev.output_paths:
        row["output_paths"] = tuple(ev.output_paths)
    if ev.media_duration is not None:
        row["media_duration"] = float(ev.media_duration)
    if ev.processing_time is not None:
        row["processing_time"] = float(ev.processing_time)
    elif row["started_at"] is not None:
        row["processing_time"] = max(0.0, ev.ts - row["started_at"])


def _fail(row: Row, ev: TaskEvent) -> None:
    if row["status"] == "failed":  # a second failure only fills what the first left empty
        if row["error"] is None:
            row["error"] = ev.error
        return
    row.update(status="failed", completed_at=ev.ts, error=ev.error)
    if ev.processing_time is not None:
        row["processing_time"] = float(ev.processing_time)
    if ev.media_duration is not None:
        row["media_duration"] = float(ev.media_duration)


def _min(current: float | None, ts: float) -> float:
    return ts if current is None else min(current, ts)


def _clamp(progress: int) -> int:
    return max(0, min(100, int(progress)))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# ---- row <-> database <-> record -----------------------------------------------------------------


def _match_ids(ids: list[str]) -> tuple[str, list[Any]]:
    if len(ids) == 1:
        return "task_id = ?", list(ids)
    return "task_id IN (SELECT unnest(?::VARCHAR[]))", [ids]


def _filters(owner: str | None, status: str | None) -> tuple[str, list[Any]]:
    clauses, params = [], []
    if owner is not None:
        clauses.append("owner = ?")
        params.append(owner)
    if status is not None:
        clauses.append("status = ?")
        params.append(status)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def _to_db(row: Row) -> list[Any]:
    values = dict(row)
    values["options"] = None if row["options"] is None else orjson.dumps(row["options"]).decode()
    values["outputs"] = orjson.dumps(row["outputs"]).decode()
    values["output_paths"] = orjson.dumps(row["output_paths"]).decode()
    return [values[c] for c in COLUMNS]


def _from_db(values: tuple[Any, ...]) -> Row:
    row = dict(zip(COLUMNS, values))
    row["options"] = None if row["options"] is None else decode(TaskOptions, row["options"])
    row["outputs"] = orjson.loads(row["outputs"])
    row["output_paths"] = tuple(orjson.loads(row["output_paths"]))
    return row


def _record(row: Row) -> TaskRecord:
    return TaskRecord(**{c: row[c] for c in COLUMNS if c != "updated_at"})

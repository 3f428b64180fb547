"""Log output: JSON lines that log shippers can parse and plain lines that name the task, both carrying
`task_id` and `stage` from `task_logger`."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest

from pipeline.logs import setup_logging, task_logger
from pipeline.settings import load_settings

NOISY = ("nats", "sanic.access", "watchfiles")


@contextmanager
def configured(level: str, *, json: bool, service: str = "") -> Iterator[None]:
    """setup_logging replaces the root handlers and levels: give other tests theirs back. Saved and
    restored inside the test body, as pytest swaps its own capture handlers between phases."""
    root = logging.getLogger()
    handlers, root_level = root.handlers[:], root.level
    noisy = {name: logging.getLogger(name).level for name in NOISY}
    setup_logging(level, json=json, service=service)
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(root_level)
        for name, lvl in noisy.items():
            logging.getLogger(name).setLevel(lvl)


def emitted(capsys: pytest.CaptureFixture[str]) -> list[str]:
    captured = capsys.readouterr()
    assert captured.out == ""  # logs never go to stdout, where CLI results are printed
    return captured.err.splitlines()


def test_gigaam_log_json_selects_json(tmp_path: Path) -> None:
    env = {"GIGAAM_DATA_DIR": str(tmp_path)}
    assert load_settings({**env, "GIGAAM_LOG_JSON": "1"}).log_json is True
    assert load_settings(env).log_json is False


def test_json_lines_carry_task_and_stage(capsys: pytest.CaptureFixture[str]) -> None:
    with configured("DEBUG", json=True):
        log = task_logger(logging.getLogger("pipeline.test"), "task-42", "infer")
        log.info("распознано %d сегментов", 3)
        log.warning("slow batch")
        logging.getLogger("pipeline.other").debug("no task here")
    lines = emitted(capsys)
    assert len(lines) == 3
    docs = [orjson.loads(line) for line in lines]
    for doc in docs[:2]:
        assert doc["task_id"] == "task-42" and doc["stage"] == "infer"
        assert doc["logger"] == "pipeline.test" and isinstance(doc["ts"], float)
    assert [d["level"] for d in docs] == ["INFO", "WARNING", "DEBUG"]
    assert docs[0]["msg"] == "распознано 3 сегментов"
    assert "task_id" not in docs[2] and "stage" not in docs[2]


def test_json_empty_stage_is_left_out_and_exceptions_stay_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with configured("INFO", json=True):
        log = task_logger(logging.getLogger("pipeline.test"), "t1")
        try:
            raise RuntimeError("disk gone")
        except RuntimeError:
            log.exception("write failed")
    (line,) = emitted(capsys)
    doc = orjson.loads(line)
    assert doc["task_id"] == "t1" and "stage" not in doc
    assert doc["level"] == "ERROR" and doc["msg"] == "write failed"
    assert "RuntimeError: disk gone" in doc["exc"]


def test_level_filters_records(capsys: pytest.CaptureFixture[str]) -> None:
    with configured("warning", json=True):
        log = task_logger(logging.getLogger("pipeline.test"), "t1", "decode")
        log.info("hidden")
        log.error("shown")
        assert logging.getLogger("nats").getEffectiveLevel() == logging.WARNING
    assert [orjson.loads(line)["msg"] for line in emitted(capsys)] == ["shown"]


def test_plain_lines_name_the_task_and_service(capsys: pytest.CaptureFixture[str]) -> None:
    with configured("INFO", json=False, service="infer"):
        task_logger(logging.getLogger("pipeline.test"), "task-42", "infer").info("batch of %d", 4)
        logging.getLogger("pipeline.test").info("untagged")
    tagged, untagged = emitted(capsys)
    assert tagged.endswith(" INFO infer pipeline.test: batch of 4 [task_id=task-42 stage=infer]")
    assert untagged.endswith(" INFO infer pipeline.test: untagged")
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(tagged)


def test_setup_replaces_handlers_instead_of_adding(capsys: pytest.CaptureFixture[str]) -> None:
    """Called twice (CLI, then service), each record must still appear once."""
    with configured("INFO", json=False):
        setup_logging("INFO", json=True)
        logging.getLogger("pipeline.test").info("once")
    (line,) = emitted(capsys)
    assert orjson.loads(line)["msg"] == "once"


def test_root_logger_is_restored() -> None:
    root = logging.getLogger()
    before = (root.handlers[:], root.level, logging.getLogger("nats").level)
    with configured("DEBUG", json=True):
        assert root.level == logging.DEBUG and len(root.handlers) == 1
    assert (root.handlers, root.level, logging.getLogger("nats").level) == before

"""Logging setup: every record can carry `task_id` and `stage`; JSON lines when GIGAAM_LOG_JSON=1."""

from __future__ import annotations

import logging
import sys

import orjson

_FIELDS = ("task_id", "stage")


class _PlainFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        tags = " ".join(f"{k}={getattr(record, k)}" for k in _FIELDS if getattr(record, k, None))
        return f"{base} [{tags}]" if tags else base


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k in _FIELDS:
            if getattr(record, k, None):
                doc[k] = getattr(record, k)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc).decode()


def setup_logging(level: str = "INFO", json: bool = False, service: str = "") -> None:
    handler = logging.StreamHandler(sys.stderr)
    fmt = f"%(asctime)s %(levelname)s {service + ' ' if service else ''}%(name)s: %(message)s"
    handler.setFormatter(_JsonFormatter() if json else _PlainFormatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("nats", "sanic.access", "watchfiles"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def task_logger(logger: logging.Logger, task_id: str, stage: str = "") -> logging.LoggerAdapter:
    """A logger whose every record names the task (and stage)."""
    return logging.LoggerAdapter(logger, {"task_id": task_id, "stage": stage})

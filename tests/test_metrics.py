"""Metrics: the text exposition of the primitives, merging several processes' texts, and `/metrics` on
the real stack after a completed task (queue depth, tasks by status, stage durations, workers)."""

from __future__ import annotations

import math
import re
import time
from pathlib import Path

import httpx
import pytest

from pipeline.client import GigaAMClient
from pipeline.metrics import Metrics, merge
from tests.apistack import ApiStack, speech_wav

pytestmark = pytest.mark.timeout(180)

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse(text: str) -> tuple[dict[str, str], list[tuple[str, dict[str, str], float]]]:
    """A strict little parser of the Prometheus text format: families' types and every sample. Fails on
    a malformed line, a family typed twice, or a sample outside its family's block."""
    types: dict[str, str] = {}
    samples: list[tuple[str, dict[str, str], float]] = []
    current = ""
    for line in text.splitlines():
        if line.startswith("# HELP "):
            current = line.split(" ")[2]
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name not in types, f"family {name} typed twice"
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped")
            types[name], current = kind, name
        else:
            match = _SAMPLE.match(line)
            assert match, f"malformed line: {line!r}"
            name, _, labels, value = match.groups()
            assert name == current or name.removeprefix(current) in ("_bucket", "_sum", "_count"), (name, current)
            pairs = dict(_LABEL.findall(labels or ""))
            samples.append((name, pairs, float(value.replace("+Inf", "inf"))))
    return types, samples


def values(samples: list, name: str, **labels: str) -> list[float]:
    return [v for n, ls, v in samples if n == name and all(ls.get(k) == w for k, w in labels.items())]


def test_process_metrics_render_valid_text_with_constant_labels() -> None:
    metrics = Metrics(service="x", pid="1")
    jobs = metrics.counter("jobs_total", "Jobs", ("outcome",))
    depth = metrics.gauge("depth", 'Queue "depth"\nper stage', ("stage",))
    took = metrics.histogram("took_seconds", "Durations", ("stage",), buckets=(0.1, 1.0))
    jobs.labels(outcome="ok").inc()
    metrics.counter("jobs_total", "Jobs", ("outcome",)).labels(outcome="ok").inc(2)  # the same metric, shared
    depth.labels(stage='we"ird\\').set(5)
    for value in (0.05, 0.5, 3.0):
        took.labels(stage="a").observe(value)
    reads = []
    metrics.gauge("read_at_scrape", "A value read when scraped").set_function(lambda: reads.append(1) or 7.0)
    types, samples = parse(metrics.render())
    assert types == {"jobs_total": "counter", "depth": "gauge", "took_seconds": "histogram", "read_at_scrape": "gauge"}
    assert values(samples, "jobs_total", outcome="ok", service="x", pid="1") == [3.0]
    assert values(samples, "depth", stage='we\\"ird\\\\') == [5.0]
    assert values(samples, "read_at_scrape", service="x") == [7.0] and reads == [1]
    buckets = {float(ls["le"]): v for n, ls, v in samples if n == "took_seconds_bucket"}
    assert buckets == {0.1: 1, 1.0: 2, math.inf: 3}
    assert values(samples, "took_seconds_count") == [3] and math.isclose(values(samples, "took_seconds_sum")[0], 3.55)
    with pytest.raises(ValueError):
        jobs.labels(stage="wrong label")
    with pytest.raises(ValueError, match="registered differently"):
        metrics.gauge("jobs_total", "Jobs", ("outcome",))


def test_merge_keeps_each_family_once() -> None:
    texts = []
    for pid in ("1", "2"):
        metrics = Metrics(service="infer", pid=pid)
        metrics.counter("jobs_total", "Jobs").inc()
        metrics.gauge("up", "Up").set(1)
        metrics.histogram("took_seconds", "Durations", buckets=(1.0,)).observe(0.5)
        texts.append(metrics.render())
    types, samples = parse(merge(texts))
    assert types == {"jobs_total": "counter", "up": "gauge", "took_seconds": "histogram"}
    assert sorted(ls["pid"] for n, ls, _ in samples if n == "jobs_total") == ["1", "2"]
    assert values(samples, "took_seconds_count", pid="2") == [1.0]


def test_metrics_endpoint_after_a_task(client_api: ApiStack, tmp_path: Path) -> None:
    key = client_api.key("metrics")
    wav = speech_wav(tmp_path / "m.wav", "01_speech_2s")
    with GigaAMClient(client_api.base, key) as client:
        assert client.transcribe_file(wav, poll_interval=0.2)["status"] == "completed"
    httpx.get(f"{client_api.base}/api/v1/tasks", timeout=10)  # 401: counted as an error
    deadline = time.monotonic() + 10
    while True:  # the registry folds the completion a moment after the API reports it
        response = httpx.get(f"{client_api.base}/metrics", timeout=10)  # no key needed
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain; version=0.0.4")
        types, samples = parse(response.text)
        if values(samples, "gigaam_tasks", status="completed") >= [1.0]:
            break
        assert time.monotonic() < deadline, response.text
        time.sleep(0.3)
    assert types["gigaam_stage_duration_seconds"] == "histogram" and types["gigaam_jobs_total"] == "counter"
    for stage in ("decode", "infer", "format"):
        assert values(samples, "gigaam_queue_depth", stage=stage) == [0.0]
        assert values(samples, "gigaam_workers", service=stage) == [1.0]
        count = values(samples, "gigaam_stage_duration_seconds_count", stage=stage, outcome="ok", service=stage)
        assert count and count[0] >= 1
    assert {"pending", "processing", "failed"} <= {ls["status"] for n, ls, _ in samples if n == "gigaam_tasks"}
    durations = [ls for n, ls, _ in samples if n == "gigaam_stage_duration_seconds_count"]
    assert all(ls["pid"].isdigit() and ls["host"] for ls in durations)
    assert values(samples, "gigaam_infer_audio_seconds_total")[0] > 0
    rtf = values(samples, "gigaam_infer_real_time_factor")
    assert rtf and 0 < rtf[0] < 10
    assert sum(values(samples, "gigaam_api_requests_total", route="/api/v1/transcribe", status="202")) >= 1
    assert sum(values(samples, "gigaam_api_errors_total", code="missing_api_key")) >= 1
    assert values(samples, "gigaam_dead_letters")

"""Prometheus metrics without a client library: counters, gauges and histograms that render the text
exposition format (version 0.0.4), and `merge` to join several processes' texts into one scrape.

Every service process keeps one `Registry` with constant labels (service, host, pid) and answers
`gigaam.metrics.<service>` with its text; the API's `/metrics` gathers those replies and merges them,
so one scrape target shows every worker on every host.
"""

from __future__ import annotations

import math
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds: from a short file's format stage to a long file's transcription.
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)

LabelKey = tuple[tuple[str, str], ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(key: LabelKey) -> str:
    if not key:
        return ""
    return "{" + ",".join(f'{name}="{_escape(value)}"' for name, value in key) + "}"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(int(value)) if float(value).is_integer() and abs(value) < 2**53 else repr(float(value))


class _Metric(ABC):
    kind = ""

    def __init__(self, name: str, help_: str, labelnames: Sequence[str]) -> None:
        self.name = name
        self.help = help_
        self.labelnames = tuple(labelnames)
        self._lock = threading.Lock()  # the engine thread and the event loop may both touch a metric

    def _key(self, labels: dict[str, str]) -> LabelKey:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {tuple(labels)}")
        return tuple((name, str(labels[name])) for name in self.labelnames)

    @abstractmethod
    def samples(self, const: LabelKey) -> Iterator[str]:
        """Exposition lines of this metric, with the process's constant labels."""

    def render(self, const: LabelKey) -> str:
        head = f"# HELP {self.name} {self.help.replace(chr(92), chr(92) * 2).replace(chr(10), ' ')}\n"
        head += f"# TYPE {self.name} {self.kind}\n"
        return head + "".join(line + "\n" for line in self.samples(const))


class Counter(_Metric):
    """Only goes up; `set_total` mirrors a cumulative count kept elsewhere (the batcher's stats)."""

    kind = "counter"

    def __init__(self, name: str, help_: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, help_, labelnames)
        self._values: dict[LabelKey, float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def set_total(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)

    def value(self, **labels: str) -> float:
        return self._values.get(self._key(labels), 0.0)

    def samples(self, const: LabelKey) -> Iterator[str]:
        with self._lock:
            items = sorted(self._values.items())
        for key, value in items:
            yield f"{self.name}{_labels(const + key)} {_number(value)}"


class Gauge(Counter):
    """A value that goes up and down (queue depth, uptime)."""

    kind = "gauge"

    def set(self, value: float, **labels: str) -> None:
        self.set_total(value, **labels)


class Histogram(_Metric):
    kind = "histogram"

    def __init__(
        self, name: str, help_: str, labelnames: Sequence[str] = (), buckets: Sequence[float] = DURATION_BUCKETS
    ) -> None:
        super().__init__(name, help_, labelnames)
        self.buckets = tuple(sorted(buckets))
        self._counts: dict[LabelKey, list[int]] = {}
        self._sums: dict[LabelKey, float] = {}

    def observe(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            counts = self._counts.setdefault(key, [0] * (len(self.buckets) + 1))
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    counts[i] += 1
            counts[-1] += 1  # +Inf, i.e. the count
            self._sums[key] = self._sums.get(key, 0.0) + value

    @contextmanager
    def time(self, **labels: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.observe(time.perf_counter() - started, **labels)

    def count(self, **labels: str) -> int:
        counts = self._counts.get(self._key(labels))
        return counts[-1] if counts else 0

    def samples(self, const: LabelKey) -> Iterator[str]:
        with self._lock:
            items = sorted((key, list(counts), self._sums[key]) for key, counts in self._counts.items())
        for key, counts, total in items:
            labels = const + key
            for bound, count in zip((*self.buckets, math.inf), counts):
                yield f"{self.name}_bucket{_labels(labels + (('le', _number(bound)),))} {count}"
            yield f"{self.name}_sum{_labels(labels)} {_number(total)}"
            yield f"{self.name}_count{_labels(labels)} {counts[-1]}"


class Registry:
    """The metrics of one process. Collectors run before each render to refresh values read elsewhere."""

    def __init__(self, **const_labels: str) -> None:
        self.const: LabelKey = tuple((k, str(v)) for k, v in const_labels.items())
        self._metrics: dict[str, _Metric] = {}
        self._collectors: list[Callable[[], None]] = []

    def _add(self, metric: _Metric) -> _Metric:
        existing = self._metrics.get(metric.name)
        if existing is not None:
            if type(existing) is not type(metric) or existing.labelnames != metric.labelnames:
                raise ValueError(f"metric {metric.name} already registered differently")
            return existing  # a second caller (another consumer in the process) shares it
        self._metrics[metric.name] = metric
        return metric

    def counter(self, name: str, help_: str, labelnames: Sequence[str] = ()) -> Counter:
        return self._add(Counter(name, help_, labelnames))  # type: ignore[return-value]

    def gauge(self, name: str, help_: str, labelnames: Sequence[str] = ()) -> Gauge:
        return self._add(Gauge(name, help_, labelnames))  # type: ignore[return-value]

    def histogram(
        self, name: str, help_: str, labelnames: Sequence[str] = (), buckets: Sequence[float] = DURATION_BUCKETS
    ) -> Histogram:
        return self._add(Histogram(name, help_, labelnames, buckets))  # type: ignore[return-value]

    def on_collect(self, collector: Callable[[], None]) -> None:
        self._collectors.append(collector)

    def render(self) -> str:
        for collect in self._collectors:
            collect()
        return "".join(metric.render(self.const) for metric in self._metrics.values())


def merge(texts: Sequence[str]) -> str:
    """One exposition from several: each family's HELP/TYPE once, its samples from every text together
    (Prometheus rejects a family that appears twice). Families keep their first-seen order."""
    heads: dict[str, list[str]] = {}
    samples: dict[str, list[str]] = {}
    for text in texts:
        family = ""
        for line in text.splitlines():
            if not line.strip():
                continue
            if line.startswith("# HELP ") or line.startswith("# TYPE "):
                family = line.split(" ", 3)[2]
                head = heads.setdefault(family, [])
                samples.setdefault(family, [])
                if not any(h.startswith(line[:7]) for h in head):
                    head.append(line)
            elif not line.startswith("#"):
                samples.setdefault(family, []).append(line)
                heads.setdefault(family, [])
    return "".join("".join(f"{line}\n" for line in heads[f] + samples[f]) for f in heads)

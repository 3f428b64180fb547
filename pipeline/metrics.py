"""Prometheus metrics through prometheus_client.

Every service process keeps one `Metrics`: its own `CollectorRegistry` (never the library's global
one) whose families carry the process's constant labels (service, host, pid) and answer
`gigaam.metrics.<service>` with their exposition; the API's `/metrics` gathers those replies over NATS
and `merge`s them, so one scrape target shows every worker on every host. That scatter-gather is why
prometheus_client's multiprocess mode (mmap files in one directory of one host) is not used: the
processes share nothing, and workers on other hosts are included too.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import disable_created_metrics
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

# Seconds: from a short file's format stage to a long file's transcription.
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)

disable_created_metrics()  # no `_created` series: restarts already show in the `pid` label


class Metrics:
    """The metrics of one process. `counter`/`gauge`/`histogram` return prometheus_client metrics
    (label them with `.labels(...)`); asking twice for one name returns the same metric, so several
    consumers in a process share it. `register` adds a custom collector (values kept elsewhere)."""

    def __init__(self, **const_labels: str) -> None:
        self.const = {name: str(value) for name, value in const_labels.items()}
        self.registry = CollectorRegistry(auto_describe=True)
        self._metrics: dict[str, Counter | Gauge | Histogram] = {}

    def _get(self, kind: type, name: str, help_: str, labelnames: Sequence[str], **extra: object):  # noqa: ANN202
        existing = self._metrics.get(name)
        if existing is not None:
            if type(existing) is not kind or tuple(existing._labelnames) != tuple(labelnames):
                raise ValueError(f"metric {name} already registered differently")
            return existing
        metric = kind(name, help_, labelnames, registry=self.registry, **extra)
        self._metrics[name] = metric
        return metric

    def counter(self, name: str, help_: str, labelnames: Sequence[str] = ()) -> Counter:
        return self._get(Counter, name, help_, labelnames)

    def gauge(self, name: str, help_: str, labelnames: Sequence[str] = ()) -> Gauge:
        return self._get(Gauge, name, help_, labelnames)

    def histogram(
        self, name: str, help_: str, labelnames: Sequence[str] = (), buckets: Sequence[float] = DURATION_BUCKETS
    ) -> Histogram:
        return self._get(Histogram, name, help_, labelnames, buckets=buckets)

    def register(self, collector: Collector) -> None:
        self.registry.register(collector)

    def render(self) -> str:
        return _expose(_labelled(self.registry.collect(), self.const))


def merge(texts: Sequence[str]) -> str:
    """One exposition from several processes' texts: each family once (Prometheus rejects a family
    that appears twice) with every process's samples, families in first-seen order."""
    families: dict[str, Metric] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            kept = families.setdefault(family.name, family)
            if kept is not family:
                kept.samples.extend(family.samples)
    return _expose(families.values())


def _labelled(families: Iterable[Metric], const: dict[str, str]) -> Iterator[Metric]:
    for family in families:
        if const:
            family.samples = [
                Sample(s.name, {**const, **s.labels}, s.value, s.timestamp, s.exemplar) for s in family.samples
            ]
        yield family


class _Families:
    """A collector over families already built, for `generate_latest`."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self._families


def _expose(families: Iterable[Metric]) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))
    return generate_latest(registry).decode()

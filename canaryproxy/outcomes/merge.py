"""One ``/metrics`` for several worker processes: the supervisor's exposition with every
worker's counters and histograms added in (the README's "Running several instances").

Rules this module keeps:
- Workers send their cumulative values (not deltas) of the families in ``SUMMED``: a
  message lost or sent twice cannot skew the sum, and the supervisor keeps the newest
  value per worker and series.
- A worker that exits leaves its counts behind: they move into ``retired`` and stay in
  every later exposition, so a restart never makes a counter go backwards. Its in-flight
  gauge does not (those requests are gone).
- A series whose value falls (a reload dropped and re-made it) is treated the same way:
  what it had counted is retired, and it counts again from its new value.
- Gauges that describe the whole instance (weight, verdict, health, ejections) are the
  supervisor's own, which holds the judge and the probes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample

__all__ = ["SUMMED", "MergedView", "WorkerSums", "worker_samples"]

SUMMED = frozenset(
    {
        "canaryproxy_requests",
        "canaryproxy_request_duration_seconds",
        "canaryproxy_requests_in_flight",
        "canaryproxy_upstream_attempts",
        "canaryproxy_outcomes",
        "canaryproxy_upstream_errors",
        "canaryproxy_client_aborts",
        "canaryproxy_rejected_requests",
        "canaryproxy_dropped_header_fields",
    }
)
LEVELS = frozenset({"canaryproxy_requests_in_flight"})
"""Gauges among SUMMED: summed over live workers only."""

Key = tuple[str, str, tuple[tuple[str, str], ...]]
"""(family, sample name, sorted labels)"""
WireSample = list[Any]
"""[family, sample name, [[label, value], ...], value]: JSON-able"""


def worker_samples(registry: CollectorRegistry) -> list[WireSample]:
    """A worker's values of the SUMMED families, cumulative, as sent to its supervisor."""
    out: list[WireSample] = []
    for metric in registry.collect():
        if metric.name not in SUMMED:
            continue
        for sample in metric.samples:
            if sample.name.endswith("_created"):
                continue
            out.append([metric.name, sample.name, sorted(sample.labels.items()), sample.value])
    return out


class WorkerSums:
    """The newest values of each live worker, and what exited workers had counted."""

    def __init__(self) -> None:
        self._live: dict[int, dict[Key, float]] = {}
        self._retired: dict[Key, float] = {}

    def update(self, worker: int, samples: list[WireSample]) -> None:
        values = self._live.setdefault(worker, {})
        for family, name, labels, value in samples:
            key: Key = (family, name, tuple((str(k), str(v)) for k, v in labels))
            before = values.get(key)
            if before is not None and value < before and family not in LEVELS:
                self._retire_one(key, before)
            values[key] = float(value)

    def retire(self, worker: int) -> None:
        """The worker exited: keep its counts, drop its levels."""
        for key, value in self._live.pop(worker, {}).items():
            if key[0] not in LEVELS:
                self._retire_one(key, value)

    def _retire_one(self, key: Key, value: float) -> None:
        self._retired[key] = self._retired.get(key, 0.0) + value

    def forget(self, keep: Callable[[dict[str, str]], bool]) -> None:
        """Drop retired series whose labels ``keep`` refuses (a service left the config)."""
        for key in [k for k in self._retired if not keep(dict(k[2]))]:
            del self._retired[key]

    def totals(self) -> dict[Key, float]:
        sums = dict(self._retired)
        for values in self._live.values():
            for key, value in values.items():
                sums[key] = sums.get(key, 0.0) + value
        return sums


class MergedView:
    """What a supervisor's ``/metrics`` collects: its registry, workers' sums added in."""

    def __init__(self, registry: CollectorRegistry, sums: WorkerSums) -> None:
        self.registry = registry
        self.sums = sums

    def collect(self) -> Iterator[Metric]:
        extra: dict[str, dict[Key, float]] = {}
        for key, value in self.sums.totals().items():
            extra.setdefault(key[0], {})[key] = value
        for metric in self.registry.collect():
            added = extra.pop(metric.name, None)
            if added is None:
                yield metric
                continue
            samples: list[Sample] = []
            for sample in metric.samples:
                key = (metric.name, sample.name, tuple(sorted(sample.labels.items())))
                value = sample.value + added.pop(key, 0.0)
                samples.append(sample._replace(value=value))
            for (_, name, labels), value in added.items():  # series only workers have
                samples.append(Sample(name, dict(labels), value, None, None))
            metric.samples = samples
            yield metric

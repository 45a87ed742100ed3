"""Prometheus metrics (prometheus-client) on an injected registry.

Rules this module keeps:

- Names, types and labels are the SPEC's "Metrics" table, exactly; the extras are marked below.
- Label values come from the config (service, pool, backend) or from a fixed vocabulary in this
  module (kind, rule, verdict, outcome, result), never from request data. Anything else raises
  (KeyError for a name the config does not know, ValueError for a word outside the vocabulary),
  so a bug cannot explode cardinality silently. `code` is a status code the proxy itself sent,
  bounded to 100–599 (RFC 9110 §15), so at most 500 series per pool.
- The hot path is cheap: every `.labels(...)` child is resolved once — at startup, or on first
  use of a status code — and the engine holds one `PoolMetrics` per (service, pool), so a
  request costs two dict lookups, a counter increment and a histogram observation.
- Series that exist for a service exist from the start (zero), so `rate()` and alerts see them
  before the first event.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import cast

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

__all__ = [
    "ATTEMPT_OUTCOMES",
    "EJECTION_RULES",
    "UPSTREAM_ERROR_KINDS",
    "VERDICTS",
    "Metrics",
    "PoolMetrics",
    "ServiceSpec",
]

UPSTREAM_ERROR_KINDS = ("connect", "timeout", "reset", "protocol")
EJECTION_RULES = ("comparative", "backstop", "manual")
VERDICTS = ("insufficient_samples", "healthy", "shared_degradation", "ejected")
# Extra: every attempt at a backend. "ok" got a response, "retried" failed and the request was
# sent again elsewhere, "failed" failed and was the last try. Final responses are in
# canaryproxy_requests_total; this counts the tries behind them.
ATTEMPT_OUTCOMES = ("ok", "retried", "failed")

# (service name, [(pool, backend url), ...]) — the label values the config allows.
ServiceSpec = tuple[str, Sequence[tuple[str, str]]]


@dataclass(frozen=True, slots=True)
class _Families:
    upstream_errors: Counter
    canary_weight: Gauge
    canary_ejected: Gauge
    ejections: Counter
    verdict: Gauge
    backend_healthy: Gauge
    client_aborts: Counter
    rejected: Counter
    reloads: Counter


def _families(registry: CollectorRegistry) -> _Families:
    sp = ("service", "pool")
    return _Families(
        upstream_errors=Counter(
            "canaryproxy_upstream_errors_total",
            "Failed attempts at a backend, by kind (connect, timeout, reset, protocol).",
            (*sp, "kind"),
            registry=registry,
        ),
        canary_weight=Gauge(
            "canaryproxy_canary_weight",
            "Effective canary weight in percent (0 while ejected).",
            ("service",),
            registry=registry,
        ),
        canary_ejected=Gauge(
            "canaryproxy_canary_ejected",
            "1 while the service's canary is ejected.",
            ("service",),
            registry=registry,
        ),
        ejections=Counter(
            "canaryproxy_ejections_total",
            "Canary ejections, by the rule that fired (comparative, backstop, manual).",
            ("service", "rule"),
            registry=registry,
        ),
        verdict=Gauge(
            "canaryproxy_verdict",
            "1 for the service's current verdict, 0 for the others.",
            ("service", "verdict"),
            registry=registry,
        ),
        backend_healthy=Gauge(
            "canaryproxy_backend_healthy",
            "1 while the backend is in rotation.",
            (*sp, "backend"),
            registry=registry,
        ),
        client_aborts=Counter(
            "canaryproxy_client_aborts_total",
            "Requests the client gave up on before the answer (logged as 499).",
            ("service",),
            registry=registry,
        ),
        rejected=Counter(
            "canaryproxy_rejected_requests_total",
            "Malformed requests answered by the proxy without reaching a backend.",
            ("code",),
            registry=registry,
        ),
        reloads=Counter(
            "canaryproxy_config_reloads_total",
            "Config reloads (SIGHUP), by result (ok, failed).",
            ("result",),
            registry=registry,
        ),
    )


def _status_label(code: int, low: int, high: int) -> str:
    if type(code) is not int or not low <= code <= high:
        raise ValueError(f"status code must be an integer in {low}–{high}, got {code!r}")
    return str(code)


class Level:
    """A gauge only the event loop thread moves: a plain number, read at scrape time."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount


class PoolMetrics:
    """The request-path recorder of one (service, pool); built at startup, held by the engine.

    Responses, durations, attempts and in-flight requests — touched on every request — are plain
    numbers that ``_RequestCollector`` turns into Prometheus families at scrape time: no lock
    and no child lookup per request (prometheus-client's children take a lock per update).
    """

    __slots__ = (
        "_bounds",
        "_errors",
        "_fam",
        "_key",
        "attempts",
        "buckets",
        "codes",
        "created",
        "duration_sum",
        "in_flight",
    )

    def __init__(self, fam: _Families, service: str, pool: str, bounds: Sequence[float]) -> None:
        self._fam = fam
        self._key = (service, pool)
        self._bounds = tuple(bounds)
        self.codes: dict[int, int] = {}
        self.buckets = [0] * (len(self._bounds) + 1)  # the last one is +Inf
        self.duration_sum = 0.0
        self._errors = {
            k: fam.upstream_errors.labels(service, pool, k) for k in UPSTREAM_ERROR_KINDS
        }
        self.attempts = dict.fromkeys(ATTEMPT_OUTCOMES, 0)
        self.created = time.time()  # the counters' _created series, as prometheus-client's
        self.in_flight = Level()

    def __repr__(self) -> str:
        return f"PoolMetrics(service={self._key[0]!r}, pool={self._key[1]!r})"

    def observe(self, code: int, duration: float) -> None:
        """One response sent to a client: its status code and its duration in seconds."""
        codes = self.codes
        if code in codes:
            codes[code] += 1
        else:
            _status_label(code, 100, 599)
            codes[code] = 1
        self.buckets[bisect_left(self._bounds, duration)] += 1  # le is inclusive
        self.duration_sum += duration

    def upstream_error(self, kind: str) -> None:
        """One failed attempt at a backend of this pool (`kind` in UPSTREAM_ERROR_KINDS)."""
        try:
            self._errors[kind].inc()
        except KeyError:
            raise ValueError(_unknown(kind, UPSTREAM_ERROR_KINDS, "kind")) from None

    def attempt(self, outcome: str) -> None:
        """One attempt at a backend of this pool (`outcome` in ATTEMPT_OUTCOMES)."""
        attempts = self.attempts
        if outcome not in attempts:
            raise ValueError(_unknown(outcome, ATTEMPT_OUTCOMES, "outcome"))
        attempts[outcome] += 1

    def _remove(self) -> None:
        """Drop this pool's registry series (its service or pool left the config)."""
        fam, key = self._fam, self._key
        for kind in self._errors:
            fam.upstream_errors.remove(*key, kind)


class _RequestCollector:
    """Scrape-time view of every pool's plain-number request metrics.

    Duck-typed, not a ``Collector`` subclass: this module is compiled by mypyc, which sees
    third-party classes as Any (setup.py), and a native class cannot extend one.
    """

    def __init__(self, pools: dict[tuple[str, str], PoolMetrics], bounds: Sequence[float]) -> None:
        self.pools = pools
        go_float = cast(Callable[[float], str], floatToGoString)  # untyped upstream
        self.les = [go_float(b) for b in bounds] + ["+Inf"]

    def collect(self) -> Iterator[Metric]:
        sp = ["service", "pool"]
        requests = CounterMetricFamily(
            "canaryproxy_requests",
            "Responses sent to clients, by the pool that served them and status code.",
            labels=[*sp, "code"],
        )
        duration = HistogramMetricFamily(
            "canaryproxy_request_duration_seconds",
            "Time from request received to response complete.",
            labels=sp,
        )
        in_flight = GaugeMetricFamily(
            "canaryproxy_requests_in_flight", "Requests being served, by pool.", labels=sp
        )
        attempts = CounterMetricFamily(
            "canaryproxy_upstream_attempts",
            "Attempts at a backend, retries included: ok, retried (failed, sent again), failed.",
            labels=[*sp, "outcome"],
        )
        for (service, pool), pm in list(self.pools.items()):
            for code, count in sorted(pm.codes.items()):
                requests.add_metric([service, pool, str(code)], count)
            cumulative = list(accumulate(pm.buckets))
            duration.add_metric(
                [service, pool], list(zip(self.les, cumulative, strict=True)), pm.duration_sum
            )
            in_flight.add_metric([service, pool], pm.in_flight.value)
            for outcome, count in pm.attempts.items():
                attempts.add_metric([service, pool, outcome], count, created=pm.created)
        yield requests
        yield duration
        yield in_flight
        yield attempts


class _ServiceMetrics:
    """Per-service children, resolved once."""

    __slots__ = ("aborts", "ejected", "ejections", "verdicts", "weight")

    def __init__(self, fam: _Families, service: str) -> None:
        self.weight: Gauge = fam.canary_weight.labels(service)
        self.ejected: Gauge = fam.canary_ejected.labels(service)
        self.ejections = {r: fam.ejections.labels(service, r) for r in EJECTION_RULES}
        self.verdicts = {v: fam.verdict.labels(service, v) for v in VERDICTS}
        # A service starts with no samples; keeps "exactly one verdict is 1" true from the start.
        self.verdicts["insufficient_samples"].set(1)
        self.aborts: Counter = fam.client_aborts.labels(service)


class Metrics:
    """Every canaryproxy metric, registered on `registry` (never the global one)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        services: Sequence[ServiceSpec],
        buckets: Sequence[float],
    ) -> None:
        self._registry = registry
        self._fam = _families(registry)
        self._bounds = tuple(buckets)
        self._services: dict[str, _ServiceMetrics] = {}
        self._pools: dict[tuple[str, str], PoolMetrics] = {}
        self._backends: dict[tuple[str, str, str], Gauge] = {}
        self._rejected: dict[int, Counter] = {}
        self._reloads = {r: self._fam.reloads.labels(r) for r in ("ok", "failed")}
        # collect() is all a registry asks of a collector (describe() is optional).
        registry.register(cast(Collector, _RequestCollector(self._pools, self._bounds)))
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        self.update_services(services)

    def update_services(self, services: Sequence[ServiceSpec]) -> None:
        """Match the series to a (re)loaded config: add what is new, drop what is gone.

        Objects for services and pools that stay are kept, so requests in flight across a
        reload record into the same series. Backends start healthy (1) until told otherwise.
        """
        wanted_pools = {(name, pool) for name, backends in services for pool, _ in backends}
        wanted_backends = {
            (name, pool, url) for name, backends in services for pool, url in backends
        }
        self._drop_gone(wanted_pools, wanted_backends, {name for name, _ in services})
        for name, _ in services:
            if name not in self._services:
                self._services[name] = _ServiceMetrics(self._fam, name)
        for key in wanted_pools - self._pools.keys():
            self._pools[key] = PoolMetrics(self._fam, *key, self._bounds)
        for bkey in wanted_backends - self._backends.keys():
            self._backends[bkey] = self._fam.backend_healthy.labels(*bkey)
            self._backends[bkey].set(1)

    def _drop_gone(
        self,
        pools: set[tuple[str, str]],
        backends: set[tuple[str, str, str]],
        services: set[str],
    ) -> None:
        for key in self._pools.keys() - pools:
            self._pools.pop(key)._remove()
        for bkey in self._backends.keys() - backends:
            del self._backends[bkey]
            self._fam.backend_healthy.remove(*bkey)
        for name in self._services.keys() - services:
            del self._services[name]
            self._remove_service(name)

    def _remove_service(self, name: str) -> None:
        fam = self._fam
        for gauge in (fam.canary_weight, fam.canary_ejected, fam.client_aborts):
            gauge.remove(name)
        for rule in EJECTION_RULES:
            fam.ejections.remove(name, rule)
        for verdict in VERDICTS:
            fam.verdict.remove(name, verdict)

    def pool(self, service: str, pool: str) -> PoolMetrics:
        """The recorder for one pool; KeyError if the config has no such pool."""
        return self._pools[(service, pool)]

    def set_weight(self, service: str, weight: float) -> None:
        """The effective canary weight in percent (the caller passes 0 while ejected)."""
        self._services[service].weight.set(weight)

    def set_ejected(self, service: str, ejected: bool) -> None:
        self._services[service].ejected.set(1 if ejected else 0)

    def count_ejection(self, service: str, rule: str) -> None:
        self._services[service].ejections[_known(rule, EJECTION_RULES, "rule")].inc()

    def set_verdict(self, service: str, verdict: str) -> None:
        children = self._services[service].verdicts
        _known(verdict, VERDICTS, "verdict")
        for name, child in children.items():
            child.set(1 if name == verdict else 0)

    def set_backend_healthy(self, service: str, pool: str, backend: str, healthy: bool) -> None:
        self._backends[(service, pool, backend)].set(1 if healthy else 0)

    def rejected(self, code: int) -> None:
        """One malformed request the proxy answered itself with `code` (400–599)."""
        child = self._rejected.get(code)
        if child is None:
            child = self._fam.rejected.labels(_status_label(code, 400, 599))
            self._rejected[code] = child
        child.inc()

    def client_abort(self, service: str) -> None:
        """One request whose client went away before the answer (499; charged to no pool)."""
        self._services[service].aborts.inc()

    def reload(self, ok: bool) -> None:
        self._reloads["ok" if ok else "failed"].inc()

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """The scrape body and its Content-Type; OpenMetrics when `accept` asks for it."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self._registry), content_type


def _known(word: str, vocabulary: tuple[str, ...], what: str) -> str:
    if word not in vocabulary:
        raise ValueError(_unknown(word, vocabulary, what))
    return word


def _unknown(word: str, vocabulary: tuple[str, ...], what: str) -> str:
    return f"unknown {what} {word!r}; expected one of {', '.join(vocabulary)}"

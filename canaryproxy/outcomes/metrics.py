"""Prometheus metrics (prometheus-client) on an injected registry.

Rules this module keeps:

- Names, types and labels are the README's "Metrics" table, exactly; the extras are marked below.
- Label values come from the config (service, pool, backend) or from a fixed vocabulary in this
  module (kind, rule, verdict, outcome, result), never from request data. Anything else raises
  (KeyError for a name the config does not know, ValueError for a word outside the vocabulary),
  so a bug cannot explode cardinality silently. `code` is a status code the proxy itself sent,
  bounded to 100–599 (RFC 9110 §15), so at most 500 series per pool.
- The hot path is cheap: every `.labels(...)` child is resolved once — at startup, or on first
  use of a status code — and each service holds one `PoolMetrics` per pool, so a request
  costs two dict lookups, a counter increment and a histogram observation.
- Series that exist for a service exist from the start (zero), so `rate()` and alerts see them
  before the first event.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, cast

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

from canaryproxy.vocabulary import (
    ATTEMPT_OUTCOMES,
    EJECT_RULES,
    OUTCOME_KINDS,
    POOLS,
    ROLLOUT_STATES,
    UPSTREAM_ERROR_KINDS,
    VERDICTS,
    AttemptOutcome,
    EjectRule,
    FailureKind,
    OutcomeKind,
    Pool,
    RolloutState,
    Verdict,
    require,
)

__all__ = ["NOTIFICATION_RESULTS", "Metrics", "PoolMetrics", "ServiceMetrics"]

NOTIFICATION_RESULTS = ("sent", "retried", "failed")

# Extra: canaryproxy_upstream_attempts_total counts every attempt at a backend by
# vocabulary.ATTEMPT_OUTCOMES. Final responses are in canaryproxy_requests_total; this counts
# the tries behind them.

BackendLabels = Sequence[tuple[Pool, str]]
"""A service's (pool, backend url) pairs: the label values its config allows."""


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
    dropped_fields: Counter
    reloads: Counter
    workers: Gauge
    state_store_up: Gauge
    rollout_step: Gauge
    rollout_state: Gauge
    notifications: Counter


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
            "Canary ejections, by the rule that fired (comparative, backstop, latency, manual,"
            " rollout).",
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
        dropped_fields=Counter(
            "canaryproxy_dropped_header_fields_total",
            "Request header fields not forwarded because their name has an underscore.",
            registry=registry,
        ),
        reloads=Counter(
            "canaryproxy_config_reloads_total",
            "Config reloads (SIGHUP), by result (ok, failed).",
            ("result",),
            registry=registry,
        ),
        workers=Gauge(
            "canaryproxy_workers",
            "Worker processes alive (1 for a single process).",
            registry=registry,
        ),
        state_store_up=Gauge(
            "canaryproxy_state_store_up",
            "1 while the state store answers (SQLite file, or Redis when shared).",
            registry=registry,
        ),
        rollout_step=Gauge(
            "canaryproxy_rollout_step",
            "Index of the rollout plan's current step (-1 while idle).",
            ("service",),
            registry=registry,
        ),
        rollout_state=Gauge(
            "canaryproxy_rollout_state",
            "1 for the rollout plan's current state, 0 for the others.",
            ("service", "state"),
            registry=registry,
        ),
        notifications=Counter(
            "canaryproxy_notifications_total",
            "Webhook notifications: sent (delivered), retried (an attempt after a failed one),"
            " failed (given up, or dropped).",
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
    """The request-path recorder of one (service, pool), held by its service's ServiceMetrics.

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
        "outcomes",
        "overridden",
    )

    def __init__(self, fam: _Families, service: str, pool: Pool, bounds: Sequence[float]) -> None:
        self._fam = fam
        self._key = (service, pool)
        self._bounds = tuple(bounds)
        self.codes: dict[int, int] = {}
        self.buckets = [0] * (len(self._bounds) + 1)  # the last one is +Inf
        self.duration_sum = 0.0
        self._errors = {
            k: fam.upstream_errors.labels(service, pool, k) for k in UPSTREAM_ERROR_KINDS
        }
        self.attempts: dict[str, int] = dict.fromkeys(ATTEMPT_OUTCOMES, 0)
        self.outcomes: dict[str, int] = dict.fromkeys(OUTCOME_KINDS, 0)
        self.created = time.time()  # the counters' _created series, as prometheus-client's
        self.in_flight = Level()
        self.overridden = 0  # responses to requests the override header routed

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

    def upstream_error(self, kind: FailureKind) -> None:
        """One failed attempt at a backend of this pool (`kind` in UPSTREAM_ERROR_KINDS)."""
        try:
            self._errors[kind].inc()
        except KeyError:
            require(kind, UPSTREAM_ERROR_KINDS, "upstream error kind")
            raise

    def attempt(self, outcome: AttemptOutcome) -> None:
        """One attempt at a backend of this pool (`outcome` in ATTEMPT_OUTCOMES)."""
        attempts = self.attempts
        if outcome not in attempts:
            require(outcome, ATTEMPT_OUTCOMES, "attempt outcome")
        attempts[outcome] += 1

    def outcome(self, kind: OutcomeKind) -> None:
        """One response ``outcomes`` counted (`kind` in OUTCOME_KINDS)."""
        outcomes = self.outcomes
        if kind not in outcomes:
            require(kind, OUTCOME_KINDS, "outcome")
        outcomes[kind] += 1

    def remove(self) -> None:
        """Drop this pool's registry series (its service or pool left the config)."""
        fam, key = self._fam, self._key
        for kind in self._errors:
            fam.upstream_errors.remove(*key, kind)


class _RequestCollector:
    """Scrape-time view of every pool's plain-number request metrics.

    Duck-typed, not a ``Collector`` subclass: this module is compiled by mypyc, which sees
    third-party classes as Any (setup.py), and a native class cannot extend one.
    """

    def __init__(self, services: list[ServiceMetrics], bounds: Sequence[float]) -> None:
        self.services = services  # Metrics' list of live services, kept up to date by it
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
        outcomes = CounterMetricFamily(
            "canaryproxy_outcomes",
            "Responses counted by a service's outcomes settings: failure_header (the backend"
            " said failure), failure_status (a listed status), slow (head later than slow).",
            labels=[*sp, "outcome"],
        )
        overridden = CounterMetricFamily(
            "canaryproxy_override_requests",
            "Responses to requests the override header routed (also in requests_total):"
            " QA's traffic, never the judge's evidence.",
            labels=sp,
        )
        for sm in list(self.services):
            for pool, pm in list(sm.pools.items()):
                labels = [sm.name, pool]
                for code, count in sorted(pm.codes.items()):
                    requests.add_metric([*labels, str(code)], count)
                cumulative = list(accumulate(pm.buckets))
                duration.add_metric(
                    labels, list(zip(self.les, cumulative, strict=True)), pm.duration_sum
                )
                in_flight.add_metric(labels, pm.in_flight.value)
                for outcome, count in pm.attempts.items():
                    attempts.add_metric([*labels, outcome], count, created=pm.created)
                for kind, count in pm.outcomes.items():
                    outcomes.add_metric([*labels, kind], count, created=pm.created)
                overridden.add_metric(labels, pm.overridden, created=pm.created)
        yield requests
        yield duration
        yield in_flight
        yield attempts
        yield outcomes
        yield overridden


class ServiceMetrics:
    """One service's series: its pools' recorders, its gauges, its backends' health.

    Owned by the service's runtime object; kept across reloads while the service stays (so
    requests in flight record into the same series), removed when it leaves the config.
    """

    __slots__ = (
        "_backends",
        "_fam",
        "_metrics",
        "aborts",
        "ejected",
        "ejections",
        "name",
        "pools",
        "rollout_states",
        "rollout_step",
        "verdicts",
        "weight",
    )

    def __init__(self, metrics: Metrics, name: str, backends: BackendLabels) -> None:
        fam = metrics.families
        self._metrics = metrics
        self._fam = fam
        self.name = name
        self.weight: Gauge = fam.canary_weight.labels(name)
        self.ejected: Gauge = fam.canary_ejected.labels(name)
        self.ejections = {r: fam.ejections.labels(name, r) for r in EJECT_RULES}
        self.verdicts = {v: fam.verdict.labels(name, v) for v in VERDICTS}
        # A service starts with no samples; keeps "exactly one verdict is 1" true from the start.
        self.verdicts["insufficient_samples"].set(1)
        self.rollout_step: Gauge = fam.rollout_step.labels(name)
        self.rollout_step.set(-1)
        self.rollout_states = {s: fam.rollout_state.labels(name, s) for s in ROLLOUT_STATES}
        self.rollout_states["idle"].set(1)
        self.aborts: Counter = fam.client_aborts.labels(name)
        self.pools: dict[Pool, PoolMetrics] = {}
        self._backends: dict[tuple[Pool, str], Gauge] = {}
        self.update(backends)

    def __repr__(self) -> str:
        return f"ServiceMetrics({self.name!r}, pools={sorted(self.pools)})"

    def update(self, backends: BackendLabels) -> None:
        """Match the series to a (re)loaded config: add what is new, drop what is gone.

        Backends start healthy (1) until told otherwise."""
        wanted_pools = {pool for pool, _ in backends}
        wanted = set(backends)
        for pool in [p for p in self.pools if p not in wanted_pools]:
            self.pools.pop(pool).remove()
        for key in [k for k in self._backends if k not in wanted]:
            del self._backends[key]
            self._fam.backend_healthy.remove(self.name, *key)
        for pool in POOLS:
            if pool in wanted_pools and pool not in self.pools:
                self.pools[pool] = PoolMetrics(self._fam, self.name, pool, self._metrics.bounds)
        for key in backends:
            if key not in self._backends:
                self._backends[key] = gauge = self._fam.backend_healthy.labels(self.name, *key)
                gauge.set(1)

    def remove(self) -> None:
        """The service left the config: drop its series."""
        self.update(())
        self._metrics.forget(self)
        fam, name = self._fam, self.name
        for gauge in (fam.canary_weight, fam.canary_ejected, fam.client_aborts, fam.rollout_step):
            gauge.remove(name)
        for state in ROLLOUT_STATES:
            fam.rollout_state.remove(name, state)
        for rule in EJECT_RULES:
            fam.ejections.remove(name, rule)
        for verdict in VERDICTS:
            fam.verdict.remove(name, verdict)

    def set_weight(self, weight: float) -> None:
        """The effective canary weight in percent (the caller passes 0 while ejected)."""
        self.weight.set(weight)

    def set_ejected(self, ejected: bool) -> None:
        self.ejected.set(1 if ejected else 0)

    def count_ejection(self, rule: EjectRule) -> None:
        self.ejections[require(rule, EJECT_RULES, "ejection rule")].inc()

    def set_verdict(self, verdict: Verdict) -> None:
        require(verdict, VERDICTS, "verdict")
        for name, child in self.verdicts.items():
            child.set(1 if name == verdict else 0)

    def set_rollout(self, state: RolloutState, step: int) -> None:
        """The rollout plan's state and step index (-1 while idle)."""
        require(state, ROLLOUT_STATES, "rollout state")
        self.rollout_step.set(step)
        for name, child in self.rollout_states.items():
            child.set(1 if name == state else 0)

    def set_backend_healthy(self, pool: Pool, backend: str, healthy: bool) -> None:
        self._backends[(pool, backend)].set(1 if healthy else 0)

    def client_abort(self) -> None:
        """One request whose client went away before the answer (499; charged to no pool)."""
        self.aborts.inc()


class Metrics:
    """Every canaryproxy metric, registered on `registry` (never the global one)."""

    def __init__(self, registry: CollectorRegistry, buckets: Sequence[float]) -> None:
        self._registry = registry
        self.families = _families(registry)
        self.bounds = tuple(buckets)
        self._live: list[ServiceMetrics] = []
        self._rejected: dict[int, Counter] = {}
        self._reloads = {r: self.families.reloads.labels(r) for r in ("ok", "failed")}
        self._notifications = {
            r: self.families.notifications.labels(r) for r in NOTIFICATION_RESULTS
        }
        self.families.workers.set(1)
        self.families.state_store_up.set(1)
        # What /metrics collects: the registry, or a supervisor's view that adds its workers'.
        self.source: Any = registry
        # collect() is all a registry asks of a collector (describe() is optional).
        registry.register(cast(Collector, _RequestCollector(self._live, self.bounds)))
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)

    def service(self, name: str, backends: BackendLabels) -> ServiceMetrics:
        """The series of a service new to the config (``ServiceMetrics.update`` on reload)."""
        sm = ServiceMetrics(self, name, backends)
        self._live.append(sm)
        return sm

    def forget(self, sm: ServiceMetrics) -> None:
        if sm in self._live:
            self._live.remove(sm)

    def rejected(self, code: int) -> None:
        """One malformed request the proxy answered itself with `code` (400–599)."""
        child = self._rejected.get(code)
        if child is None:
            child = self.families.rejected.labels(_status_label(code, 400, 599))
            self._rejected[code] = child
        child.inc()

    def dropped_fields(self, count: int) -> None:
        """Request header fields dropped for an underscore in their name."""
        self.families.dropped_fields.inc(count)

    def notification(self, result: str) -> None:
        """One webhook delivery outcome (``result`` in NOTIFICATION_RESULTS)."""
        self._notifications[require(result, NOTIFICATION_RESULTS, "notification result")].inc()

    def reload(self, ok: bool) -> None:
        self._reloads["ok" if ok else "failed"].inc()

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """The scrape body and its Content-Type; OpenMetrics when `accept` asks for it."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.source), content_type

    def set_workers(self, alive: int) -> None:
        self.families.workers.set(alive)

    def set_state_store_up(self, up: bool) -> None:
        self.families.state_store_up.set(1 if up else 0)

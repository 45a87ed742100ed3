"""Metrics: exact names, types, labels and values, read back through prometheus-client's parser."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from canaryproxy.outcomes.metrics import Metrics, PoolMetrics, ServiceMetrics
from canaryproxy.vocabulary import Pool

ServiceSpec = tuple[str, list[tuple[Pool, str]]]

BUCKETS = (0.001, 0.01, 0.1, 1.0)
SERVICES: list[ServiceSpec] = [
    (
        "web",
        [
            ("stable", "http://127.0.0.1:9001"),
            ("stable", "http://127.0.0.1:9003"),
            ("canary", "http://127.0.0.1:9002"),
        ],
    ),
    ("api", [("stable", "http://127.0.0.1:9101")]),
]
Labels = dict[str, str]


class NamedMetrics:
    """The metrics of several services by name, as the proxy's services table holds them."""

    def __init__(self, services: list[ServiceSpec]) -> None:
        self.root = Metrics(CollectorRegistry(), BUCKETS)
        self.services: dict[str, ServiceMetrics] = {}
        self.update_services(services)

    def update_services(self, services: list[ServiceSpec]) -> None:
        """What a reload does: keep who stays (updated), add who is new, drop who left."""
        wanted = dict(services)
        for name in [n for n in self.services if n not in wanted]:
            self.services.pop(name).remove()
        for name, backends in services:
            if name in self.services:
                self.services[name].update(backends)
            else:
                self.services[name] = self.root.service(name, backends)

    def pool(self, service: str, pool: Pool) -> PoolMetrics:
        return self.services[service].pools[pool]

    def set_weight(self, service: str, weight: float) -> None:
        self.services[service].set_weight(weight)

    def set_ejected(self, service: str, ejected: bool) -> None:
        self.services[service].set_ejected(ejected)

    def count_ejection(self, service: str, rule: str) -> None:
        self.services[service].count_ejection(rule)  # type: ignore[arg-type]

    def set_verdict(self, service: str, verdict: str) -> None:
        self.services[service].set_verdict(verdict)  # type: ignore[arg-type]

    def set_backend_healthy(self, service: str, pool: Pool, backend: str, healthy: bool) -> None:
        self.services[service].set_backend_healthy(pool, backend, healthy)

    def client_abort(self, service: str) -> None:
        self.services[service].client_abort()

    def rejected(self, code: int) -> None:
        self.root.rejected(code)

    def reload(self, ok: bool) -> None:
        self.root.reload(ok)

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        return self.root.exposition(accept)


def new_metrics(services: list[ServiceSpec] = SERVICES) -> NamedMetrics:
    return NamedMetrics(services)


def scrape(metrics: NamedMetrics) -> dict[str, Metric]:
    body, content_type = metrics.exposition()
    assert content_type.startswith("text/plain; version=0.0.4")
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def value(families: dict[str, Metric], sample: str, **labels: str) -> float | None:
    """The value of one sample, or None when the series does not exist."""
    family = families[_family_of(sample, families)]
    matches = [s.value for s in family.samples if s.name == sample and s.labels == labels]
    assert len(matches) <= 1
    return matches[0] if matches else None


def _family_of(sample: str, families: dict[str, Metric]) -> str:
    for suffix in ("_bucket", "_count", "_sum", "_total", ""):
        base = sample.removesuffix(suffix)
        if sample.endswith(suffix) and base in families:
            return base
    raise AssertionError(f"no family for {sample}")


def label_sets(families: dict[str, Metric], name: str) -> list[Labels]:
    return [s.labels for s in families[name].samples if not s.name.endswith("_created")]


# --- the documented table --------------------------------------------------------------------

SPEC_TABLE = [
    ("canaryproxy_requests", "counter", {"service", "pool", "code"}),
    ("canaryproxy_request_duration_seconds", "histogram", {"service", "pool"}),
    ("canaryproxy_upstream_errors", "counter", {"service", "pool", "kind"}),
    ("canaryproxy_canary_weight", "gauge", {"service"}),
    ("canaryproxy_canary_ejected", "gauge", {"service"}),
    ("canaryproxy_ejections", "counter", {"service", "rule"}),
    ("canaryproxy_verdict", "gauge", {"service", "verdict"}),
    ("canaryproxy_backend_healthy", "gauge", {"service", "pool", "backend"}),
    ("canaryproxy_requests_in_flight", "gauge", {"service", "pool"}),
    # extras
    ("canaryproxy_upstream_attempts", "counter", {"service", "pool", "outcome"}),
    ("canaryproxy_rejected_requests", "counter", {"code"}),
    ("canaryproxy_client_aborts", "counter", {"service"}),
    ("canaryproxy_config_reloads", "counter", {"result"}),
]


@pytest.mark.parametrize(("name", "kind", "labels"), SPEC_TABLE, ids=[r[0] for r in SPEC_TABLE])
def test_every_metric_has_the_spec_type_and_labels(name: str, kind: str, labels: set[str]) -> None:
    metrics = new_metrics()
    metrics.pool("web", "canary").observe(200, 0.005)
    metrics.rejected(400)
    families = scrape(metrics)
    assert families[name].type == kind
    for sample_labels in label_sets(families, name):
        assert set(sample_labels) - {"le"} == labels


def test_process_and_platform_metrics_are_on_the_injected_registry() -> None:
    families = scrape(new_metrics())
    assert "python_info" in families
    assert "python_gc_objects_collected" in families
    assert "process_cpu_seconds" in families  # Linux: ProcessCollector reads /proc


def test_nothing_is_registered_on_the_global_registry() -> None:
    from prometheus_client import REGISTRY

    before = {m.name for m in REGISTRY.collect()}
    new_metrics()
    assert not any(m.name.startswith("canaryproxy_") for m in REGISTRY.collect())
    assert {m.name for m in REGISTRY.collect()} == before


# --- exact values after a known mix ----------------------------------------------------------


def test_requests_count_by_code_and_pool_exactly() -> None:
    metrics = new_metrics()
    stable, canary = metrics.pool("web", "stable"), metrics.pool("web", "canary")
    for code, times in ((200, 5), (404, 2), (502, 1), (504, 1)):
        for _ in range(times):
            stable.observe(code, 0.002)
    canary.observe(200, 0.002)
    canary.observe(503, 0.002)
    families = scrape(metrics)
    total = "canaryproxy_requests_total"
    assert value(families, total, service="web", pool="stable", code="200") == 5
    assert value(families, total, service="web", pool="stable", code="404") == 2
    assert value(families, total, service="web", pool="stable", code="502") == 1
    assert value(families, total, service="web", pool="stable", code="504") == 1
    assert value(families, total, service="web", pool="canary", code="200") == 1
    assert value(families, total, service="web", pool="canary", code="503") == 1
    assert value(families, total, service="web", pool="canary", code="404") is None


def test_histogram_buckets_sum_and_count_are_exact() -> None:
    metrics = new_metrics()
    pool = metrics.pool("api", "stable")
    durations = [0.0005, 0.001, 0.004, 0.05, 0.5, 2.0]
    for d in durations:
        pool.observe(200, d)
    families = scrape(metrics)
    name = "canaryproxy_request_duration_seconds"
    got = {
        s.labels["le"]: s.value
        for s in families[name].samples
        if s.name == f"{name}_bucket" and s.labels["service"] == "api"
    }
    # le is inclusive: 0.001 lands in the 0.001 bucket.
    assert got == {"0.001": 2, "0.01": 3, "0.1": 4, "1.0": 5, "+Inf": 6}
    assert value(families, f"{name}_count", service="api", pool="stable") == 6
    total = value(families, f"{name}_sum", service="api", pool="stable")
    assert total is not None
    assert math.isclose(total, sum(durations))


def test_upstream_errors_and_attempts_count_each_try() -> None:
    metrics = new_metrics()
    pool = metrics.pool("web", "canary")
    # A connect failure retried elsewhere, then a timeout that was the last try.
    pool.attempt("retried")
    pool.upstream_error("connect")
    pool.attempt("failed")
    pool.upstream_error("timeout")
    pool.attempt("ok")
    families = scrape(metrics)
    errors, attempts = "canaryproxy_upstream_errors_total", "canaryproxy_upstream_attempts_total"
    labels = {"service": "web", "pool": "canary"}
    assert value(families, errors, **labels, kind="connect") == 1
    assert value(families, errors, **labels, kind="timeout") == 1
    assert value(families, errors, **labels, kind="reset") == 0
    assert value(families, errors, **labels, kind="protocol") == 0
    assert value(families, attempts, **labels, outcome="retried") == 1
    assert value(families, attempts, **labels, outcome="failed") == 1
    assert value(families, attempts, **labels, outcome="ok") == 1


def test_in_flight_goes_up_and_down() -> None:
    metrics = new_metrics()
    pool = metrics.pool("web", "stable")
    pool.in_flight.inc()
    pool.in_flight.inc()
    pool.in_flight.dec()
    families = scrape(metrics)
    assert value(families, "canaryproxy_requests_in_flight", service="web", pool="stable") == 1
    assert value(families, "canaryproxy_requests_in_flight", service="web", pool="canary") == 0


def test_service_gauges_and_ejection_counter() -> None:
    metrics = new_metrics()
    metrics.set_weight("web", 12.5)
    metrics.set_ejected("web", True)
    metrics.count_ejection("web", "comparative")
    metrics.count_ejection("web", "manual")
    metrics.count_ejection("web", "manual")
    families = scrape(metrics)
    assert value(families, "canaryproxy_canary_weight", service="web") == 12.5
    assert value(families, "canaryproxy_canary_ejected", service="web") == 1
    assert value(families, "canaryproxy_canary_ejected", service="api") == 0
    ejections = "canaryproxy_ejections_total"
    assert value(families, ejections, service="web", rule="comparative") == 1
    assert value(families, ejections, service="web", rule="backstop") == 0
    assert value(families, ejections, service="web", rule="manual") == 2


@pytest.mark.parametrize(
    "verdicts",
    [[], ["healthy"], ["healthy", "ejected"], ["shared_degradation", "insufficient_samples"]],
    ids=["initial", "healthy", "then-ejected", "back-to-insufficient"],
)
def test_exactly_one_verdict_is_one(verdicts: list[str]) -> None:
    metrics = new_metrics()
    for verdict in verdicts:
        metrics.set_verdict("web", verdict)
    current = verdicts[-1] if verdicts else "insufficient_samples"
    families = scrape(metrics)
    got = {
        s.labels["verdict"]: s.value
        for s in families["canaryproxy_verdict"].samples
        if s.labels["service"] == "web"
    }
    assert got == {v: (1 if v == current else 0) for v in got}
    assert set(got) == {"insufficient_samples", "healthy", "shared_degradation", "ejected"}


def test_backends_start_healthy_and_follow_set_backend_healthy() -> None:
    metrics = new_metrics()
    metrics.set_backend_healthy("web", "stable", "http://127.0.0.1:9003", False)
    families = scrape(metrics)
    got = {
        (s.labels["service"], s.labels["pool"], s.labels["backend"]): s.value
        for s in families["canaryproxy_backend_healthy"].samples
    }
    assert got == {
        ("web", "stable", "http://127.0.0.1:9001"): 1,
        ("web", "stable", "http://127.0.0.1:9003"): 0,
        ("web", "canary", "http://127.0.0.1:9002"): 1,
        ("api", "stable", "http://127.0.0.1:9101"): 1,
    }


def test_rejections_aborts_and_reloads_count_exactly() -> None:
    metrics = new_metrics()
    for code in (400, 400, 431, 505):
        metrics.rejected(code)
    metrics.client_abort("web")
    metrics.reload(ok=True)
    metrics.reload(ok=False)
    metrics.reload(ok=False)
    families = scrape(metrics)
    rejected = "canaryproxy_rejected_requests_total"
    assert value(families, rejected, code="400") == 2
    assert value(families, rejected, code="431") == 1
    assert value(families, rejected, code="505") == 1
    assert value(families, "canaryproxy_client_aborts_total", service="web") == 1
    assert value(families, "canaryproxy_client_aborts_total", service="api") == 0
    assert value(families, "canaryproxy_config_reloads_total", result="ok") == 1
    assert value(families, "canaryproxy_config_reloads_total", result="failed") == 2


# --- label values only from the config or the fixed vocabulary -------------------------------

BAD_CALLS: list[tuple[str, Callable[[NamedMetrics], object], type[Exception]]] = [
    ("code-99", lambda m: m.pool("web", "stable").observe(99, 0.1), ValueError),
    ("code-600", lambda m: m.pool("web", "stable").observe(600, 0.1), ValueError),
    ("code-bool", lambda m: m.pool("web", "stable").observe(True, 0.1), ValueError),
    ("rejected-200", lambda m: m.rejected(200), ValueError),
    ("kind", lambda m: m.pool("web", "stable").upstream_error("dns"), ValueError),  # type: ignore[arg-type]
    ("outcome", lambda m: m.pool("web", "stable").attempt("maybe"), ValueError),  # type: ignore[arg-type]
    ("rule", lambda m: m.count_ejection("web", "vibes"), ValueError),
    ("verdict", lambda m: m.set_verdict("web", "great"), ValueError),
    ("unknown-pool", lambda m: m.pool("api", "canary"), KeyError),
    ("unknown-service", lambda m: m.set_weight("shop", 5), KeyError),
    (
        "unknown-backend",
        lambda m: m.set_backend_healthy("web", "stable", "http://x", True),
        KeyError,
    ),
    ("unknown-abort", lambda m: m.client_abort("/etc/passwd"), KeyError),
]


@pytest.mark.parametrize(
    ("call", "error"), [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS]
)
def test_label_values_outside_config_and_vocabulary_raise(
    call: Callable[[NamedMetrics], object], error: type[Exception]
) -> None:
    metrics = new_metrics()
    before = metrics.exposition()[0].count(b"\n")
    with pytest.raises(error):
        call(metrics)
    assert metrics.exposition()[0].count(b"\n") == before  # no series was created


# --- reload and exposition formats -----------------------------------------------------------


def test_update_services_adds_new_drops_gone_and_keeps_survivors() -> None:
    metrics = new_metrics()
    kept = metrics.pool("web", "stable")
    kept.observe(200, 0.01)
    metrics.pool("web", "canary").observe(500, 0.01)
    metrics.update_services(
        [("web", [("stable", "http://127.0.0.1:9001")]), ("shop", [("stable", "http://s:1")])]
    )
    assert metrics.pool("web", "stable") is kept
    with pytest.raises(KeyError):
        metrics.pool("web", "canary")
    families = scrape(metrics)
    services = {s.labels.get("service") for f in families.values() for s in f.samples}
    assert "api" not in services
    assert "shop" in services
    total = "canaryproxy_requests_total"
    assert value(families, total, service="web", pool="stable", code="200") == 1
    assert value(families, total, service="web", pool="canary", code="500") is None
    backends = {s.labels["backend"] for s in families["canaryproxy_backend_healthy"].samples}
    assert backends == {"http://127.0.0.1:9001", "http://s:1"}


def test_openmetrics_is_served_when_asked_for() -> None:
    metrics = new_metrics()
    metrics.pool("web", "stable").observe(200, 0.02)
    body, content_type = metrics.exposition("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    parsed = openmetrics_families(body.decode())  # type: ignore[no-untyped-call]
    families = {f.name: f for f in parsed}
    samples = families["canaryproxy_requests"].samples
    assert any(s.value == 1 and s.labels.get("code") == "200" for s in samples)

"""Where outcomes go: metrics, the judge, ejections and the access log.

The engine and the director report here (``Recorder`` and ``Observer``); this module turns
each report into counter increments, judge updates and — when the judge says so — an
ejection.  It decides nothing itself.

Accounting rules (SPEC.md "Metrics" and "Error budget"):
- ``canaryproxy_requests_total`` counts final responses under the pool that served them;
  proxy-made 502/504 under the pool whose backend failed, 503 under the pool decided.
  A 499 (client gone) is charged to no pool.
- The judge sees one outcome per attempt: a failed attempt (connect, timeout, reset,
  protocol, or a canary user served by stable because the canary had no backend) as an
  error of that backend's pool when it happens, and an upstream answer at the end of the
  request (5xx is an error) with its duration.  A 503 with no backend anywhere is an error
  of the decided pool.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from json.encoder import encode_basestring as _quote  # C-accelerated
from typing import TYPE_CHECKING

from canaryproxy.accesslog import where_fields
from canaryproxy.metrics import UPSTREAM_ERROR_KINDS, Metrics, PoolMetrics

if TYPE_CHECKING:
    from canaryproxy.accesslog import AccessLog
    from canaryproxy.budget import Ejection, Judge
    from canaryproxy.director import PoolName, Route
    from canaryproxy.exchange import Exchange
    from canaryproxy.state import RuntimeState

log = logging.getLogger("canaryproxy.judge")


class Hub:
    def __init__(
        self,
        metrics: Metrics,
        state: RuntimeState,
        judges: Mapping[str, Judge],
        access_log: AccessLog,
        monotonic: Callable[[], float],
    ) -> None:
        self.metrics = metrics
        self.state = state
        self.judges = judges  # app.py's table, kept up to date across reloads
        self.access_log = access_log
        self.monotonic = monotonic
        self.fallbacks: dict[tuple[str, str], int] = {}

    def _pool(self, service: str, pool: PoolName) -> PoolMetrics | None:
        """A pool's recorder; None when a reload removed it while requests were in flight."""
        try:
            return self.metrics.pool(service, pool)
        except KeyError:
            return None

    # Observer (director) ---------------------------------------------------------------------
    def attempt_failed(self, service: str, pool: PoolName, kind: str) -> None:
        if kind in UPSTREAM_ERROR_KINDS:
            pm = self._pool(service, pool)
            if pm is not None:
                pm.upstream_error(kind)
        self._judge(service, pool, True, 0.0)

    def fallback(self, service: str, wanted: PoolName, served: PoolName) -> None:
        key = (service, f"{wanted}->{served}")
        self.fallbacks[key] = self.fallbacks.get(key, 0) + 1

    # Recorder (engine) -----------------------------------------------------------------------
    def request_started(self, route: Route) -> None:
        pm = self._pool(route.service.name, route.decided)
        if pm is not None:
            pm.in_flight.inc()

    def request_done(self, exchange: Exchange, status: int, duration: float, aborted: bool) -> None:
        route = exchange.route
        if route is not None:
            self._account(exchange, route, status, duration, aborted)
        if self.access_log.is_enabled:
            self.access_log.write_line(_access_line(exchange, status, duration, aborted))

    def request_rejected(self, status: int, reason: str, client_ip: bytes) -> None:
        self.metrics.rejected(status)
        if self.access_log.is_enabled:
            self.access_log.write(
                {"client": client_ip.decode(), "status": status, "rejected": reason}
            )

    def _account(
        self, exchange: Exchange, route: Route, status: int, duration: float, aborted: bool
    ) -> None:
        name = route.service.name
        started = self._pool(name, route.decided)
        if started is not None:
            started.in_flight.dec()
        if status == 499:
            with contextlib.suppress(KeyError):  # the service left the config meanwhile
                self.metrics.client_abort(name)
            return
        self._count_attempts(exchange, route)
        pool = route.decided if status == 503 and exchange.is_local else route.served
        served = self._pool(name, pool)
        if served is not None:
            served.observe(status, duration)
        if exchange.is_local:
            if status == 503:
                self._judge(name, pool, True, duration)
        elif not aborted:
            self._judge(name, pool, status >= 500, duration)

    def _count_attempts(self, exchange: Exchange, route: Route) -> None:
        """Every backend tried: all but the last failed and were retried elsewhere."""
        tried = route.tried
        for backend in tried[:-1]:
            retried = self._pool(route.service.name, backend.pool)
            if retried is not None:
                retried.attempt("retried")
        if tried:
            answered = exchange.resp_started and not exchange.is_local
            outcome = "ok" if answered else "failed"
            last = self._pool(route.service.name, tried[-1].pool)
            if last is not None:
                last.attempt(outcome)

    # the judge -------------------------------------------------------------------------------
    def _judge(self, service: str, pool: PoolName, is_error: bool, latency: float) -> None:
        judge = self.judges.get(service)
        if judge is None:
            return
        ejection = judge.record(pool, is_error, latency, self.monotonic())
        if ejection is not None:
            self.eject(service, ejection)

    def eject(self, service: str, ejection: Ejection) -> None:
        if not self.state.eject_now(service, ejection.rule, ejection.reason):
            return
        self.metrics.set_ejected(service, True)
        self.metrics.set_weight(service, 0.0)
        self.metrics.count_ejection(service, ejection.rule)
        self.metrics.set_verdict(service, "ejected")
        log.warning(
            "canary ejected",
            extra={
                "service": service,
                "rule": ejection.rule,
                "reason": ejection.reason,
                "evidence": ejection.evidence,
            },
        )


def _access_line(exchange: Exchange, status: int, duration: float, aborted: bool) -> str:
    """One JSON object, assembled by hand: a third of what json.dumps of a dict costs."""
    head = exchange.head
    route = exchange.route
    backend = exchange.backend
    if backend is not None and route is not None and backend.pool == route.served:
        where = backend.log_fields  # quoted once, when the backend was configured
    else:
        where = where_fields(
            route.service.name if route else None,
            route.served if route else None,
            backend.url if backend else None,
        )
    cut = ',"aborted":true' if aborted else ""  # the response was cut off, not completed
    # Formatted apart: a format spec in the f-string below would make mypyc build all of
    # it through str.format, at three times the cost.
    ms = f"{duration * 1000:.3f}"
    return (
        f'{{"client":{_quote(head.client_ip.decode())},"method":{_quote(head.method.decode())},'
        f'"path":{_quote(head.path)},"host":{_quote(head.host)},"status":{status},{where},'
        f'"duration_ms":{ms},"request_id":{_quote(head.request_id.decode())}{cut}}}'
    )

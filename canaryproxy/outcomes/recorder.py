"""Where the engine's reports go: the service that routed the request, and the access log.

The engine calls ``request_started`` when a request is routed, ``request_done`` with its
``Outcome`` when it ends, and ``request_rejected`` for a malformed request no service saw.
This module decides nothing and keeps no per-service state: accounting and judging are the
routing service's own (``Service.request_done``), reached through the route.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from canaryproxy.outcomes.accesslog import AccessLog, access_line

if TYPE_CHECKING:
    from canaryproxy.decide.director import Outcome, Route
    from canaryproxy.outcomes.metrics import Metrics


class Recorder:
    def __init__(self, metrics: Metrics, access_log: AccessLog) -> None:
        self.metrics = metrics
        self.access_log = access_log

    def request_started(self, route: Route) -> None:
        route.service.owner.request_started(route.decided)

    def request_done(self, outcome: Outcome) -> None:
        route = outcome.route
        if route is not None:
            route.service.owner.request_done(outcome)
        if outcome.head.dropped_fields:
            self.metrics.dropped_fields(outcome.head.dropped_fields)
        access_log = self.access_log
        if access_log.is_enabled:
            line = access_line(outcome, access_log.backend_fields, access_log.clock.iso())
            access_log.write_line(line)

    def request_rejected(self, status: int, reason: str, client_ip: bytes) -> None:
        self.metrics.rejected(status)
        if self.access_log.is_enabled:
            self.access_log.write(
                {"client": client_ip.decode(), "status": status, "rejected": reason}
            )

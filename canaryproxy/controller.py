"""What the admin API can read and change: STATE per service, weight, eject, restore.

Implements ``admin.AdminController`` over the runtime state, the judges, the health of each
backend and the metrics gauges; every change goes through ``RuntimeState`` (persisted first).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from canaryproxy.state import Conflict

if TYPE_CHECKING:
    from canaryproxy.budget import Judge
    from canaryproxy.director import Director
    from canaryproxy.hub import Hub
    from canaryproxy.metrics import Metrics
    from canaryproxy.state import RuntimeState, ServiceState

__all__ = ["Conflict", "Controller"]


class Controller:
    def __init__(
        self,
        director: Callable[[], Director],
        state: RuntimeState,
        judges: Mapping[str, Judge],
        metrics: Metrics,
        hub: Hub,
        monotonic: Callable[[], float],
    ) -> None:
        self.director = director
        self.state = state
        self.judges = judges
        self.metrics = metrics
        self.hub = hub
        self.monotonic = monotonic

    def service_names(self) -> Sequence[str]:
        return list(self.director().services)

    def service_state(self, name: str) -> dict[str, object]:
        service = self.director().services[name]  # KeyError → 404
        state = self.state.get(name)
        now = self.monotonic()
        judge = self.judges.get(name)
        out: dict[str, object] = {
            "name": name,
            "canary_weight": state.effective_weight if service.canary else 0.0,
            "configured_weight": state.canary_weight,
            "weight_source": state.weight_source,
            "has_canary": service.canary is not None,
            "ejected": state.is_ejected,
            "eject_reason": state.eject_reason,
            "eject_rule": state.eject_rule,
            "ejected_at": state.ejected_at,
            "weight_before_eject": state.weight_before_eject,
            "epoch": state.epoch,
            "sticky_mode": service.mode,
            "verdict": self._verdict(name, state, judge, now),
            "evidence": judge.evidence(now) if judge else {},
            "window": {
                pool: judge.window_stats(pool, now) if judge else _empty_window()
                for pool in ("stable", "canary")
            },
            "fallbacks": {
                route: count for (svc, route), count in self.hub.fallbacks.items() if svc == name
            },
            "backends": [
                {
                    "pool": b.pool,
                    "url": b.url,
                    "weight": b.weight,
                    "healthy": b.is_routable(now),
                    "health": repr(b.health),
                }
                for b in service.all_backends()
            ],
        }
        return out

    def _verdict(self, name: str, state: ServiceState, judge: Judge | None, now: float) -> str:
        if state.is_ejected:
            return "ejected"
        return judge.verdict(now) if judge else "insufficient_samples"

    async def set_weight(self, name: str, weight: float, who: str) -> dict[str, object]:
        service = self.director().services[name]
        if service.canary is None and weight != 0:
            raise Conflict("the service has no canary pool")
        state = await self.state.set_weight(name, weight, who)
        self.metrics.set_weight(name, state.effective_weight)
        return self.service_state(name)

    async def eject(self, name: str, reason: str | None, who: str) -> dict[str, object]:
        service = self.director().services[name]
        if service.canary is None:
            raise Conflict("the service has no canary pool")
        text = reason or "ejected by an operator"
        await self.state.eject(name, "manual", text, who)
        judge = self.judges.get(name)
        if judge is not None:
            judge.mark_ejected("manual", text)
        self.metrics.set_ejected(name, True)
        self.metrics.set_weight(name, 0.0)
        self.metrics.count_ejection(name, "manual")
        self.metrics.set_verdict(name, "ejected")
        return self.service_state(name)

    async def restore(self, name: str, weight: float | None, who: str) -> dict[str, object]:
        self.director().services[name]
        state = await self.state.restore(name, weight, who)
        judge = self.judges.get(name)
        if judge is not None:
            judge.reset(self.monotonic())  # the judgement starts afresh
        self.metrics.set_ejected(name, False)
        self.metrics.set_weight(name, state.effective_weight)
        self.metrics.set_verdict(name, self._verdict(name, state, judge, self.monotonic()))
        return self.service_state(name)


def _empty_window() -> dict[str, object]:
    return {"requests": 0, "errors": 0, "error_rate": 0.0, "p50_ms": None, "p99_ms": None}

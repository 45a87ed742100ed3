"""One home per service: its routing, knobs, judge, backends' health, series and fallbacks.

Rules this module keeps:
- A ``Service`` is built from the config at start and on every reload; ``Services`` is the
  one table of them by name, and a reload swaps it whole.  What must outlive a reload is
  handed over from the previous ``Service`` of the same name: its knobs (weight, ejection,
  epoch), its metric series and fallback counts, its judge while its ``error_budget`` is
  unchanged, each backend's health while its ``health_check``/``outlier_detection`` are.
- Every rule about the canary's fate is written here once: an ejection by the judge or by
  an operator shows the same way (gauges, counter, verdict, log); ``restore`` starts the
  judgement afresh; ``verdict`` is ``ejected`` while the knobs say so, else the judge's.
- Outcome accounting (the README's "Metrics" and "Error budget"): ``requests_total`` counts final
  responses under the pool that served them; proxy-made 502/504 under the pool whose
  backend failed, 503 under the pool decided; a 499 (client gone) is charged to no pool.
  The judge sees one outcome per attempt: a failed attempt as an error of that backend's
  pool when it happens, an upstream answer at the end (5xx is an error) with its duration;
  a 503 with no backend anywhere is an error of the decided pool.
- A request in flight across a reload reports to the ``Service`` that routed it; the
  series and knobs it reaches are the ones the new ``Service`` holds, or gone with it.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from canaryproxy.config.load import Config, ServiceConfig
from canaryproxy.decide.director import BackendRuntime, Director, Outcome, ServiceRouting
from canaryproxy.decide.health import ActiveCheck, BackendHealth, OutlierDetector
from canaryproxy.decide.sticky import CookieCodec
from canaryproxy.judge.budget import BudgetParams, Ejection, Judge
from canaryproxy.judge.tally import Row, Tally
from canaryproxy.outcomes.metrics import Metrics, ServiceMetrics
from canaryproxy.state.runtime import Conflict, RuntimeState, ServiceState
from canaryproxy.state.store import ServiceRecord, StateError
from canaryproxy.vocabulary import POOLS, EjectRule, FailureKind, Pool, Verdict, WeightSource

__all__ = ["Env", "Service", "Services"]

log = logging.getLogger("canaryproxy.judge")

State = dict[str, object]


@dataclass(frozen=True, slots=True)
class Env:
    """What every service is built with: clocks, randomness, the state keeper, metrics."""

    keeper: RuntimeState
    metrics: Metrics
    secrets: tuple[str, ...]
    wall: Callable[[], float]
    monotonic: Callable[[], float]
    rng: random.Random
    # True where the judge is elsewhere (a worker process, or an instance sharing its
    # state): outcomes are counted in each service's ``tally`` and flushed, not judged here.
    pooled: bool = False


class Service:
    """A configured service and everything it owns at run time."""

    def __init__(
        self,
        config: ServiceConfig,
        root: Config,
        env: Env,
        previous: Service | None,
        records: Mapping[str, ServiceRecord],
    ) -> None:
        self.name = config.name
        self.config = config
        self.env = env
        self.has_canary = config.canary is not None
        old_knobs = previous.knobs if previous is not None else None
        self.knobs: ServiceState = env.keeper.adopt(
            self.name, config.canary_weight, old_knobs, records
        )
        self.fallbacks: dict[str, int] = previous.fallbacks if previous is not None else {}
        # (pool, url) → (the health_check and outlier_detection it was built with, health)
        self.healths: dict[tuple[Pool, str], tuple[object, BackendHealth]] = {}
        old = previous.healths if previous is not None else {}
        self.routing = ServiceRouting(
            config,
            self.knobs,
            self,
            _codec(config, root, env),
            root.sticky.mode,
            lambda pool, url: self._health(old, pool, url),
        )
        labels = [(b.pool, b.url) for b in self.routing.all_backends()]
        self.metrics: ServiceMetrics
        if previous is not None:
            self.metrics = previous.metrics
            self.metrics.update(labels)
        else:
            self.metrics = env.metrics.service(self.name, labels)
        self.judge = self._build_judge(previous)
        self.tally: Tally | None = None
        if env.pooled and self.has_canary:
            self.tally = Tally(config.error_budget.max_p99_latency)
            if previous is not None and previous.tally is not None:
                self.tally.merge(previous.tally.drain())

    def __repr__(self) -> str:
        weight, ejected = self.effective_weight, self.knobs.is_ejected
        return f"<Service {self.name} weight={weight:g} ejected={ejected}>"

    def retire(self, successor: Service | None) -> None:
        """A reload replaced this service (``successor``) or removed it (None).

        Requests it routed may still be in flight: their outcomes must reach the judge that
        judges now, or none, never a judge the reload discarded."""
        if successor is None:
            self.judge = None
            self.tally = None
            self.metrics.remove()
        else:
            self.judge = successor.judge
            self.tally = successor.tally

    # building ----------------------------------------------------------------------------
    def _health(
        self, old: Mapping[tuple[Pool, str], tuple[object, BackendHealth]], pool: Pool, url: str
    ) -> BackendHealth:
        """A backend's health, kept across reloads unless its settings changed."""
        hc, od = self.config.health_check, self.config.outlier_detection
        settings = (hc, od)
        known = old.get((pool, url))
        if known is not None and known[0] == settings:
            health = known[1]
        else:
            health = BackendHealth(
                ActiveCheck(hc.rise, hc.fall) if hc else None,
                OutlierDetector(
                    od.consecutive_failures, od.base_ejection_time, od.max_ejection_time
                ),
            )
        self.healths[(pool, url)] = (settings, health)
        return health

    def _build_judge(self, previous: Service | None) -> Judge | None:
        """The canary's judge; a new one (judging afresh) when the error budget changed."""
        if not self.has_canary:
            return None
        params = BudgetParams.from_config(self.config.error_budget)
        old = previous.judge if previous is not None else None
        if old is not None and old.params == params:
            return old
        judge = Judge(params, self.env.monotonic())
        if self.knobs.is_ejected:
            judge.mark_ejected(self.knobs.eject_rule or "manual", self.knobs.eject_reason or "")
        return judge

    # what the director reports -----------------------------------------------------------
    def attempt_failed(self, pool: Pool, kind: FailureKind) -> None:
        """A failed attempt at a backend of ``pool``; ``unavailable`` is a canary user
        served by stable for want of a canary backend: the judge's, no backend's error."""
        if kind != "unavailable":
            pm = self.metrics.pools.get(pool)
            if pm is not None:  # a reload may have removed the pool meanwhile
                pm.upstream_error(kind)
        self._judge_outcome(pool, True, 0.0)

    def fallback(self, wanted: Pool, served: Pool) -> None:
        key = f"{wanted}->{served}"
        self.fallbacks[key] = self.fallbacks.get(key, 0) + 1

    # what the engine reports (through the recorder) --------------------------------------
    def request_started(self, pool: Pool) -> None:
        pm = self.metrics.pools.get(pool)
        if pm is not None:
            pm.in_flight.inc()

    def request_done(self, outcome: Outcome) -> None:
        route = outcome.route
        assert route is not None
        pools = self.metrics.pools
        started = pools.get(route.decided)
        if started is not None:
            started.in_flight.dec()
        status = outcome.status
        if status == 499:
            self.metrics.client_abort()
            return
        self._count_attempts(route.tried, outcome.answered)
        pool = route.decided if status == 503 and outcome.is_local else route.served
        served = pools.get(pool)
        if served is not None:
            served.observe(status, outcome.duration)
        if outcome.is_local:
            if status == 503:
                self._judge_outcome(pool, True, outcome.duration)
        elif not outcome.aborted:
            self._judge_outcome(pool, status >= 500, outcome.duration)

    def _count_attempts(self, tried: Sequence[BackendRuntime], answered: bool) -> None:
        """Every backend tried: all but the last failed and were retried elsewhere."""
        pools = self.metrics.pools
        for backend in tried[:-1]:
            retried = pools.get(backend.pool)
            if retried is not None:
                retried.attempt("retried")
        if tried:
            last = pools.get(tried[-1].pool)
            if last is not None:
                last.attempt("ok" if answered else "failed")

    def _judge_outcome(self, pool: Pool, is_error: bool, latency: float) -> None:
        tally = self.tally
        if tally is not None:
            tally.add(pool, is_error, latency)
            return
        judge = self.judge
        if judge is None:
            return
        ejection = judge.record(pool, is_error, latency, self.env.monotonic())
        if ejection is not None:
            self._ejected_by_judge(ejection)

    def judge_tally(self, rows: list[Row], epoch: int) -> None:
        """Judge a flush of outcomes counted elsewhere (a worker, another instance).

        Outcomes counted under an older epoch (before an ejection) are not this
        judgement's: a restored canary is judged afresh."""
        judge = self.judge
        if judge is None or epoch != self.knobs.epoch or not rows:
            return
        ejection = judge.record_tally(rows, self.env.monotonic())
        if ejection is not None:
            self._ejected_by_judge(ejection)

    def follow_record(self, record: ServiceRecord) -> None:
        """Take the knobs decided elsewhere: by the supervisor (in a worker) or through
        another instance (shared state). The judge follows: ejected with the canary, afresh
        on a restore. The ejection counter is the deciding process's, not bumped here."""
        knobs = self.knobs
        was_ejected, old_epoch = knobs.is_ejected, knobs.epoch
        knobs.apply(record)
        judge = self.judge
        if judge is not None:
            if knobs.is_ejected and not judge.is_ejected:
                judge.mark_ejected(knobs.eject_rule or "manual", knobs.eject_reason or "")
            elif not knobs.is_ejected and (was_ejected or knobs.epoch != old_epoch):
                judge.reset(self.env.monotonic())
        if knobs.is_ejected and not was_ejected:
            log.info(
                "canary ejected elsewhere",
                extra={
                    "service": self.name,
                    "rule": knobs.eject_rule,
                    "reason": knobs.eject_reason,
                },
            )
        self.refresh()

    def _ejected_by_judge(self, ejection: Ejection) -> None:
        if not self.env.keeper.eject_now(self.knobs, ejection.rule, ejection.reason):
            return
        self._show_ejected(ejection.rule)
        log.warning(
            "canary ejected",
            extra={
                "service": self.name,
                "rule": ejection.rule,
                "reason": ejection.reason,
                "evidence": ejection.evidence,
            },
        )

    def _show_ejected(self, rule: EjectRule) -> None:
        metrics = self.metrics
        metrics.set_ejected(True)
        metrics.set_weight(0.0)
        metrics.count_ejection(rule)
        metrics.set_verdict("ejected")

    # what an operator changes: persisted first, then shown --------------------------------
    async def set_weight(self, weight: float, who: str) -> None:
        if not self.has_canary and weight != 0:
            raise Conflict("the service has no canary pool")
        await self.env.keeper.set_weight(self.knobs, weight, who)
        self.metrics.set_weight(self.effective_weight)

    async def eject(self, reason: str | None, who: str) -> None:
        if not self.has_canary:
            raise Conflict("the service has no canary pool")
        text = reason or "ejected by an operator"
        await self.env.keeper.eject(self.knobs, "manual", text, who)
        if self.judge is not None:
            self.judge.mark_ejected("manual", text)
        self._show_ejected("manual")

    async def restore(self, weight: float | None, who: str) -> None:
        await self.env.keeper.restore(self.knobs, weight, who)
        now = self.env.monotonic()
        if self.judge is not None:
            self.judge.reset(now)  # the judgement starts afresh
        self.metrics.set_ejected(False)
        self.metrics.set_weight(self.effective_weight)
        self.metrics.set_verdict(self.verdict(now))

    async def follow_config(self) -> str:
        """Apply the file's ``canary_weight`` if the file changed it since the weight was
        last set (the most recent change wins); say what was done, for the (re)load's log."""
        weight, knobs = self.config.canary_weight, self.knobs
        if await self.env.keeper.follow_config(knobs, weight):
            self.metrics.set_weight(self.effective_weight)
            return f"applied the file's weight {weight:g}: the file changed it"
        if knobs.canary_weight != weight and self.has_canary:
            return (
                f"kept the {knobs.weight_source} weight {knobs.canary_weight:g}: it is newer "
                f"than the file's {weight:g}, which has not changed"
            )
        return ""

    # reading -----------------------------------------------------------------------------
    @property
    def effective_weight(self) -> float:
        return self.knobs.effective_weight if self.has_canary else 0.0

    @property
    def weight_source(self) -> WeightSource:
        """Who set the effective weight: while ejected, the judge or an operator."""
        knobs = self.knobs
        if knobs.is_ejected:
            return "admin" if knobs.eject_rule == "manual" else "judge"
        return knobs.weight_source

    def verdict(self, now: float) -> Verdict:
        if self.knobs.is_ejected:
            return "ejected"
        return self.judge.verdict(now) if self.judge is not None else "insufficient_samples"

    def refresh(self) -> None:
        """Set the gauges that follow from time passing (health cool-offs, verdicts)."""
        now = self.env.monotonic()
        metrics = self.metrics
        metrics.set_weight(self.effective_weight)
        metrics.set_ejected(self.knobs.is_ejected)
        metrics.set_verdict(self.verdict(now))
        for b in self.routing.all_backends():
            metrics.set_backend_healthy(b.pool, b.url, b.is_routable(now))

    def state(self) -> State:
        """STATE (the admin API's view): plain JSON values, never a Python repr."""
        knobs, judge = self.knobs, self.judge
        now, wall = self.env.monotonic(), self.env.wall()
        return {
            "name": self.name,
            "canary_weight": self.effective_weight,
            "configured_weight": self.config.canary_weight,
            "weight_source": self.weight_source,
            "has_canary": self.has_canary,
            "ejected": knobs.is_ejected,
            "eject_reason": knobs.eject_reason,
            "eject_rule": knobs.eject_rule,
            "ejected_at": knobs.ejected_at,
            "weight_before_eject": knobs.weight_before_eject,
            "epoch": knobs.epoch,
            "sticky_mode": self.routing.mode,
            "verdict": self.verdict(now),
            "evidence": judge.evidence(now) if judge else {},
            "window": {
                pool: judge.window_stats(pool, now) if judge else _empty_window() for pool in POOLS
            },
            "fallbacks": dict(self.fallbacks),
            "backends": [
                {
                    "pool": b.pool,
                    "url": b.url,
                    "address": b.address,
                    "weight": b.weight,
                    "healthy": b.is_routable(now),
                    "health": _health_state(b, now, wall),
                }
                for b in self.routing.all_backends()
            ],
        }


class Services:
    """The one table of services by name, with the director that routes to them.

    Built whole from a config (``build``) and swapped whole on reload."""

    def __init__(self, services: Sequence[Service], env: Env) -> None:
        self._by_name = {s.name: s for s in services}
        self.director = Director(
            [s.routing for s in services], env.wall, env.monotonic, env.rng.random
        )

    @classmethod
    def build(cls, config: Config, env: Env, previous: Services | None = None) -> Services:
        """The services of ``config``; what outlives a reload comes from ``previous``, and
        the series of a service that left the config are dropped."""
        records = env.keeper.records()
        old = previous._by_name if previous is not None else {}
        services = [
            Service(sc, config, env, old.get(name), records) for name, sc in config.services.items()
        ]
        table = cls(services, env)
        for name, retired in old.items():
            successor = table._by_name.get(name)
            retired.retire(successor)
        return table

    def __iter__(self) -> Iterator[Service]:
        return iter(self._by_name.values())

    def names(self) -> list[str]:
        return list(self._by_name)

    def get(self, name: str) -> Service:
        """The service called ``name``; KeyError if the config has none."""
        return self._by_name[name]

    def refresh(self) -> None:
        for service in self._by_name.values():
            service.refresh()

    async def follow_config(self) -> dict[str, str]:
        """Each service's ``follow_config``: what was applied or kept, by service name.

        A store that fails leaves that service's weight as it was, and says so."""
        notes: dict[str, str] = {}
        for name, service in self._by_name.items():
            try:
                note = await service.follow_config()
            except (StateError, Conflict) as exc:  # a failed save, or an ejection meanwhile
                note = f"the file's weight was NOT applied: {exc}"
                log.error("config weight not applied", extra={"service": name, "error": str(exc)})
            if note:
                notes[name] = note
        return notes


def _codec(config: ServiceConfig, root: Config, env: Env) -> CookieCodec | None:
    if config.canary is None:
        return None
    sticky = root.sticky
    return CookieCodec(
        name=sticky.cookie,
        secrets=env.secrets,
        max_age=sticky.max_age,
        secure=sticky.secure,
        same_site=sticky.same_site,
        salt=config.name,
    )


def _health_state(backend: BackendRuntime, now: float, wall: float) -> dict[str, object]:
    health = backend.health
    if health is None:  # built without health (tests of routing alone)
        return {"healthy": True, "active": None, "outlier": None}
    return health.describe(now, wall)


def _empty_window() -> dict[str, object]:
    return {"requests": 0, "errors": 0, "error_rate": 0.0, "p50_ms": None, "p99_ms": None}

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

from canaryproxy.config.load import Config, RolloutConfig, ServiceConfig
from canaryproxy.decide import rollout
from canaryproxy.decide.director import (
    BackendRuntime,
    Director,
    Outcome,
    Route,
    ServiceRouting,
)
from canaryproxy.decide.health import ActiveCheck, BackendHealth, OutlierDetector
from canaryproxy.decide.rollout import Plan, Refused, StepSettings
from canaryproxy.decide.sticky import CookieCodec
from canaryproxy.judge.budget import BudgetParams, Ejection, Judge
from canaryproxy.judge.tally import Row, Tally
from canaryproxy.judge.users import ANONYMOUS, client_address, client_key, is_trusted
from canaryproxy.outcomes.metrics import Metrics, PoolMetrics, ServiceMetrics
from canaryproxy.runtime.notify import Notice
from canaryproxy.state.runtime import Conflict, RuntimeState, ServiceState, describe_plan
from canaryproxy.state.store import ServiceRecord, StateError
from canaryproxy.vocabulary import POOLS, EjectRule, FailureKind, Pool, Verdict, WeightSource

__all__ = ["Env", "Service", "Services"]

log = logging.getLogger("canaryproxy.judge")

State = dict[str, object]
DEFAULT_PLAN = RolloutConfig()


def _no_notice(notice: Notice) -> None:
    """No ``notify.webhook``: nobody to tell."""


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
    # Where a decided change is announced (the webhook's queue; returns at once).
    notify: Callable[[Notice], None] = _no_notice


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
        outcomes = config.outcomes
        self.outcomes_on = bool(
            outcomes.header or outcomes.failure_statuses or outcomes.slow is not None
        )
        old_knobs = previous.knobs if previous is not None else None
        self.knobs: ServiceState = env.keeper.adopt(
            self.name, config.canary_weight, old_knobs, records
        )
        self.fallbacks: dict[str, int] = previous.fallbacks if previous is not None else {}
        self.trusted_proxies = tuple(root.trusted_proxies)
        p99 = config.error_budget.max_p99_latency
        self.slow_limit = float("inf") if p99 is None else p99  # the backstop's
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
        plan = self.knobs.rollout
        if self.judge is not None and plan.is_active and self.judge.step is None:
            self.judge.begin_step(self.step_settings.max_ratio)  # a restart: the step goes on
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
        params = BudgetParams.from_config(
            self.config.error_budget, judge_latency=self.config.outcomes.slow is not None
        )
        old = previous.judge if previous is not None else None
        if old is not None and old.params == params:
            return old
        judge = Judge(params, self.env.monotonic())
        if self.knobs.is_ejected:
            judge.mark_ejected(self.knobs.eject_rule or "manual", self.knobs.eject_reason or "")
        return judge

    # what the director reports -----------------------------------------------------------
    def attempt_failed(self, pool: Pool, kind: FailureKind, route: Route | None = None) -> None:
        """A failed attempt at a backend of ``pool``; ``unavailable`` is a canary user
        served by stable for want of a canary backend: the judge's, no backend's error."""
        if kind != "unavailable":
            pm = self.metrics.pools.get(pool)
            if pm is not None:  # a reload may have removed the pool meanwhile
                pm.upstream_error(kind)
        self._judge_outcome(pool, True, 0.0, False, route)

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
            if route.is_forced:
                served.overridden += 1
        if outcome.is_local:
            if status == 503:
                self._judge_outcome(pool, True, outcome.duration, False, route)
        elif not outcome.aborted:
            is_error, is_late = status >= 500, False
            if self.outcomes_on:
                is_error, is_late = self._classify(outcome, served, is_error)
            self._judge_outcome(pool, is_error, outcome.duration, is_late, route)

    def _classify(
        self, outcome: Outcome, pm: PoolMetrics | None, is_error: bool
    ) -> tuple[bool, bool]:
        """What ``outcomes`` makes of an answered response: (error, slow), counted."""
        config = self.config.outcomes
        if not is_error:
            if outcome.marked_failed:
                is_error = True
                if pm is not None:
                    pm.outcome("failure_header")
            elif outcome.status in config.failure_statuses:
                is_error = True
                if pm is not None:
                    pm.outcome("failure_status")
        slow = config.slow
        is_late = slow is not None and outcome.head_latency > slow
        if is_late and pm is not None:
            pm.outcome("slow")
        return is_error, is_late

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

    def _judge_outcome(
        self,
        pool: Pool,
        is_error: bool,
        latency: float,
        is_late: bool = False,
        route: Route | None = None,
    ) -> None:
        """Hand one outcome to the judge (or its tally), with the user it was for; a
        request the override header routed is never evidence (it is not randomised)."""
        user = client = ANONYMOUS
        if route is not None:
            if route.is_forced:
                return
            user = route.bucket
            if is_error or is_late or latency > self.slow_limit:
                client = self._client_of(route)
        tally = self.tally
        if tally is not None:
            tally.add(pool, is_error, latency, is_late, user, client)
            return
        judge = self.judge
        if judge is None:
            return
        now = self.env.monotonic()
        ejection = judge.record(pool, is_error, latency, now, is_late, user, client)
        if ejection is not None:
            self._ejected_by_judge(ejection)

    def _client_of(self, route: Route) -> int:
        """The key of the address the request came from (``users.client_address``)."""
        head = route.head
        if head is None:
            return ANONYMOUS
        chain = [v for n, v in head.lheaders if n == b"x-forwarded-for"] if head.is_trusted else []
        address = client_address(head.client_ip.decode("latin-1"), chain, self._is_trusted)
        return client_key(address)

    def _is_trusted(self, ip: str) -> bool:
        return is_trusted(self.trusted_proxies, ip)

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
        was_ejected, old_epoch, plan = knobs.is_ejected, knobs.epoch, knobs.rollout
        before = self.effective_weight
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
        if not knobs.is_ejected:
            self._weight_moved(before)
        self._rollout_moved(plan, None, decided_here=False)
        self.refresh()

    def _ejected_by_judge(self, ejection: Ejection) -> None:
        plan = self.knobs.rollout
        keeper = self.env.keeper
        if not keeper.eject_now(self.knobs, ejection.rule, ejection.reason, ejection.evidence):
            return
        self._show_ejected(ejection.rule)
        self._announce(
            "ejected",
            f"canary ejected by the judge (rule {ejection.rule}): {ejection.reason}",
            ejection.evidence,
        )
        self._rollout_moved(plan, ejection.evidence)
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
        plan, before = self.knobs.rollout, self.effective_weight
        await self.env.keeper.set_weight(self.knobs, weight, who)
        self._weight_moved(before)
        self._rollout_moved(plan, None)

    async def eject(self, reason: str | None, who: str, rule: EjectRule = "manual") -> None:
        if not self.has_canary:
            raise Conflict("the service has no canary pool")
        text = reason or "ejected by an operator"
        plan = self.knobs.rollout
        await self.env.keeper.eject(self.knobs, rule, text, who)
        if self.judge is not None:
            self.judge.mark_ejected(rule, text)
        self._show_ejected(rule)
        self._announce("ejected", f"canary ejected by {who} (rule {rule}): {text}")
        self._rollout_moved(plan, None)

    async def restore(self, weight: float | None, who: str) -> None:
        await self.env.keeper.restore(self.knobs, weight, who)
        now = self.env.monotonic()
        if self.judge is not None:
            self.judge.reset(now)  # the judgement starts afresh
        self.metrics.set_ejected(False)
        self.metrics.set_weight(self.effective_weight)
        self.metrics.set_verdict(self.verdict(now))
        self._announce(
            "restored",
            f"canary restored by {who} at {self.effective_weight:g} %; judged afresh",
        )

    async def follow_config(self) -> str:
        """Apply the file's ``canary_weight`` if the file changed it since the weight was
        last set (the most recent change wins); say what was done, for the (re)load's log."""
        weight, knobs, plan = self.config.canary_weight, self.knobs, self.knobs.rollout
        before = self.effective_weight
        if await self.env.keeper.follow_config(knobs, weight):
            self._weight_moved(before)
            self._rollout_moved(plan, None)
            return f"applied the file's weight {weight:g}: the file changed it"
        if knobs.canary_weight != weight and self.has_canary:
            return (
                f"kept the {knobs.weight_source} weight {knobs.canary_weight:g}: it is newer "
                f"than the file's {weight:g}, which has not changed"
            )
        return ""

    async def follow_plan(self) -> str:
        """At a (re)load: start the configured plan if ``auto_start`` says so and none ever
        ran; end any plan of a service that no longer has a canary pool."""
        plan, cfg = self.knobs.rollout, self.config.rollout
        if not self.has_canary and plan != rollout.IDLE:
            await self._commit_rollout(rollout.IDLE, None, "config", "end")
            return "ended the rollout plan: the service has no canary pool now"
        if (
            cfg is not None
            and cfg.auto_start
            and plan == rollout.IDLE
            and not self.knobs.is_ejected
        ):
            await self.rollout_start(None, "config")
            return f"started the rollout plan (auto_start) at {self.knobs.rollout.weight:g} %"
        return ""

    # the rollout plan: every transition persisted first, then shown --------------------------
    @property
    def plan_config(self) -> RolloutConfig:
        """The config's ``rollout``, or its defaults without one (a plan started by hand)."""
        return self.config.rollout or DEFAULT_PLAN

    @property
    def step_settings(self) -> StepSettings:
        """What a step needs."""
        cfg = self.plan_config
        return StepSettings(cfg.min_step_duration, cfg.min_step_requests, cfg.max_ratio)

    async def rollout_start(self, steps: tuple[float, ...] | None, who: str) -> None:
        if not self.has_canary:
            raise Conflict("the service has no canary pool")
        if self.knobs.is_ejected:
            raise Conflict("the canary is ejected; restore it first")
        planned = steps or self.plan_config.steps
        plan = self._transition(lambda p: rollout.start(p, planned, self.env.wall()))
        await self._commit_rollout(plan, plan.weight, who, "start")

    async def rollout_pause(self, who: str) -> None:
        plan = self._transition(
            lambda p: rollout.pause(p, self.env.wall(), f"paused by an operator ({who})")
        )
        await self._commit_rollout(plan, None, who, "pause")

    async def rollout_resume(self, who: str) -> None:
        plan = self._transition(lambda p: rollout.resume(p, self.env.wall()))
        await self._commit_rollout(plan, plan.weight, who, "resume")  # back to the step's

    async def rollout_promote(self, who: str) -> None:
        plan = self._transition(
            lambda p: rollout.promote(p, self.env.wall(), f"promoted by an operator ({who})")
        )
        await self._commit_rollout(plan, plan.weight, who, _promotion(plan))

    async def rollout_abort(self, reason: str | None, who: str) -> None:
        self._transition(lambda p: rollout.abort(p, ""))  # refused unless active
        await self.eject(reason or f"rollout aborted by an operator ({who})", who, "rollout")

    async def advance_rollout(self) -> None:
        """Promote the current step if it has earned it (called every second where the
        judge decides). A store that fails, or a change made meanwhile, leaves it for the
        next second."""
        plan, judge = self.knobs.rollout, self.judge
        if plan.state != "progressing" or judge is None or self.knobs.is_ejected:
            return
        gate = judge.gate(self.env.monotonic())
        if gate is None:
            judge.begin_step(self.step_settings.max_ratio)
            return
        settings, now = self.step_settings, self.env.wall()
        if not rollout.is_due(plan, settings, now, gate.canary_requests, gate.shown):
            return
        reason = _promotion_reason(plan, now, gate.canary_requests, gate.evidence)
        nxt = rollout.promote(plan, now, reason)
        try:
            await self._commit_rollout(
                nxt, nxt.weight, "canaryproxy", _promotion(nxt), gate.evidence
            )
        except Conflict as exc:  # another instance moved first (shared state), or an ejection
            log.info("rollout step not promoted", extra={"service": self.name, "why": str(exc)})
        except StateError as exc:
            log.warning(
                "rollout step not promoted", extra={"service": self.name, "error": str(exc)}
            )

    def _transition(self, change: Callable[[Plan], Plan]) -> Plan:
        try:
            return change(self.knobs.rollout)
        except Refused as exc:
            raise Conflict(str(exc)) from None

    async def _commit_rollout(
        self,
        plan: Plan,
        weight: float | None,
        who: str,
        action: str,
        evidence: Mapping[str, object] | None = None,
    ) -> None:
        old, before = self.knobs.rollout, self.effective_weight
        await self.env.keeper.change_rollout(self.knobs, plan, weight, who, action, evidence)
        self._weight_moved(before)
        self._rollout_moved(old, evidence)

    def _rollout_moved(
        self, old: Plan, evidence: Mapping[str, object] | None, decided_here: bool = True
    ) -> None:
        """After any change of the knobs: if the plan moved, the judge's step follows, and
        the move is shown (gauges) and, where it was decided, logged with its evidence."""
        plan = self.knobs.rollout
        if plan == old:
            return
        judge = self.judge
        if judge is not None:
            if not plan.is_active:
                judge.end_step()
            elif plan.step != old.step or plan.steps != old.steps or not old.is_active:
                judge.begin_step(self.step_settings.max_ratio)
        self.metrics.set_rollout(plan.state, plan.step)
        if decided_here:
            event = _rollout_event(old, plan)
            self._announce(
                event, f"{event.replace('_', ' ')}: {describe_plan(plan)}: {plan.reason}", evidence
            )
            log.info(
                f"rollout {plan.state}",
                extra={
                    "service": self.name,
                    "from": describe_plan(old),
                    "to": describe_plan(plan),
                    "weight": self.effective_weight,
                    "reason": plan.reason,
                    "evidence": dict(evidence) if evidence is not None else None,
                },
            )

    def _weight_moved(self, before: float) -> None:
        """Show the effective weight; if it changed, the judge measures the canary's share
        afresh (the window still holds the old weight's requests)."""
        weight = self.effective_weight
        self.metrics.set_weight(weight)
        if weight != before and self.judge is not None:
            self.judge.weight_changed(weight, self.env.monotonic())

    def _announce(
        self, event: str, text: str, evidence: Mapping[str, object] | None = None
    ) -> None:
        """Tell the webhook (if any) of a change decided here."""
        self.env.notify(Notice(self.name, event, f"{self.name}: {text}", evidence))

    def rollout_state(self) -> State:
        """The plan, its state and step, the gate's evidence and what the step waits for."""
        plan, judge, settings = self.knobs.rollout, self.judge, self.step_settings
        now = self.env.wall()
        gate = judge.gate(self.env.monotonic()) if judge is not None else None
        requests = gate.canary_requests if gate is not None else 0
        more = gate.more_requests if gate is not None else 0
        shown = gate.shown if gate is not None else True
        waits = rollout.waiting_for(plan, settings, now, requests, more, shown)
        return {
            "service": self.name,
            "state": plan.state,
            "steps": list(plan.steps or self.plan_config.steps),
            "step": plan.step,
            "weight": plan.weight if plan.step >= 0 else None,
            "reason": plan.reason,
            "step_seconds": round(plan.seconds(now), 3) if plan.is_active else None,
            "settings": {
                "min_step_duration": settings.min_step_duration,
                "min_step_requests": settings.min_step_requests,
                "max_ratio": settings.max_ratio,
                "alpha": self.config.error_budget.alpha,
                "auto_start": bool(self.config.rollout and self.config.rollout.auto_start),
            },
            "gate": gate.evidence if gate is not None else None,
            "waiting_for": waits,
            "seconds_needed": rollout.seconds_needed(plan, settings, now),
            "canary_requests_needed": rollout.requests_needed(
                plan, settings, requests, more, shown
            ),
        }

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
        metrics.set_rollout(self.knobs.rollout.state, self.knobs.rollout.step)
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

    async def advance_rollouts(self) -> None:
        for service in list(self._by_name.values()):
            await service.advance_rollout()

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
            try:
                planned = await service.follow_plan()
            except (StateError, Conflict) as exc:
                planned = f"the rollout plan was NOT changed: {exc}"
                log.error("rollout plan not changed", extra={"service": name, "error": str(exc)})
            note = "; ".join(n for n in (note, planned) if n)
            if note:
                notes[name] = note
        return notes


def _rollout_event(old: Plan, new: Plan) -> str:
    """A plan's move as a notification's event: rollout_started, rollout_promoted, …"""
    if new.state == "progressing":
        if not old.is_active:
            return "rollout_started"
        return "rollout_resumed" if old.state == "paused" and old.step == new.step else (
            "rollout_promoted"
        )  # fmt: skip
    return {
        "paused": "rollout_paused",
        "completed": "rollout_completed",
        "aborted": "rollout_aborted",
    }.get(new.state, "rollout_ended")


def _promotion(plan: Plan) -> str:
    """The audit's action for a promotion: into the next step, or completing the plan."""
    return "complete" if plan.state == "completed" else "promote"


def _promotion_reason(
    plan: Plan, now: float, canary_requests: int, evidence: Mapping[str, object]
) -> str:
    """Why the proxy promoted a step, in one line with its numbers."""
    parts = []
    gates = evidence.get("gates")
    if isinstance(gates, dict):
        for name, gate in gates.items():
            if gate["canary_events"] == 0 and gate["stable_events"] == 0:
                parts.append(f"no {name} in either pool")
            else:
                parts.append(
                    f"{name} canary {gate['canary_events']} vs stable {gate['stable_events']}:"
                    f" {gate['odds']} that the canary is under {evidence['max_ratio']:g}x stable"
                )
    step = f"step {plan.step + 1}/{len(plan.steps)} ({plan.weight:g} %)"
    served = f"{canary_requests} canary requests in {rollout.format_seconds(plan.seconds(now))}"
    return f"{step} passed: {served}; " + "; ".join(parts)


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

"""Monte Carlo of the canary's judge: false ejections and time to eject, by scenario.

    python -m benchmarks.judge_sim [--runs 1000] [--seed 1] [--healthy-requests 200000]
        [--rollout-runs 200] [--max-ratio 2] [--min-step-requests 500]
        [--min-step-duration 300] [--jobs N]

It drives ``canaryproxy.judge.budget.Judge`` itself, no sockets. Traffic: requests
arrive evenly at ``RPS`` a second; each is the canary's with probability ``w``
and an error with its pool's error rate. Only errors move the comparative test,
so a run draws the gap to the next error (geometric) and hands the successes in
between to ``batch_judge.record_successes`` in one call per pool and time bucket (the
same outcome as one ``record`` call each; within one such burst stable's
successes are fed before the canary's). Errors go through ``Judge.record`` one
by one. Runs stop at an ejection.

Rollout plans (a second table): a plan walks the config's steps (5 → 10 → 25 → 50 →
100 %) as the proxy does, the judge recording every response (successes batched the same
way, until the next error or slow outcome) and, once a simulated second, the step promoted
when ``rollout.is_due`` holds on the judge's step gate; an ejection aborts the plan, a plan
still progressing after 4 simulated hours is stuck. Scenarios: a healthy canary, 1.2x, 2x
and 5x worse, one failing 10 %, one 1.5x slower (``judge_latency``), one that turns bad at
step 3; at 100 and, where the traffic matters, 1,000 requests a second. Beside each row, a
Flagger-like gate on the same traffic (every 60 s: success rate ≥ 99 % over the last 60 s
promotes, 5 failed checks roll back); its rows are for comparison and do not count in the
exit status. ``--max-ratio``, ``--min-step-requests`` and ``--min-step-duration`` override
the config's defaults for the plan; the runs are spread over ``--jobs`` processes (each
run depends only on its seed, so the results do not depend on how many).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import time
import timeit
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from statistics import NormalDist
from typing import Literal, NamedTuple

from benchmarks.batch_judge import record_successes
from canaryproxy.config.schema import RolloutConfig
from canaryproxy.decide import rollout
from canaryproxy.decide.rollout import StepSettings
from canaryproxy.judge.budget import BudgetParams, Ejection, Judge, Pool
from canaryproxy.judge.sequential import GATE_WEIGHTS, q_of
from canaryproxy.judge.tally import Tally

RPS = 100.0
LATENCY = 0.05
PARAMS = BudgetParams()  # the example config's error_budget, no p99 rule
SHARES = (0.01, 0.05, 0.20)
STABLE_RATES = (0.001, 0.005, 0.02)


@dataclass(frozen=True, slots=True)
class Phase:
    requests: int
    stable_rate: float
    canary_rate: float


@dataclass(slots=True)
class Run:
    """One simulated rollout: how far it got and where (if anywhere) it was ejected."""

    judge: Judge
    rng: random.Random
    w: float
    index: int = 0  # requests so far, both pools
    canary: int = 0  # canary requests so far
    ejection: Ejection | None = None
    ejected_canary: int = 0  # canary requests up to and including the one that tipped it

    def play(self, phase: Phase) -> None:
        end = self.index + phase.requests
        p_error = self.w * phase.canary_rate + (1 - self.w) * phase.stable_rate
        canary_of_errors = self.w * phase.canary_rate / p_error if p_error else 0.0
        canary_of_successes = self.w * (1 - phase.canary_rate) / (1 - p_error)
        while self.index < end and self.ejection is None:
            gap = min(_geometric(self.rng, p_error), end - self.index)
            self._successes(gap, canary_of_successes)
            if self.index >= end or self.ejection is not None:
                return
            pool: Pool = "canary" if self.rng.random() < canary_of_errors else "stable"
            self.canary += pool == "canary"
            self._note(self.judge.record(pool, True, LATENCY, self.index / RPS))
            self.index += 1

    def now(self) -> float:
        return max(self.index - 1, 0) / RPS

    def _successes(self, count: int, canary_share: float) -> None:
        width = self.judge.bucket_seconds
        while count > 0 and self.ejection is None:
            chunk = min(count, _bucket_room(self.index, width))
            t = (self.index + chunk - 1) / RPS
            canary = _binomial(self.rng, chunk, canary_share)
            if canary < chunk:
                self._note(record_successes(self.judge, "stable", chunk - canary, LATENCY, t))
            if canary and self.ejection is None:
                self._note(record_successes(self.judge, "canary", canary, LATENCY, t))
            self.canary += canary
            self.index += chunk
            count -= chunk

    def _note(self, ejection: Ejection | None) -> None:
        if ejection is not None and self.ejection is None:
            self.ejection = ejection
            counts = ejection.evidence["canary"]
            assert isinstance(counts, dict)
            self.ejected_canary = int(counts["requests_since_reset"])


def _bucket_room(index: int, width: float) -> int:
    """Requests from ``index`` on that fall in the same time bucket as it."""
    bucket = int((index / RPS) // width)
    nxt = max(index + 1, math.ceil((bucket + 1) * width * RPS))
    while int((nxt / RPS) // width) == bucket:
        nxt += 1
    while nxt - 1 > index and int(((nxt - 1) / RPS) // width) != bucket:
        nxt -= 1
    return nxt - index


def _geometric(rng: random.Random, p: float) -> int:
    """Failures before the first success of Bernoulli(p) trials."""
    if p <= 0:
        return 1 << 62
    if p >= 1:
        return 0
    return int(math.log(1.0 - rng.random()) / math.log1p(-p))


def _binomial(rng: random.Random, n: int, p: float) -> int:
    """Exact Binomial(n, p) by jumping between successes: O(n·min(p, 1-p))."""
    if n <= 0 or p <= 0:
        return 0
    if p >= 1:
        return n
    if p > 0.5:
        return n - _binomial(rng, n, 1 - p)
    log_q = math.log1p(-p)
    count, position = 0, 0
    while True:
        position += int(math.log(1.0 - rng.random()) / log_q) + 1
        if position > n:
            return count
        count += 1


def _new_run(seeds: random.Random, w: float) -> Run:
    return Run(Judge(PARAMS, 0.0), random.Random(seeds.getrandbits(64)), w)


def _p95(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


NOTES = """
What ran (every run has its own seed drawn from --seed; runs stop at an ejection):
- w=5%, canary 10%: one config, up to 200/(0.10*0.05) requests a run; canary
  requests counted up to and including the one that tipped it.
- 5x worse: canary error rate 5*p0, 9 configs (w x p0); the worst config's p95 shown.
- healthy: both pools at p0, 9 configs, --healthy-requests requests a run; the
  bound is the exact one-sided 95 % binomial upper limit.
- shared outage: 120 s healthy (p0 0.5 %), 30 s both pools at 20 %, 150 s healthy,
  w in 1/5/20 %; the verdict is read at the last request of the outage.
- late regression: w=5 %, 100,000 requests at 0.5 %/0.5 %, then the canary at
  10 %; canary requests counted from the regression's start, compared with the
  first row's p95 (runs ejected before the regression are left out and counted).
- pooled: the first row's canary, each request to one of 4 instances at random; the
  judge of one process, the pooled judge (each instance's tally flushed every 250 ms
  and replayed as the shared stream would), and 4 judges each seeing only its own
  instance's requests (no pooling: the first to eject decides). Seconds, not requests:
  a flush delays, a quarter of the traffic slows.
Successes between two errors go to batch_judge.record_successes per pool and time
bucket: the same outcome as one record() each (tests/test_budget.py checks it)."""


# -- scenarios: each returns rows (scenario, target, result, passed) -------------

Row = tuple[str, str, str, bool]


def detection(seeds: random.Random, runs: int, w: float, p0: float, pc: float) -> list[int]:
    """Canary requests until ejection, a bad canary present from the start."""
    cap = int(200 / (pc * w))  # far beyond any target: a run that gets here counts as missed
    found = []
    for _ in range(runs):
        run = _new_run(seeds, w)
        run.play(Phase(cap, p0, pc))
        found.append(run.ejected_canary if run.ejection else 1 << 30)
    return found


def scenario_bad_canary(seeds: random.Random, runs: int) -> tuple[Row, float]:
    found = detection(seeds, runs, 0.05, 0.005, 0.10)
    p95 = _p95(found)
    result = f"p95 {p95:.0f}, median {statistics.median(found):.0f} canary requests"
    row = ("w=5%, stable 0.5%, canary 10%", "p95 <= 150 canary requests", result, p95 <= 150)
    return row, p95


def scenario_five_times(seeds: random.Random, runs: int) -> Row:
    worst, worst_at = 0.0, ""
    for w in SHARES:
        for p0 in STABLE_RATES:
            scaled = _p95(detection(seeds, runs, w, p0, 5 * p0)) * p0
            print(f"    5x, w={w:.0%}, p0={p0:.1%}: p95 {scaled:.1f}/p0", flush=True)
            if scaled >= worst:
                worst, worst_at = scaled, f"w={w:.0%}, p0={p0:.1%}"
    result = f"p95 <= {worst:.1f}/p0 (worst at {worst_at}; 9 configs x {runs})"
    return ("canary 5x worse than stable", "p95 <= 7/p0 canary requests", result, worst <= 7)


def scenario_healthy(seeds: random.Random, runs: int, requests: int) -> Row:
    false, total, healthy, worst_at = 0, 0, 0, []
    for w in SHARES:
        for p0 in STABLE_RATES:
            for _ in range(runs):
                run = _new_run(seeds, w)
                run.play(Phase(requests, p0, p0))
                total += 1
                healthy += run.judge.verdict(run.now()) == "healthy"
                if run.ejection is not None:
                    false += 1
                    worst_at.append(f"w={w:.0%},p0={p0:.1%}")
    bound = _upper_95(false, total)
    where = f" [{', '.join(sorted(set(worst_at)))}]" if worst_at else ""
    result = (
        f"{false} of {total} runs ({false / total:.1e}; 95% upper {bound:.1e}){where}; "
        f"verdict healthy at the end in {healthy}"
    )
    target = "false ejection < 1 in 1,000 runs"
    return (f"healthy canary, {requests:,} requests", target, result, false / total < 1e-3)


def scenario_shared_outage(seeds: random.Random, runs: int) -> Row:
    ejected, shared, total = 0, 0, 0
    for w in SHARES:
        for _ in range(runs):
            run = _new_run(seeds, w)
            run.play(Phase(int(120 * RPS), 0.005, 0.005))
            run.play(Phase(int(30 * RPS), 0.20, 0.20))
            shared += run.ejection is None and run.judge.verdict(run.now()) == "shared_degradation"
            run.play(Phase(int(150 * RPS), 0.005, 0.005))
            ejected += run.ejection is not None
            total += 1
    result = f"ejected {ejected} of {total}; shared_degradation at outage end in {shared}"
    passed = ejected / total < 1e-3 and shared == total
    target = "no ejection beyond healthy rate; verdict shared_degradation"
    return ("both pools 20% errors for 30s", target, result, passed)


def scenario_late_regression(seeds: random.Random, runs: int, reference_p95: float) -> Row:
    found, early = [], 0
    for _ in range(runs):
        run = _new_run(seeds, 0.05)
        run.play(Phase(100_000, 0.005, 0.005))
        if run.ejection is not None:
            early += 1
            continue
        before = run.canary
        run.play(Phase(4_000_000, 0.005, 0.10))
        found.append(run.ejected_canary - before if run.ejection else 1 << 30)
    p95 = _p95(found)
    ratio = p95 / reference_p95
    result = (
        f"p95 {p95:.0f} canary requests = {ratio:.2f}x the from-start p95 "
        f"(median {statistics.median(found):.0f}; {early} falsely ejected before)"
    )
    scenario = "regression after 100,000 healthy requests (w=5%, 0.5% -> 10%)"
    return (scenario, "<= 2.5x the from-start p95", result, ratio <= 2.5)


INSTANCES = 4
FLUSH = 0.25


def _pooled_run(rng: random.Random, w: float, p0: float, pc: float, cap: int) -> list[float]:
    """Seconds to ejection of one bad canary judged three ways on the same requests: one
    process; ``INSTANCES`` instances pooling counts every ``FLUSH`` s (replayed in instance
    order, as the shared stream delivers them); each instance judging only its own share
    (the first of them to eject). ``inf`` when not ejected within ``cap`` requests."""
    single = Judge(PARAMS, 0.0)
    pooled = Judge(PARAMS, 0.0)
    alone = [Judge(PARAMS, 0.0) for _ in range(INSTANCES)]
    tallies = [Tally(None) for _ in range(INSTANCES)]
    found = [math.inf, math.inf, math.inf]
    next_flush = FLUSH
    for i in range(cap):
        t = i / RPS
        while t >= next_flush:
            for tally in tallies:
                if found[1] == math.inf and pooled.record_tally(tally.drain(), next_flush):
                    found[1] = next_flush
            next_flush += FLUSH
        pool: Pool = "canary" if rng.random() < w else "stable"
        error = rng.random() < (pc if pool == "canary" else p0)
        where = rng.randrange(INSTANCES)
        if found[0] == math.inf and single.record(pool, error, LATENCY, t):
            found[0] = t
        tallies[where].add(pool, error, LATENCY)
        if found[2] == math.inf and alone[where].record(pool, error, LATENCY, t):
            found[2] = t
        if math.inf not in found:
            break
    return found


def scenario_pooled(seeds: random.Random, runs: int) -> Row:
    """The usual bad canary (w=5 %, 0.5 % -> 10 %) over 4 instances flushing every 250 ms."""
    w, p0, pc = 0.05, 0.005, 0.10
    cap = int(200 / (pc * w))
    times: list[list[float]] = [[], [], []]
    for _ in range(runs):
        for found, t in zip(
            times, _pooled_run(random.Random(seeds.getrandbits(64)), w, p0, pc, cap), strict=True
        ):
            found.append(t)
    one, pooled, alone = (_p95(t) for t in times)
    medians = [statistics.median(t) for t in times]
    result = (
        f"p95 to eject: one process {one:.1f} s, {INSTANCES} pooled {pooled:.1f} s, "
        f"{INSTANCES} judging alone {alone:.1f} s (medians {medians[0]:.1f} / "
        f"{medians[1]:.1f} / {medians[2]:.1f} s at {RPS:g} req/s in all)"
    )
    scenario = f"w=5%, 0.5% -> 10%, over {INSTANCES} instances flushing every {FLUSH:g} s"
    return (scenario, f"pooled p95 <= one process's + {FLUSH:g} s", result, pooled <= one + FLUSH)


def _upper_95(events: int, trials: int) -> float:
    """One-sided 95 % upper bound of a binomial rate (exact, by bisection)."""
    lo, hi = events / trials, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        below = sum(math.exp(_log_binomial_pmf(trials, k, mid)) for k in range(events + 1))
        lo, hi = (mid, hi) if below > 0.05 else (lo, mid)
    return hi


def _log_binomial_pmf(n: int, k: int, p: float) -> float:
    log_comb = math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
    return log_comb + k * math.log(p) + (n - k) * math.log1p(-p)


# -- rollout plans: the step gate walking 5 → 100 %, and a Flagger-like gate beside it -----

ROLLOUT = RolloutConfig()  # the config's defaults: steps, min_step_duration, ..., max_ratio
ROLLOUT_CAP = 4 * 3600  # simulated seconds; a plan still progressing then is "stuck"
FAST_RPS = 1000  # the second traffic level of the rows that depend on it
FLAGGER_INTERVAL = 60  # analysis.interval: 1m, one check per interval
FLAGGER_THRESHOLD = 5  # analysis.threshold: failed checks (in all, not in a row) to roll back
FLAGGER_MIN_SUCCESS = 99  # request-success-rate thresholdRange.min (percent), over the interval
FLAGGER_MAX_P99 = 0.5  # request-duration thresholdRange.max: 500 ms (its docs' example)

# Latency of the slow-canary row: lognormal, stable's median 100 ms and p95 200 ms; a slow
# outcome (outcomes.slow) is one over stable's p99, so 1 % of stable's are slow.
_NORMAL = NormalDist()
LATENCY_MEDIAN = 0.1
LATENCY_SIGMA = math.log(0.2 / LATENCY_MEDIAN) / _NORMAL.inv_cdf(0.95)
SLOW = LATENCY_MEDIAN * math.exp(_NORMAL.inv_cdf(0.99) * LATENCY_SIGMA)
SLOWDOWN = 1.5  # the slow canary's latencies: stable's x 1.5 (p95 +50 %)

End = Literal["completed", "aborted", "stuck"]


def share_over(limit: float, scale: float) -> float:
    """Share of requests slower than ``limit`` when latency is stable's lognormal x ``scale``."""
    return 1 - _NORMAL.cdf(math.log(limit / (scale * LATENCY_MEDIAN)) / LATENCY_SIGMA)


@dataclass(frozen=True, slots=True)
class Setup:
    """The plan and what a step needs: the config's ``rollout`` section (defaults unless the
    command line says otherwise)."""

    steps: tuple[float, ...]
    step: StepSettings
    cap: int = ROLLOUT_CAP


@dataclass(frozen=True, slots=True)
class Rates:
    """One pool's chances per request, independent of each other: an error, a slow outcome
    (over ``outcomes.slow``), a latency over the Flagger-like p99 limit."""

    error: float
    slow: float = 0.0
    over: float = 0.0

    @property
    def event(self) -> float:
        """An error or a slow outcome: what moves the judge's tests and gates."""
        return 1 - (1 - self.error) * (1 - self.slow)


@dataclass(frozen=True, slots=True)
class Scenario:
    """A rollout's traffic: ``rps`` requests a second, the pools' rates; the canary's are
    ``turns`` instead from step index ``turns_at`` on (a late regression)."""

    name: str
    rps: int
    stable: Rates
    canary: Rates
    turns: Rates | None = None
    turns_at: int = 0
    judge_latency: bool = False  # outcomes.slow set: slow outcomes judged too

    @property
    def params(self) -> BudgetParams:
        return replace(PARAMS, judge_latency=self.judge_latency)

    def canary_at(self, step: int) -> Rates:
        return self.turns if self.turns is not None and step >= self.turns_at else self.canary

    @property
    def regression_step(self) -> int:
        """The step from which canary requests to the abort are counted."""
        return self.turns_at if self.turns is not None else 0


class Event(NamedTuple):
    at: int  # the request's place in its second
    pool: Pool
    error: bool
    late: bool


class Burst(NamedTuple):
    stable: int  # plain successes (neither an error nor slow) before the event
    canary: int
    event: Event | None  # None: the second ended first


@dataclass(frozen=True, slots=True)
class Second:
    bursts: list[Burst]
    canary: int  # canary requests in the second
    canary_errors: int
    canary_over: int  # canary requests over the Flagger-like p99 limit


def traffic(rng: random.Random, rps: int, w: float, stable: Rates, canary: Rates) -> Second:
    """One second of requests at canary share ``w``. As ``Run.play`` does: the gap to the
    next event is geometric, the plain successes before it are split between the pools
    binomially, the event's pool and kind are drawn."""
    p = w * canary.event + (1 - w) * stable.event
    of_events = w * canary.event / p if p else 0.0
    of_successes = w * (1 - canary.event) / (1 - p) if p < 1 else 0.0
    bursts: list[Burst] = []
    at, n_canary, errors = 0, 0, 0
    while True:
        gap = min(_geometric(rng, p), rps - at)
        quiet = _binomial(rng, gap, of_successes)
        n_canary += quiet
        at += gap
        if at >= rps:
            bursts.append(Burst(gap - quiet, quiet, None))
            break
        in_canary = rng.random() < of_events
        rates = canary if in_canary else stable
        error = rng.random() * rates.event < rates.error
        late = rng.random() < rates.slow if error else True
        pool: Pool = "canary" if in_canary else "stable"
        bursts.append(Burst(gap - quiet, quiet, Event(at, pool, error, late)))
        n_canary += in_canary
        errors += in_canary and error
        at += 1
    return Second(bursts, n_canary, errors, _binomial(rng, n_canary, canary.over))


@dataclass(slots=True)
class Feed:
    """A judge fed second by second: plain successes wait, per pool, for the next event, the
    end of their time bucket or a look at the gate, then go in through ``record_successes``
    (stable's first); every event goes through ``Judge.record`` one by one."""

    judge: Judge
    rps: int
    stable: int = 0  # successes waiting
    canary: int = 0
    last: float = 0.0  # when the last of them arrived
    events: int = 0
    canary_fed: int = 0  # canary requests the judge has counted
    step_canary: int = 0  # of them, since the step began
    ejection: Ejection | None = None
    ejected_at: float = 0.0
    ejected_canary: int = 0  # canary requests up to and including the one that tipped it

    def play(self, second: int, requests: Second) -> None:
        width = self.judge.bucket_seconds
        if (self.stable or self.canary) and int(second // width) != int(self.last // width):
            self.flush()
        for stable, canary, event in requests.bursts:
            self.stable += stable
            self.canary += canary
            if event is None:
                self.last = second + (self.rps - 1) / self.rps
                return
            self.last = second + event.at / self.rps
            self.flush()
            if self.ejection is not None:
                return
            self.events += 1
            in_canary = event.pool == "canary"
            self.canary_fed += in_canary
            self.step_canary += in_canary
            found = self.judge.record(event.pool, event.error, LATENCY, self.last, event.late)
            self._note(found)
            if self.ejection is not None:
                return

    def flush(self) -> None:
        if self.stable and self.ejection is None:
            self._note(record_successes(self.judge, "stable", self.stable, LATENCY, self.last))
        if self.canary and self.ejection is None:
            self._note(record_successes(self.judge, "canary", self.canary, LATENCY, self.last))
        self.canary_fed += self.canary
        self.step_canary += self.canary
        self.stable = self.canary = 0

    def _note(self, ejection: Ejection | None) -> None:
        if ejection is not None and self.ejection is None:
            self.ejection, self.ejected_at = ejection, self.last
            counts = ejection.evidence["canary"]
            assert isinstance(counts, dict)
            self.ejected_canary = int(counts["requests_since_reset"])


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one run of a plan ended."""

    end: End
    seconds: float  # when it completed or was aborted; the cap when stuck
    step: int  # the step index it ended at (completed: the last)
    promoted: tuple[float, ...] = ()  # when each step was promoted
    canary: int | None = None  # aborted: canary requests from the regression's step to it
    rule: str | None = None  # aborted: the judge's rule, or "failed checks"
    failed_checks: int = 0  # the Flagger-like gate's


def our_rollout(scenario: Scenario, setup: Setup, seed: int) -> Outcome:
    """The proxy's loop: the judge records every response and ejecting aborts the plan; once
    a second, ``is_due`` on the step's gate promotes, and a new step begins its evidence.

    The gate is asked only when its answer can have changed: after the step's time and
    canary requests are served, and (once it said no) after another event."""
    s = setup.step
    judge = Judge(scenario.params, 0.0)
    feed = Feed(judge, scenario.rps)
    plan = rollout.start(rollout.IDLE, setup.steps, 0.0)
    judge.begin_step(s.max_ratio)
    rng = random.Random(seed)
    promoted: list[float] = []
    asked = -1  # feed.events when the gate last said no (-1: not asked at this step)
    before = 0  # canary requests before the regression's step
    for second in range(setup.cap):
        canary, w = scenario.canary_at(plan.step), plan.weight / 100
        feed.play(second, traffic(rng, scenario.rps, w, scenario.stable, canary))
        if feed.ejection is not None:
            return _aborted(feed, feed.ejection.rule, plan.step, promoted, scenario, before)
        now = second + 1.0
        if (
            plan.seconds(now) < s.min_step_duration
            or feed.step_canary + feed.canary < s.min_step_requests
            or feed.events == asked
        ):
            continue  # the gate's answer cannot have changed
        feed.flush()
        if feed.ejection is not None:
            return _aborted(feed, feed.ejection.rule, plan.step, promoted, scenario, before)
        gate = judge.gate(now)
        assert gate is not None
        if not rollout.is_due(plan, s, now, gate.canary_requests, gate.shown):
            asked = feed.events
            continue
        plan = rollout.promote(plan, now, "due")
        promoted.append(now)
        if plan.state == "completed":
            judge.end_step()
            return Outcome("completed", now, plan.step, tuple(promoted))
        judge.begin_step(s.max_ratio)
        judge.weight_changed(plan.weight, now)  # as the proxy's Service does
        feed.step_canary, asked = 0, -1
        if plan.step == scenario.regression_step:
            before = feed.canary_fed
    return Outcome("stuck", float(setup.cap), plan.step, tuple(promoted))


def _aborted(
    feed: Feed, rule: str, step: int, promoted: list[float], scenario: Scenario, before: int
) -> Outcome:
    counted = feed.ejected_canary - before if step >= scenario.regression_step else None
    return Outcome("aborted", feed.ejected_at, step, tuple(promoted), counted, rule)


def flagger_rollout(scenario: Scenario, setup: Setup, seed: int) -> Outcome:
    """Flagger's canary analysis on the same steps (``stepWeights``): every interval the
    canary's success rate (and p99 latency) over that interval is checked; a pass promotes
    to the next step, a failure adds to the failed checks, which are never reset during the
    analysis; at the tick where they have reached ``threshold`` it rolls back
    (fluxcd/flagger ``pkg/controller/scheduler.go``). No traffic at all fails a check too."""
    steps, rng = setup.steps, random.Random(seed)
    step, failed, before, fed = 0, 0, 0, 0
    requests, errors, over = 0, 0, 0  # the canary's, in the interval
    promoted: list[float] = []
    for second in range(setup.cap):
        w = steps[step] / 100
        got = traffic(rng, scenario.rps, w, scenario.stable, scenario.canary_at(step))
        requests += got.canary
        errors += got.canary_errors
        over += got.canary_over
        fed += got.canary
        if (second + 1) % FLAGGER_INTERVAL:
            continue
        now = second + 1.0
        if failed >= FLAGGER_THRESHOLD:
            counted = fed - before if step >= scenario.regression_step else None
            return Outcome("aborted", now, step, tuple(promoted), counted, "failed checks", failed)
        if _flagger_check(requests, errors, over):
            step += 1
            promoted.append(now)
            if step >= len(steps) or steps[step] >= 100:
                return Outcome(
                    "completed", now, len(steps) - 1, tuple(promoted), None, None, failed
                )
            if step == scenario.regression_step:
                before = fed
        else:
            failed += 1
        requests, errors, over = 0, 0, 0
    return Outcome("stuck", float(setup.cap), step, tuple(promoted), None, None, failed)


def _flagger_check(requests: int, errors: int, over: int) -> bool:
    """Success rate >= ``FLAGGER_MIN_SUCCESS`` % and p99 <= ``FLAGGER_MAX_P99`` (no more than
    1 % of the requests slower than it) over the interval."""
    if requests == 0:
        return False
    return 100 * (requests - errors) >= FLAGGER_MIN_SUCCESS * requests and 100 * over <= requests


# -- rollout scenarios: each returns our row and the Flagger-like row on the same runs -----

Judged = Callable[[Sequence[Outcome]], tuple[str, bool]]  # extra text, target met


@dataclass(frozen=True, slots=True)
class Lab:
    """Where the rollout scenarios run: the seeds they draw, runs per scenario, the plan's
    settings, and the processes the runs are spread over (each run depends on its seed
    only, so the outcome does not depend on how many)."""

    seeds: random.Random
    runs: int
    setup: Setup
    pool: Executor


def both(lab: Lab, scenario: Scenario) -> tuple[list[Outcome], list[Outcome]]:
    """Each run's seed drives the traffic of both gates: the same requests second by second
    until the first second in which their weights differ."""
    seeds = [lab.seeds.getrandbits(64) for _ in range(lab.runs)]
    chunk = max(1, lab.runs // 16)
    pairs = list(lab.pool.map(partial(run_both, scenario, lab.setup), seeds, chunksize=chunk))
    return [ours for ours, _ in pairs], [theirs for _, theirs in pairs]


def run_both(scenario: Scenario, setup: Setup, seed: int) -> tuple[Outcome, Outcome]:
    return our_rollout(scenario, setup, seed), flagger_rollout(scenario, setup, seed)


def rollout_rows(lab: Lab, scenario: Scenario, target: str, judge: Judged) -> list[Row]:
    """Our row, then the Flagger-like gate's on the same runs, against the same target."""
    ours, theirs = both(lab, scenario)
    rows = []
    for name, outcomes in ((scenario.name, ours), (FLAGGER_ROW, theirs)):
        extra, passed = judge(outcomes)
        summary = summarize(outcomes, lab.setup)
        if outcomes is theirs:
            failing = sum(o.failed_checks > 0 for o in outcomes)
            summary += f"; >= 1 failed check in {failing / len(outcomes):.0%}"
        rows.append((name, target, f"{summary}{'; ' + extra if extra else ''}", passed))
    return rows


FLAGGER_ROW = "  Flagger-like gate, same traffic"


def summarize(outcomes: Sequence[Outcome], setup: Setup) -> str:
    """Shares of each end, times to complete, where the others ended."""
    n = len(outcomes)
    ends = {end: [o for o in outcomes if o.end == end] for end in ("completed", "aborted", "stuck")}
    parts = [f"{n} runs: " + ", ".join(f"{e} {len(found) / n:.1%}" for e, found in ends.items())]
    done = [o.seconds for o in ends["completed"]]
    if done:
        parts.append(
            f"to complete median {_hours(statistics.median(done))}, p95 {_hours(_p95(done))}"
        )
    per_step = _step_medians(outcomes, len(setup.steps))
    if per_step:
        parts.append(f"median per step {per_step}")
    for end in ("aborted", "stuck"):
        if ends[end]:
            parts.append(f"{end} at {_by_step(ends[end], setup.steps)}")
    return "; ".join(parts)


def _step_medians(outcomes: Sequence[Outcome], steps: int) -> str:
    """Median minutes each step took, over the runs that got through it."""
    medians = []
    for i in range(steps):
        took = [
            o.promoted[i] - (o.promoted[i - 1] if i else 0.0)
            for o in outcomes
            if len(o.promoted) > i
        ]
        if not took:
            break
        medians.append(f"{statistics.median(took) / 60:.0f}")
    return "/".join(medians) + " min" if medians else ""


def _by_step(outcomes: Sequence[Outcome], steps: tuple[float, ...]) -> str:
    counts = Counter(steps[o.step] for o in outcomes)
    return " ".join(f"{weight:g}%:{counts[weight]}" for weight in steps if counts[weight])


def _hours(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _canary_requests(outcomes: Sequence[Outcome]) -> tuple[float, float]:
    """Median and p95 of canary requests to the abort, a run not aborted counting as never."""
    found = [o.canary if o.canary is not None else NEVER for o in outcomes]
    return statistics.median(found), _p95(found)


NEVER = 1 << 30


def _count(value: float) -> str:
    return "never" if value >= NEVER else f"{value:,.0f}"


def _never_past_first(outcomes: Sequence[Outcome]) -> tuple[str, bool]:
    stopped = sum(o.end == "aborted" and o.step == 0 for o in outcomes)
    median, p95 = _canary_requests(outcomes)
    text = f"canary requests to abort median {_count(median)}, p95 {_count(p95)}"
    return text, stopped / len(outcomes) >= 0.99


def rollout_healthy(lab: Lab, rps: int) -> list[Row]:
    name = f"rollout, healthy: 0.5 %/0.5 %, {rps:,} req/s"
    scenario = Scenario(name, rps, Rates(0.005), Rates(0.005))

    def judge(outcomes: Sequence[Outcome]) -> tuple[str, bool]:
        aborted = sum(o.end == "aborted" for o in outcomes)
        completed = sum(o.end == "completed" for o in outcomes) / len(outcomes)
        return f"aborted 95% upper {_upper_95(aborted, len(outcomes)):.1%}", completed >= 0.99

    target = f">= 99 % complete within {lab.setup.cap / 3600:g} h (<= 1 % aborted)"
    return rollout_rows(lab, scenario, target, judge)


def rollout_worse(lab: Lab, rps: int) -> list[Row]:
    name = f"rollout, canary 1.2x: 0.5 %/0.6 %, {rps:,} req/s"
    scenario = Scenario(name, rps, Rates(0.005), Rates(0.006))

    def judge(outcomes: Sequence[Outcome]) -> tuple[str, bool]:
        return "", sum(o.end == "completed" for o in outcomes) / len(outcomes) > 0.5

    return rollout_rows(lab, scenario, "usually completes (> 50 %)", judge)


def rollout_twice(lab: Lab, rps: int) -> list[Row]:
    name = f"rollout, canary 2x: 0.5 %/1 %, {rps:,} req/s"
    scenario = Scenario(name, rps, Rates(0.005), Rates(0.01))

    def judge(outcomes: Sequence[Outcome]) -> tuple[str, bool]:
        past = sum(o.end == "completed" or o.step > 0 for o in outcomes) / len(outcomes)
        median, p95 = _canary_requests(outcomes)
        text = f"past the first step {past:.1%}; canary requests to abort median {_count(median)}"
        return f"{text}, p95 {_count(p95)}", past <= 0.05

    return rollout_rows(lab, scenario, "promoted past the first step in <= 5 %", judge)


def rollout_bad(lab: Lab, rate: float, what: str) -> list[Row]:
    name = f"rollout, canary {what}: 0.5 %/{rate * 100:g} %, {RPS:,.0f} req/s"
    scenario = Scenario(name, int(RPS), Rates(0.005), Rates(rate))
    return rollout_rows(lab, scenario, "aborted at the first step in >= 99 %", _never_past_first)


def rollout_slow(lab: Lab) -> list[Row]:
    """outcomes.slow at stable's p99; the canary 1.5x slower; errors 0.5 % in both."""
    stable = Rates(0.005, share_over(SLOW, 1.0), share_over(FLAGGER_MAX_P99, 1.0))
    canary = Rates(0.005, share_over(SLOW, SLOWDOWN), share_over(FLAGGER_MAX_P99, SLOWDOWN))
    name = (
        f"rollout, canary p95 +50 %: slow > {SLOW * 1000:.0f} ms, {stable.slow:.1%} -> "
        f"{canary.slow:.1%} slow, {RPS:,.0f} req/s, judge_latency"
    )
    scenario = Scenario(name, int(RPS), stable, canary, judge_latency=True)
    reference = _p95(detection(lab.seeds, lab.runs, 0.05, stable.slow, 5 * stable.slow))

    def judge(outcomes: Sequence[Outcome]) -> tuple[str, bool]:
        found = [
            o.canary if o.rule in ("latency", "failed checks") and o.canary is not None else NEVER
            for o in outcomes
        ]
        rules = Counter(o.rule for o in outcomes if o.end == "aborted")
        p95 = _p95(found)
        text = (
            f"rules {dict(rules)}; canary requests to abort for latency median "
            f"{_count(statistics.median(found))}, p95 {_count(p95)}; the error test's p95 for "
            f"5x at w=5 %, p0 {stable.slow:.0%}: {reference:,.0f}"
        )
        return text, p95 <= reference

    return rollout_rows(lab, scenario, "latency p95 <= the error test's p95 for 5x", judge)


def rollout_late(lab: Lab, rps: int) -> list[Row]:
    """Healthy at steps 1-2; from step 3 on the canary fails 10 % of its requests."""
    at = 2
    weight = lab.setup.steps[at]
    name = f"rollout, late regression: 0.5 % -> 10 % at step 3 ({weight:g} %), {rps:,} req/s"
    scenario = Scenario(name, rps, Rates(0.005), Rates(0.005), turns=Rates(0.10), turns_at=at)
    reference = _p95(detection(lab.seeds, lab.runs, weight / 100, 0.005, 0.10))

    def judge(outcomes: Sequence[Outcome]) -> tuple[str, bool]:
        reached = [o for o in outcomes if o.step >= at or o.end == "completed"]
        if not reached:
            return "none reached step 3", False
        share = sum(o.end == "aborted" and o.step == at for o in reached) / len(reached)
        median, p95 = _canary_requests(reached)
        text = (
            f"reached step 3 {len(reached)}, aborted there {share:.1%}; canary requests from "
            f"the regression to abort median {_count(median)}, p95 {_count(p95)} = "
            f"{p95 / reference:.1f}x the from-start p95 at w={weight:g} % ({reference:,.0f})"
        )
        return text, share >= 0.99 and p95 <= 2.5 * reference

    target = "aborted at step 3 in >= 99 % of runs reaching it; p95 <= 2.5x from-start"
    return rollout_rows(lab, scenario, target, judge)


def rollout_scenarios(lab: Lab) -> list[tuple[str, Callable[[], list[Row]]]]:
    slow, fast = int(RPS), FAST_RPS
    return [
        ("healthy", lambda: rollout_healthy(lab, slow)),
        ("healthy, fast", lambda: rollout_healthy(lab, fast)),
        ("1.2x", lambda: rollout_worse(lab, slow)),
        ("1.2x, fast", lambda: rollout_worse(lab, fast)),
        ("2x", lambda: rollout_twice(lab, slow)),
        ("2x, fast", lambda: rollout_twice(lab, fast)),
        ("5x", lambda: rollout_bad(lab, 0.025, "5x")),
        ("10 %", lambda: rollout_bad(lab, 0.10, "failing")),
        ("slow", lambda: rollout_slow(lab)),
        ("late regression", lambda: rollout_late(lab, slow)),
        ("late regression, fast", lambda: rollout_late(lab, fast)),
    ]


ROLLOUT_NOTES = """
What ran (the plan's steps; each run has its own seed from --seed, and both gates draw
their traffic from it second by second, so they see the same requests until their weights
first differ, after 60 s):
- ours: the proxy's loop. Every response recorded (successes batched as above, per pool,
  until the next error or slow outcome, bucket end or look at the gate); the judge
  ejecting aborts the plan; once a second, is_due(plan, rollout settings, now,
  gate.canary_requests, gate.shown) promotes and the judge begins the next step's evidence.
  Stuck: still progressing at the cap. "median per step": minutes each step took, over
  the runs that got through it; "aborted/stuck at": the step's weight, runs.
- Flagger-like: Flagger's analysis on the same steps: every 60 s the canary's success rate
  over the last 60 s >= 99 % (and p99 <= 500 ms: more than 1 % of its requests slower fails),
  a pass promotes, a failure counts; at the tick where 5 failed checks (in all, never reset
  during the analysis, as in Flagger) have piled up it rolls back. Its rows are measured
  against the same targets, for comparison: they do not set the exit status.
- canary requests to abort: from the step where the canary turned bad (late regression:
  step 3; otherwise from the start); a run not aborted counts as never.
- slow canary: latency lognormal, stable's median 100 ms and p95 200 ms; outcomes.slow
  at stable's p99; the canary's latencies x 1.5. Its reference is the error test (the
  rows above, w=5 %) on a 5x-worse canary with p0 = stable's slow share.
- late regression's reference: the error test from the start at the step's weight."""


def gate_events(w: float, truth: float, max_ratio: float, alpha: float) -> float:
    """Errors (both pools) the step gate needs on average, by its drift, to show a canary
    whose error rate is ``truth`` x stable's below ``max_ratio`` x (inf: it never does)."""
    bound = math.log(1 / alpha)
    q, q_max = q_of(truth, w), q_of(max_ratio, w)
    best = math.inf
    for alternative, weight in zip((0.5, 1.0, (1 + max_ratio) / 2), GATE_WEIGHTS, strict=True):
        q_alt = q_of(alternative, w)
        drift = q * math.log(q_alt / q_max) + (1 - q) * math.log((1 - q_alt) / (1 - q_max))
        if drift > 0:
            best = min(best, (bound - math.log(weight)) / drift)
    return best


def rollout_header(setup: Setup, runs: int, jobs: int) -> list[str]:
    s = setup.step
    steps = "/".join(f"{x:g}" for x in setup.steps)
    lines = [
        f"rollout plans: {runs} runs per scenario, steps {steps} %,"
        f" min_step_duration {s.min_step_duration:g} s, min_step_requests {s.min_step_requests},"
        f" max_ratio {s.max_ratio:g}, alpha {PARAMS.alpha:g}, cap {setup.cap / 3600:g} h;"
        f" {jobs} processes",
    ]
    for truth in (1.0, 1.2):
        needed = [gate_events(x / 100, truth, s.max_ratio, PARAMS.alpha) for x in setup.steps[:-1]]
        at = "/".join(f"{n:,.0f}" for n in needed)
        rates = [RPS * 0.005 * (1 + (truth - 1) * x / 100) for x in setup.steps[:-1]]
        hours = sum(n / r for n, r in zip(needed, rates, strict=True)) / 3600
        lines.append(
            f"  the gate needs on average {at} errors (both pools) at these steps for a canary"
            f" {truth:g}x stable's: at p0 0.5 % and {RPS:g} req/s about {hours:.1f} h of evidence"
        )
    return lines


# -- cost of one call ----------------------------------------------------------


def record_costs() -> list[tuple[str, float]]:
    """Microseconds per ``Judge.record`` in a warm window (information, not a test)."""
    judge = Judge(BudgetParams(max_p99_latency=1.0), 0.0)
    rng = random.Random(0)
    for i in range(20_000):
        pool: Pool = "canary" if rng.random() < 0.05 else "stable"
        judge.record(pool, rng.random() < 0.005, LATENCY, i / RPS)
    now = 20_000 / RPS
    calls: list[tuple[str, Callable[[], object]]] = [
        ("stable success", lambda: judge.record("stable", False, LATENCY, now)),
        ("canary success", lambda: judge.record("canary", False, LATENCY, now)),
        ("stable error", lambda: judge.record("stable", True, LATENCY, now)),
    ]
    costs = []
    for name, call in calls:
        number = 50_000
        costs.append((name, min(timeit.repeat(call, number=number, repeat=3)) / number * 1e6))
    return costs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=1000, help="runs per scenario and config")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--healthy-requests", type=int, default=200_000)
    parser.add_argument(
        "--rollout-runs", type=int, default=200, help="runs per rollout scenario (0: none)"
    )
    parser.add_argument("--max-ratio", type=float, default=ROLLOUT.max_ratio)
    parser.add_argument("--min-step-requests", type=int, default=ROLLOUT.min_step_requests)
    parser.add_argument("--min-step-duration", type=float, default=ROLLOUT.min_step_duration)
    parser.add_argument(
        "--jobs", type=int, default=len(os.sched_getaffinity(0)), help="processes for rollouts"
    )
    args = parser.parse_args(argv)
    seeds = random.Random(args.seed)
    started = time.perf_counter()
    print(
        f"judge simulation: {args.runs} runs per scenario/config, seed {args.seed}, {RPS:g} req/s"
    )
    print(f"params: {PARAMS}")
    print(f"configs: w in {SHARES}, stable error rate p0 in {STABLE_RATES} where a row says so\n")
    rows: list[Row] = []
    first, reference = scenario_bad_canary(seeds, args.runs)
    rows.append(first)
    stages: list[Callable[[], Row]] = [
        lambda: scenario_five_times(seeds, args.runs),
        lambda: scenario_healthy(seeds, args.runs, args.healthy_requests),
        lambda: scenario_shared_outage(seeds, args.runs),
        lambda: scenario_late_regression(seeds, args.runs, reference),
        lambda: scenario_pooled(seeds, args.runs),
    ]
    for stage in stages:
        began = time.perf_counter()
        rows.append(stage())
        print(f"  {rows[-1][0]}: {time.perf_counter() - began:.0f} s", flush=True)
    _print_table(rows)
    print(NOTES)
    if args.rollout_runs > 0:
        step = StepSettings(args.min_step_duration, args.min_step_requests, args.max_ratio)
        setup = Setup(ROLLOUT.steps, step)
        rows += rollout_section(args.seed, args.rollout_runs, setup, max(1, args.jobs))
    print(f"\nsimulated in {time.perf_counter() - started:.0f} s")
    print("\nJudge.record cost (timeit, warm 60 s window):")
    for name, micros in record_costs():
        print(f"  {name:15s} {micros:6.2f} µs/call")
    return 0 if all(row[3] for row in rows) else 1


def rollout_section(seed: int, runs: int, setup: Setup, jobs: int) -> list[Row]:
    """Run and print the rollout scenarios; return our rows (the Flagger-like ones are
    printed beside them, for comparison only)."""
    print()
    print("\n".join(rollout_header(setup, runs, jobs)))
    rows: list[Row] = []
    with ProcessPoolExecutor(jobs) as pool:
        lab = Lab(random.Random(f"rollouts:{seed}"), runs, setup, pool)
        for name, stage in rollout_scenarios(lab):
            began = time.perf_counter()
            rows += stage()
            print(f"  {name}: {time.perf_counter() - began:.0f} s", flush=True)
    _print_table(rows)
    print(ROLLOUT_NOTES)
    return [row for row in rows if row[0] != FLAGGER_ROW]


def _print_table(rows: Sequence[Row]) -> None:
    header = ("scenario", "target", "result", "")
    widths = [max(len(str(r[i])) for r in [*rows, header]) for i in range(3)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=False)) + "  pass")
    for scenario, target, result, passed in rows:
        cells = (scenario.ljust(widths[0]), target.ljust(widths[1]), result.ljust(widths[2]))
        print("  ".join(cells) + ("  PASS" if passed else "  FAIL"))


if __name__ == "__main__":
    raise SystemExit(main())

"""Monte Carlo of the canary's judge: false ejections and time to eject, by scenario.

    python -m benchmarks.judge_sim [--runs 1000] [--seed 1] [--healthy-requests 200000]

It drives ``canaryproxy.judge.budget.Judge`` itself, no sockets. Traffic: requests
arrive evenly at ``RPS`` a second; each is the canary's with probability ``w``
and an error with its pool's error rate. Only errors move the comparative test,
so a run draws the gap to the next error (geometric) and hands the successes in
between to ``batch_judge.record_successes`` in one call per pool and time bucket (the
same outcome as one ``record`` call each; within one such burst stable's
successes are fed before the canary's). Errors go through ``Judge.record`` one
by one. Runs stop at an ejection.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time
import timeit
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from benchmarks.batch_judge import record_successes
from canaryproxy.judge.budget import BudgetParams, Ejection, Judge, Pool
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
    print(f"\nsimulated in {time.perf_counter() - started:.0f} s")
    print("\nJudge.record cost (timeit, warm 60 s window):")
    for name, micros in record_costs():
        print(f"  {name:15s} {micros:6.2f} µs/call")
    return 0 if all(row[3] for row in rows) else 1


def _print_table(rows: Sequence[Row]) -> None:
    header = ("scenario", "target", "result", "")
    widths = [max(len(str(r[i])) for r in [*rows, header]) for i in range(3)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=False)) + "  pass")
    for scenario, target, result, passed in rows:
        cells = (scenario.ljust(widths[0]), target.ljust(widths[1]), result.ljust(widths[2]))
        print("  ".join(cells) + ("  PASS" if passed else "  FAIL"))


if __name__ == "__main__":
    raise SystemExit(main())

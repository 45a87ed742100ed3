"""Sequential tests on the conditional-binomial model, for any kind of event (pure).

The model (the README's "Error budget and automatic ejection", ``docs/rollout-gate.md``):
given that an event happens (an error, a slow response) and the canary served a share
``w`` of requests, the event is the canary's with probability ``q_R = R·w / (R·w + 1 - w)``,
where ``R`` is the canary's event rate over stable's. Stable's own rate cancels out, so
every event is one Bernoulli observation about ``R`` alone.

- ``MixtureTest``: is the canary worse than stable? The likelihood ratio of ``R`` in
  {2, 4, ... 64} against ``R = 1``, mixed (½, then ⅒ each), each component floored at
  ``-2·ln(1/alpha)``; with it, ``eta``, the mirror test of "no worse than 2x" (healthy).
  The judge runs one on errors and, with ``outcomes.slow``, one on slow responses.
- ``Gate``: is the canary shown no worse than ``rho`` x stable? The likelihood ratio of
  ``R'`` in {½, 1, (1+rho)/2} (weights ¼, ½, ¼) against ``R = rho``. Under any ``R >= rho``
  it is a nonnegative supermartingale starting at 1 (each factor's expectation is at most
  1 when the truth is at or beyond ``rho``), so by Ville's inequality it ever reaches
  ``1/alpha`` with probability at most alpha: crossing is an always-valid proof, at
  confidence 1 - alpha, that ``R < rho``, however often it is looked at.
"""

from __future__ import annotations

import math

from canaryproxy.judge.users import ANONYMOUS, SeenUsers
from canaryproxy.judge.window import format_odds

RATIOS = (2, 4, 8, 16, 32, 64)
"""Alternatives of the comparative test: the canary's event rate is R x stable's."""
WEIGHTS = (0.5, 0.1, 0.1, 0.1, 0.1, 0.1)
LOG_RATIOS = tuple(math.log(r) for r in RATIOS)
LOG_WEIGHTS = tuple(math.log(w) for w in WEIGHTS)
RATIOS_LESS_ONE = tuple(r - 1 for r in RATIOS)
HEALTHY_ALPHA = 0.05
HEALTHY_THRESHOLD = math.log(1 / HEALTHY_ALPHA)

GATE_WEIGHTS = (0.25, 0.5, 0.25)


def log_mixture(values: list[float], weights: tuple[float, ...]) -> float:
    """``ln Σ weight_i · e^value_i``, shifted only when plain ``exp`` would over/underflow."""
    top = max(values)
    if -600 < top < 600:
        return math.log(sum(w * math.exp(v) for w, v in zip(weights, values, strict=True)))
    shifted = sum(w * math.exp(v - top) for w, v in zip(weights, values, strict=True))
    return top + math.log(shifted)


def q_of(ratio: float, w: float) -> float:
    """P(an event is the canary's | it happened) when its rate is ``ratio`` x stable's."""
    return ratio * w / (ratio * w + 1 - w)


class MixtureTest:
    """Evidence that the canary is worse than stable, event by event."""

    __slots__ = ("eta", "floor", "llr", "log_odds", "share")

    def __init__(self, floor: float) -> None:
        self.floor = floor
        self.llr = [0.0] * len(RATIOS)
        self.log_odds = 0.0  # ln(½ + 5·⅒)
        self.eta = 0.0
        self.share = math.nan  # w at the last event that updated the test

    def update(self, from_canary: bool, w: float) -> None:
        self.share = w
        llr, floor, log1p = self.llr, self.floor, math.log1p
        first_step = 0.0
        for i, log_ratio in enumerate(LOG_RATIOS):
            step = (log_ratio if from_canary else 0.0) - log1p(RATIOS_LESS_ONE[i] * w)
            llr[i] = max(llr[i] + step, floor)
            if i == 0:
                first_step = step
        # healthy's test is R=2 the other way round, unfloored
        eta = self.eta - first_step
        self.eta = min(max(eta, -2 * HEALTHY_THRESHOLD), 2 * HEALTHY_THRESHOLD)
        self.log_odds = log_mixture(llr, WEIGHTS)


class Gate:
    """Evidence that the canary's event rate is below ``rho`` x stable's (one step's)."""

    __slots__ = ("alternatives", "canary_events", "log_lr", "log_odds", "rho", "stable_events")

    def __init__(self, rho: float) -> None:
        self.rho = rho
        self.alternatives = (0.5, 1.0, (1.0 + rho) / 2)
        self.log_lr = [0.0, 0.0, 0.0]
        self.log_odds = 0.0
        self.canary_events = 0
        self.stable_events = 0

    def update(self, from_canary: bool, w: float) -> None:
        if from_canary:
            self.canary_events += 1
        else:
            self.stable_events += 1
        q_rho = q_of(self.rho, w)
        for i, alt in enumerate(self.alternatives):
            q = q_of(alt, w)
            step = math.log(q / q_rho) if from_canary else math.log((1 - q) / (1 - q_rho))
            self.log_lr[i] += step
        self.log_odds = log_mixture(self.log_lr, GATE_WEIGHTS)

    @property
    def events(self) -> int:
        return self.canary_events + self.stable_events

    def events_needed(self, threshold: float, w: float) -> int | None:
        """About how many more events (both pools) reach ``threshold`` if the canary's share
        of events goes on as seen (one pseudo-event at ``w``); None if it is not heading
        there (its measured ratio is not below ``rho``)."""
        if self.log_odds >= threshold:
            return 0
        share = (self.canary_events + w) / (self.events + 1)
        q_rho = q_of(self.rho, w)
        best: float | None = None
        for i, alt in enumerate(self.alternatives):
            q = q_of(alt, w)
            drift = share * math.log(q / q_rho) + (1 - share) * math.log((1 - q) / (1 - q_rho))
            if drift <= 0:
                continue
            gap = threshold - math.log(GATE_WEIGHTS[i]) - self.log_lr[i]
            n = max(gap, 0.0) / drift
            best = n if best is None else min(best, n)
        return None if best is None else math.ceil(best)


class StepEvidence:
    """One rollout step's counts and gates (errors; slow outcomes with ``outcomes.slow``).

    A gate's unit is the user, as the judge's (``users.py``): of one user's (and one
    client's) events during the step, the first is the gate's evidence."""

    __slots__ = ("counts", "errors", "errors_seen", "late", "late_seen", "max_ratio")

    def __init__(self, max_ratio: float) -> None:
        self.max_ratio = max_ratio
        # [canary requests, stable requests, canary errors, stable errors, canary slow, stable slow]
        self.counts = [0, 0, 0, 0, 0, 0]
        self.errors = Gate(max_ratio)
        self.late = Gate(max_ratio)
        self.errors_seen = SeenUsers()
        self.late_seen = SeenUsers()

    def count(self, canary: bool, count: int, errors: int, late: int) -> None:
        c = self.counts
        pool = 0 if canary else 1
        c[pool] += count
        c[2 + pool] += errors
        c[4 + pool] += count if late else 0

    def event(
        self,
        from_canary: bool,
        w: float,
        is_error: bool,
        is_late: bool,
        user: int = ANONYMOUS,
        client: int = ANONYMOUS,
    ) -> None:
        """An event of ``user`` from ``client``, at the canary's share of users ``w``."""
        if is_error and self.errors_seen.is_first(user, client):
            self.errors.update(from_canary, w)
        if is_late and self.late_seen.is_first(user, client):
            self.late.update(from_canary, w)

    def describe(self, threshold: float, w: float | None, judge_latency: bool) -> StepGate:
        """Whether each gate holds, and what it waits for. With both gates, each is held
        to ``threshold + ln 2`` (their alpha halved), so together they hold at 1 - alpha."""
        bound = threshold + (math.log(2) if judge_latency else 0.0)
        c = self.counts
        gates = {"errors": self._gate(self.errors, bound, w)}
        if judge_latency:
            gates["slow"] = self._gate(self.late, bound, w)
        shown = all(g["shown"] is True for g in gates.values())
        more: int | None = 0
        for g in gates.values():
            needed = g["canary_requests_needed"]
            if more is not None:
                more = max(more, needed) if isinstance(needed, int) else None
        evidence: dict[str, object] = {
            "max_ratio": self.max_ratio,
            "canary_requests": c[0],
            "stable_requests": c[1],
            "gates": gates,
            "shown": shown,
        }
        return StepGate(shown, c[0], more, evidence)

    def _gate(self, gate: Gate, bound: float, w: float | None) -> dict[str, object]:
        # no user of either pool had an event: time and requests suffice
        quiet = gate.events == 0
        shown = quiet or gate.log_odds >= bound
        events = None if shown or w is None else gate.events_needed(bound, w)
        # events of both pools → canary requests, at the step's events per canary request
        requests = (
            None
            if events is None or gate.events == 0
            else math.ceil(events * self.counts[0] / gate.events)
        )
        return {
            "canary_events": gate.canary_events,
            "stable_events": gate.stable_events,
            "quiet": quiet,
            "log_odds": round(gate.log_odds, 4),
            "threshold": round(bound, 4),
            "odds": format_odds(gate.log_odds),
            "shown": shown,
            "events_needed": events,
            "canary_requests_needed": 0 if shown else requests,
        }


class StepGate:
    """A step's gate as the rollout plan reads it: shown or not, the canary requests served
    at the step, an estimate of how many more the gate needs (None: not heading there), and
    the evidence (JSON) behind it."""

    __slots__ = ("canary_requests", "evidence", "more_requests", "shown")

    def __init__(
        self, shown: bool, canary_requests: int, more: int | None, evidence: dict[str, object]
    ) -> None:
        self.shown = shown
        self.canary_requests = canary_requests
        self.more_requests = more
        self.evidence = evidence

"""The canary's judgement: has it burned its error budget? (pure; the README's "Error
budget and automatic ejection").

No I/O and no clock: every call takes ``now`` (monotonic seconds). The caller says
what an error is (5xx, connect failure, timeout), which pool answered, and for whom
(the user's bucket and the client's address key, ``users.py``). Each response costs
O(1); memory is bounded (10 time buckets per pool, one slot per user bucket, and the
users seen with events). The unit of evidence is the user: of one user's (and one
client address's) events, only the first moves a test (``docs/judging-users.md``).

Rules this module keeps (``L = ln(1/alpha)``):

1. **Comparative test**, the main rule. ``w`` is the canary's measured share of the
   distinct users seen in the sliding window (the response being recorded included;
   the configured weight is not used: sticky users make the two differ). After the
   weight changes (``weight_changed``: an operator, a rollout's step), the window
   still holds users served at the old weight for a whole window, and every error
   in that time would be judged against the old share; so until a window has
   passed, ``w`` is the share among users seen since the change, starting from the
   new weight as a prior worth ``SHARE_PRIOR`` users (which the measured share soon
   outweighs). If the canary is no worse than stable (H0), a user with an error is
   the canary's with probability ``w``; if its users err R x as often as stable's
   (H_R), with ``q_R = R·w / (R·w + 1 - w)``. On every user's first error, for R in
   {2, 4, 8, 16, 32, 64}::

       canary error:  llr_R += ln(q_R / w)             =  ln R - ln(1 + (R-1)·w)
       stable error:  llr_R += ln((1 - q_R) / (1 - w)) =       - ln(1 + (R-1)·w)
       llr_R = max(llr_R, -2·L)      # a long healthy run cannot bank unlimited credit

   Nothing is updated while ``w`` is 0, 1 or undefined (a pool has no requests in
   the window): such an error says nothing about the comparison. The mixture's
   log-odds are ``ln(½·e^llr_2 + ⅒·Σ_{R≥4} e^llr_R)``; the canary is ejected when
   they reach ``L``. Under H0 the mixture (unfloored) is a martingale starting at 1,
   so by Ville's inequality it ever reaches ``1/alpha`` with probability ≤ alpha,
   however long it is watched; the floor adds only excursions that must climb
   3·L, each ~alpha³ likely.

2. **Absolute backstop.** The window is ``window`` seconds in 10 fixed buckets (a
   ring; it holds the current bucket and the nine before it, so between 0.9 and 1
   window). With at least ``min_requests`` canary requests in it, the canary is
   ejected when more than ``max_error_rate`` of its users in the window saw an
   error, or, when ``max_p99_latency`` is set, more than 1 % of its users saw a
   response slower than that (counted from the raw latencies, not from histogram
   bins); and never on fewer than ``BACKSTOP_MIN_USERS`` users (client addresses):
   one client alone never trips it.

3. **Stable guard.** Stable is degraded while its window errors exceed
   ``stable_guard · max(requests, min_requests)``: its error rate, except that a
   quiet window counts as ``min_requests`` requests, so 1 error in 5 requests is
   not an outage. While degraded nothing is ejected and the verdict is
   ``shared_degradation``. The comparative statistics keep running (errors that
   hit both pools alike are what H0 predicts); if they crossed ``L`` meanwhile,
   the canary is ejected on the first response after the guard lifts.
   The backstop, being absolute, also leaves out every bucket in which stable
   was degraded by the same test applied to that bucket alone: the canary's
   errors there belong to a shared outage. This matters at an outage's onset,
   when the canary's smaller sample can cross ``max_error_rate`` before
   stable's whole window crosses ``stable_guard``, and after it, while the
   outage's buckets are still in the window.

The verdict is, in this order: ``ejected``; ``shared_degradation``; ``healthy``;
``insufficient_samples``. **healthy** is the mirror sequential test: ``eta`` is
the log likelihood ratio of "no worse" (``q = w``) against "2x worse" (``q_2``),
updated on the same errors (``eta -= the unfloored llr_2 increment``). If the
canary's error rate is ≥ 2x stable's, ``e^eta`` is a supermartingale starting at
1, so ``eta`` reaches ``ln(1/0.05)`` with probability ≤ 5 %: healthy means the
test accepts "no worse than 2x stable" at 95 %. ``eta`` is kept within
``±2·ln 20`` so credit from a long good run fades within a few canary errors if
the canary turns, and an early bad patch cannot block ``healthy`` for ever.

**Canary requests still needed** (shown with ``insufficient_samples``): a plug-in
estimate assuming the figures seen since reset go on as they are (``E`` users with
errors counted by the test, ``E_c`` of them the canary's, ``N_c`` canary requests)::

    q = (E_c + w) / (E + 1)      canary share of users with errors, one pseudo-user at w
    d_R = q·ln R - ln(1 + (R-1)·w)       drift per user of llr_R (to ejection)
    d_h = ln(1 + w) - q·ln 2              drift per user of eta (to healthy)
    users = min over positive drifts of (L - ln weight_R - llr_R) / d_R, (ln 20 - eta) / d_h
    canary requests = users · N_c / E

``None`` while ``E`` is 0 (no user of either pool had an error: nothing to extrapolate,
``evidence["quiet"]``), when no drift is positive (the measured ratio sits between the
boundaries) or when ``w`` is unknown. The ejection distance uses the best single component, so the
estimate errs long.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from canaryproxy.judge.sequential import (
    HEALTHY_THRESHOLD,
    LOG_RATIOS,
    LOG_WEIGHTS,
    RATIOS,
    MixtureTest,
    StepEvidence,
    StepGate,
)
from canaryproxy.judge.tally import USERS_ROW
from canaryproxy.judge.users import ANONYMOUS, RecentUsers, SeenUsers, UserShare
from canaryproxy.judge.window import (
    WINDOW_SLOTS,
    PoolWindow,
    format_odds,
    format_percent,
    latency_bin,
    pool_counts,
    rate_ratio,
    ratio,
    rounded,
    two_distinct,
)
from canaryproxy.vocabulary import EjectRule, JudgeRule, Pool, Verdict

__all__ = ["HEALTHY_THRESHOLD", "BudgetParams", "Ejection", "Judge", "Pool", "Verdict"]


SHARE_PRIOR = 100
"""Users' worth of belief in the new weight right after a weight change."""
BACKSTOP_MIN_USERS = 2  # one client alone never trips the backstop
SLOW_SHARE_PERCENT = 1  # "p99 > limit" is "more than 1 % slower than limit"


class _ErrorBudgetLike(Protocol):
    @property
    def alpha(self) -> float: ...
    @property
    def stable_guard(self) -> float: ...
    @property
    def window(self) -> float: ...
    @property
    def min_requests(self) -> int: ...
    @property
    def max_error_rate(self) -> float: ...
    @property
    def max_p99_latency(self) -> float | None: ...


@dataclass(frozen=True, slots=True)
class BudgetParams:
    """The rules' settings; the names are those of ``error_budget`` in the config."""

    alpha: float = 0.0005
    stable_guard: float = 0.05
    window: float = 60.0
    min_requests: int = 100
    max_error_rate: float = 0.10
    max_p99_latency: float | None = None
    judge_latency: bool = False  # outcomes.slow set: slow outcomes get their own test

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha: must be between 0 and 1, got {self.alpha}")
        if not self.window > 0:
            raise ValueError(f"window: must be > 0, got {self.window}")
        if self.min_requests < 1:
            raise ValueError(f"min_requests: must be >= 1, got {self.min_requests}")
        if self.max_p99_latency is not None and not self.max_p99_latency > 0:
            raise ValueError(f"max_p99_latency: must be > 0, got {self.max_p99_latency}")

    @classmethod
    def from_config(cls, cfg: _ErrorBudgetLike, judge_latency: bool = False) -> BudgetParams:
        return cls(
            judge_latency=judge_latency,
            alpha=cfg.alpha,
            stable_guard=cfg.stable_guard,
            window=cfg.window,
            min_requests=cfg.min_requests,
            max_error_rate=cfg.max_error_rate,
            max_p99_latency=cfg.max_p99_latency,
        )


@dataclass(frozen=True, slots=True)
class Ejection:
    """A rule fired: ``reason`` is the one-line story, ``evidence`` the numbers."""

    rule: JudgeRule
    reason: str
    evidence: dict[str, object]


class Judge:
    """The judgement of one service's canary against its stable pool."""

    def __init__(self, params: BudgetParams, now: float) -> None:
        self.params = params
        self._width = params.window / WINDOW_SLOTS
        self._threshold = math.log(1 / params.alpha)
        self._floor = -2 * self._threshold
        self._slow_limit = math.inf if params.max_p99_latency is None else params.max_p99_latency
        self._guard = params.stable_guard
        self._min_requests = params.min_requests
        self.reset(now)

    def reset(self, now: float) -> None:
        """Start the judgement afresh (restore): empty windows, no evidence, not ejected."""
        self._stable = PoolWindow()
        self._canary = PoolWindow()
        self._bucket = int(now // self._width)
        self._slot = self._bucket % WINDOW_SLOTS
        self._bucket_end = (self._bucket + 1) * self._width
        self._flagged = [False] * WINDOW_SLOTS  # buckets in which stable itself was degraded
        self._n_flagged = 0
        # canary requests, errors, slow responses, users with errors, users with slow
        # responses: in flagged buckets
        self._excluded = [0, 0, 0, 0, 0]
        self._since: list[float] = []  # after a weight change: [weight, when, first bucket]
        self._errors = MixtureTest(self._floor)
        self._late = MixtureTest(self._floor)  # the same test on slow outcomes
        # the unit of evidence is the user (users.py)
        self._stable_users = UserShare(WINDOW_SLOTS)
        self._canary_users = UserShare(WINDOW_SLOTS)
        self._error_seen = SeenUsers()
        self._late_seen = SeenUsers()
        self._erring = RecentUsers(WINDOW_SLOTS)  # the canary's users with errors, window
        self._slowed = RecentUsers(WINDOW_SLOTS)  # the canary's users with slow responses
        # users whose events the tests counted, since reset: [stable, canary] per test
        self._error_users = [0, 0]
        self._late_users = [0, 0]
        self._step: StepEvidence | None = None
        self._ejection: tuple[EjectRule, str] | None = None

    # -- recording ---------------------------------------------------------

    def record(
        self,
        pool: Pool,
        is_error: bool,
        latency: float,
        now: float,
        is_late: bool = False,
        user: int = ANONYMOUS,
        client: int = ANONYMOUS,
    ) -> Ejection | None:
        """Count one response; return the Ejection if it tips the canary over.

        ``latency`` is in seconds; ``is_late`` says it was a slow outcome (its head came
        later than ``outcomes.slow``); ``user`` is the user's bucket and ``client`` the key
        of its address (``users.client_key``), ``ANONYMOUS`` when not known. A ``now`` that
        runs backwards counts in the current bucket; one that jumps ahead empties what left
        the window."""
        if now >= self._bucket_end:
            self._advance(now)
        slow = latency > self._slow_limit
        canary = pool == "canary"
        self.see_user(canary, user)
        self._add(canary, 1, int(is_error), slow, latency_bin(latency), int(is_late))
        if canary and (is_error or slow):
            self._mark_backstop(is_error, slow, user, client)
        if self._ejection is not None:
            return None
        if is_error or is_late:
            self._update_tests(canary, is_error, is_late, user, client)
        return self._judge()

    def see_user(self, canary: bool, user: int, count: int = 1) -> None:
        """``user`` (or ``count`` anonymous users) served by a pool now (in the current
        bucket): the canary's share of users is counted from these."""
        (self._canary_users if canary else self._stable_users).see(user, self._bucket, count)

    def _mark_backstop(self, is_error: bool, slow: bool, user: int, client: int) -> None:
        """A canary user's error or slow response, for the backstop's share of users."""
        flagged = self._flagged[self._slot]
        if is_error and self._erring.is_first(user, client, self._bucket) and flagged:
            self._excluded[3] += 1
        if slow and self._slowed.is_first(user, client, self._bucket) and flagged:
            self._excluded[4] += 1

    def record_tally(self, rows: Sequence[Sequence[int]], now: float) -> Ejection | None:
        """Count a flush of outcomes counted elsewhere (``tally.Tally`` rows); return the
        Ejection if they tip the canary over.

        The users a flush names count first (the canary's share of users), then every plain
        success; then the events (errors, slow outcomes) one at a time, each with its user,
        canary and stable interleaved evenly. A flush covers at most a few hundred
        milliseconds, over which the share barely moves. Rows without users (an older
        instance's) count each outcome as a user of its own.
        """
        if now >= self._bucket_end:
            self._advance(now)
        named = any(row[1] == USERS_ROW for row in rows)
        n_events = [0, 0]
        for row in rows:
            canary = row[0] == 1
            if row[1] == USERS_ROW:
                self.see_user(canary, ANONYMOUS, row[2])
                for i in range(3, len(row)):
                    self.see_user(canary, row[i])
                continue
            count = row[5]
            if not named:
                self.see_user(canary, ANONYMOUS, count)
            if row[1] or row[3]:
                n_events[row[0]] += count
                continue
            self._add(canary, count, 0, row[2] == 1, row[4], 0)
            if canary and row[2] == 1:
                user, client = _identity(row)
                for _ in range(count):
                    self._mark_backstop(False, True, user, client)
        events: list[tuple[float, Sequence[int]]] = []
        seen = [0, 0]
        for row in rows:
            if row[1] != USERS_ROW and (row[1] or row[3]):
                pool = row[0]
                for _ in range(row[5]):
                    # (position in its pool's events, as a share): merges the two evenly
                    events.append(((seen[pool] + 0.5) / n_events[pool], row))
                    seen[pool] += 1
        events.sort(key=lambda e: e[0])
        ejection: Ejection | None = None
        for _, row in events:
            if self._replay_event(row) and ejection is None:
                ejection = self._judge()
        if self._ejection is None:
            ejection = self._judge()
        return ejection

    def _replay_event(self, row: Sequence[int]) -> bool:
        """One event of a flush; True when the tests may have moved."""
        is_canary, is_error, is_slow, is_late = row[0] == 1, row[1] == 1, row[2] == 1, row[3] == 1
        user, client = _identity(row)
        self._add(is_canary, 1, int(is_error), is_slow, row[4], int(is_late))
        if is_canary:
            self._mark_backstop(is_error, is_slow, user, client)
        if self._ejection is not None:
            return False
        self._update_tests(is_canary, is_error, is_late, user, client)
        return True

    # -- a rollout's step --------------------------------------------------

    def begin_step(self, max_ratio: float) -> None:
        """A rollout step starts: its gates (errors, slow) and counts start from nothing."""
        self._step = StepEvidence(max_ratio)

    def end_step(self) -> None:
        self._step = None

    @property
    def step(self) -> StepEvidence | None:
        return self._step

    def gate(self, now: float) -> StepGate | None:
        """The current step's gate: shown, or what it waits for (None: no step)."""
        step = self._step
        if step is None:
            return None
        if now >= self._bucket_end:
            self._advance(now)
        w = self._window_share()
        return step.describe(self._threshold, w, self.params.judge_latency)

    def _add(
        self, canary: bool, count: int, errors: int, slow: bool, lat_bin: int, late: int
    ) -> None:
        slot = self._slot
        step = self._step
        if step is not None:
            step.count(canary, count, errors, late)
        if canary:
            self._canary.add(slot, count, errors, slow, lat_bin, late)
            if self._flagged[slot]:
                excluded = self._excluded
                excluded[0] += count
                excluded[1] += errors
                excluded[2] += count if slow else 0
            return
        stable = self._stable
        stable.add(slot, count, errors, slow, lat_bin, late)
        if self._flagged[slot] != self._is_degraded(stable.errors[slot], stable.requests[slot]):
            self._flip_flag(slot)

    def _flip_flag(self, slot: int) -> None:
        """Stable's own degradation in ``slot`` began or ended: move the canary's
        counts of that bucket out of or back into the backstop's reach."""
        self._flagged[slot] = not self._flagged[slot]
        sign = 1 if self._flagged[slot] else -1
        self._n_flagged += sign
        c, excluded = self._canary, self._excluded
        excluded[0] += sign * c.requests[slot]
        excluded[1] += sign * c.errors[slot]
        excluded[2] += sign * c.slow[slot]
        excluded[3] += sign * self._erring.per_slot[slot]
        excluded[4] += sign * self._slowed.per_slot[slot]

    def mark_ejected(self, rule: EjectRule, reason: str) -> None:
        """Eject by hand, or come back ejected from disk; lasts until ``reset``."""
        self._ejection = (rule, reason)

    # -- reading -----------------------------------------------------------

    @property
    def is_ejected(self) -> bool:
        return self._ejection is not None

    @property
    def ejected_rule(self) -> EjectRule | None:
        return None if self._ejection is None else self._ejection[0]

    @property
    def ejected_reason(self) -> str | None:
        return None if self._ejection is None else self._ejection[1]

    @property
    def bucket_seconds(self) -> float:
        """Width of one time bucket of the window (window / 10)."""
        return self._width

    def verdict(self, now: float) -> Verdict:
        if now >= self._bucket_end:
            self._advance(now)
        return self._verdict()

    def _verdict(self) -> Verdict:
        if self._ejection is not None:
            return "ejected"
        if self._is_stable_degraded() or self._is_stable_late():
            return "shared_degradation"
        if self._errors.eta >= HEALTHY_THRESHOLD:
            return "healthy"
        return "insufficient_samples"

    def window_stats(self, pool: Pool, now: float) -> dict[str, object]:
        """``requests, errors, error_rate, p50_ms, p99_ms`` of one pool over the window."""
        if now >= self._bucket_end:
            self._advance(now)
        return (self._canary if pool == "canary" else self._stable).stats()

    def evidence(self, now: float) -> dict[str, object]:
        """Everything the verdict rests on, JSON-able."""
        if now >= self._bucket_end:
            self._advance(now)
        return self._evidence()

    def _evidence(self) -> dict[str, object]:
        verdict = self._verdict()
        stable, canary = self._stable, self._canary
        errors = stable.since_errors + canary.since_errors
        requests = stable.since_requests + canary.since_requests
        return {
            "window_seconds": self.params.window,
            "stable": pool_counts(stable),
            "canary": pool_counts(canary),
            "canary_share_of_requests": ratio(canary.since_requests, requests),
            "canary_share_of_requests_window": ratio(canary.n, canary.n + stable.n),
            "canary_share_of_users_window": rounded(self._window_share()),
            "users": {"stable": self._stable_users.n, "canary": self._canary_users.n},
            "error_users": {"stable": self._error_users[0], "canary": self._error_users[1]},
            "canary_share_of_errors": ratio(canary.since_errors, errors),
            "error_rate_ratio": rate_ratio(canary, stable),
            "log_odds": round(self._errors.log_odds, 4),
            "threshold": round(self._threshold, 4),
            "odds": format_odds(self._errors.log_odds),
            "threshold_odds": format_odds(self._threshold),
            "log_likelihood_ratios": {
                str(r): round(v, 4) for r, v in zip(RATIOS, self._errors.llr, strict=True)
            },
            "healthy_log_odds": round(self._errors.eta, 4),
            "healthy_threshold": round(HEALTHY_THRESHOLD, 4),
            "stable_guard_active": self._is_stable_degraded(),
            "canary_requests_needed": (
                self._requests_needed() if verdict == "insufficient_samples" else None
            ),
            "quiet": sum(self._error_users) == 0,
            "rules": _rules(self.params),
            "ejection": _ejection_dict(self._ejection),
            "slow": self._slow_evidence() if self.params.judge_latency else None,
        }

    def _slow_evidence(self) -> dict[str, object]:
        """The comparative test on slow outcomes (``outcomes.slow``), over the window."""
        c, s = self._canary.n_late, self._stable.n_late
        return {
            "canary_slow": c,
            "stable_slow": s,
            "slow_users": {"stable": self._late_users[0], "canary": self._late_users[1]},
            "canary_share_of_slow": ratio(c, c + s),
            "log_odds": round(self._late.log_odds, 4),
            "odds": format_odds(self._late.log_odds),
            "stable_slow_guard_active": self._is_stable_late(),
        }

    def __repr__(self) -> str:
        state = (
            "ejected"
            if self._ejection
            else f"log_odds={self._errors.log_odds:.2f}/{self._threshold:.2f}"
        )
        s, c = self._stable, self._canary
        return (
            f"<Judge {state} eta={self._errors.eta:.2f}"
            f" stable={s.n_errors}/{s.n} canary={c.n_errors}/{c.n}>"
        )

    # -- the rules -----------------------------------------------------------

    def _judge(self) -> Ejection | None:
        """After a response: guard first, then the comparative test, then the backstop."""
        stable = self._stable  # the guard, inlined: this runs on every response
        n = stable.n if stable.n > self._min_requests else self._min_requests
        if stable.n_errors > self._guard * n:
            return None
        if self._errors.log_odds >= self._threshold:
            return self._eject("comparative", self._comparative_reason())
        if self._late.log_odds >= self._threshold and not stable.n_late > self._guard * n:
            return self._eject("latency", self._latency_reason())
        return self._check_backstop()

    def _latency_reason(self) -> str:
        s, c = self._late_users
        return (
            f"canary users with slow responses {c} of {c + s} while serving "
            f"{format_percent(self._late.share)} % of users: "
            f"{format_odds(self._late.log_odds)} against no-slower-than-stable"
        )

    def weight_changed(self, weight: float, now: float) -> None:
        """The canary's weight is now ``weight`` percent: measure ``w`` afresh from here
        (see the module docstring) until a window has passed."""
        if now >= self._bucket_end:
            self._advance(now)
        self._since = [weight / 100, now, float(self._bucket)]

    def _window_share(self) -> float | None:
        """The canary's share of the users seen in the window (see the module rules)."""
        n_canary, n_stable = self._canary_users.n, self._stable_users.n
        if n_canary == 0 or n_stable == 0:
            return None
        since = self._since
        if since:
            if self._bucket_end - since[1] >= self.params.window + self._width:
                self._since = []  # the window holds none of the old weight's users now
            elif 0 < since[0] < 1:
                first, now = int(since[2]), self._bucket
                canary = self._canary_users.since(first, now)
                both = canary + self._stable_users.since(first, now)
                return (canary + SHARE_PRIOR * since[0]) / (both + SHARE_PRIOR)
        return n_canary / (n_canary + n_stable)

    def _update_tests(
        self, from_canary: bool, is_error: bool, is_late: bool, user: int, client: int
    ) -> None:
        """An event's evidence: counted once per user and client (``users.SeenUsers``)."""
        w = self._window_share()
        if w is None:
            return  # w is 0 or 1: an event cannot tell the hypotheses apart
        pool = 1 if from_canary else 0
        if is_error and self._error_seen.is_first(user, client):
            self._errors.update(from_canary, w)
            self._error_users[pool] += 1
        if is_late and self._late_seen.is_first(user, client):
            self._late.update(from_canary, w)
            self._late_users[pool] += 1
        step = self._step
        if step is not None:
            step.event(from_canary, w, is_error, is_late, user, client)

    def _is_degraded(self, errors: int, requests: int) -> bool:
        """The guard's test, for the window or for one bucket of stable's."""
        return errors > self._guard * max(requests, self._min_requests)

    def _is_stable_late(self) -> bool:
        """Stable itself slow (a shared slowdown): the guard's test on slow outcomes."""
        return self.params.judge_latency and self._is_degraded(self._stable.n_late, self._stable.n)

    def _is_stable_degraded(self) -> bool:
        return self._is_degraded(self._stable.n_errors, self._stable.n)

    def _backstop_counts(self) -> tuple[int, int, int, int]:
        """Outside stable's bad buckets: the canary's requests, and its users with errors
        and with slow responses; and its users in the window (all buckets)."""
        c, excluded, users = self._canary, self._excluded, self._canary_users
        n_users = users.n
        if self._n_flagged:  # users last seen in stable's bad buckets are out too
            for slot in range(WINDOW_SLOTS):
                if self._flagged[slot]:
                    n_users -= users.per_slot[slot] + users.anonymous[slot]
        return (
            c.n - excluded[0],
            self._erring.n - excluded[3],
            self._slowed.n - excluded[4],
            n_users,
        )

    def _backstop_fires(self, n: int, erring: int, slowed: int, users: int) -> bool:
        """At least ``min_requests`` canary requests, and more than ``max_error_rate`` of
        its users with an error, or more than 1 % with a response slower than
        ``max_p99_latency``; never on one client alone (``BACKSTOP_MIN_USERS``)."""
        if n < self._min_requests or users <= 0:
            return False
        if erring >= BACKSTOP_MIN_USERS and erring / users > self.params.max_error_rate:
            return True
        return slowed >= BACKSTOP_MIN_USERS and slowed * 100 > users * SLOW_SHARE_PERCENT

    def _check_backstop(self) -> Ejection | None:
        n, erring, slowed, users = self._backstop_counts()
        if not self._backstop_fires(n, erring, slowed, users):
            return None
        p = self.params
        window = f"over {p.window:g}s, {n} requests"
        if erring >= BACKSTOP_MIN_USERS and erring / users > p.max_error_rate:
            rate, limit = two_distinct(erring / users, p.max_error_rate)
            return self._eject(
                "backstop", f"error rate {rate} > {limit} ({erring} of {users} users) {window}"
            )
        limit_s = f"{self._slow_limit:g}s"
        reason = (
            f"p99 latency > {limit_s} {window}: {slowed} of {users} users slower than {limit_s}"
        )
        return self._eject("backstop", reason)

    def _comparative_reason(self) -> str:
        stable, canary = self._error_users
        return (
            f"canary users with errors {canary} of {canary + stable} while serving "
            f"{format_percent(self._errors.share)} % of users: "
            f"{format_odds(self._errors.log_odds)} against no-worse-than-stable"
        )

    def _eject(self, rule: JudgeRule, reason: str) -> Ejection:
        self._ejection = (rule, reason)
        return Ejection(rule, reason, self._evidence())

    def _requests_needed(self) -> int | None:
        """Canary requests until the test decides, if the users' figures go on as seen
        since reset (module docstring); None before any user's error (a quiet judgement:
        no number can be honest yet) or when the measured ratio sits between the
        boundaries."""
        w = self._window_share()
        stable_users, canary_users = self._error_users
        events = stable_users + canary_users
        if w is None or events == 0:
            return None
        q = (canary_users + w) / (events + 1)
        components = zip(RATIOS, LOG_RATIOS, LOG_WEIGHTS, self._errors.llr, strict=True)
        distances = [
            (self._threshold - lw - v, q * lr - math.log1p((r - 1) * w))
            for r, lr, lw, v in components
        ]
        distances.append((HEALTHY_THRESHOLD - self._errors.eta, math.log1p(w) - q * math.log(2)))
        needed = [max(gap, 0.0) / drift for gap, drift in distances if drift > 0]
        if not needed:
            return None
        canary_requests = self._canary.since_requests
        return math.ceil(min(needed) * max(canary_requests, 1) / events)

    # -- time ----------------------------------------------------------------

    def _advance(self, now: float) -> None:
        """Move to ``now``'s bucket, emptying the ones that left the window."""
        bucket = int(now // self._width)
        for b in range(self._bucket + 1, min(bucket, self._bucket + WINDOW_SLOTS) + 1):
            slot = b % WINDOW_SLOTS
            if self._flagged[slot]:
                self._flip_flag(slot)
            self._stable.clear(slot)
            self._canary.clear(slot)
            self._stable_users.clear(slot)
            self._canary_users.clear(slot)
            self._erring.clear(slot, b)
            self._slowed.clear(slot, b)
        self._bucket = max(bucket, self._bucket)
        self._slot = self._bucket % WINDOW_SLOTS
        self._bucket_end = (self._bucket + 1) * self._width
        if self._bucket_end <= now:  # float rounding at a bucket edge
            self._bucket_end = math.nextafter(now, math.inf)


def _identity(row: Sequence[int]) -> tuple[int, int]:
    """(user, client) of a tally row; unknown in a row that names neither."""
    if len(row) >= 8:
        return row[6], row[7]
    return ANONYMOUS, ANONYMOUS


def _rules(p: BudgetParams) -> dict[str, object]:
    return {
        "alpha": p.alpha,
        "stable_guard": p.stable_guard,
        "window": p.window,
        "min_requests": p.min_requests,
        "max_error_rate": p.max_error_rate,
        "max_p99_latency": p.max_p99_latency,
    }


def _ejection_dict(ejection: tuple[EjectRule, str] | None) -> dict[str, str] | None:
    return None if ejection is None else {"rule": ejection[0], "reason": ejection[1]}

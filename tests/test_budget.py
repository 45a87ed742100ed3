"""The canary's judge (canaryproxy/judge/budget.py): formulas by hand, rules at their
boundaries, the guard, verdicts, time. Fake clock and seeded randomness only."""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass

import pytest

from benchmarks.batch_judge import record_successes
from canaryproxy.judge.budget import (
    HEALTHY_THRESHOLD,
    BudgetParams,
    Ejection,
    Judge,
    Pool,
)
from canaryproxy.judge.window import format_odds, format_percent

RATIOS = (2, 4, 8, 16, 32, 64)
WEIGHTS = (0.5, 0.1, 0.1, 0.1, 0.1, 0.1)
QUIET = BudgetParams(stable_guard=1.0)  # no guard in the way


def feed(
    judge: Judge,
    pool: Pool,
    requests: int,
    errors: int = 0,
    now: float = 0.0,
    latency: float = 0.01,
) -> list[tuple[int, Ejection]]:
    """``errors`` errors first, then successes; the (1-based) index of each ejection."""
    fired = []
    for i in range(requests):
        ejection = judge.record(pool, i < errors, latency, now)
        if ejection is not None:
            fired.append((i + 1, ejection))
    return fired


def llrs(judge: Judge) -> list[float]:
    found = judge.evidence(0.0)["log_likelihood_ratios"]
    assert isinstance(found, dict)
    return [float(found[str(r)]) for r in RATIOS]


def number(judge: Judge, key: str, now: float = 0.0) -> float:
    value = judge.evidence(now)[key]
    assert isinstance(value, (int, float))
    return float(value)


def step_by_hand(ratio: int, w: float, from_canary: bool) -> float:
    """The documented update written from its definition, not from the module's algebra."""
    q = ratio * w / (ratio * w + 1 - w)
    return math.log(q / w) if from_canary else math.log((1 - q) / (1 - w))


def mixture_by_hand(components: list[float]) -> float:
    return math.log(sum(wt * math.exp(v) for wt, v in zip(WEIGHTS, components, strict=True)))


# -- the update formula ------------------------------------------------------


def test_canary_error_at_one_fifth_share_matches_hand_worked_values() -> None:
    judge = Judge(QUIET, 0.0)
    feed(judge, "stable", 4)
    feed(judge, "canary", 1, errors=1)  # w = 1/5, counting the error itself
    # q_R / w = R / (1 + (R-1)/5): 5/3, 5/2, 10/3, 4, 40/9, 80/17
    hand = [math.log(x) for x in (5 / 3, 5 / 2, 10 / 3, 4, 40 / 9, 80 / 17)]
    assert llrs(judge) == pytest.approx(hand, abs=1e-4)
    assert number(judge, "log_odds") == pytest.approx(mixture_by_hand(hand), abs=1e-4)
    assert number(judge, "healthy_log_odds") == pytest.approx(-math.log(5 / 3), abs=1e-4)


def test_stable_error_at_one_fifth_share_matches_hand_worked_values() -> None:
    judge = Judge(QUIET, 0.0)
    feed(judge, "canary", 1)
    feed(judge, "stable", 3)
    feed(judge, "stable", 1, errors=1)
    # (1 - q_R) / (1 - w) = 1 / (1 + (R-1)/5): 5/6, 5/8, 5/12, 1/4, 5/36, 5/68
    hand = [math.log(x) for x in (5 / 6, 5 / 8, 5 / 12, 1 / 4, 5 / 36, 5 / 68)]
    assert llrs(judge) == pytest.approx(hand, abs=1e-4)
    assert number(judge, "healthy_log_odds") == pytest.approx(math.log(6 / 5), abs=1e-4)


def test_updates_add_up_with_the_share_measured_at_each_error() -> None:
    judge = Judge(QUIET, 0.0)
    feed(judge, "stable", 18)
    feed(judge, "canary", 1)
    judge.record("canary", True, 0.01, 0.0)  # w = 2/20
    judge.record("stable", True, 0.01, 0.0)  # w = 2/21
    judge.record("canary", True, 0.01, 0.0)  # w = 3/22
    hand = [
        step_by_hand(r, 2 / 20, True)
        + step_by_hand(r, 2 / 21, False)
        + step_by_hand(r, 3 / 22, True)
        for r in RATIOS
    ]
    assert llrs(judge) == pytest.approx(hand, abs=1e-4)
    assert number(judge, "log_odds") == pytest.approx(mixture_by_hand(hand), abs=1e-4)


@pytest.mark.parametrize("pool", ["stable", "canary"], ids=["only-stable-w-0", "only-canary-w-1"])
def test_no_update_when_one_pool_has_no_requests(pool: Pool) -> None:
    judge = Judge(QUIET, 0.0)
    feed(judge, pool, 50, errors=20)
    assert llrs(judge) == [0.0] * 6
    assert number(judge, "log_odds") == 0.0
    assert judge.evidence(0.0)["canary_share_of_users_window"] is None


def test_share_is_measured_over_the_window_not_since_reset() -> None:
    judge = Judge(BudgetParams(window=10.0, stable_guard=1.0), 0.0)
    feed(judge, "canary", 50, now=0.0)
    feed(judge, "stable", 50, now=0.0)
    judge.record("stable", True, 0.01, 10.5)  # the canary's requests have left the window
    assert llrs(judge) == [0.0] * 6
    feed(judge, "canary", 1, now=10.5)
    judge.record("canary", True, 0.01, 10.5)  # w = 2 canary of 3 in the window
    assert llrs(judge) == pytest.approx([step_by_hand(r, 2 / 3, True) for r in RATIOS], abs=1e-4)


def test_each_component_is_floored_at_minus_two_ln_one_over_alpha() -> None:
    params = BudgetParams(alpha=0.01, stable_guard=1.0)
    judge = Judge(params, 0.0)
    feed(judge, "canary", 1000)
    feed(judge, "stable", 1000)
    feed(judge, "stable", 100, errors=100)
    floor = -2 * math.log(100)
    assert llrs(judge) == pytest.approx([floor] * 6, abs=1e-4)
    judge.record("canary", True, 0.01, 0.0)
    w = 1001 / 2101
    hand = [floor + step_by_hand(r, w, True) for r in RATIOS]
    assert llrs(judge) == pytest.approx(hand, abs=1e-4)


def test_healthy_credit_is_capped_at_twice_its_threshold() -> None:
    judge = Judge(QUIET, 0.0)
    feed(judge, "canary", 1000)
    feed(judge, "stable", 1000)
    feed(judge, "stable", 200, errors=200)
    assert number(judge, "healthy_log_odds") == pytest.approx(2 * math.log(20), abs=1e-4)


# -- the comparative rule ----------------------------------------------------


def _log_odds_after_canary_errors(count: int) -> float:
    """19 stable and 1 canary success, then ``count`` canary errors, by hand."""
    components = [0.0] * 6
    for k in range(1, count + 1):
        w = (1 + k) / (20 + k)
        components = [v + step_by_hand(r, w, True) for v, r in zip(components, RATIOS, strict=True)]
    return mixture_by_hand(components)


@pytest.mark.parametrize(
    "errors_to_tip", [2, 3, 5], ids=["tips-on-2nd", "tips-on-3rd", "tips-on-5th"]
)
def test_comparative_fires_on_the_error_that_crosses_the_threshold(errors_to_tip: int) -> None:
    below, above = (_log_odds_after_canary_errors(k) for k in (errors_to_tip - 1, errors_to_tip))
    threshold = (below + above) / 2
    judge = Judge(BudgetParams(alpha=math.exp(-threshold), stable_guard=1.0), 0.0)
    feed(judge, "stable", 19)
    feed(judge, "canary", 1)
    fired = feed(judge, "canary", errors_to_tip, errors=errors_to_tip)
    assert [index for index, _ in fired] == [errors_to_tip]
    ejection = fired[0][1]
    assert ejection.rule == "comparative"
    assert ejection.evidence["log_odds"] == pytest.approx(above, abs=1e-4)
    assert judge.verdict(0.0) == "ejected"


def test_comparative_reason_reads_like_the_spec() -> None:
    judge = Judge(BudgetParams(stable_guard=1.0), 0.0)
    feed(judge, "stable", 95)
    feed(judge, "canary", 1)
    fired = feed(judge, "canary", 10, errors=10)
    assert len(fired) == 1
    _, ejection = fired[0]
    # it tips on the 4th canary error, at w = 5/100
    assert ejection.reason == (
        "canary users with errors 4 of 4 while serving 5 % of users: "
        f"{format_odds(_hand_log_odds(4))} against no-worse-than-stable"
    )
    assert _hand_log_odds(3) < math.log(2000) <= _hand_log_odds(4)


def _hand_log_odds(count: int) -> float:
    components = [0.0] * 6
    for k in range(1, count + 1):
        w = (1 + k) / (96 + k)
        components = [v + step_by_hand(r, w, True) for v, r in zip(components, RATIOS, strict=True)]
    return mixture_by_hand(components)


def test_ejection_is_returned_once_then_the_judge_stays_ejected() -> None:
    judge = Judge(BudgetParams(alpha=0.05, stable_guard=1.0), 0.0)
    feed(judge, "stable", 20)
    fired = feed(judge, "canary", 40, errors=40)
    assert len(fired) == 1
    assert judge.is_ejected
    assert judge.ejected_rule == "comparative"
    assert judge.ejected_reason == fired[0][1].reason


# -- the absolute backstop ---------------------------------------------------


@pytest.mark.parametrize(
    ("requests", "errors", "fires_at"),
    [
        (100, 10, None),
        (100, 11, 100),
        (99, 99, None),
        (150, 16, 100),
        (150, 15, 100),
        (120, 10, None),
    ],
    ids=[
        "rate-equal-to-limit",
        "rate-above-at-min-requests",
        "below-min-requests",
        "fires-as-min-is-reached",
        "15-of-100-fires-at-100",
        "never-above",
    ],
)
def test_backstop_error_rate(requests: int, errors: int, fires_at: int | None) -> None:
    judge = Judge(BudgetParams(), 0.0)  # canary only: w is 1, the comparative test stays out
    fired = feed(judge, "canary", requests, errors=errors)
    assert [index for index, _ in fired] == ([] if fires_at is None else [fires_at])
    if fired:
        assert fired[0][1].rule == "backstop"


def test_backstop_reason_reads_like_the_spec() -> None:
    judge = Judge(BudgetParams(), 0.0)
    feed(judge, "canary", 43, errors=43)
    fired = feed(judge, "canary", 100, errors=0)
    assert fired[0][1].reason == "error rate 0.43 > 0.10 (43 of 100 users) over 60s, 100 requests"


def test_backstop_prints_enough_digits_to_show_the_difference() -> None:
    judge = Judge(BudgetParams(min_requests=1000), 0.0)
    feed(judge, "canary", 101, errors=101)
    fired = feed(judge, "canary", 1000, errors=0)
    assert (
        fired[0][1].reason == "error rate 0.101 > 0.100 (101 of 1000 users) over 60s, 1000 requests"
    )


@pytest.mark.parametrize(
    ("limit", "slow", "slow_latency", "fires"),
    [
        (1.0, 1, 2.0, False),
        (1.0, 2, 2.0, True),
        (1.0, 5, 1.0, False),
        (None, 50, 9.0, False),
    ],
    ids=[
        "1-percent-slow-is-p99-at-limit",
        "2-percent-slow",
        "equal-to-limit-is-not-slow",
        "no-limit",
    ],
)
def test_backstop_p99(limit: float | None, slow: int, slow_latency: float, fires: bool) -> None:
    judge = Judge(BudgetParams(max_p99_latency=limit), 0.0)
    fired = feed(judge, "canary", slow, latency=slow_latency)
    fired += feed(judge, "canary", 100 - slow, latency=0.05)
    assert bool(fired) == fires
    if fires:
        assert fired[0][0] == 100 - slow  # on the 100th request
        assert (
            fired[0][1].reason
            == "p99 latency > 1s over 60s, 100 requests: 2 of 100 users slower than 1s"
        )


def test_backstop_forgets_what_left_the_window() -> None:
    judge = Judge(BudgetParams(window=10.0), 0.0)
    feed(judge, "canary", 60, errors=60, now=0.0)
    assert feed(judge, "canary", 100, now=10.0) == []  # the 60 errors left with bucket 0
    assert judge.window_stats("canary", 10.0)["errors"] == 0


# -- the stable guard --------------------------------------------------------


@pytest.mark.parametrize(
    ("stable_requests", "stable_errors", "degraded"),
    [
        (100, 5, False),
        (100, 6, True),
        (10, 5, False),
        (10, 6, True),
        (1000, 50, False),
        (1000, 51, True),
    ],
    ids=["5pct-of-100", "6pct-of-100", "quiet-5-of-10", "quiet-6-of-10", "5pct-of-1000", "5.1pct"],
)
def test_guard_counts_a_quiet_window_as_min_requests(
    stable_requests: int, stable_errors: int, degraded: bool
) -> None:
    judge = Judge(BudgetParams(), 0.0)
    feed(judge, "stable", stable_requests, errors=stable_errors)
    expected = "shared_degradation" if degraded else "insufficient_samples"
    assert judge.verdict(0.0) == expected
    assert judge.evidence(0.0)["stable_guard_active"] is degraded


def test_a_few_stable_errors_in_a_quiet_window_do_not_hold_the_backstop() -> None:
    judge = Judge(BudgetParams(alpha=1e-300), 0.0)
    feed(judge, "stable", 10, errors=2)  # 20 %, but 2 errors are not an outage
    fired = feed(judge, "canary", 100, errors=11)
    assert [(index, e.rule) for index, e in fired] == [(100, "backstop")]


def test_backstop_leaves_out_a_bucket_where_stable_failed_before_the_window_guard_does() -> None:
    judge = Judge(BudgetParams(window=10.0, alpha=1e-300), 0.0)  # comparative out of the way
    for second in range(6):
        feed(judge, "stable", 1000, now=second + 0.5)
        feed(judge, "canary", 50, now=second + 0.5)
    feed(judge, "stable", 100, errors=30, now=6.5)  # 30 of 6100: the window is fine
    assert feed(judge, "canary", 50, errors=40, now=6.5) == []  # 40 of 350 would be 11 %
    assert judge.verdict(6.5) == "insufficient_samples"
    assert judge.window_stats("canary", 6.5)["error_rate"] == pytest.approx(40 / 350)


def test_stable_successes_that_clear_its_bad_bucket_bring_the_canary_back_in() -> None:
    judge = Judge(BudgetParams(window=10.0, alpha=1e-300), 0.0)
    feed(judge, "stable", 1000, now=0.5)
    feed(judge, "stable", 100, errors=6, now=1.5)  # 6 > 5 % of max(100, 100)
    assert feed(judge, "canary", 100, errors=20, now=1.5) == []
    fired = feed(judge, "stable", 50, now=1.5)  # 6 of 120 is 5 %: no longer degraded
    assert [(index, e.rule) for index, e in fired] == [(20, "backstop")]


def test_guard_holds_the_backstop_and_stables_bad_buckets_stay_out_afterwards() -> None:
    judge = Judge(BudgetParams(window=10.0, alpha=1e-300), 0.0)  # comparative out of the way
    feed(judge, "stable", 100, errors=20, now=0.0)
    assert feed(judge, "canary", 150, errors=75, now=0.0) == []
    assert judge.verdict(0.0) == "shared_degradation"
    feed(judge, "stable", 400, now=1.0)  # 20 of 500: the guard lifts
    assert judge.verdict(1.0) == "insufficient_samples"
    assert feed(judge, "canary", 99, errors=20, now=1.0) == []  # 99 < min_requests
    fired = feed(judge, "canary", 1, now=1.0)  # bucket 0 (20 % stable errors) stays out
    assert fired[0][1].reason == "error rate 0.20 > 0.10 (20 of 100 users) over 10s, 100 requests"


def test_comparative_crossing_under_guard_ejects_when_the_guard_lifts() -> None:
    judge = Judge(BudgetParams(alpha=0.01), 0.0)
    feed(judge, "canary", 20)
    feed(judge, "stable", 100, errors=10)  # degraded
    assert feed(judge, "canary", 15, errors=15) == []
    assert number(judge, "log_odds") >= math.log(100)
    assert judge.verdict(0.0) == "shared_degradation"
    fired = feed(judge, "stable", 200)  # 10 errors of 300 stable requests lifts it at 200
    assert [(index, e.rule) for index, e in fired] == [(100, "comparative")]


# -- verdicts and evidence ---------------------------------------------------


def test_fresh_judge_has_insufficient_samples_and_no_estimate() -> None:
    judge = Judge(BudgetParams(), 0.0)
    assert judge.verdict(0.0) == "insufficient_samples"
    assert judge.evidence(0.0)["canary_requests_needed"] is None


def test_no_estimate_while_no_user_had_an_error() -> None:
    judge = Judge(BudgetParams(), 0.0)
    for _ in range(3):  # however many requests arrive, no number: nothing to extrapolate
        feed(judge, "stable", 950)
        feed(judge, "canary", 50)
        evidence = judge.evidence(0.0)
        assert evidence["canary_requests_needed"] is None
        assert evidence["quiet"] is True


def test_estimate_follows_the_documented_formula() -> None:
    judge = Judge(BudgetParams(), 0.0)
    feed(judge, "stable", 950)
    feed(judge, "canary", 50)
    feed(judge, "stable", 1, errors=1)
    # one stable error at w = 50/1001: q = w / 2; the healthy boundary is nearer
    w = 50 / 1001
    q = w / 2
    eta = -(0.0 - math.log1p(w))  # one stable error moved healthy's test up
    drift = math.log1p(w) - q * math.log(2)
    expected = math.ceil((math.log(20) - eta) / drift * 50 / 1)
    evidence = judge.evidence(0.0)
    assert evidence["quiet"] is False
    assert evidence["canary_requests_needed"] == expected


def test_estimate_heads_for_ejection_when_canary_takes_the_errors() -> None:
    judge = Judge(BudgetParams(), 0.0)
    feed(judge, "stable", 950)
    feed(judge, "canary", 50)
    feed(judge, "canary", 2, errors=2)
    needed = judge.evidence(0.0)["canary_requests_needed"]
    assert isinstance(needed, int)
    assert 0 < needed < 200


def _healthy_judge() -> Judge:
    judge = Judge(BudgetParams(), 0.0)
    feed(judge, "canary", 1000)
    feed(judge, "stable", 1000)
    return judge


def test_healthy_when_stable_errors_pile_up_at_the_expected_share() -> None:
    judge = _healthy_judge()
    eta, count = 0.0, 0
    while eta < HEALTHY_THRESHOLD:
        assert judge.verdict(0.0) == "insufficient_samples"
        count += 1
        eta -= step_by_hand(2, 1000 / (2000 + count), False)
        judge.record("stable", True, 0.01, 0.0)
    assert count == 8
    assert judge.verdict(0.0) == "healthy"
    assert judge.evidence(0.0)["canary_requests_needed"] is None


def test_healthy_fades_after_a_few_canary_errors() -> None:
    judge = _healthy_judge()
    feed(judge, "stable", 20, errors=20)
    assert judge.verdict(0.0) == "healthy"
    errors = 0
    while judge.verdict(0.0) == "healthy":
        judge.record("canary", True, 0.01, 0.0)
        errors += 1
    assert errors == 11  # from the cap 2·ln 20 down below ln 20, ~0.29 a canary error
    assert not judge.is_ejected


def test_evidence_is_json_and_complete() -> None:
    judge = Judge(BudgetParams(max_p99_latency=0.5), 0.0)
    feed(judge, "stable", 500, errors=5)
    feed(judge, "canary", 50, errors=1)
    evidence = judge.evidence(0.0)
    json.dumps(evidence)
    assert evidence["stable"] == {
        "requests": 500,
        "errors": 5,
        "error_rate": 0.01,
        "requests_since_reset": 500,
        "errors_since_reset": 5,
    }
    assert evidence["canary_share_of_errors"] == pytest.approx(1 / 6, abs=1e-6)
    assert evidence["canary_share_of_requests"] == pytest.approx(50 / 550, abs=1e-6)
    assert evidence["error_rate_ratio"] == pytest.approx((1 / 50) / (5 / 500), abs=1e-4)
    assert evidence["threshold_odds"] == "2000:1"
    assert evidence["rules"] == {
        "alpha": 0.0005,
        "stable_guard": 0.05,
        "window": 60.0,
        "min_requests": 100,
        "max_error_rate": 0.1,
        "max_p99_latency": 0.5,
    }
    assert evidence["ejection"] is None


# -- manual ejection, reset, time ----------------------------------------------


def test_mark_ejected_stops_the_judgement() -> None:
    judge = Judge(BudgetParams(), 0.0)
    judge.mark_ejected("manual", "bad deploy")
    assert feed(judge, "canary", 200, errors=200) == []
    assert judge.verdict(0.0) == "ejected"
    assert judge.evidence(0.0)["ejection"] == {"rule": "manual", "reason": "bad deploy"}
    assert judge.window_stats("canary", 0.0)["errors"] == 200  # STATE still shows traffic


def test_reset_starts_afresh() -> None:
    judge = Judge(BudgetParams(), 0.0)
    assert feed(judge, "canary", 200, errors=200)
    judge.reset(5.0)
    assert judge.verdict(5.0) == "insufficient_samples"
    assert not judge.is_ejected
    assert judge.window_stats("canary", 5.0)["requests"] == 0
    assert number(judge, "log_odds", 5.0) == 0.0
    assert [i for i, _ in feed(judge, "canary", 100, errors=11, now=5.0)] == [100]


@pytest.mark.parametrize(
    ("now", "requests"),
    [(0.0, 50), (9.99, 50), (10.0, 25), (10.99, 25), (11.0, 0), (1e6, 0)],
    ids=[
        "same-bucket",
        "just-inside",
        "first-bucket-left",
        "second-still-in",
        "all-left",
        "far-later",
    ],
)
def test_window_slides_by_buckets(now: float, requests: int) -> None:
    judge = Judge(BudgetParams(window=10.0), 0.0)
    feed(judge, "stable", 25, now=0.5)
    feed(judge, "stable", 25, now=1.5)
    assert judge.window_stats("stable", now)["requests"] == requests


def test_window_stats_percentiles() -> None:
    judge = Judge(BudgetParams(), 0.0)
    for ms in range(1, 101):
        judge.record("canary", ms % 10 == 0, ms / 1000, 0.0)
    stats = judge.window_stats("canary", 0.0)
    assert stats["requests"] == 100
    assert stats["errors"] == 10
    assert stats["error_rate"] == 0.1
    assert stats["p50_ms"] == pytest.approx(50, rel=0.05)
    assert stats["p99_ms"] == pytest.approx(99, rel=0.05)
    assert judge.window_stats("stable", 0.0)["p99_ms"] is None


# -- batches equal single calls --------------------------------------------------

Step = tuple[str, Pool, int, float, float]


def _random_steps(rng: random.Random) -> tuple[BudgetParams, list[Step]]:
    params = BudgetParams(
        alpha=rng.choice([0.0005, 0.05, 0.3]),
        stable_guard=rng.choice([0.05, 0.2, 0.0]),
        window=rng.choice([1.0, 10.0]),
        min_requests=rng.choice([1, 5, 30]),
        max_error_rate=rng.choice([0.1, 0.3, 0.9]),
        max_p99_latency=rng.choice([None, 0.5]),
    )
    steps: list[Step] = []
    now = 0.0
    for _ in range(rng.randint(1, 40)):
        now += rng.choice([0.0, 0.0, 0.05, 0.3, 2.0, 15.0])
        pool: Pool = rng.choice(["stable", "canary"])
        kind = "error" if rng.random() < 0.4 else "ok"
        steps.append((kind, pool, rng.randint(1, 80), rng.choice([0.1, 0.9]), now))
    return params, steps


def _replay(params: BudgetParams, steps: list[Step], batched: bool) -> list[object]:
    judge = Judge(params, 0.0)
    seen: list[object] = []
    for kind, pool, count, latency, now in steps:
        if kind == "error":
            got = [judge.record(pool, True, latency, now)]
        elif batched:
            got = [record_successes(judge, pool, count, latency, now)]
        else:
            got = [judge.record(pool, False, latency, now) for _ in range(count)]
        seen += [(e.rule, e.reason, e.evidence) for e in got if e is not None]
        seen.append(judge.verdict(now))
    seen.append(judge.evidence(1e4))
    return seen


def test_record_successes_equals_one_call_per_success() -> None:
    rng = random.Random(20240605)
    fired = 0
    for _ in range(400):
        params, steps = _random_steps(rng)
        single = _replay(params, steps, batched=False)
        assert _replay(params, steps, batched=True) == single, (params, steps)
        fired += any(isinstance(item, tuple) for item in single)
    assert fired > 100  # the table did reach the rules


# -- seeded traffic --------------------------------------------------------------


def _traffic(judge: Judge, rng: random.Random, requests: int, canary_rate: float) -> int | None:
    """100 req/s, w = 10 %, stable 1 %: canary requests until ejection, or None."""
    canary = 0
    for i in range(requests):
        pool: Pool = "canary" if rng.random() < 0.10 else "stable"
        canary += pool == "canary"
        rate = canary_rate if pool == "canary" else 0.01
        if judge.record(pool, rng.random() < rate, 0.02, i / 100) is not None:
            return canary
    return None


def test_seeded_bad_canary_is_caught_quickly() -> None:
    rng = random.Random(7)
    caught = [_traffic(Judge(BudgetParams(), 0.0), rng, 5000, 0.10) for _ in range(20)]
    assert all(c is not None and c < 300 for c in caught), caught


def test_seeded_healthy_canary_is_left_alone_and_becomes_healthy() -> None:
    rng = random.Random(11)
    judge = Judge(BudgetParams(), 0.0)
    assert _traffic(judge, rng, 40_000, 0.01) is None
    assert judge.verdict(400.0) == "healthy"


# -- parameters and formatting -------------------------------------------------


@dataclass(frozen=True)
class _Budget:
    alpha: float = 0.001
    stable_guard: float = 0.1
    window: float = 30.0
    min_requests: int = 50
    max_error_rate: float = 0.2
    max_p99_latency: float | None = 2.0


def test_params_from_config() -> None:
    assert BudgetParams.from_config(_Budget()) == BudgetParams(0.001, 0.1, 30.0, 50, 0.2, 2.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"alpha": 0.0},
        {"alpha": 1.0},
        {"window": 0.0},
        {"min_requests": 0},
        {"max_p99_latency": 0.0},
    ],
    ids=["alpha-0", "alpha-1", "window-0", "min-requests-0", "p99-0"],
)
def test_params_reject_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        BudgetParams(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("odds", "text"),
    [
        (2934.0, "2900:1"),
        (2000.0, "2000:1"),
        (12.3, "12:1"),
        (1.0, "1:1"),
        (0.5, "1:2"),
        (1e20, "1.0e20:1"),
    ],
    ids=["spec-example", "threshold", "two-digits", "even", "below-even", "huge"],
)
def test_format_odds(odds: float, text: str) -> None:
    assert format_odds(math.log(odds)) == text


@pytest.mark.parametrize(
    ("share", "text"),
    [(0.05, "5"), (0.005, "0.5"), (0.0523, "5.2"), (0.123, "12"), (1.0, "100")],
    ids=["five", "half", "two-figures", "above-ten", "all"],
)
def test_format_percent(share: float, text: str) -> None:
    assert format_percent(share) == text

"""Outcomes counted for a judge elsewhere (judge/tally.py) and their replay into the judge
(Judge.record_tally): pure, no sockets."""

from __future__ import annotations

import random

from canaryproxy.judge.budget import BudgetParams, Judge
from canaryproxy.judge.tally import Tally
from canaryproxy.judge.window import latency_bin
from canaryproxy.vocabulary import Pool


def test_rows_group_outcomes_that_agree() -> None:
    tally = Tally(slow_limit=0.5)
    for _ in range(3):
        tally.add("stable", False, 0.010)
    tally.add("canary", True, 0.010)
    tally.add("canary", False, 0.9)  # slow
    rows = sorted(tally.drain())
    b = latency_bin(0.010)
    # events name their user and client (-1: unknown); the users rows count 3 and 2
    # responses of no known user
    assert rows == [
        [0, -1, 3],
        [0, 0, 0, 0, b, 3],
        [1, -1, 2],
        [1, 0, 1, 0, latency_bin(0.9), 1, -1, -1],
        [1, 1, 0, 0, b, 1, -1, -1],
    ]
    assert not tally
    assert tally.drain() == []


def test_merge_adds_rows_from_elsewhere() -> None:
    a, b = Tally(None), Tally(None)
    a.add("canary", True, 0.2)
    b.add("canary", True, 0.2)
    b.add("stable", False, 0.2)
    a.merge(b.drain())
    assert sorted(a.drain()) == sorted(
        [
            [1, 1, 0, 0, latency_bin(0.2), 2, -1, -1],
            [0, 0, 0, 0, latency_bin(0.2), 1],
            [0, -1, 1],
            [1, -1, 2],
        ]
    )


def test_users_and_their_events_travel_in_the_rows() -> None:
    tally = Tally(None)
    for _ in range(5):  # one user retrying a failing request: one row, counted 5 times
        tally.add("canary", True, 0.01, False, 42, 7)
    tally.add("stable", False, 0.01, False, 9)
    tally.add("stable", False, 0.01, False, 9)
    rows = sorted(tally.drain())
    b = latency_bin(0.01)
    assert rows == [[0, -1, 0, 9], [0, 0, 0, 0, b, 2], [1, -1, 0, 42], [1, 1, 0, 0, b, 5, 42, 7]]


def test_no_limit_means_nothing_is_slow() -> None:
    tally = Tally(None)
    tally.add("stable", False, 1e6)
    assert tally.drain()[0][2] == 0


def _traffic(seed: int, n: int, canary_p: float, stable_p: float) -> list[tuple[Pool, bool]]:
    rng = random.Random(seed)
    out: list[tuple[Pool, bool]] = []
    for _ in range(n):
        pool: Pool = "canary" if rng.random() < 0.2 else "stable"
        p = canary_p if pool == "canary" else stable_p
        out.append((pool, rng.random() < p))
    return out


def test_replayed_flushes_judge_like_the_direct_path() -> None:
    """The same traffic, judged per response and in 250 ms flushes of a few hundred
    responses: both eject a 10x worse canary, within a flush of each other."""
    traffic = _traffic(7, 40_000, canary_p=0.10, stable_p=0.01)
    direct, pooled = Judge(BudgetParams(), 0.0), Judge(BudgetParams(), 0.0)
    tally = Tally(None)
    at_direct = at_pooled = None
    for i, (pool, error) in enumerate(traffic):
        now = i / 1000  # 1,000 requests a second
        if at_direct is None and direct.record(pool, error, 0.01, now) is not None:
            at_direct = i
        tally.add(pool, error, 0.01)
        if i % 250 == 249 and at_pooled is None and pooled.record_tally(tally.drain(), now):
            at_pooled = i
    assert at_direct is not None
    assert at_pooled is not None
    assert abs(at_pooled - at_direct) <= 500
    assert pooled.ejected_rule == direct.ejected_rule == "comparative"


def test_replay_of_a_healthy_canary_never_ejects() -> None:
    judge = Judge(BudgetParams(), 0.0)
    tally = Tally(None)
    for i, (pool, error) in enumerate(_traffic(3, 30_000, 0.01, 0.01)):
        tally.add(pool, error, 0.01)
        if i % 250 == 249:
            assert judge.record_tally(tally.drain(), i / 1000) is None
    assert judge.evidence(30.0)["canary"]["requests_since_reset"] > 0  # type: ignore[index]


def test_replay_fires_the_latency_backstop_on_slow_rows() -> None:
    params = BudgetParams(max_p99_latency=0.5, min_requests=100)
    judge = Judge(params, 0.0)
    tally = Tally(params.max_p99_latency)
    for _ in range(200):
        tally.add("stable", False, 0.01)
    for _ in range(100):
        tally.add("canary", False, 0.9)
    ejection = judge.record_tally(tally.drain(), 1.0)
    assert ejection is not None
    assert ejection.rule == "backstop"
    assert "p99 latency" in ejection.reason

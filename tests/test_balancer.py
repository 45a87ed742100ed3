"""Smooth weighted round robin: exact sequences, exact counts, skipping ineligible backends."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable

import pytest

from canaryproxy.decide.balancer import SmoothWeightedRoundRobin

LETTERS = "abcdefgh"


def everyone(_: int) -> bool:
    return True


def run(
    balancer: SmoothWeightedRoundRobin, picks: int, eligible: Callable[[int], bool] = everyone
) -> str:
    """The picks as letters (a = index 0), '-' for None."""
    out = []
    for _ in range(picks):
        index = balancer.pick(eligible)
        out.append("-" if index is None else LETTERS[index])
    return "".join(out)


# Sequences worked by hand with nginx's rule (add weights, take the largest,
# lowest index on a tie, subtract the total); one full cycle each.
SEQUENCES = [
    ([3, 1], "aaba"),
    ([5, 1, 1], "aabacaa"),  # nginx's documented example
    ([1, 1], "ab"),
    ([2, 1, 1], "abca"),
    ([1, 2, 3], "cbacbc"),
    ([4, 0, 1], "aacaa"),  # weight 0 is never chosen
    ([1], "a"),
    ([0, 2, 0], "bb"),
]


@pytest.mark.parametrize(("weights", "expected"), SEQUENCES, ids=[str(w) for w, _ in SEQUENCES])
def test_one_cycle_is_the_exact_nginx_sequence(weights: list[int], expected: str) -> None:
    balancer = SmoothWeightedRoundRobin(weights)
    # Two cycles: after a full cycle every current weight is back to 0, so it repeats.
    assert run(balancer, 2 * len(expected)) == expected * 2
    assert balancer.current_weights == (0,) * len(weights)


COUNTS = [[3, 1], [5, 1, 1], [1, 2, 3, 4], [10, 1], [7, 7, 7], [100, 1, 0, 3], [2]]


@pytest.mark.parametrize("weights", COUNTS, ids=[str(w) for w in COUNTS])
@pytest.mark.parametrize("cycles", [1, 3, 50], ids=["1-cycle", "3-cycles", "50-cycles"])
def test_counts_are_exactly_proportional(weights: list[int], cycles: int) -> None:
    balancer = SmoothWeightedRoundRobin(weights)
    counts = Counter(run(balancer, cycles * sum(weights)))
    assert [counts[LETTERS[i]] for i in range(len(weights))] == [cycles * w for w in weights]


def test_light_backends_are_spread_between_heavy_picks() -> None:
    # Plain WRR would go aaaaabc aaaaabc: b and c back to back, a in runs of 5.
    # The smooth variant separates the light backends by heavy picks.
    sequence = run(SmoothWeightedRoundRobin([5, 1, 1]), 70)
    for pair in ("bb", "cc", "bc", "cb", "aaaaa"):
        assert pair not in sequence


def down(*indices: int) -> Callable[[int], bool]:
    return lambda i: i not in indices


SKIPS = [
    # (weights, eligibility, picks, expected)
    ([5, 1, 1], down(0), 6, "bcbcbc"),
    ([5, 1, 1], down(1), 12, "aaacaaaaacaa"),
    ([5, 1, 1], down(0, 2), 3, "bbb"),
    ([3, 1], down(1), 4, "aaaa"),
    ([1, 2, 3], down(2), 6, "babbab"),
]


@pytest.mark.parametrize(
    ("weights", "eligible", "picks", "expected"),
    SKIPS,
    ids=["5-1-1-a-down", "5-1-1-b-down", "5-1-1-only-b", "3-1-b-down", "1-2-3-c-down"],
)
def test_ineligible_backends_are_skipped(
    weights: list[int], eligible: Callable[[int], bool], picks: int, expected: str
) -> None:
    assert run(SmoothWeightedRoundRobin(weights), picks, eligible) == expected


def test_ineligible_current_weight_is_frozen_and_resumes() -> None:
    balancer = SmoothWeightedRoundRobin([3, 1])
    assert run(balancer, 2) == "aa"
    assert balancer.current_weights == (-2, 2)
    # a is down: b serves alone and a's current weight does not move (no credit banked).
    assert run(balancer, 5, down(0)) == "bbbbb"
    assert balancer.current_weights == (-2, 2)
    # a is back: the sequence resumes exactly where it stopped ("aa" + "ba").
    assert run(balancer, 2) == "ba"
    assert balancer.current_weights == (0, 0)
    assert run(balancer, 4) == "aaba"


def test_remaining_backends_keep_exact_proportions_while_one_is_down() -> None:
    balancer = SmoothWeightedRoundRobin([5, 1, 1])
    counts = Counter(run(balancer, 6 * 20, down(2)))
    assert counts == Counter({"a": 100, "b": 20})


def test_none_eligible_returns_none_and_changes_nothing() -> None:
    balancer = SmoothWeightedRoundRobin([5, 1, 1])
    run(balancer, 3)
    before = balancer.current_weights
    assert balancer.pick(lambda _: False) is None
    assert balancer.current_weights == before


@pytest.mark.parametrize(
    ("weights", "eligible", "expected"),
    [
        ([4], True, 0),
        ([4], False, None),
        ([0, 3, 0], True, 1),
        ([0, 3, 0], False, None),
        ([], True, None),
        ([0, 0], True, None),
    ],
    ids=["one-up", "one-down", "one-positive-up", "one-positive-down", "empty", "all-zero"],
)
def test_single_or_no_candidate(weights: list[int], eligible: bool, expected: int | None) -> None:
    balancer = SmoothWeightedRoundRobin(weights)
    assert [balancer.pick(lambda _: eligible) for _ in range(3)] == [expected] * 3


def test_eligibility_is_asked_once_per_positive_weight_backend_in_order() -> None:
    asked: list[int] = []

    def record(i: int) -> bool:
        asked.append(i)
        return True

    SmoothWeightedRoundRobin([2, 0, 1, 3]).pick(record)
    assert asked == [0, 2, 3]


def test_single_backend_asks_only_about_itself() -> None:
    asked: list[int] = []

    def record(i: int) -> bool:
        asked.append(i)
        return True

    balancer = SmoothWeightedRoundRobin([0, 5])
    assert balancer.pick(record) == 1
    assert asked == [1]


def test_current_weights_stay_bounded_under_churning_health() -> None:
    # Frozen weights must not let any backend drift away and hog or starve the pool.
    rng = random.Random(20240611)
    for _ in range(100):
        weights = [rng.randint(0, 9) for _ in range(rng.randint(2, 6))]
        balancer = SmoothWeightedRoundRobin(weights)
        bound = sum(weights)
        unhealthy: set[int] = set()
        for _ in range(500):
            if rng.random() < 0.05:
                unhealthy = {i for i in range(len(weights)) if rng.random() < 0.4}
            chosen = balancer.pick(down(*unhealthy))
            assert chosen is None or (chosen not in unhealthy and weights[chosen] > 0)
            assert all(abs(c) <= bound for c in balancer.current_weights)


def test_negative_weight_is_rejected() -> None:
    with pytest.raises(ValueError, match="weight of backend 1 must be >= 0, got -1"):
        SmoothWeightedRoundRobin([1, -1])


def test_repr_shows_weights_and_current() -> None:
    balancer = SmoothWeightedRoundRobin([3, 1])
    balancer.pick(everyone)
    assert repr(balancer) == "SmoothWeightedRoundRobin(weights=[3, 1], current=[-1, 1])"
    assert balancer.weights == (3, 1)

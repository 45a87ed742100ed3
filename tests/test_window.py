"""The judge's window: bucket totals, ring clearing, percentiles from the latency bins."""

from __future__ import annotations

import pytest

from canaryproxy.judge.window import PoolWindow, latency_bin, pool_counts, rate_ratio, ratio


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [(0.0, 0), (float("nan"), 0), (1e-4, 1), (2e-4, 9), (1e9, 169)],
    ids=["zero", "nan", "floor", "one-octave-up", "overflow"],
)
def test_latency_bins(seconds: float, expected: int) -> None:
    assert latency_bin(seconds) == expected


def test_bins_grow_with_latency() -> None:
    bins = [latency_bin(ms / 1000) for ms in (0.5, 1, 2, 5, 10, 100, 1000, 10_000)]
    assert bins == sorted(bins)
    assert len(set(bins)) == len(bins)


def test_totals_follow_adds_and_clears() -> None:
    window = PoolWindow()
    window.add(0, 10, 2, False, latency_bin(0.010))
    window.add(1, 5, 0, True, latency_bin(2.0))
    assert (window.n, window.n_errors, window.n_slow) == (15, 2, 5)
    window.clear(0)
    assert (window.n, window.n_errors, window.n_slow) == (5, 0, 5)
    assert (window.since_requests, window.since_errors) == (15, 2)  # since reset: kept
    assert pool_counts(window)["requests"] == 5


def test_percentiles_come_from_the_bins() -> None:
    window = PoolWindow()
    window.add(0, 98, 0, False, latency_bin(0.010))
    window.add(0, 2, 0, False, latency_bin(0.500))
    p50, p99 = window.percentile_ms(0.5), window.percentile_ms(0.99)
    assert p50 is not None
    assert p99 is not None
    assert 9.5 < p50 < 10.5  # within a bin's ±4.4 %
    assert 480 < p99 < 520
    assert PoolWindow().percentile_ms(0.5) is None


def test_ratios() -> None:
    canary, stable = PoolWindow(), PoolWindow()
    canary.add(0, 100, 10, False, 1)
    stable.add(0, 1000, 10, False, 1)
    assert rate_ratio(canary, stable) == 10.0
    assert ratio(1, 4) == 0.25
    assert ratio(1, 0) is None

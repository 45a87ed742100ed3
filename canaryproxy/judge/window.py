"""One pool's outcomes over the sliding window, and how the judge prints numbers (pure).

The window is ``WINDOW_SLOTS`` fixed time buckets (a ring): per bucket, requests, errors, slow
responses and a log-spaced latency histogram (8 bins an octave from 0.1 ms to ~210 s), with
running totals so the judge reads them in O(1). Memory is bounded whatever the traffic.
"""

from __future__ import annotations

import math

WINDOW_SLOTS = 10
_LAT_LOW = 1e-4  # latency histogram: 0.1 ms ...
_LAT_PER_OCTAVE = 8  # ... 8 log-spaced bins an octave (±4.4 %) ...
_LAT_BINS = 2 + 21 * _LAT_PER_OCTAVE  # ... to ~210 s, plus under- and overflow


def latency_bin(seconds: float) -> int:
    if not seconds >= _LAT_LOW:  # also NaN
        return 0
    return min(int(math.log2(seconds / _LAT_LOW) * _LAT_PER_OCTAVE) + 1, _LAT_BINS - 1)


def _bin_value_ms(index: int) -> float:
    """A representative latency of a bin: its geometric middle (edges for the ends)."""
    if index == 0:
        return _LAT_LOW * 1000
    octaves = (index - 1 + (0.5 if index < _LAT_BINS - 1 else 0.0)) / _LAT_PER_OCTAVE
    return _LAT_LOW * math.pow(2.0, octaves) * 1000


class PoolWindow:
    """One pool's outcomes: per-bucket counts with running window totals."""

    __slots__ = ("errors", "hist", "late", "n", "n_errors", "n_late", "n_slow", "requests",
                 "since_errors", "since_requests", "slow")  # fmt: skip

    def __init__(self) -> None:
        self.requests = [0] * WINDOW_SLOTS
        self.errors = [0] * WINDOW_SLOTS
        self.slow = [0] * WINDOW_SLOTS
        self.late = [0] * WINDOW_SLOTS  # slow outcomes (outcomes.slow)
        self.n_late = 0
        self.hist = [[0] * _LAT_BINS for _ in range(WINDOW_SLOTS)]
        self.n = self.n_errors = self.n_slow = 0  # window totals
        self.since_requests = self.since_errors = 0  # since reset

    def add(
        self, slot: int, count: int, errors: int, slow: bool, lat_bin: int, late: int = 0
    ) -> None:
        if late:
            self.late[slot] += count
            self.n_late += count
        self.requests[slot] += count
        self.errors[slot] += errors
        self.hist[slot][lat_bin] += count
        self.n += count
        self.n_errors += errors
        self.since_requests += count
        self.since_errors += errors
        if slow:
            self.slow[slot] += count
            self.n_slow += count

    def clear(self, slot: int) -> None:
        self.n -= self.requests[slot]
        self.n_errors -= self.errors[slot]
        self.n_slow -= self.slow[slot]
        self.n_late -= self.late[slot]
        self.requests[slot] = self.errors[slot] = self.slow[slot] = self.late[slot] = 0
        self.hist[slot] = [0] * _LAT_BINS

    def percentile_ms(self, q: float) -> float | None:
        if self.n == 0:
            return None
        rank = max(1, math.ceil(q * self.n))
        seen = 0
        for index in range(_LAT_BINS):
            seen += sum(bucket[index] for bucket in self.hist)
            if seen >= rank:
                return round(_bin_value_ms(index), 3)
        raise AssertionError("histogram holds fewer samples than its count")

    def stats(self) -> dict[str, object]:
        return {
            "requests": self.n,
            "errors": self.n_errors,
            "error_rate": self.n_errors / self.n if self.n else 0.0,
            "p50_ms": self.percentile_ms(0.50),
            "p99_ms": self.percentile_ms(0.99),
        }


def rate_ratio(canary: PoolWindow, stable: PoolWindow) -> float | None:
    if canary.since_requests == 0 or stable.since_requests == 0 or stable.since_errors == 0:
        return None
    canary_rate = canary.since_errors / canary.since_requests
    return round(canary_rate / (stable.since_errors / stable.since_requests), 4)


def pool_counts(window: PoolWindow) -> dict[str, object]:
    return {
        "requests": window.n,
        "errors": window.n_errors,
        "error_rate": round(window.n_errors / window.n, 6) if window.n else 0.0,
        "requests_since_reset": window.since_requests,
        "errors_since_reset": window.since_errors,
    }


def format_odds(log_odds: float) -> str:
    """``2900:1`` (two significant figures), ``1:40`` below even, ``3.1e12:1`` when huge."""
    if log_odds < 0:
        return "1:" + format_odds(-log_odds).split(":")[0]
    decimal = log_odds / math.log(10)
    if decimal >= 6:
        exponent = math.floor(decimal)
        return f"{10 ** (decimal - exponent):.1f}e{exponent}:1"
    odds = math.exp(log_odds)
    if odds < 100:
        return f"{odds:.2g}:1"
    return f"{round(odds, 1 - math.floor(math.log10(odds))):.0f}:1"


def format_percent(share: float) -> str:
    """A share as a percentage to two significant figures: ``5``, ``0.52``, ``12``."""
    if math.isnan(share):
        return "?"
    percent = share * 100
    if percent >= 10:
        return f"{percent:.0f}"
    return f"{percent:.2g}"


def two_distinct(value: float, limit: float) -> tuple[str, str]:
    """Both to 2 decimals, more if that would print ``0.10 > 0.10``."""
    for digits in range(2, 7):
        a, b = f"{value:.{digits}f}", f"{limit:.{digits}f}"
        if a != b:
            return a, b
    return repr(value), repr(limit)


def rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 6) if whole else None

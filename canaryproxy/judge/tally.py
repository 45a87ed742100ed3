"""Outcomes counted for a judge that lives elsewhere (pure; the README's "Running several
instances").

A worker process, or an instance sharing its state through Redis, does not judge on the
request path: it counts each outcome here, and every flush hands the counts on (to the
supervisor, or to Redis) as ``rows``, which ``Judge.record_tally`` replays.

A row is ``[canary, error, slow, late, latency_bin, count]`` (all integers, JSON-able):
``canary`` 1 for the canary pool, 0 for stable; ``error``, ``slow`` (over the backstop's
p99 limit) and ``late`` (a slow outcome: its head came after ``outcomes.slow``) 0 or 1; the
latency bin is ``window.latency_bin``'s. Outcomes that agree on all five share a row, so a
flush is a few dozen rows however busy the proxy is.
"""

from __future__ import annotations

from canaryproxy.judge.window import latency_bin
from canaryproxy.vocabulary import Pool

Row = list[int]


class Tally:
    """Counts since the last ``drain``; ``slow_limit`` is the backstop's latency limit."""

    __slots__ = ("counts", "slow_limit")

    def __init__(self, slow_limit: float | None) -> None:
        self.slow_limit = float("inf") if slow_limit is None else slow_limit
        self.counts: dict[int, int] = {}

    def add(self, pool: Pool, is_error: bool, latency: float, is_late: bool = False) -> None:
        key = (
            (4096 if pool == "canary" else 0)
            | (2048 if is_late else 0)
            | (1024 if is_error else 0)
            | (512 if latency > self.slow_limit else 0)
            | latency_bin(latency)
        )
        counts = self.counts
        counts[key] = counts.get(key, 0) + 1

    def merge(self, rows: list[Row]) -> None:
        """Add rows counted elsewhere (a supervisor pooling its workers' flushes)."""
        counts = self.counts
        for canary, error, slow, late, lat_bin, count in rows:
            key = canary * 4096 | late * 2048 | error * 1024 | slow * 512 | lat_bin
            counts[key] = counts.get(key, 0) + count

    def drain(self) -> list[Row]:
        """The rows counted since the last drain, and start again from nothing."""
        counts, self.counts = self.counts, {}
        return [
            [key >> 12 & 1, key >> 10 & 1, key >> 9 & 1, key >> 11 & 1, key & 511, count]
            for key, count in counts.items()
        ]

    def __bool__(self) -> bool:
        return bool(self.counts)

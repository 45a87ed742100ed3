"""Outcomes counted for a judge that lives elsewhere (pure; the README's "Running several
instances").

A worker process, or an instance sharing its state through Redis, does not judge on the
request path: it counts each outcome here, and every flush hands the counts on (to the
supervisor, or to Redis) as ``rows``, which ``Judge.record_tally`` replays. Rows are lists
of integers (JSON-able), of three kinds:

- ``[canary, error, slow, late, latency_bin, count]``: outcomes of no one in particular:
  every plain success (``canary`` 1 for the canary pool, 0 for stable; ``error``, ``slow``
  (over the backstop's p99 limit) and ``late`` (a slow outcome: its head came after
  ``outcomes.slow``) 0 or 1; the latency bin is ``window.latency_bin``'s). Outcomes that
  agree on all five share a row.
- ``[canary, error, slow, late, latency_bin, count, user, client]``: the outcomes of one
  user from one client that are events (an error, a slow response, a slow outcome): the
  judge counts a user's events as one (``users.py``).
- ``[canary, USERS_ROW, anonymous, user, user, ...]``: the users one pool served during the
  flush, each once, and how many of its responses had no user: the canary's share of users.

So a flush is a few dozen rows plus the users it saw, however busy the proxy is. A flush with
no users row (an older instance's) counts each outcome as a user of its own.
"""

from __future__ import annotations

from canaryproxy.judge.users import ANONYMOUS
from canaryproxy.judge.window import latency_bin
from canaryproxy.vocabulary import Pool

Row = list[int]

USERS_ROW = -1
"""The second field of a row that lists users instead of counting outcomes."""


class Tally:
    """Counts since the last ``drain``; ``slow_limit`` is the backstop's latency limit."""

    __slots__ = ("anonymous", "counts", "events", "slow_limit", "users")

    def __init__(self, slow_limit: float | None) -> None:
        self.slow_limit = float("inf") if slow_limit is None else slow_limit
        self.counts: dict[int, int] = {}
        self.events: dict[tuple[int, int, int], int] = {}  # (key, user, client) → count
        self.users: list[set[int]] = [set(), set()]  # per pool: stable, canary
        self.anonymous = [0, 0]

    def add(
        self,
        pool: Pool,
        is_error: bool,
        latency: float,
        is_late: bool = False,
        user: int = ANONYMOUS,
        client: int = ANONYMOUS,
    ) -> None:
        canary = 1 if pool == "canary" else 0
        slow = latency > self.slow_limit
        key = (
            canary << 12
            | (2048 if is_late else 0)
            | (1024 if is_error else 0)
            | (512 if slow else 0)
            | latency_bin(latency)
        )
        if user >= 0:
            self.users[canary].add(user)
        else:
            self.anonymous[canary] += 1
        if is_error or is_late or slow:
            events = self.events
            event = (key, user, client)
            events[event] = events.get(event, 0) + 1
            return
        counts = self.counts
        counts[key] = counts.get(key, 0) + 1

    def merge(self, rows: list[Row]) -> None:
        """Add rows counted elsewhere (a supervisor pooling its workers' flushes)."""
        named = any(row[1] == USERS_ROW for row in rows)
        for row in rows:
            canary = row[0]
            if row[1] == USERS_ROW:
                self.anonymous[canary] += row[2]
                self.users[canary].update(row[3:])
                continue
            key = canary << 12 | row[3] << 11 | row[1] << 10 | row[2] << 9 | row[4]
            if not named:
                self.anonymous[canary] += row[5]
            if len(row) >= 8:
                event = (key, row[6], row[7])
                self.events[event] = self.events.get(event, 0) + row[5]
            else:
                self.counts[key] = self.counts.get(key, 0) + row[5]

    def drain(self) -> list[Row]:
        """The rows counted since the last drain, and start again from nothing."""
        rows = [[*_fields(key), count] for key, count in self.counts.items()]
        rows += [
            [*_fields(key), count, user, client]
            for (key, user, client), count in self.events.items()
        ]
        for canary in (0, 1):
            users = self.users[canary]
            if users or self.anonymous[canary]:
                rows.append([canary, USERS_ROW, self.anonymous[canary], *sorted(users)])
        self.counts, self.events = {}, {}
        self.users, self.anonymous = [set(), set()], [0, 0]
        return rows

    def __bool__(self) -> bool:
        return bool(self.counts or self.events or self.anonymous[0] or self.anonymous[1]) or bool(
            self.users[0] or self.users[1]
        )


def _fields(key: int) -> Row:
    """[canary, error, slow, late, latency_bin] of a count key."""
    return [key >> 12 & 1, key >> 10 & 1, key >> 9 & 1, key >> 11 & 1, key & 511]

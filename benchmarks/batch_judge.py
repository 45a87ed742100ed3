"""Feed a ``Judge`` many successes at once: what the Monte Carlo needs, kept off the product.

``record_successes(judge, pool, count, latency, now)`` has the same outcome as ``count``
calls of ``judge.record(pool, False, latency, now)``, at the cost of a few: the judge is
asked only after the responses where a rule can tip (``tipping_points``); in between,
every rule moves away from firing.  It reads the judge's internals, which is why it lives
here and not in the package: the proxy records one response at a time.
"""

from __future__ import annotations

import math

from canaryproxy.judge.budget import BACKSTOP_MIN_USERS, Ejection, Judge
from canaryproxy.judge.users import ANONYMOUS
from canaryproxy.judge.window import latency_bin
from canaryproxy.vocabulary import Pool


def record_successes(
    judge: Judge, pool: Pool, count: int, latency: float, now: float
) -> Ejection | None:
    """``count`` successful responses at one instant (see the module docstring)."""
    if count <= 0:
        return None
    if now >= judge._bucket_end:
        judge._advance(now)
    canary = pool == "canary"
    slow, lat_bin = latency > judge._slow_limit, latency_bin(latency)
    done = 0
    if judge._ejection is None:
        for cut in tipping_points(judge, canary, count, slow):
            _bulk(judge, canary, cut - done, slow, lat_bin)
            done = cut
            ejection = judge._judge()
            if ejection is not None:
                _bulk(judge, canary, count - done, slow, lat_bin)
                return ejection
    _bulk(judge, canary, count - done, slow, lat_bin)
    return None


def _bulk(judge: Judge, canary: bool, count: int, slow: bool, lat_bin: int) -> None:
    """``count`` successes of as many users unknown to the judge, each a user of its own."""
    if count <= 0:
        return
    judge.see_user(canary, ANONYMOUS, count)
    judge._add(canary, count, 0, slow, lat_bin, 0)
    if canary and slow:
        for _ in range(count):
            judge._mark_backstop(False, True, ANONYMOUS, ANONYMOUS)


def tipping_points(judge: Judge, canary: bool, count: int, slow: bool) -> list[int]:
    """Which of ``count`` successes (1-based) the judge must look after.

    Stable successes only lower stable's rates: what they change is where the
    guard lifts and where the current bucket stops being stable's bad bucket;
    otherwise the first, if the rules would fire now (a bucket just left).
    Canary successes leave the guard be; the backstop's error rate only falls
    once ``min_requests`` is reached and its slow share only rises when the
    response is slow: the first, the one reaching ``min_requests``, the first
    that makes more than 1 % slow.
    """
    stable, slot = judge._stable, judge._slot
    guarded = judge._is_stable_degraded()
    pending = judge._errors.log_odds >= judge._threshold
    n, errors, n_slow, users = judge._backstop_counts()
    fires = judge._backstop_fires
    if not canary:
        points = {
            lift_point(judge, stable.n_errors, stable.n, count),
            lift_point(judge, stable.errors[slot], stable.requests[slot], count),
        }
        if not guarded and (pending or fires(n, errors, n_slow, users)):
            points.add(1)
    elif guarded:
        return []
    elif judge._flagged[slot]:  # these successes are not the backstop's
        points = {1} if pending or fires(n, errors, n_slow, users) else set()
    else:
        points = {judge._min_requests - n}
        if pending or fires(n + 1, errors, n_slow + slow, users + 1):
            points.add(1)
        if slow:  # the first k with 100·(n_slow + k) > users + k, and two slow users
            first = max((users - 100 * n_slow) // 99 + 1, BACKSTOP_MIN_USERS - n_slow)
            points.add(max(judge._min_requests - n, first))
    return sorted(k for k in points if k is not None and 1 <= k <= count)


def lift_point(judge: Judge, errors: int, requests: int, count: int) -> int | None:
    """The success (1-based, at most ``count``) after which the guard's test ends."""
    degraded = judge._is_degraded
    if not degraded(errors, requests) or judge._guard <= 0:
        return None  # not degraded, or a zero guard: degraded while any error stands
    k = max(1, math.ceil(errors / judge._guard) - requests)
    while k > 1 and not degraded(errors, requests + k - 1):
        k -= 1  # float rounding in the division: step back to the first
    while k <= count and degraded(errors, requests + k):
        k += 1
    return k if k <= count else None

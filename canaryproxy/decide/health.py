"""Is this backend routable: active checks, passive outlier detection (pure).

Rules this module keeps:

- **Active checks** (HAProxy/nginx ``rise``/``fall``): a probe succeeds when it
  answers 2xx or 3xx within its timeout; anything else (4xx, 5xx, connect
  failure, timeout) is a failure. A healthy backend goes down after ``fall``
  consecutive failures, a down one comes back after ``rise`` consecutive
  successes; a result that agrees with the current state breaks the opposite
  streak. Backends start healthy, as in HAProxy and Traefik, so a restart
  does not black-hole traffic until the first ``rise`` probes have passed.
  Probes are spaced by the interval with +/-10 % jitter so the checks of many
  backends (and of several proxies) do not fall into lockstep.
- **Outlier detection** (Envoy's consecutive-5xx ejection): the caller reports
  every finished upstream attempt. A connect failure, a timeout, a reset
  before the response, and a 5xx response are failures (``is_failure_status``);
  anything else is a success and resets the consecutive count. After
  ``consecutive_failures`` failures in a row the backend is ejected for
  ``base_ejection_time x n`` where ``n`` counts its ejections (this one
  included), capped at ``max_ejection_time``, so a flapping backend stays out
  longer each time. When that time has passed the backend is back, with a
  fresh consecutive count, at the first look at the clock (``is_ejected``).
  Results that arrive while it is ejected (requests already in flight) are
  ignored: they neither extend the ejection nor count towards the next.
- **Decay**: once the backend has spent ``max_ejection_time`` back in rotation
  without being ejected again, its ejection count returns to 0 and the next
  ejection lasts ``base_ejection_time`` again. (Envoy steps its multiplier
  down one per healthy sweep interval; a single reset after the longest
  cool-off we would ever impose is simpler to state and to test.)
- **Never the last for an answer** (Envoy's panic threshold, nginx and HAProxy alike): a
  5xx, a reset or a protocol error proves the backend reachable, so it never ejects the
  last routable backend of its pool (the caller says so with ``can_eject``); only connect
  failures and timeouts can empty a pool.
- **Both together**: a backend is routable only while the active check says
  healthy *and* it is not ejected; each mechanism clears on its own terms, so
  a backend flagged by both returns only when both have cleared. A passing
  active probe does not cut an ejection short: /healthz passing does not prove
  that real requests succeed.

Everything takes ``now`` (monotonic seconds) and randomness as arguments; the
caller owns the clock and the probe loop.
"""

from __future__ import annotations

from collections.abc import Callable

from canaryproxy.vocabulary import iso_utc

__all__ = [
    "ActiveCheck",
    "BackendHealth",
    "OutlierDetector",
    "is_check_success",
    "is_failure_status",
    "next_check_delay",
]

JITTER = 0.10
"""Probe spacing varies by this fraction either side of the interval."""


def next_check_delay(interval: float, rng: Callable[[], float]) -> float:
    """Seconds until the next probe: ``interval`` +/- 10 %, ``rng()`` in [0, 1)."""
    if interval <= 0:
        raise ValueError(f"interval must be > 0, got {interval}")
    return interval * (1.0 - JITTER + 2.0 * JITTER * rng())


def is_check_success(status: int) -> bool:
    """A health probe passes on 2xx and 3xx, like HAProxy's and nginx's checks."""
    return 200 <= status < 400


def is_failure_status(status: int) -> bool:
    """An upstream response status that counts against the backend (Envoy's consecutive 5xx)."""
    return status >= 500


class ActiveCheck:
    """rise/fall hysteresis for one backend, fed with probe results."""

    __slots__ = ("_fall", "_healthy", "_last_error", "_rise", "_streak")

    def __init__(self, rise: int, fall: int, healthy: bool = True) -> None:
        if rise < 1:
            raise ValueError(f"rise must be >= 1, got {rise}")
        if fall < 1:
            raise ValueError(f"fall must be >= 1, got {fall}")
        self._rise = rise
        self._fall = fall
        self._healthy = healthy
        # Consecutive results that disagree with the current state.
        self._streak = 0
        self._last_error: str | None = None

    @property
    def is_healthy(self) -> bool:
        return self._healthy

    @property
    def streak(self) -> int:
        """Consecutive results so far against the current state."""
        return self._streak

    @property
    def last_error(self) -> str | None:
        """What the latest failed probe said (kept after later successes), None if none."""
        return self._last_error

    def follow(self, healthy: bool, streak: int, last_error: str | None) -> None:
        """Take the state of a check probed elsewhere (a worker follows its supervisor)."""
        self._healthy = healthy
        self._streak = streak
        self._last_error = last_error

    def observe(self, ok: bool, detail: str = "") -> bool:
        """Record one probe result; True when it flipped the healthy state."""
        if not ok:
            self._last_error = detail or "probe failed"
        if ok == self._healthy:
            self._streak = 0
            return False
        self._streak += 1
        needed = self._fall if self._healthy else self._rise
        if self._streak < needed:
            return False
        self._healthy = ok
        self._streak = 0
        return True

    def __repr__(self) -> str:
        state = "healthy" if self._healthy else "unhealthy"
        needed = self._fall if self._healthy else self._rise
        return f"<ActiveCheck {state} streak={self._streak}/{needed}>"


class OutlierDetector:
    """Passive, per backend: Envoy-style consecutive-failure ejection with growing cool-off."""

    __slots__ = (
        "_base",
        "_consecutive",
        "_ejected",
        "_ejected_until",
        "_ejection_count",
        "_max",
        "_threshold",
    )

    def __init__(
        self, consecutive_failures: int, base_ejection_time: float, max_ejection_time: float
    ) -> None:
        if consecutive_failures < 1:
            raise ValueError(f"consecutive_failures must be >= 1, got {consecutive_failures}")
        if base_ejection_time <= 0:
            raise ValueError(f"base_ejection_time must be > 0, got {base_ejection_time}")
        if max_ejection_time < base_ejection_time:
            raise ValueError(
                f"max_ejection_time must be >= base_ejection_time ({base_ejection_time}),"
                f" got {max_ejection_time}"
            )
        self._threshold = consecutive_failures
        self._base = base_ejection_time
        self._max = max_ejection_time
        self._consecutive = 0
        self._ejection_count = 0
        self._ejected = False
        # End of the current or latest ejection; the decay is measured from it.
        self._ejected_until = float("-inf")

    @property
    def consecutive(self) -> int:
        """Failures in a row since the last success or return to rotation."""
        return self._consecutive

    @property
    def ejection_count(self) -> int:
        """Ejections counted towards the cool-off multiplier, as of the last call with ``now``."""
        return self._ejection_count

    @property
    def ejected_until(self) -> float | None:
        """When the current ejection ends, None if not ejected (as of the last ``now``)."""
        return self._ejected_until if self._ejected else None

    def is_ejected(self, now: float) -> bool:
        """True while an ejection lasts; ends it, and applies the decay, when due."""
        if self._ejected:
            if now < self._ejected_until:
                return True
            # The streak is already 0: it restarted at ejection and results are ignored since.
            self._ejected = False
        if self._ejection_count and now - self._ejected_until >= self._max:
            self._ejection_count = 0
        return False

    def on_success(self, now: float) -> None:
        if not self.is_ejected(now):
            self._consecutive = 0

    def on_failure(self, now: float, can_eject: bool = True) -> bool:
        """Record a failure; True when it ejected the backend.

        With ``can_eject`` False (the pool's last routable backend answering 5xx) the
        failure is counted but the backend stays: the ejection is held until it may happen.
        """
        if self.is_ejected(now):
            return False
        self._consecutive += 1
        if self._consecutive < self._threshold or not can_eject:
            return False
        self._ejection_count += 1
        self._ejected = True
        self._ejected_until = now + self.ejection_time(self._ejection_count)
        self._consecutive = 0
        return True

    def ejection_time(self, count: int) -> float:
        """How long the ``count``-th ejection in a row lasts: base x count, capped at max."""
        return min(self._base * count, self._max)

    def __repr__(self) -> str:
        state = f"ejected until {self._ejected_until:g}" if self._ejected else "in rotation"
        return (
            f"<OutlierDetector {state} consecutive={self._consecutive}/{self._threshold}"
            f" ejections={self._ejection_count}>"
        )


class BackendHealth:
    """Joins the active check (optional) and outlier detection: is this backend routable."""

    __slots__ = ("_check", "_outlier")

    def __init__(self, check: ActiveCheck | None, outlier: OutlierDetector) -> None:
        self._check = check
        self._outlier = outlier

    @property
    def check(self) -> ActiveCheck | None:
        return self._check

    @property
    def outlier(self) -> OutlierDetector:
        return self._outlier

    def describe(self, now: float, wall: float) -> dict[str, object]:
        """JSON-able health for STATE: ``now`` is monotonic, ``wall`` the same instant as
        Unix time, so an ejection's end is shown as a wall-clock ISO 8601 UTC time."""
        check, outlier = self._check, self._outlier
        until = outlier.ejected_until if outlier.is_ejected(now) else None
        return {
            "healthy": self.is_routable(now),
            "active": None
            if check is None
            else {
                "healthy": check.is_healthy,
                "streak": check.streak,
                "last_error": check.last_error,
            },
            "outlier": {
                "ejected": until is not None,
                "until": None if until is None else iso_utc(wall + (until - now)),
                "ejections": outlier.ejection_count,
            },
        }

    def is_routable(self, now: float) -> bool:
        """Healthy by the active check (if any) and not ejected; called per request."""
        check = self._check
        if check is not None and not check.is_healthy:
            return False
        return not self._outlier.is_ejected(now)

    def __repr__(self) -> str:
        return f"<BackendHealth check={self._check!r} outlier={self._outlier!r}>"

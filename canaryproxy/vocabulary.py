"""The product's words, declared once: pools, verdicts, failure kinds, ejection rules.

Every module spells these through the ``Literal`` types and tuples below; the tuples are
also the metric label values (exactly the documented ones), so a word outside them is a bug that
``require`` turns into an error instead of a dropped sample or a new label value.

Rules this module keeps:
- A **pool** is a traffic pool of a service: ``stable`` or ``canary``. (A backend's set of
  keep-alive connections is a *connection pool*, ``engine.upstream.ConnectionPool``.)
- A **failure kind** says why an attempt at a backend failed.  ``connect``, ``timeout``,
  ``reset`` and ``protocol`` are upstream errors (``canaryproxy_upstream_errors_total``);
  ``unavailable`` is a canary user served by stable because the canary had no routable
  backend: charged to the canary's judge, not an upstream error of any backend.
- ``host:port`` is written by ``hostport`` alone: an IPv6 literal goes in brackets
  (RFC 3986 §3.2.2), in a URL, a ``Host`` header, a log line and STATE alike.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final, Literal, TypeVar

__all__ = [
    "ATTEMPT_OUTCOMES",
    "EJECT_RULES",
    "FAILURE_KINDS",
    "OUTCOME_KINDS",
    "POOLS",
    "ROLLOUT_STATES",
    "UPSTREAM_ERROR_KINDS",
    "USER_BUCKETS",
    "VERDICTS",
    "WEIGHT_SOURCES",
    "AttemptOutcome",
    "EjectRule",
    "FailureKind",
    "JudgeRule",
    "Mode",
    "OutcomeKind",
    "Pool",
    "RolloutState",
    "Verdict",
    "WeightSource",
    "hostport",
    "iso_utc",
    "require",
]

Pool = Literal["stable", "canary"]
POOLS: Final[tuple[Pool, ...]] = ("stable", "canary")

Verdict = Literal["insufficient_samples", "healthy", "shared_degradation", "ejected"]
VERDICTS: Final[tuple[Verdict, ...]] = (
    "insufficient_samples",
    "healthy",
    "shared_degradation",
    "ejected",
)

JudgeRule = Literal["comparative", "backstop", "latency"]
"""The rules the judge fires by itself (latency: the comparative test on slow outcomes)."""
EjectRule = Literal["comparative", "backstop", "latency", "manual", "rollout"]
"""Also an operator's (manual) and a rollout plan's abort (rollout)."""
EJECT_RULES: Final[tuple[EjectRule, ...]] = (
    "comparative",
    "backstop",
    "latency",
    "manual",
    "rollout",
)

OutcomeKind = Literal["failure_header", "failure_status", "slow"]
"""What ``outcomes`` counted beyond 5xx: the backend's header, a listed status, slow."""
OUTCOME_KINDS: Final[tuple[OutcomeKind, ...]] = ("failure_header", "failure_status", "slow")

RolloutState = Literal["idle", "progressing", "paused", "completed", "aborted"]
ROLLOUT_STATES: Final[tuple[RolloutState, ...]] = (
    "idle",
    "progressing",
    "paused",
    "completed",
    "aborted",
)

FailureKind = Literal["connect", "timeout", "reset", "protocol", "unavailable"]
FAILURE_KINDS: Final[tuple[FailureKind, ...]] = (
    "connect",
    "timeout",
    "reset",
    "protocol",
    "unavailable",
)
UPSTREAM_ERROR_KINDS: Final[tuple[FailureKind, ...]] = ("connect", "timeout", "reset", "protocol")

AttemptOutcome = Literal["ok", "retried", "failed"]
"""An attempt at a backend: answered, failed and sent again elsewhere, failed for good."""
ATTEMPT_OUTCOMES: Final[tuple[AttemptOutcome, ...]] = ("ok", "retried", "failed")

WeightSource = Literal["config", "admin", "rollout", "judge"]
"""Who set a service's current canary weight: the config file, an operator through the
admin API, a rollout step, or the judge (an automatic ejection: effective weight 0)."""
WEIGHT_SOURCES: Final[tuple[WeightSource, ...]] = ("config", "admin", "rollout", "judge")

Mode = Literal["session", "cohort"]
"""What a sticky cookie pins: the pool (session) or the user's bucket (cohort)."""

USER_BUCKETS: Final = 10_000
"""Users are hashed or drawn into buckets [0, USER_BUCKETS); weight w% is the first w·100."""

W = TypeVar("W", bound=str)


def require(word: str, vocabulary: tuple[W, ...], what: str) -> W:
    """``word`` as one of ``vocabulary``, or ValueError naming the words allowed."""
    for known in vocabulary:
        if word == known:
            return known
    raise ValueError(f"unknown {what} {word!r}; expected one of: {', '.join(vocabulary)}")


def hostport(host: str, port: int) -> str:
    """``host:port``, with an IPv6 literal in brackets (``[::1]:9001``)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def iso_utc(unix_seconds: float) -> str:
    """``2026-12-02T23:51:08.120Z``: a wall-clock time any client can read."""
    moment = datetime.fromtimestamp(unix_seconds, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")

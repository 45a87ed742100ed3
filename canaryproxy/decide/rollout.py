"""Rollout plans (pure): the states, the transitions, and when a step is due.

The README's "Rollouts" and ``docs/rollout-gate.md``. A plan walks the canary's weight up
its ``steps``; its states are ``idle`` → ``progressing`` (step i) ↔ ``paused`` →
``completed`` (weight 100) or ``aborted`` (ejected).

Rules this module keeps:
- A ``Plan`` is a value: every transition returns a new one, which the caller persists
  before it takes effect. A transition the state does not allow raises ``Refused``.
- Time at a step counts only while progressing: ``elapsed`` banks what was served before
  ``since`` (the wall clock when the step last began or resumed progressing), so a pause
  holds the clock and a restart resumes it where it stood.
- A step is due (promoted by the proxy itself) when it has lasted ``min_step_duration``,
  served ``min_step_requests`` canary requests, and the gate is shown (the judge's
  ``StepEvidence``: an always-valid bound that the canary is no worse than ``max_ratio`` x
  stable, or no event at all in the step). Promoting the last step, or into a step of
  100 %, completes the plan: every user on the canary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from canaryproxy.vocabulary import ROLLOUT_STATES, RolloutState, require

__all__ = [
    "IDLE",
    "Plan",
    "Refused",
    "StepSettings",
    "abort",
    "is_due",
    "pause",
    "plan_from_dict",
    "plan_to_dict",
    "promote",
    "requests_needed",
    "resume",
    "seconds_needed",
    "start",
    "waiting_for",
]

ACTIVE: tuple[RolloutState, ...] = ("progressing", "paused")


class Refused(Exception):
    """The transition is not allowed in the plan's current state (the admin API's 409)."""


@dataclass(frozen=True, slots=True)
class Plan:
    """A service's rollout: persisted with its record, so a restart resumes it."""

    state: RolloutState
    steps: tuple[float, ...]
    step: int  # index into steps; -1 while idle
    elapsed: float  # seconds progressing at this step before ``since``
    since: float | None  # wall clock when the step last began progressing; None otherwise
    reason: str = ""  # why the last transition happened

    @property
    def is_active(self) -> bool:
        return self.state in ACTIVE

    @property
    def weight(self) -> float:
        """The canary weight the plan holds: its step's, or 100 once completed."""
        if self.state == "completed":
            return 100.0
        return self.steps[self.step] if self.step >= 0 else 0.0

    def seconds(self, now: float) -> float:
        """Time served at the current step (only while progressing counts)."""
        running = now - self.since if self.since is not None else 0.0
        return self.elapsed + max(running, 0.0)


IDLE = Plan("idle", (), -1, 0.0, None, "")


@dataclass(frozen=True, slots=True)
class StepSettings:
    """What a step needs before the proxy promotes it (``rollout`` in the config)."""

    min_step_duration: float
    min_step_requests: int
    max_ratio: float


def start(plan: Plan, steps: tuple[float, ...], now: float) -> Plan:
    if plan.is_active:
        raise Refused(f"a rollout is already {plan.state}; abort it first")
    if not steps:
        raise Refused("a rollout needs at least one step")
    return Plan("progressing", steps, 0, 0.0, now, "started")


def pause(plan: Plan, now: float, reason: str) -> Plan:
    if plan.state != "progressing":
        raise Refused(f"the rollout is {plan.state}, not progressing")
    return replace(plan, state="paused", elapsed=plan.seconds(now), since=None, reason=reason)


def resume(plan: Plan, now: float) -> Plan:
    if plan.state != "paused":
        raise Refused(f"the rollout is {plan.state}, not paused")
    return replace(plan, state="progressing", since=now, reason="resumed")


def promote(plan: Plan, now: float, reason: str) -> Plan:
    """The next step (from zero time), or ``completed`` after the last or into 100 %."""
    if not plan.is_active:
        raise Refused(f"the rollout is {plan.state}: there is no step to promote")
    nxt = plan.step + 1
    if nxt >= len(plan.steps) or plan.steps[nxt] >= 100:
        last = len(plan.steps) - 1
        return Plan("completed", plan.steps, last, 0.0, None, reason)
    return Plan("progressing", plan.steps, nxt, 0.0, now, reason)


def abort(plan: Plan, reason: str) -> Plan:
    if not plan.is_active:
        raise Refused(f"the rollout is {plan.state}: there is nothing to abort")
    return replace(plan, state="aborted", elapsed=0.0, since=None, reason=reason)


def is_due(
    plan: Plan, settings: StepSettings, now: float, canary_requests: int, gate_shown: bool
) -> bool:
    """Whether the current step has earned its promotion."""
    return (
        plan.state == "progressing"
        and plan.seconds(now) >= settings.min_step_duration
        and canary_requests >= settings.min_step_requests
        and gate_shown
    )


def waiting_for(
    plan: Plan,
    settings: StepSettings,
    now: float,
    canary_requests: int,
    gate_requests: int | None,
    gate_shown: bool,
) -> list[str]:
    """What the current step still waits for, in words (empty: nothing, or not running).

    ``gate_requests`` is the estimate of canary requests the gate needs (None: the canary
    is not heading below ``max_ratio``, so no amount of traffic is enough at this rate)."""
    seconds = seconds_needed(plan, settings, now)
    if seconds is None:
        return []
    needs: list[str] = []
    if seconds > 0:
        needs.append(f"{format_seconds(seconds)} more at this step")
    more = requests_needed(plan, settings, canary_requests, gate_requests, gate_shown)
    if more is None:
        needs.append(
            f"evidence that the canary is no worse than {settings.max_ratio:g}x stable:"
            " at the rate seen so far it is not (it waits, or the judge ejects it)"
        )
    elif more > 0:
        needs.append(f"≈ {more:,} more canary requests")
    return needs


def seconds_needed(plan: Plan, settings: StepSettings, now: float) -> float | None:
    """More seconds the current step must last (None: the plan is not progressing)."""
    if plan.state != "progressing":
        return None
    return max(settings.min_step_duration - plan.seconds(now), 0.0)


def requests_needed(
    plan: Plan,
    settings: StepSettings,
    canary_requests: int,
    gate_requests: int | None,
    gate_shown: bool,
) -> int | None:
    """More canary requests the current step needs: ``min_step_requests``, and the gate's
    estimate until it is shown (None: not heading to a pass, or not progressing)."""
    if plan.state != "progressing":
        return None
    more = max(settings.min_step_requests - canary_requests, 0)
    if gate_shown:
        return more
    return None if gate_requests is None else max(more, gate_requests)


def format_seconds(seconds: float) -> str:
    """``125`` → ``2m 5s``; under a minute in whole seconds."""
    whole = math.ceil(seconds)
    minutes, rest = divmod(whole, 60)
    return f"{minutes}m {rest}s" if minutes else f"{rest}s"


def plan_to_dict(plan: Plan) -> dict[str, object]:
    """The plan as plain JSON values (persisted, sent to workers, stored in Redis)."""
    return {
        "state": plan.state,
        "steps": list(plan.steps),
        "step": plan.step,
        "elapsed": plan.elapsed,
        "since": plan.since,
        "reason": plan.reason,
    }


def plan_from_dict(data: object) -> Plan:
    """A plan read back from JSON; ValueError naming what is wrong."""
    if not isinstance(data, dict):
        raise ValueError(f"a rollout plan must be an object, got {data!r}")
    state = require(str(data.get("state")), ROLLOUT_STATES, "rollout state")
    steps_value = data.get("steps")
    if not isinstance(steps_value, list) or not all(
        isinstance(s, int | float) and not isinstance(s, bool) for s in steps_value
    ):
        raise ValueError(f"rollout steps: expected a list of numbers, got {steps_value!r}")
    steps = tuple(float(s) for s in steps_value)
    step, elapsed, since, reason = (
        data.get("step"),
        data.get("elapsed"),
        data.get("since"),
        data.get("reason", ""),
    )
    if type(step) is not int or not -1 <= step < max(len(steps), 0):
        raise ValueError(f"rollout step: expected an index into the steps, got {step!r}")
    if state != "idle" and step < 0:
        raise ValueError(f"rollout step: a {state} plan needs a step, got {step!r}")
    if not isinstance(elapsed, int | float) or isinstance(elapsed, bool):
        raise ValueError(f"rollout elapsed: expected a number, got {elapsed!r}")
    if since is not None and (not isinstance(since, int | float) or isinstance(since, bool)):
        raise ValueError(f"rollout since: expected a number or null, got {since!r}")
    if not isinstance(reason, str):
        raise ValueError(f"rollout reason: expected text, got {reason!r}")
    return Plan(state, steps, step, float(elapsed), None if since is None else float(since), reason)

"""Rollout plans and their gate, as pure code: transitions, when a step is due, what it
waits for, the always-valid bound, and slow outcomes judged like errors."""

from __future__ import annotations

import math
import random

import pytest

from canaryproxy.decide import rollout
from canaryproxy.decide.rollout import IDLE, Plan, Refused, StepSettings
from canaryproxy.judge.budget import BudgetParams, Judge
from canaryproxy.judge.sequential import Gate, StepEvidence
from canaryproxy.judge.tally import Tally
from canaryproxy.vocabulary import Pool

STEPS = (5.0, 10.0, 25.0, 50.0, 100.0)
SETTINGS = StepSettings(min_step_duration=60.0, min_step_requests=500, max_ratio=1.5)


# -- transitions --------------------------------------------------------------------------


def test_a_plan_walks_its_steps_and_completes_into_100() -> None:
    plan = rollout.start(IDLE, STEPS, now=1000.0)
    assert (plan.state, plan.step, plan.weight, plan.since) == ("progressing", 0, 5.0, 1000.0)
    weights = [plan.weight]
    while plan.state == "progressing":
        plan = rollout.promote(plan, 2000.0, "passed")
        weights.append(plan.weight)
    # the step of 100 % is the completion itself: every user on the canary
    assert weights == [5.0, 10.0, 25.0, 50.0, 100.0]
    assert plan.state == "completed"
    assert plan.step == 4


def test_a_plan_without_100_completes_at_100_after_its_last_step() -> None:
    plan = rollout.start(IDLE, (20.0, 60.0), now=0.0)
    plan = rollout.promote(rollout.promote(plan, 1.0, ""), 2.0, "")
    assert (plan.state, plan.weight) == ("completed", 100.0)


def test_pause_holds_the_steps_clock_and_resume_goes_on() -> None:
    plan = rollout.start(IDLE, STEPS, now=100.0)
    assert plan.seconds(130.0) == 30.0
    paused = rollout.pause(plan, 130.0, "an operator set the weight")
    assert paused.seconds(10_000.0) == 30.0  # time does not count while paused
    resumed = rollout.resume(paused, 500.0)
    assert resumed.seconds(520.0) == 50.0
    assert (resumed.step, resumed.weight) == (0, 5.0)


@pytest.mark.parametrize(
    ("plan", "change"),
    [
        (IDLE, lambda p: rollout.pause(p, 0.0, "")),
        (IDLE, lambda p: rollout.resume(p, 0.0)),
        (IDLE, lambda p: rollout.promote(p, 0.0, "")),
        (IDLE, lambda p: rollout.abort(p, "")),
        (rollout.start(IDLE, STEPS, 0.0), lambda p: rollout.start(p, STEPS, 0.0)),
        (rollout.start(IDLE, STEPS, 0.0), lambda p: rollout.resume(p, 0.0)),
        (Plan("completed", STEPS, 4, 0.0, None), lambda p: rollout.abort(p, "")),
        (Plan("aborted", STEPS, 2, 0.0, None), lambda p: rollout.pause(p, 0.0, "")),
    ],
)
def test_transitions_the_state_does_not_allow_are_refused(plan: Plan, change: object) -> None:
    assert callable(change)
    with pytest.raises(Refused):
        change(plan)


def test_a_finished_plan_can_start_again() -> None:
    done = Plan("completed", STEPS, 4, 0.0, None)
    assert rollout.start(done, (1.0, 2.0), 5.0).steps == (1.0, 2.0)


def test_abort_keeps_the_step_it_stopped_at() -> None:
    plan = rollout.promote(rollout.start(IDLE, STEPS, 0.0), 1.0, "")
    aborted = rollout.abort(plan, "ejected (comparative): ...")
    assert (aborted.state, aborted.step, aborted.reason) == (
        "aborted",
        1,
        "ejected (comparative): ...",
    )


# -- when a step is due, and what it waits for -----------------------------------------------


def test_a_step_is_due_only_when_time_requests_and_gate_all_hold() -> None:
    plan = rollout.start(IDLE, STEPS, now=0.0)
    assert rollout.is_due(plan, SETTINGS, 60.0, 500, True)
    assert not rollout.is_due(plan, SETTINGS, 59.0, 500, True)
    assert not rollout.is_due(plan, SETTINGS, 60.0, 499, True)
    assert not rollout.is_due(plan, SETTINGS, 60.0, 500, False)
    paused = rollout.pause(plan, 70.0, "")
    assert not rollout.is_due(paused, SETTINGS, 80.0, 900, True)


def test_waiting_for_says_what_is_missing_in_words() -> None:
    plan = rollout.start(IDLE, STEPS, now=0.0)
    waits = rollout.waiting_for(plan, SETTINGS, 10.0, 300, 1200, False)
    assert waits == ["50s more at this step", "≈ 1,200 more canary requests"]
    assert rollout.waiting_for(plan, SETTINGS, 100.0, 300, 0, True) == [
        "≈ 200 more canary requests"
    ]
    worse = rollout.waiting_for(plan, SETTINGS, 100.0, 900, None, False)
    assert len(worse) == 1
    assert "no worse than 1.5x stable" in worse[0]
    assert rollout.waiting_for(plan, SETTINGS, 100.0, 900, 0, True) == []


def test_a_plan_round_trips_through_json_and_bad_ones_are_named() -> None:
    plan = rollout.pause(rollout.start(IDLE, STEPS, 10.0), 25.0, "held")
    assert rollout.plan_from_dict(rollout.plan_to_dict(plan)) == plan
    for bad, word in [
        ({**rollout.plan_to_dict(plan), "state": "flying"}, "rollout state"),
        ({**rollout.plan_to_dict(plan), "step": 9}, "rollout step"),
        ({**rollout.plan_to_dict(plan), "steps": "5,10"}, "rollout steps"),
        ({**rollout.plan_to_dict(plan), "elapsed": "1"}, "rollout elapsed"),
        ("nope", "must be an object"),
    ]:
        with pytest.raises(ValueError, match=word):
            rollout.plan_from_dict(bad)


# -- the gate: an always-valid bound -----------------------------------------------------------


def run_gate(ratio: float, rho: float, w: float, events: int, rng: random.Random) -> bool:
    """Feed ``events`` events whose canary share follows ``ratio``; True if the gate crossed
    ln(1/alpha) at any point (looked at after every event)."""
    gate = Gate(rho)
    q = ratio * w / (ratio * w + 1 - w)
    threshold = math.log(1 / 0.05)
    for _ in range(events):
        gate.update(rng.random() < q, w)
        if gate.log_odds >= threshold:
            return True
    return False


def test_the_gate_rarely_passes_a_canary_at_the_bound_however_often_it_is_read() -> None:
    rng = random.Random(7)
    # At R = rho exactly (the hardest case), read after every one of 2,000 events: Ville's
    # inequality keeps the chance of ever crossing at alpha = 5 % or less.
    crossed = sum(run_gate(1.5, 1.5, 0.1, 2000, rng) for _ in range(400))
    assert crossed / 400 <= 0.05


def test_the_gate_passes_a_canary_as_good_as_stable() -> None:
    rng = random.Random(8)
    crossed = sum(run_gate(1.0, 1.5, 0.25, 1500, rng) for _ in range(100))
    assert crossed >= 95


def test_a_quiet_step_passes_on_time_and_requests_alone() -> None:
    step = StepEvidence(1.5)
    step.count(True, 600, 0, 0)
    step.count(False, 5000, 0, 0)
    gate = step.describe(math.log(2000), 0.1, judge_latency=True)
    assert gate.shown
    assert gate.canary_requests == 600
    assert gate.more_requests == 0


def test_a_gate_not_yet_shown_estimates_the_requests_it_needs() -> None:
    step = StepEvidence(1.5)
    w = 0.25
    rng = random.Random(3)
    for _ in range(400):  # the canary's error rate equals stable's (1 %)
        canary = rng.random() < w
        step.count(canary, 1, 0, 0)
        if rng.random() < 0.01:
            step.count(canary, 0, 1, 0)
            step.event(canary, w, True, False)
    gate = step.describe(math.log(2000), w, judge_latency=False)
    assert not gate.shown
    assert gate.more_requests is not None
    assert gate.more_requests > 0


# -- the judge's step, and slow outcomes -----------------------------------------------------


def judge(**kw: object) -> Judge:
    params = BudgetParams(alpha=0.0005, judge_latency=True, **kw)  # type: ignore[arg-type]
    return Judge(params, 0.0)


def test_a_canary_slower_than_stable_is_ejected_by_the_latency_rule() -> None:
    j, rng = judge(), random.Random(1)
    ejection = None
    for i in range(20_000):
        canary = rng.random() < 0.2
        late = rng.random() < (0.3 if canary else 0.02)  # slow 30 % vs 2 %
        ejection = j.record("canary" if canary else "stable", False, 0.1, i * 0.01, late)
        if ejection is not None:
            break
    assert ejection is not None
    assert ejection.rule == "latency"
    assert "slow responses" in ejection.reason


def test_a_slowdown_of_both_pools_ejects_nothing_and_says_shared_degradation() -> None:
    j, rng = judge(), random.Random(2)
    for i in range(20_000):
        canary = rng.random() < 0.2
        late = rng.random() < 0.4  # a shared database: both pools slow alike
        assert j.record("canary" if canary else "stable", False, 0.1, i * 0.003, late) is None
    assert j.verdict(60.0) == "shared_degradation"


def test_slow_outcomes_do_not_move_the_error_test() -> None:
    j = judge()
    for i in range(3000):
        j.record("canary" if i % 5 == 0 else "stable", False, 0.1, i * 0.01, i % 5 == 0)
    assert j.evidence(30.0)["log_odds"] == 0.0


def test_a_tally_replays_slow_outcomes_like_the_request_path() -> None:
    direct, pooled, tally = judge(), judge(), Tally(None)
    rng = random.Random(4)
    found: list[float] = [math.inf, math.inf]
    for i in range(30_000):
        now = i * 0.002
        canary = rng.random() < 0.2
        late = rng.random() < (0.3 if canary else 0.02)
        pool: Pool = "canary" if canary else "stable"
        if found[0] == math.inf and direct.record(pool, False, 0.1, now, late):
            found[0] = now
        tally.add(pool, False, 0.1, late)
        if i % 125 == 124 and found[1] == math.inf and pooled.record_tally(tally.drain(), now):
            found[1] = now
    assert found[0] < math.inf
    assert found[1] < math.inf
    assert abs(found[1] - found[0]) <= 0.25 + 0.01  # within one flush


def test_a_step_counts_and_gates_from_its_start() -> None:
    j = judge()
    for i in range(200):
        j.record("canary" if i % 4 == 0 else "stable", i % 50 == 0, 0.1, i * 0.01)
    assert j.gate(2.0) is None
    j.begin_step(1.5)
    for i in range(100):
        j.record("canary" if i % 4 == 0 else "stable", False, 0.1, 2.0 + i * 0.01)
    gate = j.gate(3.0)
    assert gate is not None
    assert gate.canary_requests == 25
    assert gate.shown
    evidence = gate.evidence
    assert evidence["stable_requests"] == 75
    gates = evidence["gates"]
    assert isinstance(gates, dict)
    assert set(gates) == {"errors", "slow"}
    j.end_step()
    assert j.gate(3.0) is None


def run_after_promotion(tell_the_judge: bool) -> float:
    """A healthy canary (0.5 % like stable) at 25 % for a minute, promoted to 50 %: the
    comparative test's log-odds 30 s later, with or without ``weight_changed``."""
    j, rng = Judge(BudgetParams(), 0.0), random.Random(11)
    t, worst = 0.0, -math.inf
    for share, seconds in ((0.25, 60.0), (0.50, 30.0)):
        if share == 0.5 and tell_the_judge:
            j.weight_changed(50.0, t)
        for _ in range(int(seconds * 1000)):  # 1,000 requests a second
            t += 0.001
            canary = rng.random() < share
            j.record("canary" if canary else "stable", rng.random() < 0.005, 0.01, t)
            if share == 0.5:
                worst = max(worst, float(j.evidence(t)["log_odds"]))  # type: ignore[arg-type]
    return worst


def test_after_a_weight_change_the_share_is_measured_afresh() -> None:
    # Judged against the window's stale 25 %, the canary's errors at 50 % look twice its
    # share; measured since the change, they look like what they are.
    assert run_after_promotion(tell_the_judge=False) > 4.0
    assert run_after_promotion(tell_the_judge=True) < 1.0

"""Backend health: rise/fall hysteresis, outlier ejection with a fake clock, and their join."""

from __future__ import annotations

import random

import pytest

from canaryproxy.decide.health import (
    ActiveCheck,
    BackendHealth,
    OutlierDetector,
    is_check_success,
    is_failure_status,
    next_check_delay,
)
from canaryproxy.vocabulary import iso_utc

# --- probe helpers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (100, False),
        (199, False),
        (200, True),
        (204, True),
        (301, True),
        (304, True),
        (399, True),
        (400, False),
        (404, False),
        (500, False),
        (503, False),
    ],
    ids=lambda v: str(v),
)
def test_check_success_is_2xx_or_3xx(status: int, expected: bool) -> None:
    assert is_check_success(status) is expected


@pytest.mark.parametrize(
    ("status", "expected"),
    [(200, False), (302, False), (404, False), (499, False), (500, True), (502, True), (504, True)],
    ids=lambda v: str(v),
)
def test_failure_status_is_5xx(status: int, expected: bool) -> None:
    assert is_failure_status(status) is expected


@pytest.mark.parametrize(
    ("draw", "expected"),
    [(0.0, 9.0), (0.25, 9.5), (0.5, 10.0), (0.75, 10.5)],
    ids=["lowest", "quarter", "middle", "three-quarters"],
)
def test_check_delay_maps_the_draw_onto_plus_minus_ten_percent(
    draw: float, expected: float
) -> None:
    assert next_check_delay(10.0, lambda: draw) == pytest.approx(expected)


@pytest.mark.parametrize("interval", [0.25, 5.0, 60.0], ids=["250ms", "5s", "1m"])
def test_check_delay_stays_within_jitter_bounds_and_uses_them(interval: float) -> None:
    rng = random.Random(5)
    delays = [next_check_delay(interval, rng.random) for _ in range(2000)]
    assert all(0.9 * interval <= d < 1.1 * interval for d in delays)
    # The jitter is really used: both ends of the band are reached.
    assert min(delays) < 0.91 * interval
    assert max(delays) > 1.09 * interval


@pytest.mark.parametrize("interval", [0.0, -1.0], ids=["zero", "negative"])
def test_check_delay_rejects_non_positive_interval(interval: float) -> None:
    with pytest.raises(ValueError, match="interval must be > 0"):
        next_check_delay(interval, lambda: 0.5)


# --- ActiveCheck -----------------------------------------------------------------------------

# Observations: S = probe passed, F = probe failed.
# States after each observation: U = healthy (up), D = unhealthy (down).
RISE_FALL = [
    # (rise, fall, starts_healthy, observations, states)
    (2, 3, True, "FFF", "UUD"),
    (2, 3, True, "FF", "UU"),
    (2, 3, True, "FFSFFF", "UUUUUD"),  # a pass breaks the failure streak
    (2, 3, True, "FFFS", "UUDD"),
    (2, 3, True, "FFFSS", "UUDDU"),
    (2, 3, True, "FFFSFSS", "UUDDDDU"),  # a failure breaks the rise streak
    (2, 3, False, "S", "D"),
    (2, 3, False, "SS", "DU"),
    (2, 3, False, "SSFFF", "DUUUD"),
    (1, 1, True, "FSFS", "DUDU"),
    (1, 1, True, "SSS", "UUU"),
    (3, 2, True, "FFSSSF", "UDDDUU"),
    (2, 3, True, "", ""),
]


@pytest.mark.parametrize(
    ("rise", "fall", "starts_healthy", "observations", "states"),
    RISE_FALL,
    ids=[f"r{r}f{f}-{'up' if h else 'down'}-{o or 'none'}" for r, f, h, o, _ in RISE_FALL],
)
def test_rise_fall_hysteresis(
    rise: int, fall: int, starts_healthy: bool, observations: str, states: str
) -> None:
    check = ActiveCheck(rise, fall, healthy=starts_healthy)
    seen = []
    previous = starts_healthy
    for symbol in observations:
        flipped = check.observe(symbol == "S")
        assert flipped is (check.is_healthy != previous)
        previous = check.is_healthy
        seen.append("U" if check.is_healthy else "D")
    assert "".join(seen) == states


def test_check_starts_healthy_by_default() -> None:
    assert ActiveCheck(rise=2, fall=3).is_healthy


def test_flip_is_reported_once() -> None:
    check = ActiveCheck(rise=1, fall=2)
    assert [check.observe(False) for _ in range(4)] == [False, True, False, False]


@pytest.mark.parametrize(
    ("rise", "fall", "message"),
    [(0, 3, "rise must be >= 1, got 0"), (2, 0, "fall must be >= 1, got 0")],
    ids=["rise-0", "fall-0"],
)
def test_check_rejects_bad_thresholds(rise: int, fall: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ActiveCheck(rise, fall)


def test_check_repr_shows_state_and_streak() -> None:
    check = ActiveCheck(rise=2, fall=3)
    check.observe(False)
    assert repr(check) == "<ActiveCheck healthy streak=1/3>"
    check.observe(False)
    check.observe(False)
    assert repr(check) == "<ActiveCheck unhealthy streak=0/2>"
    assert check.streak == 0


# --- OutlierDetector -------------------------------------------------------------------------


def detector(failures: int = 3, base: float = 10.0, maximum: float = 35.0) -> OutlierDetector:
    return OutlierDetector(failures, base, maximum)


def eject(outlier: OutlierDetector, now: float) -> None:
    """Fail until ejected, all at ``now``."""
    for _ in range(outlier.consecutive, 100):
        if outlier.on_failure(now):
            return
    raise AssertionError("never ejected")


def test_ejects_after_n_consecutive_failures() -> None:
    outlier = detector(failures=3)
    assert [outlier.on_failure(t) for t in (0.0, 1.0, 2.0)] == [False, False, True]
    assert outlier.is_ejected(2.0)
    assert outlier.ejection_count == 1
    assert outlier.consecutive == 0


@pytest.mark.parametrize(
    ("results", "ejected"),
    [
        ("FFF", True),
        ("FFSFF", False),
        ("FFSFFF", True),
        ("SFFSFFS", False),
        ("F", False),
    ],
    ids=lambda v: str(v),
)
def test_success_resets_the_consecutive_count(results: str, ejected: bool) -> None:
    outlier = detector(failures=3)
    for t, symbol in enumerate(results):
        if symbol == "S":
            outlier.on_success(float(t))
        else:
            outlier.on_failure(float(t))
    assert outlier.is_ejected(float(len(results))) is ejected


def test_a_single_failure_ejects_with_threshold_one() -> None:
    assert OutlierDetector(1, 5.0, 5.0).on_failure(0.0)


@pytest.mark.parametrize(
    ("base", "maximum", "durations"),
    [
        (10.0, 35.0, [10.0, 20.0, 30.0, 35.0, 35.0]),
        (30.0, 300.0, [30.0, 60.0, 90.0, 120.0, 150.0]),
        (5.0, 5.0, [5.0, 5.0, 5.0]),
    ],
    ids=["capped-at-35", "envoy-defaults", "base-equals-max"],
)
def test_ejection_time_grows_base_times_count_capped(
    base: float, maximum: float, durations: list[float]
) -> None:
    outlier = detector(failures=2, base=base, maximum=maximum)
    now = 100.0
    for expected in durations:
        eject(outlier, now)
        assert outlier.ejected_until == pytest.approx(now + expected)
        assert outlier.is_ejected(now + expected - 0.001)
        now += expected
        # Back in rotation exactly when the cool-off ends; the next ejection follows at once.
        assert not outlier.is_ejected(now)
    assert outlier.ejection_count == len(durations)


def test_backend_returns_after_cool_off_with_a_fresh_count() -> None:
    outlier = detector(failures=3, base=10.0)
    eject(outlier, 0.0)
    assert outlier.is_ejected(9.999)
    assert not outlier.is_ejected(10.0)
    assert outlier.ejected_until is None
    # One failure after return is not enough: the streak restarted at 0.
    assert not outlier.on_failure(10.5)
    assert not outlier.is_ejected(10.5)
    assert outlier.consecutive == 1


def test_return_is_noticed_by_a_failure_report_too() -> None:
    outlier = detector(failures=3, base=10.0)
    eject(outlier, 0.0)
    assert not outlier.on_failure(12.0)  # no is_ejected() call in between
    assert outlier.consecutive == 1
    assert not outlier.is_ejected(12.0)


def test_results_during_an_ejection_are_ignored() -> None:
    outlier = detector(failures=3, base=10.0)
    eject(outlier, 0.0)
    for t in (1.0, 2.0, 3.0, 4.0):
        assert not outlier.on_failure(t)
    outlier.on_success(5.0)
    assert outlier.ejected_until == 10.0
    assert outlier.consecutive == 0
    assert outlier.ejection_count == 1


@pytest.mark.parametrize(
    ("good_for", "next_duration", "count_after"),
    [
        (0.0, 20.0, 2),
        (34.999, 20.0, 2),
        (35.0, 10.0, 1),
        (1000.0, 10.0, 1),
    ],
    ids=["at-once", "just-under-max", "exactly-max", "long-after"],
)
def test_ejection_count_resets_after_max_ejection_time_in_rotation(
    good_for: float, next_duration: float, count_after: int
) -> None:
    outlier = detector(failures=3, base=10.0, maximum=35.0)
    eject(outlier, 0.0)  # in rotation again from t=10
    now = 10.0 + good_for
    eject(outlier, now)
    assert outlier.ejected_until == pytest.approx(now + next_duration)
    assert outlier.ejection_count == count_after


def test_decay_is_visible_through_is_ejected() -> None:
    outlier = detector(failures=3, base=10.0, maximum=35.0)
    eject(outlier, 0.0)
    assert not outlier.is_ejected(44.0)
    assert outlier.ejection_count == 1
    assert not outlier.is_ejected(45.0)
    assert outlier.ejection_count == 0


def test_failures_short_of_ejection_do_not_stop_the_decay() -> None:
    # "Good behaviour" is staying in rotation; isolated failures below the threshold are normal.
    outlier = detector(failures=3, base=10.0, maximum=35.0)
    eject(outlier, 0.0)
    outlier.on_failure(20.0)
    outlier.on_failure(30.0)
    outlier.on_success(31.0)
    assert not outlier.is_ejected(45.0)
    assert outlier.ejection_count == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0, 30.0, 300.0), "consecutive_failures must be >= 1, got 0"),
        ((5, 0.0, 300.0), "base_ejection_time must be > 0, got 0.0"),
        ((5, 30.0, 10.0), r"max_ejection_time must be >= base_ejection_time \(30.0\), got 10.0"),
    ],
    ids=["failures-0", "base-0", "max-below-base"],
)
def test_detector_rejects_bad_settings(args: tuple[int, float, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OutlierDetector(*args)


def test_detector_repr_shows_state() -> None:
    outlier = detector(failures=3, base=10.0)
    outlier.on_failure(0.0)
    assert repr(outlier) == "<OutlierDetector in rotation consecutive=1/3 ejections=0>"
    eject(outlier, 1.0)
    assert repr(outlier) == "<OutlierDetector ejected until 11 consecutive=0/3 ejections=1>"


# --- BackendHealth ---------------------------------------------------------------------------


def make_check(healthy: bool) -> ActiveCheck:
    return ActiveCheck(rise=2, fall=2, healthy=healthy)


@pytest.mark.parametrize(
    ("check", "ejected", "routable"),
    [
        (None, False, True),
        (None, True, False),
        (True, False, True),
        (True, True, False),
        (False, False, False),
        (False, True, False),
    ],
    ids=[
        "no-check",
        "no-check-ejected",
        "healthy",
        "healthy-ejected",
        "unhealthy",
        "unhealthy-ejected",
    ],
)
def test_routable_needs_both_mechanisms(check: bool | None, ejected: bool, routable: bool) -> None:
    outlier = detector(failures=1, base=10.0)
    if ejected:
        outlier.on_failure(0.0)
    health = BackendHealth(None if check is None else make_check(check), outlier)
    assert health.is_routable(1.0) is routable


def test_flagged_by_both_returns_only_when_the_outlier_clears_last() -> None:
    check = make_check(healthy=True)
    health = BackendHealth(check, detector(failures=1, base=10.0))
    health.outlier.on_failure(0.0)
    check.observe(False)
    check.observe(False)
    check.observe(True)
    check.observe(True)  # active check healthy again at t=~4
    assert not health.is_routable(4.0)
    assert not health.is_routable(9.999)
    assert health.is_routable(10.0)


def test_flagged_by_both_returns_only_when_the_check_clears_last() -> None:
    check = make_check(healthy=True)
    health = BackendHealth(check, detector(failures=1, base=10.0))
    health.outlier.on_failure(0.0)
    check.observe(False)
    check.observe(False)
    assert not health.is_routable(20.0)  # ejection over, check still down
    check.observe(True)
    assert not health.is_routable(25.0)
    check.observe(True)
    assert health.is_routable(30.0)


def test_a_passing_probe_does_not_cut_an_ejection_short() -> None:
    check = make_check(healthy=True)
    health = BackendHealth(check, detector(failures=1, base=10.0))
    health.outlier.on_failure(0.0)
    for _ in range(5):
        check.observe(True)
    assert not health.is_routable(5.0)


def test_backend_health_exposes_its_parts_and_repr() -> None:
    check = make_check(healthy=True)
    outlier = detector()
    health = BackendHealth(check, outlier)
    assert health.check is check
    assert health.outlier is outlier
    assert repr(health) == f"<BackendHealth check={check!r} outlier={outlier!r}>"


# --- STATE's view -------------------------------------------------------------------------------


def test_describe_shows_an_ejection_end_as_wall_clock_utc() -> None:
    check = ActiveCheck(rise=1, fall=1)
    health = BackendHealth(check, OutlierDetector(1, 30.0, 300.0))
    wall = 1_800_000_000.0  # 2027-01-15T08:00:00Z
    assert health.describe(100.0, wall) == {
        "healthy": True,
        "active": {"healthy": True, "streak": 0, "last_error": None},
        "outlier": {"ejected": False, "until": None, "ejections": 0},
    }
    health.outlier.on_failure(100.0)
    check.observe(False, "ConnectionRefusedError: refused")
    assert health.describe(110.0, wall + 10) == {
        "healthy": False,
        "active": {"healthy": False, "streak": 0, "last_error": "ConnectionRefusedError: refused"},
        "outlier": {"ejected": True, "until": "2027-01-15T08:00:30.000Z", "ejections": 1},
    }
    check.observe(True)
    assert health.describe(131.0, wall + 31)["outlier"] == {
        "ejected": False,
        "until": None,
        "ejections": 1,
    }
    assert health.describe(131.0, wall + 31)["active"] == {
        "healthy": True,
        "streak": 0,
        "last_error": "ConnectionRefusedError: refused",
    }


def test_iso_utc() -> None:
    assert iso_utc(0.25) == "1970-01-01T00:00:00.250Z"

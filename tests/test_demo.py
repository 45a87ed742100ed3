"""``canaryproxy demo``: the pure view helpers on STATE dicts, the ramp against a fake admin,
and the whole demo as a child process, watched through its admin API while it runs.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import socket
import sys
import tempfile
from typing import Any

import aiohttp
import pytest
from rich.console import Console

from canaryproxy.demo import show as demo
from canaryproxy.demo import view as demo_view


def window(requests: int, errors: int, p50: float | None, p99: float | None) -> dict[str, Any]:
    rate = errors / requests if requests else 0.0
    return {
        "requests": requests,
        "errors": errors,
        "error_rate": rate,
        "p50_ms": p50,
        "p99_ms": p99,
    }


def state(**overrides: Any) -> dict[str, Any]:
    """A STATE as the admin API answers it, 10 % into a ramp, with a 20 %-failing canary."""
    out: dict[str, Any] = {
        "name": "web",
        "canary_weight": 10.0,
        "ejected": False,
        "eject_reason": None,
        "eject_rule": None,
        "verdict": "insufficient_samples",
        "evidence": {
            "stable": {"requests_since_reset": 900, "errors_since_reset": 9},
            "canary": {"requests_since_reset": 100, "errors_since_reset": 20},
            "canary_share_of_requests": 0.1,
            "canary_share_of_requests_window": 0.1,
            "canary_share_of_errors": 0.6897,
            "error_rate_ratio": 20.0,
            "odds": "1300:1",
            "threshold_odds": "1000000:1",
            "canary_requests_needed": 40,
        },
        "window": {"stable": window(900, 9, 12.6, 21.2), "canary": window(100, 20, 20.1, 31.0)},
        "backends": [
            {"pool": "stable", "url": "http://127.0.0.1:1", "healthy": True},
            {"pool": "stable", "url": "http://127.0.0.1:2", "healthy": False},
            {"pool": "canary", "url": "http://127.0.0.1:3", "healthy": True},
        ],
    }
    out.update(overrides)
    return out


EMPTY_WINDOW = window(0, 0, None, None)


# -- the view ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("st", "pool", "expected"),
    [
        (state(), "stable", {"weight": "90 %", "errors": "1.0 %", "p99": "21 ms", "up": "1/2"}),
        (state(), "canary", {"weight": "10 %", "errors": "20 %", "p50": "20 ms", "up": "1/1"}),
        (state(canary_weight=0.5), "canary", {"weight": "0.5 %"}),
        (state(canary_weight=0.5), "stable", {"weight": "99.5 %"}),
        (
            state(window={"stable": EMPTY_WINDOW, "canary": EMPTY_WINDOW}),
            "canary",
            {"errors": "-", "p50": "-", "p99": "-"},
        ),
    ],
    ids=["stable-row", "canary-row", "decimal-weight", "stable-is-the-rest", "empty-window"],
)
def test_pool_cells(st: dict[str, Any], pool: str, expected: dict[str, str]) -> None:
    cells = demo_view.pool_cells(st, pool, 12.4, 7)
    assert cells["req/s"] == "12"
    assert cells["users"] == "7"
    assert {key: cells[key] for key in expected} == expected


@pytest.mark.parametrize(
    ("share", "text"),
    [
        (None, "-"),
        (0.0, "0.0 %"),
        (0.0123, "1.2 %"),
        (0.1, "10 %"),
        (0.456, "46 %"),
        (1.0, "100 %"),
    ],
    ids=["none", "zero", "small", "ten", "large", "all"],
)
def test_percent(share: float | None, text: str) -> None:
    assert demo_view.percent(share) == text


def test_status_line_shows_weight_pools_and_odds() -> None:
    line = demo_view.status_line(state(), {"stable": 90.4, "canary": 9.6}, {"stable": 180}, 12.2)
    assert line == (
        "[ 12s] insufficient_samples, canary weight 10 % "
        "| stable: 180 users, 90 req/s, 1.0 % errors, p50 13 ms, p99 21 ms, 1/2 up "
        "| canary: - users, 10 req/s, 20 % errors, p50 20 ms, p99 31 ms, 1/1 up "
        "| odds 1300:1, ejects at 1000000:1"
    )


@pytest.mark.parametrize(
    ("st", "expected"),
    [
        (
            state(),
            "canary: 10 % of requests, 69 % of errors; error rate 20× stable's; odds 1300:1 "
            "against no-worse-than-stable, ejects at 1000000:1; "
            "~40 more canary requests to decide",
        ),
        (state(evidence={}), "no evidence yet"),
        (
            state(
                evidence={
                    **state()["evidence"],
                    "canary_share_of_errors": None,
                    "error_rate_ratio": None,
                    "canary_requests_needed": None,
                }
            ),
            "canary: 10 % of requests, - of errors; odds 1300:1 against no-worse-than-stable, "
            "ejects at 1000000:1",
        ),
    ],
    ids=["full", "no-judge", "no-errors-yet"],
)
def test_evidence_line(st: dict[str, Any], expected: str) -> None:
    assert demo_view.evidence_line(st) == expected


@pytest.mark.parametrize(
    ("st", "expected"),
    [
        (state(), None),
        (
            state(ejected=True, eject_rule="backstop", eject_reason="error rate 0.21 > 0.10"),
            "EJECTED: error rate 0.21 > 0.10 (rule: backstop)",
        ),
    ],
    ids=["running", "ejected"],
)
def test_ejection_line(st: dict[str, Any], expected: str | None) -> None:
    assert demo_view.ejection_line(st) == expected


@pytest.mark.parametrize(
    ("samples", "expected"),
    [
        ([(0.0, 0, 0)], (0.0, 0.0)),
        ([(0.0, 0, 0), (1.0, 90, 10)], (90.0, 10.0)),
        (
            [(0.0, 0, 0), (1.0, 100, 0), (2.0, 200, 0), (3.0, 300, 0), (4.0, 500, 50)],
            (400 / 3, 50 / 3),
        ),
        ([(0.0, 500, 50), (1.0, 600, 60), (2.0, 40, 4)], (0.0, 0.0)),
        ([(0.0, 500, 50), (1.0, 600, 60), (2.0, 40, 4), (3.0, 140, 14)], (100.0, 10.0)),
    ],
    ids=["first-sample", "one-second", "keeps-last-3s", "restore-resets", "after-reset"],
)
def test_rate_meter(samples: list[tuple[float, int, int]], expected: tuple[float, float]) -> None:
    meter = demo_view.RateMeter(span=3.0)
    rates: dict[str, float] = {}
    for now, stable, canary in samples:
        rates = meter.update({"stable": stable, "canary": canary}, now)
    assert (rates["stable"], rates["canary"]) == pytest.approx(expected)


def test_request_totals_read_the_judges_running_counts() -> None:
    assert demo_view.request_totals(state()) == {"stable": 900, "canary": 100}
    assert demo_view.request_totals(state(evidence={})) == {"stable": 0, "canary": 0}


def test_render_builds_a_renderable_with_the_ejection() -> None:
    console = Console(width=160, record=True, file=io.StringIO())
    st = state(ejected=True, eject_rule="comparative", eject_reason="odds 2e6:1", verdict="ejected")
    console.print(
        demo_view.render(
            st, {"stable": 90.0}, {"stable": 190}, ["ROLLOUT progressing: step 2/5 (10 %)"]
        )
    )
    text = console.export_text()
    assert "EJECTED: odds 2e6:1 (rule: comparative)" in text
    assert "verdict: ejected" in text
    assert "ROLLOUT progressing: step 2/5 (10 %)" in text
    assert re.search(r"stable\s*│\s*90 %\s*│\s*190\s*│\s*90", text)


# -- config, banner, ramp ---------------------------------------------------------------------
def test_demo_config_is_a_valid_config_with_the_demos_choices() -> None:
    config = demo.demo_config(
        "http://127.0.0.1:1",
        "http://127.0.0.1:2",
        ("127.0.0.1:0", "127.0.0.1:9"),
        "tok",
        "s",
        "x.db",
    )
    web = config.services["web"]
    assert (config.listen.port, config.admin.listen.port, config.admin.token) == (0, 9, "tok")
    assert config.sticky.mode == "cohort"
    assert config.state.path == "x.db"
    assert web.canary_weight == 0  # the plan sets it
    assert web.canary is not None
    assert web.canary.backends[0].url == "http://127.0.0.1:2"
    assert web.health_check is not None
    assert web.health_check.interval == 1.0
    assert (web.error_budget.alpha, web.error_budget.max_error_rate) == (0.0005, 0.10)
    assert web.rollout is not None
    assert web.rollout.steps == (5, 10, 25, 50, 100)
    assert (web.rollout.min_step_duration, web.rollout.auto_start) == (8.0, True)
    assert web.outcomes.slow == 0.15


@pytest.mark.parametrize("drive", [False, True], ids=["with-traffic", "no-traffic"])
def test_banner_names_every_url_and_curl_lines(drive: bool) -> None:
    bug = demo.bug_text("errors", 0.2)
    text = demo.banner("http://p:1", "http://a:2", "tok", "/tmp/x/s.db", bug, drive)
    assert "failing 20% of requests once it serves over 17 requests/s" in text
    assert demo.bug_text("latency", 0.2) == "answering 300 ms late"
    assert "curl -s -H 'Authorization: Bearer tok' http://a:2/admin/services/web/rollout\n" in text
    for line in ["proxy    http://p:1/", "admin    http://a:2", "metrics  http://a:2/metrics"]:
        assert line in text
    assert "curl -s -H 'Authorization: Bearer tok' http://a:2/admin/services/web\n" in text
    assert "-d '{\"canary\": 5}' http://a:2/admin/services/web/restore" in text
    assert ("/admin/services/web/weight" in text) is drive


def plan(state: str, step: int, reason: str = "", waits: list[str] | None = None) -> Any:
    weights = [5.0, 10.0, 25.0, 50.0, 100.0]
    return {
        "state": state,
        "steps": weights,
        "step": step,
        "weight": weights[step] if step >= 0 else None,
        "reason": reason,
        "waiting_for": waits or [],
    }


@pytest.mark.parametrize(
    ("before", "after", "events"),
    [
        (None, plan("idle", -1), []),
        (None, plan("progressing", 0), ["ROLLOUT progressing: step 1/5 (5 %)"]),
        (plan("progressing", 0), plan("progressing", 0), []),
        (
            plan("progressing", 0),
            plan("progressing", 1, "step 1/5 (5 %) passed: 30 canary requests"),
            ["ROLLOUT progressing: step 2/5 (10 %) ← step 1/5 (5 %) passed: 30 canary requests"],
        ),
        (
            plan("progressing", 2),
            plan("aborted", 2, "ejected (comparative): canary errors 5 of 5"),
            ["ROLLOUT aborted: step 3/5 (25 %) ← ejected (comparative): canary errors 5 of 5"],
        ),
    ],
    ids=["idle", "started", "unchanged", "promoted", "aborted"],
)
def test_rollout_events_say_where_the_plan_went_and_why(
    before: Any, after: Any, events: list[str]
) -> None:
    assert demo_view.rollout_events(before, after) == events


def test_plan_line_says_what_the_step_waits_for() -> None:
    waiting = plan("progressing", 1, waits=["3s more at this step", "≈ 12 more canary requests"])
    assert demo_view.plan_line(waiting) == (
        "rollout: progressing, step 2/5 (10 %), waiting for 3s more at this step"
        " and ≈ 12 more canary requests"
    )
    assert demo_view.plan_line(plan("idle", -1)) == "rollout: idle"
    assert demo_view.plan_line(None) == "rollout: -"
    line = demo_view.status_line(state(), {}, {}, 3.0, waiting)
    assert line.endswith("| rollout: progressing, step 2/5 (10 %), waiting for 3s more at this"
                         " step and ≈ 12 more canary requests")  # fmt: skip


# -- the whole demo, as a user runs it --------------------------------------------------------
# --ramp-seconds 5 (the least): 5 and 10 % pass within about 12 s, and at 25 % the canary's
# load crosses its limit within its 3 s load window, before the step could pass.
# Ports the system picks: never the walkthrough's 8080 and 9901, which a user may be using.
EPHEMERAL = ["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"]
DEMO = [sys.executable, "-m", "canaryproxy", "demo", "--duration", "25", "--ramp-seconds", "5"]
DEMO += EPHEMERAL


@pytest.mark.parametrize(
    ("listen", "admin", "attempts"),
    [
        (None, None, [("127.0.0.1:8080", "127.0.0.1:9901"), ("127.0.0.1:0", "127.0.0.1:0")]),
        ("127.0.0.1:0", "127.0.0.1:0", [("127.0.0.1:0", "127.0.0.1:0")]),
        ("127.0.0.1:7", None, [("127.0.0.1:7", "127.0.0.1:9901"), ("127.0.0.1:7", "127.0.0.1:0")]),
    ],
)
def test_demo_ports_given_are_kept_and_the_rest_fall_back(
    listen: str | None, admin: str | None, attempts: list[tuple[str, str]]
) -> None:
    assert demo.listen_attempts((listen, admin)) == attempts


async def test_demo_says_plainly_that_a_given_port_is_taken() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        proc = await asyncio.create_subprocess_exec(
            *DEMO[:-4], "--listen", address, "--admin", "127.0.0.1:0", "--no-traffic",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    assert f"cannot listen on {address}" in err.decode()


async def test_demo_refuses_a_malformed_address() -> None:
    proc = await asyncio.create_subprocess_exec(
        *DEMO[:-4], "--listen", "nowhere", stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert "--listen" in err.decode()
    assert "host:port" in err.decode()


def banner_field(lines: list[str], name: str) -> str:
    for line in lines:
        match = re.fullmatch(rf"  {name}\s+(\S+).*", line)
        if match:
            return match.group(1)
    raise AssertionError(f"no {name} in {lines}")


async def read_banner(stream: asyncio.StreamReader) -> list[str]:
    lines: list[str] = []
    while not any(line.startswith("try:") for line in lines):
        line = await asyncio.wait_for(stream.readline(), 20)
        assert line, f"the demo ended before its banner: {lines}"
        lines.append(line.decode().rstrip("\n"))
    return lines


async def poll_states(
    admin: str, token: str, proc: asyncio.subprocess.Process
) -> list[dict[str, Any]]:
    """STATE every 0.2 s while the demo runs."""
    states: list[dict[str, Any]] = []
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as session:
        while proc.returncode is None:
            try:
                async with session.get(f"{admin}/admin/services/web", headers=headers) as resp:
                    states.append(await resp.json())
            except aiohttp.ClientError:
                pass  # it is shutting down
            await asyncio.sleep(0.2)
    return states


async def test_demo_promotes_two_steps_on_evidence_then_aborts() -> None:
    proc = await asyncio.create_subprocess_exec(
        *DEMO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    assert proc.stdout is not None
    try:
        banner = await read_banner(proc.stdout)
        admin, token = banner_field(banner, "admin"), banner_field(banner, "token")
        poller = asyncio.create_task(poll_states(admin, token, proc))
        metrics = await wait_for_ejected_metrics(banner_field(banner, "metrics"))
        rest = (await asyncio.wait_for(proc.stdout.read(), 30)).decode().splitlines()
        code = await asyncio.wait_for(proc.wait(), 10)
        states = await poller
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert code == 0
    assert_output(rest)
    assert_states(states, rest)
    assert 'canaryproxy_canary_ejected{service="web"} 1.0' in metrics
    assert_removed(os.path.dirname(banner_field(banner, "state")))


async def wait_for_ejected_metrics(url: str) -> str:
    """The metrics page once it says the canary is ejected (or as it is after 20 s)."""
    text = ""
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            async with session.get(url) as resp:
                text = await resp.text()
            if 'canaryproxy_canary_ejected{service="web"} 1.0' in text:
                break
            await asyncio.sleep(0.1)
    return text


def assert_output(lines: list[str]) -> None:
    moves = [line for line in lines if line.startswith("ROLLOUT ")]
    assert moves[0] == "ROLLOUT progressing: step 1/5 (5 %)", lines
    assert moves[1].startswith("ROLLOUT progressing: step 2/5 (10 %) ← step 1/5 (5 %) passed: ")
    assert moves[2].startswith("ROLLOUT progressing: step 3/5 (25 %) ← step 2/5 (10 %) passed: ")
    assert moves[3].startswith("ROLLOUT aborted: step 3/5 (25 %) ← ejected ("), lines
    ejected = [line for line in lines if line.startswith("EJECTED: ")]
    assert len(ejected) == 1, lines
    summary = next(line for line in lines if line.startswith("traffic: "))
    served = {m[0]: int(m[1]) for m in re.findall(r"(v1\.[01]) (\d+) \(", summary)}
    assert served["v1.0"] > 100, summary
    assert served["v1.1"] > 0, summary
    status = [line for line in lines if line.startswith("[")]
    assert len(status) >= 8, lines  # one a second


def assert_states(states: list[dict[str, Any]], lines: list[str]) -> None:
    assert len(states) > 20
    weights = {s["canary_weight"] for s in states} | {s["weight_before_eject"] for s in states}
    assert max(w for w in weights if w is not None) == 25
    last = states[-1]
    assert last["ejected"] is True
    assert last["canary_weight"] == 0
    assert last["verdict"] == "ejected"
    assert f"EJECTED: {last['eject_reason']} (rule: {last['eject_rule']})" in lines
    evidence = last["evidence"]
    assert evidence["stable"]["requests_since_reset"] > 100
    assert evidence["canary"]["requests_since_reset"] > 0
    assert evidence["canary"]["errors_since_reset"] > 0


def assert_removed(temp_dir: str) -> None:
    assert temp_dir.startswith(tempfile.gettempdir())
    assert not os.path.exists(temp_dir), "the demo's temp dir must be gone after it stops"

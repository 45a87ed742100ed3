"""Outcomes and rollout plans through real sockets (README "Rollouts" and "Outcomes"):
real backends, the real proxy, its admin API; a restart is a real process killed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from canaryproxy.state.store import SqliteStateStore
from tests.support import (
    PROCESS_AUTH,
    Backend,
    ProxyClient,
    ProxyProcess,
    RunningProxy,
    canary_config,
    make_config,
    service,
    start_proxy,
    until,
    user_session,
)

AUTH = {"Authorization": "Bearer test-token"}
BUDGET = {"min_requests": 50, "window": "30s"}
QUICK_PLAN = {"min_step_duration": "1s", "min_step_requests": 20}


def web(stable: Backend, canary: Backend, weight: float, **extra: Any) -> dict[str, Any]:
    extra.setdefault("error_budget", BUDGET)
    return {"web": service([stable.url], [canary.url], canary_weight=weight, **extra)}


@contextlib.asynccontextmanager
async def load(url: str, connections: int = 16) -> AsyncIterator[list[int]]:
    """Steady traffic from new users while the block runs, ``connections`` at a time: each
    user from its own address, three requests with its cookie; the statuses."""
    statuses: list[int] = []
    stop = asyncio.Event()

    async def users() -> None:
        while not stop.is_set():
            async with user_session() as session:
                for _ in range(3):
                    async with session.get(url + "/") as resp:
                        await resp.read()
                        statuses.append(resp.status)

    tasks = [asyncio.create_task(users()) for _ in range(connections)]
    try:
        yield statuses
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)


async def admin(
    proxy: RunningProxy, verb: str, path: str, body: Any = None
) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            verb, f"{proxy.admin_url}/admin/services/web{path}", json=body, headers=AUTH
        ) as resp,
    ):
        return resp.status, await resp.json()


async def metric(proxy: RunningProxy, line_start: str) -> float:
    async with aiohttp.ClientSession() as session, session.get(proxy.admin_url + "/metrics") as r:
        text = await r.text()
    values = [float(x.rsplit(" ", 1)[1]) for x in text.splitlines() if x.startswith(line_start)]
    assert len(values) == 1, (line_start, values)
    return values[0]


async def test_a_healthy_canary_walks_a_short_plan_to_completed_on_its_own(
    pools: tuple[Backend, Backend], tmp_path: Path
) -> None:
    stable, canary = pools
    plan = {"steps": [10, 50, 100], "auto_start": True, **QUICK_PLAN}
    config = make_config(web(stable, canary, 0, rollout=plan))
    store = SqliteStateStore(str(tmp_path / "state.db"))
    async with start_proxy(config, store=store) as proxy:
        _, first = await admin(proxy, "GET", "/rollout")
        assert (first["state"], first["step"], first["weight"]) == ("progressing", 0, 10.0)
        async with load(proxy.url):

            async def completed() -> bool:
                plan = (await admin(proxy, "GET", "/rollout"))[1]
                return bool(plan["state"] == "completed")

            await until(completed, within=30)
        _, state = await admin(proxy, "GET", "")
        assert state["canary_weight"] == 100.0
        assert state["weight_source"] == "rollout"
        assert (
            await metric(proxy, 'canaryproxy_rollout_state{service="web",state="completed"}') == 1
        )
        assert await metric(proxy, 'canaryproxy_rollout_step{service="web"}') == 2
        actions = [e.action for e in reversed(store.audit_log("web"))]
        assert actions == ["rollout:start", "rollout:promote", "rollout:complete"]
        promoted = store.audit_log("web")[1]
        assert promoted.new == "progressing step 2/3 (50 %)"
        assert promoted.evidence is not None
        assert promoted.evidence["shown"] is True  # the gate's evidence, kept with the row
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{proxy.admin_url}/admin/audit?limit=0", headers=AUTH) as bad,
        ):
            assert bad.status == 400
        before = stable.count
        async with aiohttp.ClientSession() as session:
            for _ in range(50):  # every new user now goes to the canary
                async with session.get(proxy.url + "/") as resp:
                    assert (await resp.json())["backend"] == "canary"
        assert stable.count == before


async def test_a_failing_canary_is_aborted_and_ejected(pools: tuple[Backend, Backend]) -> None:
    stable, canary = pools
    canary.fail_fraction = 0.4
    plan = {"steps": [20, 50, 100], "auto_start": True, "min_step_duration": "30s"}
    async with start_proxy(make_config(web(stable, canary, 0, rollout=plan))) as proxy:
        async with load(proxy.url):

            async def ejected() -> bool:
                return proxy.proxy.services.get("web").knobs.is_ejected

            await until(ejected, within=30)
        _, rollout = await admin(proxy, "GET", "/rollout")
        assert rollout["state"] == "aborted"
        assert rollout["step"] == 0  # it never left the first step
        assert rollout["reason"].startswith("ejected (")
        _, state = await admin(proxy, "GET", "")
        assert state["ejected"] is True
        assert state["eject_rule"] in ("comparative", "backstop")
        assert await metric(proxy, 'canaryproxy_rollout_state{service="web",state="aborted"}') == 1
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{proxy.admin_url}/admin/audit?limit=1", headers=AUTH) as resp,
        ):
            (row,) = (await resp.json())["audit"]
        assert row["action"] == f"eject:{state['eject_rule']}"
        assert (row["who"], row["service"]) == ("canaryproxy", "web")
        assert rollout["reason"] == f"ejected ({state['eject_rule']}): {row['new']}"
        assert row["evidence"]["canary"]["errors"] > 0  # the numbers it rested on
        assert row["time"].endswith("Z")


async def test_the_outcome_header_is_counted_and_never_reaches_the_client(
    pools: tuple[Backend, Backend],
) -> None:
    stable, canary = pools
    canary.mark_failure_every = 4
    outcomes = {"header": "X-Canary-Outcome", "failure_statuses": [429]}
    patient = {**BUDGET, "alpha": 1e-9, "max_error_rate": 1.0}  # count, don't eject
    extra = {"outcomes": outcomes, "error_budget": patient, "override_header": "X-Canary"}
    config = make_config(web(stable, canary, 50, **extra))
    async with start_proxy(config) as proxy:
        async with aiohttp.ClientSession() as session:
            for _ in range(200):
                async with session.get(proxy.url + "/") as resp:
                    assert "X-Canary-Outcome" not in resp.headers
                    assert resp.status == 200  # the client's answer is untouched otherwise
                    session.cookie_jar.clear()
            for _ in range(3):  # a listed status, through the canary (override header)
                url = proxy.url + "/status/429"
                async with session.get(url, headers={"X-Canary": "always"}) as resp:
                    assert resp.status == 429
        assert canary.marked > 10
        header = 'canaryproxy_outcomes_total{outcome="failure_header",pool="canary",service="web"}'
        status = 'canaryproxy_outcomes_total{outcome="failure_status",pool="canary",service="web"}'
        assert await metric(proxy, header) == canary.marked
        assert await metric(proxy, status) == 3
        _, state = await admin(proxy, "GET", "")
        # judged as errors; the override header's 429s are QA's: counted, never judged
        assert state["window"]["canary"]["errors"] == canary.marked
        assert state["window"]["stable"]["errors"] == 0


@pytest.mark.parametrize("both", [False, True], ids=["canary-slower", "both-slower"])
async def test_a_slower_canary_is_ejected_by_latency_but_a_shared_slowdown_is_not(
    pools: tuple[Backend, Backend], both: bool
) -> None:
    stable, canary = pools
    canary.delay = 0.3
    stable.delay = 0.3 if both else 0.0
    config = make_config(web(stable, canary, 30, outcomes={"slow": "150ms"}))
    async with start_proxy(config) as proxy:
        async with load(proxy.url, connections=32) as statuses:

            async def decided() -> bool:
                return proxy.proxy.services.get("web").knobs.is_ejected or len(statuses) >= 600

            await until(decided, within=60)
        _, state = await admin(proxy, "GET", "")
        slow = 'canaryproxy_outcomes_total{outcome="slow",pool="canary",service="web"}'
        assert await metric(proxy, slow) > 0
        if both:
            assert state["ejected"] is False
            assert state["verdict"] == "shared_degradation"
            assert state["evidence"]["slow"]["stable_slow_guard_active"] is True
        else:
            assert state["ejected"] is True
            assert state["eject_rule"] == "latency"
            assert "slow responses" in state["eject_reason"]


async def test_an_operator_weight_pauses_the_plan_and_resume_returns_to_the_step(
    pools: tuple[Backend, Backend],
) -> None:
    stable, canary = pools
    async with start_proxy(make_config(web(stable, canary, 0))) as proxy:
        status, started = await admin(proxy, "POST", "/rollout/start", {"steps": [5, 20, 60]})
        assert status == 200
        assert (started["state"], started["weight"]) == ("progressing", 5.0)
        assert started["waiting_for"][0].endswith("more at this step")  # 5m by default
        status, _ = await admin(proxy, "PUT", "/weight", {"canary": 40})
        assert status == 200
        _, paused = await admin(proxy, "GET", "/rollout")
        assert paused["state"] == "paused"
        assert "set the weight to 40" in paused["reason"]
        status, resumed = await admin(proxy, "POST", "/rollout/resume")
        assert (status, resumed["state"]) == (200, "progressing")
        _, state = await admin(proxy, "GET", "")
        assert (state["canary_weight"], state["weight_source"]) == (5.0, "rollout")
        status, promoted = await admin(proxy, "POST", "/rollout/promote")
        assert (status, promoted["step"], promoted["weight"]) == (200, 1, 20.0)
        status, aborted = await admin(proxy, "POST", "/rollout/abort", {"reason": "saw a bug"})
        assert (status, aborted["state"]) == (200, "aborted")
        _, state = await admin(proxy, "GET", "")
        assert (state["ejected"], state["eject_rule"], state["eject_reason"]) == (
            True,
            "rollout",
            "saw a bug",
        )


async def test_bad_rollout_calls_are_refused_and_change_nothing(
    pools: tuple[Backend, Backend],
) -> None:
    stable, canary = pools
    api = service([stable.url], match={"path_prefix": "/api"})
    services = {**web(stable, canary, 5), "api": api}
    async with start_proxy(make_config(services)) as proxy:
        cases: list[tuple[str, str, Any, int, str]] = [
            ("POST", "/rollout/pause", None, 409, "not progressing"),
            ("POST", "/rollout/promote", None, 409, "no step to promote"),
            ("POST", "/rollout/abort", None, 409, "nothing to abort"),
            ("POST", "/rollout/start", {"steps": [50, 10]}, 400, "must increase"),
            ("POST", "/rollout/start", {"steps": []}, 400, "steps"),
            ("POST", "/rollout/start", {"steps": [5], "x": 1}, 400, "unknown key x"),
            ("POST", "/rollout/pause", {"steps": [5]}, 400, "unknown key steps"),
        ]
        for verb, path, body, code, words in cases:
            status, answer = await admin(proxy, verb, path, body)
            assert status == code, (path, body, answer)
            assert words in answer["error"]
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{proxy.admin_url}/admin/services/api/rollout/start", headers=AUTH
            ) as resp,
        ):
            assert resp.status == 409
            assert "no canary pool" in (await resp.json())["error"]
        _, plan = await admin(proxy, "GET", "/rollout")
        assert plan["state"] == "idle"
        _, state = await admin(proxy, "GET", "")
        assert (state["canary_weight"], state["weight_source"]) == (5.0, "config")


async def test_a_restart_mid_plan_resumes_the_same_step(
    pools: tuple[Backend, Backend], tmp_path: Path
) -> None:
    stable, canary = pools
    state_path = tmp_path / "state.db"
    path = canary_config(tmp_path, "rollout", stable, canary, 0, state={"path": str(state_path)})
    proc = await asyncio.to_thread(ProxyProcess(path).start)
    async with aiohttp.ClientSession() as session:
        client = ProxyClient(proc, session)
        try:
            assert (await client.change("POST", "/rollout/start", {}))[0] == 200
            status, plan = await client.change("POST", "/rollout/promote", {})
            assert (status, plan["step"], plan["weight"]) == (200, 1, 10.0)
            await asyncio.sleep(1.5)
        finally:
            proc.kill()  # SIGKILL: nothing gets to save on the way out
        proc = await asyncio.to_thread(ProxyProcess(path).start)
        client = ProxyClient(proc, session)
        try:
            async with session.get(f"{client.admin}/admin/services/web/rollout",
                                   headers=PROCESS_AUTH) as resp:  # fmt: skip
                plan = await resp.json()
            assert (plan["state"], plan["step"], plan["weight"]) == ("progressing", 1, 10.0)
            assert plan["steps"] == [5.0, 10.0, 25.0, 50.0, 100.0]
            assert plan["step_seconds"] >= 1.5  # the step's clock went on
            assert plan["gate"] is not None  # the judge gathers the step's evidence again
            state = await client.state()
            assert (state["canary_weight"], state["weight_source"]) == (10.0, "rollout")
            statuses = await client.get(100)
            assert statuses == [200] * 100
        finally:
            assert await client.stop() == 0

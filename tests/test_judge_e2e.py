"""The canary's judgement and backend health through real sockets (README "The error budget")."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from canaryproxy.state.store import SqliteStateStore
from tests.support import (
    Backend,
    RunningProxy,
    make_config,
    service,
    start_proxy,
    user_session,
)

BUDGET = {"min_requests": 50, "window": "30s"}


def web(stable: Backend, canary: Backend, weight: float, **extra: Any) -> dict[str, Any]:
    extra.setdefault("error_budget", BUDGET)
    return {"web": service([stable.url], [canary.url], canary_weight=weight, **extra)}


def user() -> aiohttp.ClientSession:
    return user_session()


async def traffic(proxy: RunningProxy, requests: int, users: int = 40) -> list[str]:
    """Requests from `users` cookie-keeping users; returns the backend name of each answer."""
    sessions = [user() for _ in range(users)]
    names: list[str] = []
    try:
        for i in range(requests):
            async with sessions[i % users].get(proxy.url + "/") as resp:
                if resp.status == 200:
                    names.append((await resp.json())["backend"])
                else:
                    names.append(f"status-{resp.status}")
    finally:
        for s in sessions:
            await s.close()
    return names


async def test_failing_canary_is_ejected_and_gets_no_more_traffic(
    pools: tuple[Backend, Backend],
) -> None:
    stable, canary = pools
    canary.fail_rate_every = 5  # 20 % of canary requests fail
    config = make_config(web(stable, canary, 20))
    async with start_proxy(config) as proxy:
        holders = [user() for _ in range(30)]  # users who will hold canary cookies
        try:
            for h in holders:
                async with h.get(proxy.url + "/") as resp:
                    await resp.read()
            for _ in range(40):
                if proxy.proxy.services.get("web").knobs.is_ejected:
                    break
                await traffic(proxy, 100)
            state = proxy.proxy.controller.service_state("web")
            assert state["ejected"] is True
            assert state["verdict"] == "ejected"
            assert state["eject_rule"] in ("comparative", "backstop")
            before = canary.count
            await traffic(proxy, 300)
            for h in holders:  # cookie holders too
                async with h.get(proxy.url + "/") as resp:
                    assert (await resp.json())["backend"] == "stable"
            assert canary.count == before
        finally:
            for h in holders:
                await h.close()


async def test_healthy_canary_beside_a_failing_stable_is_not_ejected(
    pools: tuple[Backend, Backend],
) -> None:
    stable, canary = pools
    stable.fail_rate_every = 3  # stable fails 33 %: a shared dependency, not the canary
    config = make_config(web(stable, canary, 20))
    async with start_proxy(config) as proxy:
        await traffic(proxy, 1200)
        state = proxy.proxy.controller.service_state("web")
    assert state["ejected"] is False
    assert state["verdict"] == "shared_degradation"


async def test_ejection_survives_restart_and_restore_brings_traffic_back(
    pools: tuple[Backend, Backend], tmp_path: Path
) -> None:
    stable, canary = pools
    config = make_config(web(stable, canary, 20))
    db = str(tmp_path / "state.db")
    async with start_proxy(config, store=SqliteStateStore(db)) as proxy:
        await proxy.proxy.controller.eject("web", "bad build", "test")
    async with start_proxy(config, store=SqliteStateStore(db)) as proxy:
        state = proxy.proxy.controller.service_state("web")
        assert (state["ejected"], state["eject_reason"]) == (True, "bad build")
        assert set(await traffic(proxy, 100)) == {"stable"}
        await proxy.proxy.controller.restore("web", 50, "test")
        names = await traffic(proxy, 400, users=400)
    share = names.count("canary") / len(names)
    assert 0.35 < share < 0.65, share


async def test_a_backend_failing_health_checks_leaves_and_returns() -> None:
    a, b = await Backend("a").start(), await Backend("b").start()
    check = {"path": "/healthz", "interval": "100ms", "timeout": "50ms", "rise": 2, "fall": 2}
    config = make_config({"web": service([a.url, b.url], health_check=check)})
    try:
        async with start_proxy(config) as proxy:
            a.health_status = 503
            await asyncio.sleep(0.6)
            assert set(await traffic(proxy, 20)) == {"b"}
            state = proxy.proxy.controller.service_state("web")
            backends: Any = state["backends"]
            assert [x["healthy"] for x in backends] == [False, True]
            a.health_status = 200
            await asyncio.sleep(0.6)
            assert set(await traffic(proxy, 20)) == {"a", "b"}
    finally:
        await a.stop()
        await b.stop()


async def test_a_pool_with_every_backend_down_is_served_by_the_other(
    pools: tuple[Backend, Backend],
) -> None:
    stable, canary = pools
    check = {"path": "/healthz", "interval": "100ms", "timeout": "50ms", "rise": 1, "fall": 1}
    config = make_config(web(stable, canary, 100, health_check=check))
    async with start_proxy(config) as proxy:
        canary.health_status = 503
        await asyncio.sleep(0.5)
        assert set(await traffic(proxy, 30)) == {"stable"}
        state = proxy.proxy.controller.service_state("web")
    # Users routed to the canary were served by stable and the canary was charged for each
    # of them, until those charges burned its budget: then it was ejected like any failure.
    fallbacks = state["fallbacks"]["canary->stable"]  # type: ignore[index]
    assert fallbacks > 0
    assert state["window"]["canary"]["errors"] == fallbacks  # type: ignore[index]
    assert state["ejected"] is True


async def test_a_backend_going_down_warns_and_coming_back_informs(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    health = {"path": "/healthz", "interval": "100ms", "timeout": "80ms", "rise": 1, "fall": 1}
    config = make_config({"web": service([backend.url], health_check=health)})
    caplog.set_level(logging.INFO, logger="canaryproxy.health")
    async with start_proxy(config) as proxy:
        backend.health_status = 503
        await asyncio.sleep(0.5)
        backend.health_status = 200
        await asyncio.sleep(0.5)
        assert proxy.proxy.services.get("web").routing.stable.backends[0].is_routable(0.0)
    flips = [(r.getMessage(), r.levelno) for r in caplog.records if r.name == "canaryproxy.health"]
    assert flips[:2] == [("backend down", logging.WARNING), ("backend up", logging.INFO)]

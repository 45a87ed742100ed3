"""Two real instances sharing one real ``redis-server`` (no fakes), in front of real
backends (the README's "Running several instances")."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support import Backend, ProxyClient, ProxyProcess, RedisServer, canary_config, until


@pytest.fixture
def shared(redis_server: RedisServer) -> RedisServer:
    if redis_server.proc is None:
        redis_server.start()
    redis_server.client().flushall()
    return redis_server


class Instance(ProxyClient):
    async def store_up(self) -> float:
        return (await self.metrics())[("canaryproxy_state_store_up", ())]


def write_config(
    tmp: Path, name: str, url: str, stable: Backend, canary: Backend, workers: int = 1
) -> Path:
    state = {"redis": url, "instance": name}
    return canary_config(tmp, name, stable, canary, 20, workers=workers, state=state)


@pytest.fixture
async def pair(
    tmp_path: Path, shared: RedisServer, pools: tuple[Backend, Backend]
) -> AsyncIterator[tuple[Instance, Instance]]:
    stable, canary = pools
    procs = [
        await asyncio.to_thread(
            ProxyProcess(write_config(tmp_path, name, shared.url, stable, canary)).start
        )
        for name in ("a", "b")
    ]
    session = aiohttp.ClientSession()
    yield Instance(procs[0], session), Instance(procs[1], session)
    await session.close()
    for proc in procs:
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0


def audit(server: RedisServer) -> list[dict[str, Any]]:
    entries: Any = server.client().xrange("canaryproxy:audit")
    return [json.loads(fields["entry"]) for _, fields in entries]


async def test_a_weight_set_on_one_instance_reaches_the_other_within_a_second(
    pair: tuple[Instance, Instance],
) -> None:
    a, b = pair
    status, _ = await a.change("PUT", "/weight", {"canary": 35})
    assert status == 200

    async def b_has_it() -> bool:
        return bool((await b.state())["canary_weight"] == 35)

    assert await until(b_has_it, within=1.0) < 1.0
    assert (await b.state())["weight_source"] == "admin"


async def test_an_ejection_on_one_instance_stops_the_canary_on_the_other(
    pair: tuple[Instance, Instance], pools: tuple[Backend, Backend], shared: RedisServer
) -> None:
    a, b = pair
    _, canary = pools
    status, _ = await b.change("POST", "/eject", {"reason": "bad build"})
    assert status == 200

    async def a_ejected() -> bool:
        return bool((await a.state())["ejected"])

    assert await until(a_ejected, within=1.0) < 1.0
    seen = len(canary.seen)
    assert await a.get(100) == [200] * 100
    assert len(canary.seen) == seen
    state_a, state_b = await a.state(), await b.state()
    assert state_a["epoch"] == state_b["epoch"] == 1  # one shared epoch for the cookies
    assert [e["action"] for e in audit(shared)].count("eject:manual") == 1


async def test_a_canary_failing_on_traffic_split_over_both_is_ejected_once(
    pair: tuple[Instance, Instance], pools: tuple[Backend, Backend], shared: RedisServer
) -> None:
    a, b = pair
    _, canary = pools
    canary.fail_rate_every = 3
    for _ in range(40):
        await asyncio.gather(a.get(50), b.get(50))
        if (await a.state())["ejected"] and (await b.state())["ejected"]:
            break
    assert (await a.state())["ejected"]
    assert (await b.state())["ejected"]
    await asyncio.sleep(0.3)  # a second writer, if any, would have written by now
    ejections = [e for e in audit(shared) if e["action"].startswith("eject:")]
    assert len(ejections) == 1, ejections
    assert ejections[0]["action"] == "eject:comparative"
    # The judge saw both instances' traffic: more canary requests than either one sent.
    counts = (await a.state())["evidence"]["canary"]["requests_since_reset"]
    assert counts > 0


async def test_redis_away_fail_static_then_written_back_when_it_returns(
    pair: tuple[Instance, Instance], shared: RedisServer, pools: tuple[Backend, Backend]
) -> None:
    a, b = pair
    _, canary = pools
    shared.stop()
    assert await a.get(20) == [200] * 20  # fail-static: still serving
    status, body = await a.change("PUT", "/weight", {"canary": 50})
    assert (status, body) == (503, {"error": "state store unavailable"})
    assert (await a.state())["canary_weight"] == 20  # nothing changed

    async def down() -> bool:
        return await a.store_up() == 0 and await b.store_up() == 0

    await until(down, within=5.0)
    # B's judge still ejects on what B sees (safety first); A does not know yet.
    canary.fail_rate_every = 2
    for _ in range(40):
        await b.get(50)
        if (await b.state())["ejected"]:
            break
    assert (await b.state())["ejected"]
    assert not (await a.state())["ejected"]
    shared.start()  # empty: it lost every record

    async def a_follows() -> bool:
        return bool((await a.state())["ejected"]) and await a.store_up() == 1

    await until(a_follows, within=10.0)  # B wrote its ejection back; A read it
    stored = json.loads(shared.client().hget("canaryproxy:services", "web") or "{}")
    assert stored["record"]["ejected"]
    assert (await a.state())["epoch"] == (await b.state())["epoch"]
    assert (await a.change("POST", "/restore", {"canary": 10}))[0] == 200

    async def b_restored() -> bool:
        state = await b.state()
        return not state["ejected"] and state["canary_weight"] == 10

    await until(b_restored, within=1.0)


async def test_an_instance_with_workers_follows_and_pools_through_its_supervisor(
    tmp_path: Path, shared: RedisServer, pools: tuple[Backend, Backend]
) -> None:
    """Workers and instances together: the supervisor speaks to Redis for its workers."""
    stable, canary = pools
    path_a = write_config(tmp_path, "a", shared.url, stable, canary, workers=2)
    path_b = write_config(tmp_path, "b", shared.url, stable, canary)
    procs = [await asyncio.to_thread(ProxyProcess(p).start) for p in (path_a, path_b)]
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
    a, b = Instance(procs[0], session), Instance(procs[1], session)
    try:
        assert (await b.change("PUT", "/weight", {"canary": 100}))[0] == 200

        async def a_workers_follow() -> bool:
            canary.seen.clear()
            await a.get(20)
            return len(canary.seen) == 20

        await until(a_workers_follow, within=2.0)
        canary.fail_rate_every = 2  # half the canary's answers fail; stable is fine
        assert (await b.change("PUT", "/weight", {"canary": 20}))[0] == 200
        await asyncio.sleep(0.6)
        for _ in range(40):
            await asyncio.gather(a.get(50), b.get(50))
            if (await b.state())["ejected"]:
                break
        assert (await b.state())["ejected"]
        await asyncio.sleep(0.5)
        seen = len(canary.seen)
        assert await a.get(100) == [200] * 100
        assert len(canary.seen) == seen  # a's workers stopped routing to it
        assert [e["action"] for e in audit(shared)].count("eject:comparative") == 1
    finally:
        await session.close()
        for proc in procs:
            assert proc.proc is not None
            proc.proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(proc.wait, 30) == 0


async def test_a_rollout_started_on_one_instance_is_walked_once_by_both(
    tmp_path: Path, shared: RedisServer, pools: tuple[Backend, Backend]
) -> None:
    stable, canary = pools
    plan = {"rollout": {"steps": [20, 60, 100], "min_step_duration": "1s", "min_step_requests": 20}}
    paths = [
        canary_config(
            tmp_path,
            name,
            stable,
            canary,
            0,
            web=plan,
            state={"redis": shared.url, "instance": name},
        )
        for name in ("a", "b")
    ]
    procs = [await asyncio.to_thread(ProxyProcess(p).start) for p in paths]
    async with aiohttp.ClientSession() as session:
        a, b = Instance(procs[0], session), Instance(procs[1], session)
        try:
            status, started = await a.change("POST", "/rollout/start", {})
            assert (status, started["weight"]) == (200, 20.0)

            async def b_follows() -> bool:
                return bool((await b.state())["canary_weight"] == 20)

            assert await until(b_follows, within=1.0) < 1.0

            async def completed() -> bool:
                await asyncio.gather(a.get(40), b.get(40))
                state = (await b.state(), await a.state())
                return all(s["canary_weight"] == 100 for s in state)

            await until(completed, within=30)
        finally:
            for client in (a, b):
                assert await client.stop() == 0
    actions = [e["action"] for e in audit(shared) if e["action"].startswith("rollout:")]
    # each move written once, by whichever instance decided it first
    assert actions == ["rollout:start", "rollout:promote", "rollout:complete"]

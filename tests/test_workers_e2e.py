"""``workers: 2``: a real supervisor and two real worker processes in front of real
backends, driven over HTTP (the README's "Running several instances")."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from tests.support import Backend, ProxyClient, ProxyProcess, canary_config, until


class Workers(ProxyClient):
    def pids(self) -> list[int]:
        assert self.proc.proc is not None
        pid = self.proc.proc.pid
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]

    async def requests_total(self) -> float:
        values = await self.metrics()
        return sum(v for (name, _), v in values.items() if name == "canaryproxy_requests_total")

    async def sum_is(self, expected: float) -> bool:
        return await self.requests_total() == expected

    async def value_is(self, key: tuple[str, tuple[tuple[str, str], ...]], value: float) -> bool:
        return (await self.metrics()).get(key) == value


@pytest.fixture
async def start(
    tmp_path: Path, pools: tuple[Backend, Backend]
) -> AsyncIterator[Callable[[float], Awaitable[Workers]]]:
    """Start ``workers: 2`` at a canary weight; stopped (and checked to exit 0) after."""
    started: list[Workers] = []
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))

    async def run(weight: float) -> Workers:
        state = {"path": str(tmp_path / "state.db")}
        path = canary_config(tmp_path, "proxy", *pools, weight, workers=2, state=state)
        proc = await asyncio.to_thread(ProxyProcess(path).start)
        started.append(Workers(proc, session))
        return started[-1]

    yield run
    for proxy in started:
        assert await proxy.stop() == 0
    await session.close()


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


async def test_two_workers_count_every_request_exactly(
    start: Callable[[float], Awaitable[Workers]], pools: tuple[Backend, Backend]
) -> None:
    stable, _ = pools
    proxy = await start(0)
    pids = proxy.pids()
    assert len(pids) == 2
    assert (await proxy.metrics())[("canaryproxy_workers", ())] == 2
    before = [cpu_ticks(p) for p in pids]
    assert await proxy.get(1200) == [200] * 1200
    # Within a flush or two the supervisor's sum is exact: not more, not less.
    await until(lambda: proxy.sum_is(1200), within=5.0)
    assert len(stable.seen) == 1200
    after = [cpu_ticks(p) for p in pids]
    assert all(a > b for a, b in zip(after, before, strict=True)), (before, after)  # both served


async def test_a_failing_canary_is_ejected_once_and_every_worker_follows(
    start: Callable[[float], Awaitable[Workers]], pools: tuple[Backend, Backend]
) -> None:
    _, canary = pools
    canary.fail_rate_every = 3  # a third of its answers are 500
    proxy = await start(20)
    for _ in range(40):
        await proxy.get(100)
        if (await proxy.state())["ejected"]:
            break
    state = await proxy.state()
    assert state["ejected"], state["window"]
    assert state["eject_rule"] == "comparative"
    await asyncio.sleep(0.5)
    seen = len(canary.seen)
    assert await proxy.get(400) == [200] * 400
    assert len(canary.seen) == seen  # no worker routes to the ejected canary
    values = await proxy.metrics()
    ejections = sum(v for (name, _), v in values.items() if name == "canaryproxy_ejections_total")
    assert ejections == 1
    assert await proxy.stop() == 0  # its whole log, then
    assert [e["msg"] for e in proxy.proc.rest_of_log()].count("canary ejected") == 1


async def test_a_killed_worker_is_replaced_and_keeps_the_admin_state(
    start: Callable[[float], Awaitable[Workers]], pools: tuple[Backend, Backend]
) -> None:
    _, canary = pools
    proxy = await start(0)
    assert (await proxy.change("PUT", "/weight", {"canary": 100}))[0] == 200
    await proxy.get(200)
    await until(lambda: proxy.sum_is(200), within=5.0)
    victim = proxy.pids()[0]
    os.kill(victim, signal.SIGKILL)

    async def replaced() -> bool:
        pids = proxy.pids()
        return len(pids) == 2 and victim not in pids

    assert await until(replaced, within=1.5) < 1.5  # started again within a second or so
    await until(lambda: proxy.value_is(("canaryproxy_workers", ()), 2), within=5.0)
    canary.seen.clear()
    assert await proxy.get(200) == [200] * 200
    assert len(canary.seen) == 200  # the new worker took weight 100 too
    assert (await proxy.state())["canary_weight"] == 100
    # The killed worker's reported counts stay in the sum.
    await until(lambda: proxy.sum_is(400), within=5.0)


async def test_sighup_reloads_every_worker_or_none(
    start: Callable[[float], Awaitable[Workers]], pools: tuple[Backend, Backend]
) -> None:
    stable, canary = pools
    proxy = await start(0)
    path = proxy.proc.config_path
    good = path.read_text()
    path.write_text(good.replace('"canary_weight": 0', '"canary_weight": 100') + "bogus: 1\n")
    assert proxy.proc.proc is not None
    proxy.proc.proc.send_signal(signal.SIGHUP)
    failed = ("canaryproxy_config_reloads_total", (("result", "failed"),))
    await until(lambda: proxy.value_is(failed, 1), within=5.0)
    await proxy.get(200)
    assert not canary.seen  # no worker took the bad file's weight
    path.write_text(good.replace('"canary_weight": 0', '"canary_weight": 100'))
    pids = proxy.pids()
    proxy.proc.proc.send_signal(signal.SIGHUP)
    ok = ("canaryproxy_config_reloads_total", (("result", "ok"),))
    await until(lambda: proxy.value_is(ok, 1), within=5.0)
    await asyncio.sleep(0.3)
    stable.seen.clear()
    await proxy.get(200)
    assert len(canary.seen) == 200  # every worker took the good one
    assert proxy.pids() == pids  # reloaded in place, not restarted


async def test_the_supervisor_walks_a_plan_on_its_workers_counts(
    tmp_path: Path, pools: tuple[Backend, Backend]
) -> None:
    """A rollout with workers: the supervisor's judge gathers the step's evidence from the
    workers' flushes, promotes, and every worker serves the new weight."""
    stable, canary = pools
    plan = {"rollout": {"steps": [20, 100], "min_step_duration": "1s", "min_step_requests": 30}}
    path = canary_config(
        tmp_path, "plan", stable, canary, 0, web=plan, workers=2,
        state={"path": str(tmp_path / "state.db")},
    )  # fmt: skip
    proc = await asyncio.to_thread(ProxyProcess(path).start)
    new_users = aiohttp.DummyCookieJar()  # in session mode a stable pin would stay on stable
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector, cookie_jar=new_users) as s:
        proxy = Workers(proc, s)
        try:
            status, started = await proxy.change("POST", "/rollout/start", {})
            assert (status, started["weight"]) == (200, 20.0)

            async def completed() -> bool:
                await proxy.get(60)
                return bool((await proxy.state())["canary_weight"] == 100)

            await until(completed, within=20)
            await asyncio.sleep(0.5)  # every worker has the new weight within 500 ms
            seen = len(stable.seen)
            assert await proxy.get(200) == [200] * 200
            assert len(stable.seen) == seen  # every worker sends every new user to the canary
            key = ("canaryproxy_rollout_state", (("service", "web"), ("state", "completed")))
            assert (await proxy.metrics())[key] == 1
        finally:
            assert await proxy.stop() == 0

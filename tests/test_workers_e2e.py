"""``workers: 2``: a real supervisor and two real worker processes in front of real
backends, driven over HTTP (the README's "Running several instances")."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support import LOCAL, Backend, ProxyProcess

TOKEN = "workers-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def write_config(tmp: Path, stable: Backend, canary: Backend, weight: float) -> Path:
    config = {
        "listen": f"{LOCAL}:0",
        "admin": {"listen": f"{LOCAL}:0", "token": TOKEN},
        "workers": 2,
        "state": {"path": str(tmp / "state.db")},
        "sticky": {"secrets": ["workers-secret"]},
        "access_log": "off",
        "limits": {"drain_timeout": "3s"},
        "services": {
            "web": {
                "stable": {"backends": [{"url": stable.url}]},
                "canary": {"backends": [{"url": canary.url}]},
                "canary_weight": weight,
            }
        },
    }
    path = tmp / "canaryproxy.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class Running:
    def __init__(self, proc: ProxyProcess, session: aiohttp.ClientSession) -> None:
        self.proc = proc
        self.session = session
        self.base = f"http://{LOCAL}:{proc.proxy_port}"
        self.admin = f"http://{LOCAL}:{proc.admin_port}"

    async def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        async with self.session.get(f"{self.admin}/metrics") as resp:
            text = await resp.text()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    async def requests_total(self) -> float:
        values = await self.metrics()
        return sum(v for (name, _), v in values.items() if name == "canaryproxy_requests_total")

    async def state(self) -> dict[str, Any]:
        async with self.session.get(f"{self.admin}/admin/services/web", headers=AUTH) as resp:
            assert resp.status == 200
            result: dict[str, Any] = await resp.json()
            return result

    async def get(self, n: int, connections: int = 16) -> list[int]:
        """``n`` requests over ``connections`` fresh connections at a time."""
        statuses: list[int] = []

        async def one() -> None:
            headers = {"Connection": "close"}
            async with self.session.get(f"{self.base}/", headers=headers) as resp:
                await resp.read()
                statuses.append(resp.status)

        for start in range(0, n, connections):
            await asyncio.gather(*(one() for _ in range(min(connections, n - start))))
        return statuses

    def worker_pids(self) -> list[int]:
        assert self.proc.proc is not None
        children = Path(f"/proc/{self.proc.proc.pid}/task/{self.proc.proc.pid}/children")
        return [int(p) for p in children.read_text().split()]


@pytest.fixture
async def backends() -> AsyncIterator[tuple[Backend, Backend]]:
    stable, canary = await Backend("stable").start(), await Backend("canary").start()
    yield stable, canary
    await stable.stop()
    await canary.stop()


async def run(path: Path) -> Running:
    proc = await asyncio.to_thread(ProxyProcess(path).start)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
    return Running(proc, session)


async def finish(r: Running) -> int:
    await r.session.close()
    assert r.proc.proc is not None
    r.proc.proc.send_signal(signal.SIGTERM)
    return await asyncio.to_thread(r.proc.wait, 30)


async def eventually(check: Any, within: float = 5.0) -> Any:
    deadline = time.monotonic() + within
    while True:
        value = await check()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.05)


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


async def test_two_workers_count_every_request_exactly(
    tmp_path: Path, backends: tuple[Backend, Backend]
) -> None:
    stable, canary = backends
    r = await run(write_config(tmp_path, stable, canary, 0))
    try:
        pids = r.worker_pids()
        assert len(pids) == 2
        values = await r.metrics()
        assert values[("canaryproxy_workers", ())] == 2
        before = [cpu_ticks(p) for p in pids]
        statuses = await r.get(1200)
        assert statuses == [200] * 1200
        # Within a flush or two the supervisor's sum is exact: not more, not less.
        total = await eventually(lambda: _equals(r.requests_total(), 1200))
        assert total, await r.requests_total()
        assert len(stable.seen) == 1200
        after = [cpu_ticks(p) for p in pids]
        assert all(a > b for a, b in zip(after, before, strict=True)), (before, after)
    finally:
        assert await finish(r) == 0


async def _equals(value: Any, expected: float) -> bool:
    return bool(await value == expected)


async def test_a_failing_canary_is_ejected_once_and_every_worker_follows(
    tmp_path: Path, backends: tuple[Backend, Backend]
) -> None:
    stable, canary = backends
    canary.fail_rate_every = 3  # a third of its answers are 500
    r = await run(write_config(tmp_path, stable, canary, 20))
    try:
        for _ in range(40):
            await r.get(100)
            if (await r.state())["ejected"]:
                break
        state = await r.state()
        assert state["ejected"], state["window"]
        assert state["eject_rule"] == "comparative"
        await asyncio.sleep(0.5)
        seen = len(canary.seen)
        assert await r.get(400) == [200] * 400
        assert len(canary.seen) == seen  # no worker routes to the ejected canary
        values = await r.metrics()
        ejections = sum(
            v for (name, _), v in values.items() if name == "canaryproxy_ejections_total"
        )
        assert ejections == 1
    finally:
        assert await finish(r) == 0
    log = r.proc.rest_of_log()
    assert [e["msg"] for e in log].count("canary ejected") == 1


async def test_a_killed_worker_is_replaced_and_keeps_the_admin_state(
    tmp_path: Path, backends: tuple[Backend, Backend]
) -> None:
    stable, canary = backends
    r = await run(write_config(tmp_path, stable, canary, 0))
    try:
        async with r.session.put(
            f"{r.admin}/admin/services/web/weight", json={"canary": 100}, headers=AUTH
        ) as resp:
            assert resp.status == 200
        await r.get(200)
        served = await eventually(lambda: _equals(r.requests_total(), 200))
        assert served
        victim = r.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        started = time.monotonic()
        pids = await eventually(lambda: _two_new(r, victim), within=5)
        assert pids, r.worker_pids()
        assert time.monotonic() - started < 3
        values = await eventually(lambda: _workers_are(r, 2))
        assert values
        stable.seen.clear()
        canary.seen.clear()
        assert await r.get(200) == [200] * 200
        assert len(canary.seen) == 200  # the new worker took weight 100 too
        assert (await r.state())["canary_weight"] == 100
        # The killed worker's reported counts stay in the sum.
        assert await eventually(lambda: _equals(r.requests_total(), 400))
    finally:
        assert await finish(r) == 0


async def _two_new(r: Running, victim: int) -> bool:
    pids = r.worker_pids()
    return len(pids) == 2 and victim not in pids


async def _workers_are(r: Running, n: int) -> bool:
    return (await r.metrics())[("canaryproxy_workers", ())] == n


async def test_sighup_reloads_every_worker_or_none(
    tmp_path: Path, backends: tuple[Backend, Backend]
) -> None:
    stable, canary = backends
    path = write_config(tmp_path, stable, canary, 0)
    r = await run(path)
    try:
        good = path.read_text()
        path.write_text(good.replace("canary_weight: 0", "canary_weight: 100") + "bogus: 1\n")
        assert r.proc.proc is not None
        r.proc.proc.send_signal(signal.SIGHUP)
        failed = ("canaryproxy_config_reloads_total", (("result", "failed"),))
        assert await eventually(lambda: _value_is(r, failed, 1))
        await r.get(200)
        assert not canary.seen  # no worker took the bad file's weight
        path.write_text(good.replace("canary_weight: 0", "canary_weight: 100"))
        r.proc.proc.send_signal(signal.SIGHUP)
        ok = ("canaryproxy_config_reloads_total", (("result", "ok"),))
        assert await eventually(lambda: _value_is(r, ok, 1))
        await asyncio.sleep(0.3)
        stable.seen.clear()
        await r.get(200)
        assert len(canary.seen) == 200  # every worker took the good one
        assert r.worker_pids()  # reloaded in place, not restarted
    finally:
        assert await finish(r) == 0


async def _value_is(r: Running, key: Any, value: float) -> bool:
    return (await r.metrics()).get(key) == value

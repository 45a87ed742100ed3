"""The only code that sleeps: active health checks and the once-a-second tick (gauges, and
rollout steps that have earned their promotion).

Each loop is a task owned by ``Loops``, which cancels and awaits them on shutdown or reload.
Probes use aiohttp off the request path; a probe's result goes through the pure
``ActiveCheck`` (rise/fall); a flip is logged and shown in ``canaryproxy_backend_healthy``.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Iterable

import aiohttp

from canaryproxy.config.load import HealthCheckConfig
from canaryproxy.decide.director import BackendRuntime
from canaryproxy.decide.health import ActiveCheck, is_check_success, next_check_delay
from canaryproxy.runtime.service import Service

log = logging.getLogger("canaryproxy.health")


class Loops:
    def __init__(
        self,
        tick: Callable[[], None],
        rng: random.Random,
        advance: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.tick = tick
        self.advance = advance
        self.rng = rng
        self.tasks: list[asyncio.Task[None]] = []
        self.session: aiohttp.ClientSession | None = None

    async def start(self, services: Iterable[Service]) -> None:
        if self.session is None:
            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True), auto_decompress=False
            )
        loop = asyncio.get_running_loop()
        self.tasks.append(loop.create_task(self._tick_loop()))
        for service in services:
            hc = service.config.health_check
            if hc is None:
                continue
            for backend in service.routing.all_backends():
                if backend.health is not None and backend.health.check is not None:
                    task = self._probe_loop(service.name, backend, backend.health.check, hc)
                    self.tasks.append(loop.create_task(task))

    async def stop(self) -> None:
        tasks, self.tasks = self.tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def close(self) -> None:
        await self.stop()
        if self.session is not None:
            await self.session.close()
            self.session = None

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                self.tick()
                if self.advance is not None:
                    await self.advance()
            except Exception:
                log.exception("tick failed")

    async def _probe_loop(
        self, service: str, backend: BackendRuntime, check: ActiveCheck, hc: HealthCheckConfig
    ) -> None:
        interval, timeout = hc.interval, hc.timeout
        url = f"http://{backend.address}{hc.path}"  # an IPv6 literal in brackets
        await asyncio.sleep(self.rng.random() * min(interval, 1.0))  # spread the first probes
        while True:
            ok, detail = await self._probe(url, timeout)
            if check.observe(ok, detail):
                # Down is worth a warning; back up is good news (nginx and HAProxy agree).
                level = logging.INFO if check.is_healthy else logging.WARNING
                log.log(
                    level,
                    f"backend {'up' if check.is_healthy else 'down'}",
                    extra={
                        "service": service,
                        "pool": backend.pool,
                        "backend": backend.url,
                        "detail": detail,
                    },
                )
                self.tick()
            await asyncio.sleep(next_check_delay(interval, self.rng.random))

    async def _probe(self, url: str, limit: float) -> tuple[bool, str]:
        assert self.session is not None
        try:
            async with self.session.get(
                url, timeout=aiohttp.ClientTimeout(total=limit), allow_redirects=False
            ) as resp:
                await resp.read()
                return is_check_success(resp.status), f"status {resp.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return False, f"{type(exc).__name__}: {exc}"

"""``canaryproxy demo``: the whole product on one machine, in one process.

What runs, all on 127.0.0.1:

- a stable backend answering ``v1.0`` (5–20 ms) and a canary backend answering ``v1.1``
  (8–30 ms) that fails ``failure_rate`` of its requests with a 500; stable fails 1 % too,
  as real servers do, so the comparative test has something to compare against;
- the real proxy (``app.Proxy``) and its admin listener, on 8080 and 9901 (the example config's
  example ports) or, when either is taken, on ports the system picks; a generated admin
  token and cookie secret; its state file in a temp dir removed at exit;
- 200 simulated users, 60 requests/s in all, each keeping its own sticky cookie;
- a ramp 5 → 10 → 25 → 50 % through the admin API over HTTP, as an operator's script would
  drive it; it stops at the 409 the API answers once the canary is ejected;
- a view of STATE polled from the admin API: live with rich on a terminal, else plain lines
  (a status line a second, ``RAMP: …``, ``EJECTED: <reason>``, a closing ``traffic:`` line).

Why these settings: ``sticky.mode: cohort`` pins each user's bucket, so raising the weight
moves more of this fixed crowd to the canary (in ``session`` mode only new users would
move). The comparative test is quick: with the default ``alpha`` a 20 %-failing canary
rarely outlives its first seconds at 5 %, and the ramp would never show. ``alpha: 1e-8`` and
60 requests/s make it want more evidence: in 600 runs simulated with the real judge and the
default ramp, the canary was ejected after 5–22 s, at 10 or 25 % in 98 % of them; with
``--ramp-seconds 1``, never before 2 s. The backstop (``min_requests: 100``, 10 %) bounds
the time whatever the luck.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import secrets
import signal
import tempfile
from collections import Counter
from collections.abc import Coroutine
from contextlib import AsyncExitStack
from typing import Any, Protocol

import aiohttp
from aiohttp import web
from rich.console import Console
from rich.live import Live

from canaryproxy.app import Proxy
from canaryproxy.config.load import Config, parse_config
from canaryproxy.demo.view import (
    SERVICE,
    RateMeter,
    State,
    ejection_line,
    render,
    request_totals,
    status_line,
)
from canaryproxy.outcomes.accesslog import AccessLog
from canaryproxy.state.store import SqliteStateStore

__all__ = ["demo_config", "run_demo"]

RAMP = (5.0, 10.0, 25.0, 50.0)
STABLE_FAILURE_RATE = 0.01
USERS = 200
REQUESTS_PER_SECOND = 60.0
MAX_IN_FLIGHT = 64  # past this, a slow proxy makes the generator skip rather than pile up
PATHS = ("/", "/products", "/cart", "/search?q=boots", "/api/items/42")
PREFERRED_PORTS = (8080, 9901)
LOCAL = "127.0.0.1"


BANNER = """\
canaryproxy demo: stable v1.0, canary v1.1 failing {failure:.0%} of requests
  proxy    {proxy}/
  admin    {admin}
  metrics  {admin}/metrics
  token    {token}
  state    {state} (removed at exit)
try:
  curl -s {auth} {service}
  curl -s -X POST {auth} {json} -d '{{"canary": 5}}' {service}/restore"""
DRIVE = """
  curl -s -X PUT {auth} {json} -d '{{"canary": 25}}' {service}/weight
  curl -si {proxy}/"""


# -- backends ---------------------------------------------------------------------------------
async def start_backend(
    version: str, failure_rate: float, latency: tuple[float, float], rng: random.Random
) -> tuple[web.AppRunner, str]:
    """An app server of one version: every path answers after a simulated latency."""

    async def serve(request: web.Request) -> web.Response:
        await asyncio.sleep(rng.uniform(*latency))
        status = 500 if rng.random() < failure_rate else 200
        return web.Response(status=status, text=f"{version}\n", headers={"X-Version": version})

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_route("*", "/{tail:.*}", serve)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, LOCAL, 0)
    await site.start()
    server: Any = site._server  # aiohttp keeps the bound server here
    return runner, f"http://{LOCAL}:{server.sockets[0].getsockname()[1]}"


# -- the proxy --------------------------------------------------------------------------------
def demo_config(
    stable_url: str, canary_url: str, ports: tuple[int, int], token: str, secret: str, state: str
) -> Config:
    """The demo's proxy config, through the same parser as a user's file."""
    budget = {"alpha": 1e-8, "window": "20s", "min_requests": 100, "max_error_rate": 0.10}
    service = {
        "stable": {"backends": [{"url": stable_url}]},
        "canary": {"backends": [{"url": canary_url}]},
        "canary_weight": RAMP[0],
        "timeouts": {"connect": "1s", "response": "5s"},
        "health_check": {"path": "/healthz", "interval": "1s", "timeout": "500ms"},
        "error_budget": budget,
    }
    data = {
        "listen": f"{LOCAL}:{ports[0]}",
        "admin": {"listen": f"{LOCAL}:{ports[1]}", "token": token},
        "state": {"path": state},
        "sticky": {"secrets": [secret], "mode": "cohort"},
        "limits": {"drain_timeout": "2s"},
        "services": {SERVICE: service},
    }
    return parse_config(data, env={})


async def start_proxy(stable_url: str, canary_url: str, token: str, tmp: str) -> Proxy:
    """The proxy on the preferred ports, or on ephemeral ones when those are taken."""
    secret = secrets.token_urlsafe(32)
    for attempt, ports in enumerate((PREFERRED_PORTS, (0, 0))):
        state = os.path.join(tmp, f"state-{attempt}.db")
        config = demo_config(stable_url, canary_url, ports, token, secret, state)
        proxy = Proxy(config, store=SqliteStateStore(state), access_log=AccessLog(None))
        try:
            await proxy.start()
        except OSError:
            await proxy.stop()
            if ports == (0, 0):
                raise
        else:
            return proxy
    raise AssertionError("unreachable: the last attempt returns or raises")


def banner(proxy: str, admin: str, token: str, state: str, failure: float, drive: bool) -> str:
    """What runs where, the token, and curl lines to poke at it (more with ``--no-traffic``)."""
    auth = f"-H 'Authorization: Bearer {token}'"
    json = "-H 'Content-Type: application/json'"
    service = f"{admin}/admin/services/{SERVICE}"
    return (BANNER + (DRIVE if drive else "")).format(
        proxy=proxy, admin=admin, token=token, state=state, failure=failure, auth=auth,
        json=json, service=service,
    )  # fmt: skip


# -- traffic and ramp -------------------------------------------------------------------------
class Traffic:
    """Simulated users at a bounded total rate; each keeps its own sticky cookie, as a browser."""

    def __init__(self, url: str, cookie: str, rng: random.Random) -> None:
        self.url = url
        self.cookie = cookie
        self.rng = rng
        self.cookies: list[str | None] = [None] * USERS
        self.versions: list[str | None] = [None] * USERS  # what each user saw last
        self.answered: Counter[str] = Counter()  # by X-Version; "proxy" when the proxy answered
        self.failed: Counter[str] = Counter()  # 5xx by the same key; "no answer" too
        self.tasks: set[asyncio.Task[None]] = set()

    def users(self) -> dict[str, int]:
        seen = Counter(self.versions)
        return {"stable": seen["v1.0"], "canary": seen["v1.1"]}

    async def run(self) -> None:
        connector = aiohttp.TCPConnector(limit=MAX_IN_FLIGHT)
        jar = aiohttp.DummyCookieJar()  # each user keeps its own cookie, in self.cookies
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(connector=connector, cookie_jar=jar, timeout=timeout) as s:
            try:
                await self._generate(s)
            finally:
                for task in self.tasks:
                    task.cancel()
                await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _generate(self, session: aiohttp.ClientSession) -> None:
        """REQUESTS_PER_SECOND on average, each from a user drawn at random."""
        loop = asyncio.get_running_loop()
        start, scheduled = loop.time(), 0
        while True:
            due = int((loop.time() - start) * REQUESTS_PER_SECOND)
            for _ in range(max(0, min(due - scheduled, MAX_IN_FLIGHT - len(self.tasks)))):
                task = loop.create_task(self._request(session, self.rng.randrange(USERS)))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
            scheduled = due
            await asyncio.sleep(0.01)

    async def _request(self, session: aiohttp.ClientSession, user: int) -> None:
        cookie = self.cookies[user]
        headers = {"Cookie": f"{self.cookie}={cookie}"} if cookie else {}
        try:
            async with session.get(self.url + self.rng.choice(PATHS), headers=headers) as resp:
                await resp.read()
        except (aiohttp.ClientError, TimeoutError):
            self.failed["no answer"] += 1
            return
        morsel = resp.cookies.get(self.cookie)
        if morsel is not None:
            self.cookies[user] = morsel.coded_value
        version = resp.headers.get("X-Version", "proxy")
        self.versions[user] = version
        self.answered[version] += 1
        if resp.status >= 500:
            self.failed[version] += 1

    def summary(self) -> str:
        answered = ", ".join(
            f"{version} {n} ({self.failed[version]} 5xx)"
            for version, n in sorted(self.answered.items())
        )
        total = sum(self.answered.values())
        return f"traffic: {total} answered: {answered}; no answer: {self.failed['no answer']}"


class Admin:
    """The admin API over HTTP, with the token: what an operator's script would do."""

    def __init__(self, session: aiohttp.ClientSession, admin_url: str, token: str) -> None:
        self.session = session
        self.url = f"{admin_url}/admin/services/{SERVICE}"
        self.headers = {"Authorization": f"Bearer {token}"}

    async def state(self) -> State:
        async with self.session.get(self.url, headers=self.headers) as resp:
            resp.raise_for_status()
            state: State = await resp.json()
            return state

    async def set_weight(self, weight: float) -> int:
        body = {"canary": weight}
        async with self.session.put(f"{self.url}/weight", json=body, headers=self.headers) as r:
            return r.status


class WeightSetter(Protocol):
    async def set_weight(self, weight: float) -> int: ...


async def ramp(admin: WeightSetter, seconds: float, events: list[str]) -> None:
    """5 → 10 → 25 → 50 %, one step every ``seconds``, until the API says the canary is out."""
    for before, after in itertools.pairwise(RAMP):
        await asyncio.sleep(seconds)
        status = await admin.set_weight(after)
        if status == 409:  # the canary is ejected: an operator's ramp stops here too
            events.append(f"RAMP: stopped at {before:g} %, the canary is ejected")
            return
        events.append(f"RAMP: canary weight {before:g} → {after:g} % (admin API: {status})")


# -- running it -------------------------------------------------------------------------------
class Watch:
    """Polls STATE and shows it: live with rich, or as plain lines."""

    def __init__(self, admin: Admin, traffic: Traffic | None, events: list[str]) -> None:
        self.admin = admin
        self.traffic = traffic
        self.events = events
        self.meter = RateMeter()
        self.loop = asyncio.get_running_loop()
        self.start = self.loop.time()

    async def poll(self) -> tuple[State, dict[str, float], dict[str, int]]:
        state = await self.admin.state()
        rates = self.meter.update(request_totals(state), self.loop.time())
        return state, rates, {} if self.traffic is None else self.traffic.users()

    async def plain(self) -> None:
        printed, was_ejected = 0, False
        while True:
            state, rates, users = await self.poll()
            for event in self.events[printed:]:
                print(event, flush=True)
            printed = len(self.events)
            print(status_line(state, rates, users, self.loop.time() - self.start), flush=True)
            ejection = ejection_line(state)
            if ejection is not None and not was_ejected:
                print(ejection, flush=True)
            elif ejection is None and was_ejected:
                print(f"RESTORED: canary weight {state['canary_weight']:g} %", flush=True)
            was_ejected = ejection is not None
            await asyncio.sleep(1.0)

    async def live(self, console: Console) -> None:
        with Live(console=console, refresh_per_second=4) as live:
            while True:
                live.update(render(*await self.poll(), self.events))
                await asyncio.sleep(0.5)


async def run_until_stopped(jobs: list[Coroutine[Any, Any, None]], duration: float | None) -> None:
    """Run ``jobs`` until ``duration`` passes, SIGINT/SIGTERM, or one of them fails."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(job) for job in jobs]

    def stop_if_failed(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            stop.set()

    for task in tasks:
        task.add_done_callback(stop_if_failed)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await asyncio.wait_for(stop.wait(), duration)
    except TimeoutError:
        pass
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        if isinstance(result, Exception):
            raise result


async def start_all(
    stack: AsyncExitStack, failure_rate: float, token: str, tmp: str, rng: random.Random
) -> Proxy:
    """Both backends, then the proxy in front of them; ``stack`` stops them in reverse."""
    urls = []
    for version, rate, latency in (
        ("v1.0", STABLE_FAILURE_RATE, (0.005, 0.020)),
        ("v1.1", failure_rate, (0.008, 0.030)),
    ):
        runner, url = await start_backend(version, rate, latency, rng)
        stack.push_async_callback(runner.cleanup)
        urls.append(url)
    proxy = await start_proxy(urls[0], urls[1], token, tmp)
    stack.push_async_callback(proxy.stop)
    return proxy


async def run_demo(
    duration: float | None, failure_rate: float, ramp_seconds: float, no_traffic: bool
) -> int:
    rng, token = random.Random(), secrets.token_urlsafe(18)
    with tempfile.TemporaryDirectory(prefix="canaryproxy-demo-") as tmp:
        async with AsyncExitStack() as stack:
            proxy = await start_all(stack, failure_rate, token, tmp, rng)
            proxy_url = f"http://{LOCAL}:{proxy.proxy_address[1]}"
            admin_url = f"http://{LOCAL}:{proxy.admin_address[1]}"
            state = proxy.config.state.path
            print(banner(proxy_url, admin_url, token, state, failure_rate, no_traffic), flush=True)
            traffic = None if no_traffic else Traffic(proxy_url, proxy.config.sticky.cookie, rng)
            session = await stack.enter_async_context(aiohttp.ClientSession())
            admin, events = Admin(session, admin_url, token), list[str]()
            watch, console = Watch(admin, traffic, events), Console()
            jobs = [watch.live(console) if console.is_terminal else watch.plain()]
            if traffic is not None:
                jobs += [traffic.run(), ramp(admin, ramp_seconds, events)]
            await run_until_stopped(jobs, duration)
            if traffic is not None:
                print(traffic.summary(), flush=True)
    return 0

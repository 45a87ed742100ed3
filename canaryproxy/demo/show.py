"""``canaryproxy demo``: the whole product on one machine, in one process.

What runs, all on 127.0.0.1:

- a stable backend answering ``v1.0`` (5–20 ms) and a canary backend answering ``v1.1``
  (8–30 ms) with a bug that shows only under load: once it serves more than ``LOAD_LIMIT``
  requests a second (about a fifth of the traffic) it fails ``failure_rate`` of its
  requests with a 500 (``--bug errors``) or answers 300 ms late (``--bug latency``);
- the real proxy (``app.Proxy``) and its admin listener, on 8080 and 9901 (the example config's
  example ports) or, when either is taken, on ports the system picks; ``--listen`` and
  ``--admin`` choose them instead (port 0: one the system picks); a generated admin
  token and cookie secret; its state file in a temp dir removed at exit;
- 1,000 simulated users, 100 requests/s in all, each keeping its own sticky cookie;
- the service's rollout plan 5 → 10 → 25 → 50 → 100 %, started by the proxy itself
  (``auto_start``), each step at least ``--ramp-seconds`` long: the proxy promotes 5 and
  10 % on their evidence, and at 25 % the canary's load crosses its limit, it fails, the
  judge ejects it and the plan is aborted;
- a view of STATE and of the plan polled from the admin API: live with rich on a terminal,
  else plain lines (a status line a second, ``ROLLOUT …`` at every move of the plan with
  its reason, ``EJECTED: <reason>``, a closing ``traffic:`` line).

Why these settings: ``sticky.mode: cohort`` pins each user's bucket, so raising the weight
moves more of this fixed crowd to the canary (in ``session`` mode only new users would
move). Both versions answer without errors below the canary's limit, so each of the first
steps is quiet and passes on its time and requests alone (the README's "Rollouts": with
real error rates in both pools the gate needs hundreds of failures, more than a minute of
demo traffic). The canary's load at 10 % (about 10 requests/s) is far enough under the
limit (17/s, measured over 3 s) that a random burst rarely trips it, and at 25 % (about 25/s)
far enough over that it trips within a second or two. The crowd is large so that the users
``cohort`` mode puts in the canary are its weight's share within a percent or two (with
200 users, a 25 % step could land near 19 % and pass before the load tripped the bug),
and a step lasts at least 5 s so that the 3 s load window fills within it. The comparative
test then ejects it within a few failures (or slow answers: ``outcomes.slow`` is 150 ms).
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import signal
import tempfile
from collections import Counter, deque
from collections.abc import Coroutine
from contextlib import AsyncExitStack
from typing import Any, Literal

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
    rollout_events,
    status_line,
)
from canaryproxy.outcomes.accesslog import AccessLog
from canaryproxy.state.store import SqliteStateStore
from canaryproxy.vocabulary import hostport

__all__ = ["demo_config", "run_demo"]

STEPS = (5.0, 10.0, 25.0, 50.0, 100.0)
USERS = 1000  # many: the canary's share of them, and so its load, is close to its weight
REQUESTS_PER_SECOND = 100.0
LOAD_LIMIT = 17.0  # requests/s at the canary past which its bug shows
LOAD_SPAN = 3.0  # seconds over which the canary measures its load
BUG_DELAY = 0.3  # seconds the canary's latency bug adds
MAX_IN_FLIGHT = 64  # past this, a slow proxy makes the generator skip rather than pile up
PATHS = ("/", "/products", "/cart", "/search?q=boots", "/api/items/42")
LOCAL = "127.0.0.1"
PREFERRED = (f"{LOCAL}:8080", f"{LOCAL}:9901")  # the proxy's and the admin listener's
EPHEMERAL = f"{LOCAL}:0"
# The proxy's and the admin listener's addresses from --listen and --admin; None: not given.
Given = tuple[str | None, str | None]
NOT_GIVEN: Given = (None, None)


BANNER = """\
canaryproxy demo: stable v1.0, canary v1.1 {bug} once it serves over {limit:g} requests/s
  proxy    {proxy}/
  admin    {admin}
  metrics  {admin}/metrics
  token    {token}
  state    {state} (removed at exit)
try:
  curl -s {auth} {service}
  curl -s {auth} {service}/rollout
  curl -s -X POST {auth} {json} -d '{{"canary": 5}}' {service}/restore"""
DRIVE = """
  curl -s -X PUT {auth} {json} -d '{{"canary": 25}}' {service}/weight
  curl -s -X POST {auth} {service}/rollout/promote
  curl -si {proxy}/"""


# -- backends ---------------------------------------------------------------------------------
Bug = Literal["errors", "latency"]


class Load:
    """Requests per second over the last ``span`` seconds, as a server would watch it."""

    def __init__(self, span: float) -> None:
        self.span = span
        self.hits: deque[float] = deque()

    def hit(self, now: float) -> float:
        hits = self.hits
        hits.append(now)
        while hits[0] < now - self.span:
            hits.popleft()
        return len(hits) / self.span


async def start_backend(
    version: str,
    latency: tuple[float, float],
    rng: random.Random,
    bug: tuple[Bug, float] | None = None,
    port: int = 0,
    always: bool = False,
) -> tuple[web.AppRunner, str]:
    """An app server of one version: every path answers after a simulated latency. With a
    ``bug`` (its kind, and the failure rate of ``errors``) it misbehaves past LOAD_LIMIT, or
    ``always``."""
    load, loop = Load(LOAD_SPAN), asyncio.get_running_loop()

    async def serve(request: web.Request) -> web.Response:
        loaded = load.hit(loop.time()) > LOAD_LIMIT or always
        delay = rng.uniform(*latency)
        status = 200
        if bug is not None and loaded:
            kind, rate = bug
            if kind == "latency":
                delay += BUG_DELAY
            elif rng.random() < rate:
                status = 500
        await asyncio.sleep(delay)
        return web.Response(status=status, text=f"{version}\n", headers={"X-Version": version})

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_route("*", "/{tail:.*}", serve)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, LOCAL, port)
    await site.start()
    server: Any = site._server  # aiohttp keeps the bound server here
    return runner, f"http://{LOCAL}:{server.sockets[0].getsockname()[1]}"


# -- the proxy --------------------------------------------------------------------------------
def demo_config(
    stable_url: str,
    canary_url: str,
    listen: tuple[str, str],
    token: str,
    secret: str,
    state: str,
    step_seconds: float = 8.0,
) -> Config:
    """The demo's proxy config, through the same parser as a user's file."""
    budget = {"window": "20s", "min_requests": 100, "max_error_rate": 0.10}
    plan = {
        "steps": list(STEPS),
        "min_step_duration": step_seconds,
        "min_step_requests": 20,
        "auto_start": True,
    }
    service = {
        "stable": {"backends": [{"url": stable_url}]},
        "canary": {"backends": [{"url": canary_url}]},
        "canary_weight": 0,
        "rollout": plan,
        "outcomes": {"slow": "150ms"},
        "timeouts": {"connect": "1s", "response": "5s"},
        "health_check": {"path": "/healthz", "interval": "1s", "timeout": "500ms"},
        "error_budget": budget,
    }
    data = {
        "listen": listen[0],
        # the simulated users arrive as through a load balancer on this machine, each with
        # its own address in X-Forwarded-For: the judge weighs one address as one user
        "trusted_proxies": ["127.0.0.0/8", "::1/128"],
        "admin": {"listen": listen[1], "token": token},
        "state": {"path": state},
        "sticky": {"secrets": [secret], "mode": "cohort"},
        "limits": {"drain_timeout": "2s"},
        "services": {SERVICE: service},
    }
    return parse_config(data, env={})


class PortTaken(Exception):
    """An address given with ``--listen`` or ``--admin`` could not be bound."""


def listen_attempts(given: Given) -> list[tuple[str, str]]:
    """Where to try: a given address as it is; one not given at its preferred port, then at
    one the system picks."""
    listen, admin = given
    first = (listen or PREFERRED[0], admin or PREFERRED[1])
    second = (listen or EPHEMERAL, admin or EPHEMERAL)
    return [first] if first == second else [first, second]


async def start_proxy(
    stable_url: str,
    canary_url: str,
    token: str,
    tmp: str,
    step_seconds: float,
    given: Given = NOT_GIVEN,
) -> Proxy:
    """The proxy where ``listen_attempts`` says: the first pair that binds."""
    secret = secrets.token_urlsafe(32)
    attempts = listen_attempts(given)
    for attempt, addresses in enumerate(attempts):
        state = os.path.join(tmp, f"state-{attempt}.db")
        config = demo_config(stable_url, canary_url, addresses, token, secret, state, step_seconds)
        proxy = Proxy(config, store=SqliteStateStore(state), access_log=AccessLog(None))
        try:
            await proxy.start()
        except OSError as exc:
            await proxy.stop()
            if attempt == len(attempts) - 1:
                named = [a for a in given if a is not None] or list(addresses)
                raise PortTaken(f"cannot listen on {' or '.join(named)}: {exc}") from exc
        else:
            return proxy
    raise AssertionError("unreachable: the last attempt returns or raises")


def url_of(address: tuple[str, int]) -> str:
    """Where a client on this machine reaches a bound address (a wildcard through loopback)."""
    host, port = address
    return f"http://{hostport(LOCAL if host in ('', '0.0.0.0', '::') else host, port)}"


def bug_text(bug: Bug, failure: float) -> str:
    return f"answering {BUG_DELAY * 1000:.0f} ms late" if bug == "latency" else (
        f"failing {failure:.0%} of requests"
    )  # fmt: skip


def banner(proxy: str, admin: str, token: str, state: str, bug: str, drive: bool) -> str:
    """What runs where, the token, and curl lines to poke at it (more with ``--no-traffic``)."""
    auth = f"-H 'Authorization: Bearer {token}'"
    json = "-H 'Content-Type: application/json'"
    service = f"{admin}/admin/services/{SERVICE}"
    return (BANNER + (DRIVE if drive else "")).format(
        proxy=proxy, admin=admin, token=token, state=state, bug=bug, limit=LOAD_LIMIT,
        auth=auth, json=json, service=service,
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
        headers = {"X-Forwarded-For": f"10.0.{user // 250}.{user % 250 + 1}"}
        if cookie:
            headers["Cookie"] = f"{self.cookie}={cookie}"
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

    async def rollout(self) -> State:
        async with self.session.get(f"{self.url}/rollout", headers=self.headers) as resp:
            resp.raise_for_status()
            plan: State = await resp.json()
            return plan


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
        self.plan: State | None = None

    async def poll(self) -> tuple[State, dict[str, float], dict[str, int]]:
        state, plan = await self.admin.state(), await self.admin.rollout()
        self.events += rollout_events(self.plan, plan)
        self.plan = plan
        rates = self.meter.update(request_totals(state), self.loop.time())
        return state, rates, {} if self.traffic is None else self.traffic.users()

    async def plain(self) -> None:
        printed, was_ejected = 0, False
        while True:
            state, rates, users = await self.poll()
            for event in self.events[printed:]:
                print(event, flush=True)
            printed = len(self.events)
            elapsed = self.loop.time() - self.start
            print(status_line(state, rates, users, elapsed, self.plan), flush=True)
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
                live.update(render(*await self.poll(), self.events, self.plan))
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
    stack: AsyncExitStack,
    bug: tuple[Bug, float],
    step_seconds: float,
    token: str,
    tmp: str,
    rng: random.Random,
    given: Given = NOT_GIVEN,
) -> Proxy:
    """Both backends, then the proxy in front of them; ``stack`` stops them in reverse."""
    urls = []
    for version, latency, its_bug in (
        ("v1.0", (0.005, 0.020), None),
        ("v1.1", (0.008, 0.030), bug),
    ):
        runner, url = await start_backend(version, latency, rng, its_bug)
        stack.push_async_callback(runner.cleanup)
        urls.append(url)
    proxy = await start_proxy(urls[0], urls[1], token, tmp, step_seconds, given)
    stack.push_async_callback(proxy.stop)
    return proxy


async def run_demo(
    duration: float | None,
    failure_rate: float,
    ramp_seconds: float,
    no_traffic: bool,
    bug: Bug = "errors",
    given: Given = NOT_GIVEN,
) -> int:
    rng, token = random.Random(), secrets.token_urlsafe(18)
    with tempfile.TemporaryDirectory(prefix="canaryproxy-demo-") as tmp:
        async with AsyncExitStack() as stack:
            bugs = (bug, failure_rate)
            proxy = await start_all(stack, bugs, ramp_seconds, token, tmp, rng, given)
            proxy_url, admin_url = url_of(proxy.proxy_address), url_of(proxy.admin_address)
            state = proxy.config.state.path
            what = bug_text(bug, failure_rate)
            print(banner(proxy_url, admin_url, token, state, what, no_traffic), flush=True)
            traffic = None if no_traffic else Traffic(proxy_url, proxy.config.sticky.cookie, rng)
            session = await stack.enter_async_context(aiohttp.ClientSession())
            admin, events = Admin(session, admin_url, token), list[str]()
            watch, console = Watch(admin, traffic, events), Console()
            jobs = [watch.live(console) if console.is_terminal else watch.plain()]
            if traffic is not None:
                jobs.append(traffic.run())
            await run_until_stopped(jobs, duration)
            if traffic is not None:
                print(traffic.summary(), flush=True)
    return 0

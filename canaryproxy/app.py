"""Build the proxy from a config, with its clock, randomness, registry and store; run it.

The composition root: the only place that knows every module.  ``Proxy`` owns the
listeners, the loops, the runtime state and the metrics; ``serve`` adds signals:
SIGTERM/SIGINT drain and stop, SIGHUP reloads the config file (a bad file is refused and
the running config stays).
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from canaryproxy.accesslog import AccessLog
from canaryproxy.admin import build_admin_app, set_token
from canaryproxy.budget import BudgetParams, Judge
from canaryproxy.config import Config, ConfigError, ServiceConfig, load_config
from canaryproxy.controller import Controller
from canaryproxy.director import Director, ServiceRuntime
from canaryproxy.health import ActiveCheck, BackendHealth, OutlierDetector
from canaryproxy.hub import Hub
from canaryproxy.loops import Loops
from canaryproxy.metrics import Metrics, ServiceSpec
from canaryproxy.server import ProxyContext, ProxyServer
from canaryproxy.state import RuntimeState
from canaryproxy.sticky import CookieCodec
from canaryproxy.store import SqliteStateStore, StateStore
from canaryproxy.upstream import BackendPool

log = logging.getLogger("canaryproxy")


@dataclass
class Clocks:
    """Time and randomness, passed in so tests can drive them."""

    wall: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    rng: random.Random = field(default_factory=random.Random)


class Proxy:
    def __init__(
        self,
        config: Config,
        *,
        config_path: str | None = None,
        store: StateStore | None = None,
        clocks: Clocks | None = None,
        access_log: AccessLog | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.clocks = clocks or Clocks()
        self.loop = asyncio.get_running_loop()
        self.registry = CollectorRegistry()
        self.metrics = Metrics(self.registry, _metric_specs(config), config.metrics.buckets)
        self.store = store or SqliteStateStore(config.state.path)
        weights = {name: s.canary_weight for name, s in config.services.items()}
        self.state = RuntimeState(self.store, weights, self.clocks.wall)
        self.secrets = config.sticky.secrets or (secrets.token_urlsafe(32),)
        if not config.sticky.secrets:
            log.warning("sticky.secrets not set: using a random secret; cookies end at restart")
        self.judges: dict[str, Judge] = {}
        # (service, pool, url) → (its health_check and outlier settings, its health)
        self.healths: dict[tuple[str, str, str], tuple[tuple[object, object], BackendHealth]] = {}
        self.pools: dict[str, BackendPool] = {}
        self.owns_access_log = access_log is None
        self.access_log = access_log or AccessLog(open_access_log(config.access_log))
        self.hub = Hub(
            self.metrics, self.state, self.judges, self.access_log, self.clocks.monotonic
        )
        self.director = self._build_director(config)
        self.ctx = ProxyContext(
            self.loop, self.director, self.pools, config.limits, config.trusted_proxies, self.hub
        )
        self.server = ProxyServer(self.ctx)
        self.controller = Controller(
            lambda: self.director,
            self.state,
            self.judges,
            self.metrics,
            self.hub,
            self.clocks.monotonic,
        )
        self.loops = Loops(self.tick, self.clocks.rng)
        self.admin_runner: web.AppRunner | None = None
        self._reload_lock = asyncio.Lock()
        self.proxy_address: tuple[str, int] = ("", 0)
        self.admin_address: tuple[str, int] = ("", 0)

    # building --------------------------------------------------------------------------------
    def _build_director(self, config: Config) -> Director:
        services = [self._build_service(s, config) for s in config.services.values()]
        for name in list(self.judges):
            if name not in config.services:
                del self.judges[name]
        return Director(
            services, self.hub, self.clocks.wall, self.clocks.monotonic, self.clocks.rng.random
        )

    def _build_service(self, sc: ServiceConfig, config: Config) -> ServiceRuntime:
        sticky = config.sticky
        codec = None
        if sc.canary is not None:
            codec = CookieCodec(
                name=sticky.cookie,
                secrets=self.secrets,
                max_age=sticky.max_age,
                secure=sticky.secure,
                same_site=sticky.same_site,
                salt=sc.name,
            )
        runtime = ServiceRuntime(sc, self.state.get(sc.name), codec, sticky.mode)
        for backend in runtime.all_backends():
            backend.health = self._health(sc, (sc.name, backend.pool, backend.url))
            if backend.key not in self.pools:
                self.pools[backend.key] = BackendPool(self.loop, backend.host, backend.port)
        if sc.canary is not None:
            self._ensure_judge(sc)
        else:
            self.judges.pop(sc.name, None)
        return runtime

    def _health(self, sc: ServiceConfig, key: tuple[str, str, str]) -> BackendHealth:
        """A backend's health, kept across reloads unless its settings changed."""
        settings = (sc.health_check, sc.outlier_detection)
        known = self.healths.get(key)
        if known is not None and known[0] == settings:
            return known[1]
        hc, od = settings
        health = BackendHealth(
            ActiveCheck(hc.rise, hc.fall) if hc else None,
            OutlierDetector(od.consecutive_failures, od.base_ejection_time, od.max_ejection_time),
        )
        self.healths[key] = (settings, health)
        return health

    def _ensure_judge(self, sc: ServiceConfig) -> None:
        """The service's judge; a new one (judging afresh) when its error budget changed."""
        params = BudgetParams.from_config(sc.error_budget)
        judge = self.judges.get(sc.name)
        if judge is not None and judge.params == params:
            return
        judge = Judge(params, self.clocks.monotonic())
        state = self.state.get(sc.name)
        if state.is_ejected:
            judge.mark_ejected(state.eject_rule or "manual", state.eject_reason or "")
        self.judges[sc.name] = judge

    # running ---------------------------------------------------------------------------------
    async def start(self) -> None:
        cfg = self.config
        self.proxy_address = await self.server.start(cfg.listen.host, cfg.listen.port)
        log.info("listening", extra={"listener": "proxy", "address": _fmt(self.proxy_address)})
        admin_app = build_admin_app(self.controller, self.metrics, cfg.admin.token)
        self.admin_runner = web.AppRunner(admin_app, access_log=None, handle_signals=False)
        await self.admin_runner.setup()
        site = web.TCPSite(self.admin_runner, cfg.admin.listen.host, cfg.admin.listen.port)
        await site.start()
        server: Any = site._server  # aiohttp keeps the bound server here; uvloop's type
        sockname = server.sockets[0].getsockname()
        self.admin_address = (str(sockname[0]), int(sockname[1]))
        log.info("listening", extra={"listener": "admin", "address": _fmt(self.admin_address)})
        if cfg.admin.token is None:
            log.warning("admin.token not set: /admin routes answer 403")
        self.tick()
        await self.loops.start(list(self.director.services.values()))

    async def stop(self) -> None:
        """Drain (SPEC: finish in-flight requests within the grace period), flush, close."""
        await self.server.drain(self.config.limits.drain_timeout)
        await self.loops.close()
        if self.admin_runner is not None:
            await self.admin_runner.cleanup()
        await self.state.flush()
        self.access_log.flush()
        stream = self.access_log.stream
        if self.owns_access_log and stream is not None and stream not in (sys.stdout, sys.stderr):
            stream.close()
        self.store.close()

    def _swap_access_log(self, stream: IO[str] | None) -> None:
        """SIGHUP reopens the access log (a moved file is recreated: logrotate's way)."""
        old = self.access_log.stream
        self.access_log.flush()
        self.access_log.stream = stream
        if old is not None and old not in (sys.stdout, sys.stderr):
            old.close()

    def tick(self) -> None:
        """Refresh gauges that follow from time passing (health cool-offs, verdicts)."""
        now = self.clocks.monotonic()
        for service in self.director.services.values():
            state = self.state.get(service.name)
            self.metrics.set_weight(service.name, state.effective_weight if service.canary else 0)
            self.metrics.set_ejected(service.name, state.is_ejected)
            judge = self.judges.get(service.name)
            verdict = (
                "ejected"
                if state.is_ejected
                else (judge.verdict(now) if judge else "insufficient_samples")
            )
            self.metrics.set_verdict(service.name, verdict)
            for b in service.all_backends():
                self.metrics.set_backend_healthy(service.name, b.pool, b.url, b.is_routable(now))

    async def reload(self) -> bool:
        """SIGHUP: swap in a new config; a bad one is refused and the running one stays.

        Everything that can fail (parsing, opening the access log) happens before anything
        changes; reloads run one at a time.
        """
        async with self._reload_lock:
            return await self._reload()

    async def _reload(self) -> bool:
        assert self.config_path is not None
        try:
            config = load_config(self.config_path)
            stream = open_access_log(config.access_log) if self.owns_access_log else None
        except ConfigError as exc:
            return self._refuse_reload(exc.errors)
        except OSError as exc:
            return self._refuse_reload([f"access_log: cannot open {config.access_log}: {exc}"])
        self.metrics.update_services(_metric_specs(config))
        await self.state.flush()  # an ejection being persisted must not be read back stale
        self.state.load({name: s.canary_weight for name, s in config.services.items()})
        if self.owns_access_log:
            self._swap_access_log(stream)
        self.config = config
        if config.sticky.secrets:  # rotation by SIGHUP: new cookies signed with the new first
            self.secrets = config.sticky.secrets
        if self.admin_runner is not None:
            set_token(self.admin_runner.app, config.admin.token)
        self.director = self._build_director(config)
        self.ctx.director = self.director
        self.ctx.limits = config.limits
        self.ctx.trusted_proxies = tuple(config.trusted_proxies)
        await self.loops.stop()
        await self.loops.start(list(self.director.services.values()))
        self.tick()
        self.metrics.reload(True)
        log.info("config reloaded", extra={"services": list(config.services)})
        return True

    def _refuse_reload(self, errors: list[str]) -> bool:
        self.metrics.reload(False)
        log.error("config reload refused", extra={"errors": errors})
        return False


async def serve(config: Config, config_path: str | None) -> int:
    proxy = Proxy(config, config_path=config_path)
    stop = asyncio.Event()
    started = asyncio.Event()
    loop = asyncio.get_running_loop()
    reloads: set[asyncio.Task[bool]] = set()

    async def reload_when_started() -> bool:
        await started.wait()
        try:
            return await proxy.reload()
        except Exception:
            log.exception("config reload failed")
            return False

    def on_hup() -> None:
        task = loop.create_task(reload_when_started())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    # Installed before the listeners bind: a signal right after the "listening" line must
    # not find the default disposition (which would kill the process).
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    await proxy.start()
    started.set()
    await stop.wait()
    log.info("draining", extra={"grace_seconds": proxy.config.limits.drain_timeout})
    for task in list(reloads):
        task.cancel()
    await proxy.stop()
    log.info("stopped")
    return 0


def open_access_log(where: str) -> IO[str] | None:
    """The access log's stream: stdout, stderr, off (None) or a file opened for appending."""
    if where == "off":
        return None
    if where in ("stdout", "-"):
        return sys.stdout
    if where == "stderr":
        return sys.stderr
    return open(where, "a", encoding="utf-8", buffering=1 << 16)


def _metric_specs(config: Config) -> list[ServiceSpec]:
    specs: list[ServiceSpec] = []
    for name, sc in config.services.items():
        backends = [("stable", b.url) for b in sc.stable.backends]
        if sc.canary is not None:
            backends += [("canary", b.url) for b in sc.canary.backends]
        specs.append((name, backends))
    return specs


def _fmt(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

"""Build the proxy from a config, with its clock, randomness, registry and store; run it.

The composition root: the only place that knows every module.  ``Proxy`` owns the
listeners, the loops, the runtime state and the metrics; ``serve`` adds signals:
SIGTERM/SIGINT drain and stop, SIGHUP reloads the config file (a bad file is refused and
the running config stays).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import select
import signal
import socket
import ssl
import stat
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from secrets import token_urlsafe
from typing import IO, Any, Literal

from aiohttp import web
from prometheus_client import CollectorRegistry

from canaryproxy.admin.api import build_admin_app, set_token
from canaryproxy.admin.controller import Controller
from canaryproxy.config.load import (
    Config,
    ConfigError,
    NotifyConfig,
    load_config,
    redacted_url,
    tls_context,
)
from canaryproxy.engine.server import ProxyContext, ProxyServer
from canaryproxy.engine.upstream import ConnectionPool
from canaryproxy.outcomes.accesslog import AccessLog
from canaryproxy.outcomes.metrics import Metrics
from canaryproxy.outcomes.recorder import Recorder
from canaryproxy.runtime.loops import Loops
from canaryproxy.runtime.notify import Notice, Notifier
from canaryproxy.runtime.service import Env, Services
from canaryproxy.runtime.sharing import Sharing
from canaryproxy.state.runtime import RuntimeState
from canaryproxy.state.shared import SharedState
from canaryproxy.state.store import SqliteStateStore, StateError, StateStore
from canaryproxy.vocabulary import hostport

log = logging.getLogger("canaryproxy")


@dataclass
class Clocks:
    """Time and randomness, passed in so tests can drive them."""

    wall: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    rng: random.Random = field(default_factory=random.Random)


Role = Literal["single", "supervisor", "worker"]
"""What a process does: all of it (one process), or its part of several (Scaling out):
the supervisor serves the admin API, judges and probes; a worker serves ``listen``."""


class Proxy:
    def __init__(
        self,
        config: Config,
        *,
        config_path: str | None = None,
        store: StateStore | None = None,
        clocks: Clocks | None = None,
        access_log: AccessLog | None = None,
        role: Role = "single",
        keeper: RuntimeState | None = None,
        secrets: tuple[str, ...] = (),
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.role = role
        self.notifier: Notifier | None = None  # notify.webhook's, where changes are decided
        self.clocks = clocks or Clocks()
        self.loop = asyncio.get_running_loop()
        self.registry = CollectorRegistry()
        self.metrics = Metrics(self.registry, config.metrics.buckets)
        if keeper is not None:
            self.keeper = keeper
            self.store = keeper.store
        else:
            self.store = store or SqliteStateStore(config.state.path)
            self.keeper = RuntimeState(self.store, self.clocks.wall)
        if not config.sticky.secrets and not secrets and role != "worker":
            log.warning("sticky.secrets not set: using a random secret; cookies end at restart")
        self.env = Env(
            keeper=self.keeper,
            metrics=self.metrics,
            # A worker is handed its supervisor's random secret: one secret per instance.
            secrets=config.sticky.secrets or secrets or (token_urlsafe(32),),
            wall=self.clocks.wall,
            monotonic=self.clocks.monotonic,
            rng=self.clocks.rng,
            pooled=role == "worker" or isinstance(self.keeper, SharedState),
            notify=self._notify,
        )
        self.owns_access_log = access_log is None
        self.access_log = access_log or AccessLog(open_access_log(config.access_log))
        if role == "worker" and _is_pipe(self.access_log.stream):
            self.access_log.chunk = select.PIPE_BUF
        self.recorder = Recorder(self.metrics, self.access_log)
        self.services = Services.build(config, self.env)
        # Keep-alive connections by backend address, shared by every service that names it.
        self.upstreams: dict[str, ConnectionPool] = {}
        self._open_upstreams()
        self.ctx = ProxyContext(
            self.loop,
            self.services.director,
            self.upstreams,
            config.limits,
            config.trusted_proxies,
            self.recorder,
        )
        self.server = ProxyServer(self.ctx)
        self.tls = tls_context(config.tls) if config.tls is not None else None
        self.controller = Controller(self.services, self.keeper)
        self.loops = Loops(self.tick, self.clocks.rng, lambda: self.services.advance_rollouts())
        self.sharing: Sharing | None = None
        if isinstance(self.keeper, SharedState) and role != "worker":
            self.sharing = Sharing(self.keeper, lambda: self.services)
            self.keeper.on_up = self.metrics.set_state_store_up
            self.metrics.set_state_store_up(self.keeper.up)
        self.admin_runner: web.AppRunner | None = None
        self._reload_lock = asyncio.Lock()
        self.proxy_address: tuple[str, int] = ("", 0)
        self.admin_address: tuple[str, int] = ("", 0)

    def install(self, services: Services) -> None:
        """The one way a reloaded services table takes effect, swapped whole everywhere it
        is used: the engine's director, the admin API, the connection pools."""
        self.services = services
        self.ctx.director = services.director
        self.controller.services = services
        self._open_upstreams()

    def _open_upstreams(self) -> None:
        for service in self.services:
            for backend in service.routing.all_backends():
                if backend.address not in self.upstreams:
                    self.upstreams[backend.address] = ConnectionPool(
                        self.loop, backend.host, backend.port
                    )

    # running ---------------------------------------------------------------------------------
    async def start(self) -> None:
        cfg = self.config
        if self.role != "worker":  # a worker's weights are the supervisor's
            weights = await self.services.follow_config()  # before the first request
            if weights:
                log.info("weights", extra={"weights": weights})
        if self.role != "supervisor":
            listen = cfg.listen
            reuse_port = self.role == "worker"
            self.proxy_address = await self.server.start(
                listen.host, listen.port, self.tls, reuse_port=reuse_port
            )
        if self.role == "single":
            self.log_listening()
        if self.role != "worker":
            await self._start_admin()
        self.tick()
        if self.role != "worker":  # a worker's active health is the supervisor's
            await self.loops.start(self.services)
            await self._follow_notify(cfg.notify)
        if self.sharing is not None:
            self.sharing.start()

    def log_listening(self) -> None:
        log.info(
            "listening",
            extra={
                "listener": "proxy",
                "address": _fmt(self.proxy_address),
                "tls": self.tls is not None,
            },
        )

    async def _start_admin(self) -> None:
        cfg = self.config
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

    async def stop(self) -> None:
        """Drain (finish in-flight requests within the grace period), flush, close."""
        await self.server.drain(self.config.limits.drain_timeout)
        await self.loops.close()
        await self._follow_notify(None)
        if self.sharing is not None:
            await self.sharing.stop()
        if self.admin_runner is not None:
            await self.admin_runner.cleanup()
        await self.keeper.flush()
        self.access_log.flush()
        stream = self.access_log.stream
        if self.owns_access_log:
            _close_log(stream)
        await self.keeper.close()

    def _swap_access_log(self, stream: IO[str] | None) -> None:
        """SIGHUP reopens the access log (a moved file is recreated: logrotate's way)."""
        old = self.access_log.stream
        self.access_log.flush()
        self.access_log.stream = stream
        _close_log(old)

    def tick(self) -> None:
        """Refresh gauges that follow from time passing (health cool-offs, verdicts)."""
        self.services.refresh()

    async def reload(self) -> bool:
        """SIGHUP: swap in a new config; a bad one is refused and the running one stays.

        Everything that can fail (parsing, opening the access log, reading the state store)
        happens before anything changes; reloads run one at a time.
        """
        async with self._reload_lock:
            return await self._reload()

    async def _reload(self) -> bool:
        assert self.config_path is not None
        try:
            config = load_config(self.config_path)
        except ConfigError as exc:
            return self._refuse_reload(exc.errors)
        return await self.apply(config)

    async def apply(self, config: Config) -> bool:
        """Take ``config`` (read and checked) as a whole, or refuse it and keep the running
        one: a worker is handed the config its supervisor read."""
        try:
            stream = open_access_log(config.access_log) if self.owns_access_log else None
        except OSError as exc:
            return self._refuse_reload([f"access_log: cannot open {config.access_log}: {exc}"])
        if (config.tls is None) != (self.tls is None):
            _close_log(stream)
            return self._refuse_reload(["tls: turning TLS on or off takes a restart"])
        await self.keeper.flush()  # an ejection being persisted must not be read back stale
        # Rotation by SIGHUP: new cookies are signed with the new first secret.
        env = replace(self.env, secrets=config.sticky.secrets or self.env.secrets)
        try:
            services = Services.build(config, env, self.services)  # reads the store first
        except StateError as exc:
            _close_log(stream)
            return self._refuse_reload([f"state: {exc}"])
        # Weights first: an operator's change racing the rest of the reload then lands after
        # the file's, and stays. A failed save is reported per service and changes nothing.
        weights = await services.follow_config() if self.role != "worker" else {}
        # Nothing below can fail: the new config takes effect as a whole.
        if self.owns_access_log:
            self._swap_access_log(stream)
        self.config = config
        self.env = env
        if self.tls is not None and config.tls is not None:
            self._reload_certificate(self.tls, config.tls.cert, config.tls.key)
        if self.admin_runner is not None:
            set_token(self.admin_runner.app, config.admin.token)
        self.install(services)
        self.ctx.limits = config.limits
        self.ctx.trusted_proxies = tuple(config.trusted_proxies)
        if self.role != "worker":
            await self.loops.stop()
            await self.loops.start(self.services)
            await self._follow_notify(config.notify)
        self.tick()
        self.metrics.reload(True)
        log.info("config reloaded", extra={"services": list(config.services), "weights": weights})
        return True

    def _notify(self, notice: Notice) -> None:
        if self.notifier is not None:
            self.notifier.send(notice)

    async def _follow_notify(self, notify: NotifyConfig | None) -> None:
        """Deliver to ``notify.webhook``, or stop delivering (None: shutting down)."""
        url = notify.webhook if notify is not None else None
        old = self.notifier
        if old is not None and notify is not None and old.url == url:
            old.timeout, old.attempts = notify.timeout, notify.attempts
            return
        if old is not None:
            self.notifier = None
            await old.stop()
        if notify is not None and url is not None:
            wall = self.clocks.wall
            self.notifier = Notifier(
                url, notify.timeout, notify.attempts, self.metrics.notification, wall
            )
            self.notifier.start()

    def _reload_certificate(self, context: ssl.SSLContext, cert: str, key: str) -> None:
        """New handshakes use the re-read pair; open connections keep theirs. load_config
        has just loaded the same pair into a scratch context: this fails only if the files
        changed in between."""
        try:
            context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            log.error("TLS certificate not reloaded", extra={"cert": cert, "error": str(exc)})

    def _refuse_reload(self, errors: list[str]) -> bool:
        self.metrics.reload(False)
        log.error("config reload refused", extra={"errors": errors})
        return False


async def open_keeper(config: Config, clocks: Clocks | None = None) -> RuntimeState | None:
    """The shared state for ``state.redis``, its records read (None: the SQLite file)."""
    url = config.state.redis
    if url is None:
        return None
    instance = config.state.instance or f"{socket.gethostname()}:{os.getpid()}"
    keeper = SharedState(url, instance, (clocks or Clocks()).wall)
    await keeper.load()
    log.info(
        "state shared through Redis",
        extra={"redis": redacted_url(url), "instance": instance, "up": keeper.up},
    )
    return keeper


async def serve(config: Config, config_path: str | None) -> int:
    proxy = Proxy(config, config_path=config_path, keeper=await open_keeper(config))
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


def _close_log(stream: IO[str] | None) -> None:
    if stream is not None and stream not in (sys.stdout, sys.stderr):
        stream.close()


def open_access_log(where: str) -> IO[str] | None:
    """The access log's stream: stdout, stderr, off (None) or a file opened for appending."""
    if where == "off":
        return None
    if where in ("stdout", "-"):
        return sys.stdout
    if where == "stderr":
        return sys.stderr
    return open(where, "a", encoding="utf-8", buffering=1 << 16)


def _is_pipe(stream: IO[str] | None) -> bool:
    """A pipe or socket (stdout under a supervisor, Docker, systemd): writes by several
    processes stay whole only up to PIPE_BUF bytes. A regular file opened for appending
    keeps each write whole however long."""
    if stream is None:
        return False
    try:
        mode = os.fstat(stream.fileno()).st_mode
    except (OSError, ValueError, AttributeError):  # not a file at all (tests, benchmarks)
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def _fmt(address: tuple[str, int]) -> str:
    return hostport(*address)

"""The supervisor of ``workers: N`` (N > 1): N worker processes serve ``listen``; this one
serves the admin API and ``/metrics``, probes the backends and holds the one judge per
service (the README's "Running several instances").

Rules this module keeps:
- The listen port is reserved here first (a socket bound with SO_REUSEPORT, never
  listening, so the kernel hands it no connections); each worker binds its own listening
  socket to the same port, and the kernel spreads connections over them. A restarted
  worker binds the same port, also when the config said port 0.
- A worker that exits is started again within a second (0.1 s, doubling to 1 s while it
  keeps dying young); its counts so far stay in ``/metrics`` (merge.WorkerSums).
- Workers flush what they counted every 250 ms; the judge here replays it at once, and an
  ejection it decides goes down to every worker right then; other changes (an operator's,
  a probe's) within 100 ms; everything in full every second. So an ejection reaches every
  worker within 250 ms of the outcome that caused it, plus a message's way.
- SIGHUP: the file is read and checked here once; a bad file changes nothing anywhere,
  a good one is applied here and its text sent to every worker. SIGTERM/SIGINT: every
  worker drains (``limits.drain_timeout``) and sends its last counts; then this stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from canaryproxy.app import Proxy, open_keeper
from canaryproxy.config.load import Config, ConfigError, config_from_text
from canaryproxy.fleet import ipc
from canaryproxy.outcomes.merge import MergedView, WorkerSums
from canaryproxy.state.store import record_to_dict

log = logging.getLogger("canaryproxy.supervisor")

PUSH_CHECK = 0.1
PUSH_FULL = 1.0
RESTART_FIRST = 0.1
RESTART_MAX = 1.0
YOUNG = 5.0  # a worker that dies within this many seconds of its start restarts slower
START_TIMEOUT = 30.0


@dataclass(eq=False)
class WorkerHandle:
    index: int
    incarnation: int
    process: asyncio.subprocess.Process
    writer: asyncio.StreamWriter
    started: float
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class Supervisor:
    def __init__(self, config: Config, config_path: str) -> None:
        self.config = config
        self.config_path = config_path
        self.text = Path(config_path).read_text(encoding="utf-8")
        self.count = config.workers
        self.workers: dict[int, WorkerHandle] = {}
        self.sums = WorkerSums()
        self.fallbacks: dict[int, dict[str, dict[str, int]]] = {}
        self.retired_fallbacks: dict[str, dict[str, int]] = {}
        self.incarnations = itertools.count()
        self.restart_delay: dict[int, float] = {}
        self.stopping = False
        self.stop = asyncio.Event()
        self.proxy: Proxy | None = None
        self.reserved: socket.socket | None = None
        self.port = 0
        self._last_push: dict[str, Any] = {}
        self._last_full = 0.0
        self._tasks: set[asyncio.Task[Any]] = set()

    # running ---------------------------------------------------------------------------------
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        started = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, self.stop.set)
        loop.add_signal_handler(signal.SIGINT, self.stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn_task(self._reload(started)))
        self.reserved = _reserve(self.config.listen.host, self.config.listen.port)
        self.port = int(self.reserved.getsockname()[1])
        keeper = await open_keeper(self.config)
        self.proxy = proxy = Proxy(
            self.config, config_path=self.config_path, role="supervisor", keeper=keeper
        )
        proxy.metrics.source = MergedView(proxy.registry, self.sums)
        await proxy.start()
        try:
            await self._start_workers()
        except RuntimeError as exc:
            log.error("workers did not start", extra={"error": str(exc)})
            await self._shutdown()
            return 1
        proxy.proxy_address = (self.config.listen.host, self.port)
        proxy.log_listening()
        log.info("workers", extra={"workers": self.count})
        started.set()
        pusher = loop.create_task(self._push_loop())
        await self.stop.wait()
        log.info("draining", extra={"grace_seconds": proxy.config.limits.drain_timeout})
        pusher.cancel()
        await self._shutdown()
        log.info("stopped")
        return 0

    async def _start_workers(self) -> None:
        for index in range(self.count):
            await self._spawn(index)
        try:
            async with asyncio.timeout(START_TIMEOUT):
                for handle in list(self.workers.values()):
                    waiter = asyncio.ensure_future(handle.ready.wait())
                    exited = asyncio.ensure_future(handle.process.wait())
                    await asyncio.wait({waiter, exited}, return_when=asyncio.FIRST_COMPLETED)
                    waiter.cancel()
                    exited.cancel()
                    if not handle.ready.is_set():
                        raise RuntimeError(f"worker {handle.index} exited while starting")
        except TimeoutError:
            raise RuntimeError(f"workers not ready within {START_TIMEOUT:g}s") from None

    async def _shutdown(self) -> None:
        self.stopping = True
        handles = list(self.workers.values())
        for handle in handles:
            if handle.process.returncode is None:
                handle.process.send_signal(signal.SIGTERM)
        grace = self.config.limits.drain_timeout + 5.0
        waits = [h.process.wait() for h in handles]
        try:
            async with asyncio.timeout(grace):
                await asyncio.gather(*waits)
        except TimeoutError:
            for handle in handles:
                if handle.process.returncode is None:
                    handle.process.kill()
        tasks = [h.task for h in handles if h.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        if self.proxy is not None:
            await self.proxy.stop()
        if self.reserved is not None:
            self.reserved.close()

    def _spawn_task(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # workers ---------------------------------------------------------------------------------
    async def _spawn(self, index: int) -> None:
        proxy = self.proxy
        assert proxy is not None
        parent, child = socket.socketpair()
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "canaryproxy.fleet.worker",
            "--fd",
            str(child.fileno()),
            pass_fds=(child.fileno(),),
            stdin=asyncio.subprocess.DEVNULL,
        )
        child.close()
        reader, writer = await asyncio.open_unix_connection(sock=parent)
        handle = WorkerHandle(index, next(self.incarnations), process, writer, time.monotonic())
        self.workers[index] = handle
        hello = {
            "t": "hello",
            "worker": index,
            "port": self.port,
            "path": self.config_path,
            "config": self.text,
            "secrets": list(proxy.env.secrets),
            **self._state(),
        }
        await ipc.send(writer, hello)
        handle.task = asyncio.get_running_loop().create_task(self._serve(handle, reader))

    async def _serve(self, handle: WorkerHandle, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                message = await ipc.receive(reader)
                if message is None:
                    break
                kind = message.get("t")
                if kind == "ready":
                    handle.ready.set()
                    self._count_alive()
                elif kind == "flush":
                    self._on_flush(handle, message)
        except (ValueError, KeyError, TypeError) as exc:
            log.error(
                "bad message from a worker", extra={"worker": handle.index, "error": str(exc)}
            )
            handle.process.kill()
        handle.writer.close()
        code = await handle.process.wait()
        self.sums.retire(handle.incarnation)
        self._retire_fallbacks(handle.incarnation)
        if self.workers.get(handle.index) is handle:
            del self.workers[handle.index]
        self._count_alive()
        if self.stopping:
            return
        lived = time.monotonic() - handle.started
        delay = (
            self.restart_delay.get(handle.index, RESTART_FIRST) if lived < YOUNG else RESTART_FIRST
        )
        self.restart_delay[handle.index] = min(delay * 2, RESTART_MAX)
        log.error(
            "worker exited; starting it again",
            extra={"worker": handle.index, "code": code, "restart_in": delay},
        )
        await asyncio.sleep(delay)
        if not self.stopping:
            await self._spawn(handle.index)

    def _count_alive(self) -> None:
        if self.proxy is not None:
            alive = sum(1 for h in self.workers.values() if h.ready.is_set())
            self.proxy.metrics.set_workers(alive)

    def _on_flush(self, handle: WorkerHandle, message: dict[str, Any]) -> None:
        proxy = self.proxy
        assert proxy is not None
        services = proxy.services
        for name, (epoch, rows) in message["tallies"].items():
            try:
                service = services.get(name)
            except KeyError:  # a reload removed it
                continue
            if service.tally is not None:  # shared state: pooled with the instance's own
                if epoch == service.knobs.epoch:
                    service.tally.merge(rows)
            else:
                service.judge_tally(rows, int(epoch))
        self.sums.update(handle.incarnation, message["metrics"])
        self.fallbacks[handle.incarnation] = message["fallbacks"]
        self._sum_fallbacks()
        self._push_if_changed()

    def _retire_fallbacks(self, incarnation: int) -> None:
        for name, counts in self.fallbacks.pop(incarnation, {}).items():
            kept = self.retired_fallbacks.setdefault(name, {})
            for key, count in counts.items():
                kept[key] = kept.get(key, 0) + count

    def _sum_fallbacks(self) -> None:
        assert self.proxy is not None
        for service in self.proxy.services:
            total = dict(self.retired_fallbacks.get(service.name, {}))
            for counts in self.fallbacks.values():
                for key, count in counts.get(service.name, {}).items():
                    total[key] = total.get(key, 0) + count
            service.fallbacks.clear()
            service.fallbacks.update(total)

    # state going down ------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        """Every service's knobs and its backends' active health, as workers take them."""
        proxy = self.proxy
        assert proxy is not None
        knobs: dict[str, Any] = {}
        health: dict[str, list[list[Any]]] = {}
        for service in proxy.services:
            knobs[service.name] = record_to_dict(service.knobs.record())
            rows = health[service.name] = []
            for backend in service.routing.all_backends():
                check = backend.health.check if backend.health is not None else None
                if check is not None:
                    rows.append(
                        [
                            backend.pool,
                            backend.url,
                            check.is_healthy,
                            check.streak,
                            check.last_error,
                        ]
                    )
        return {"knobs": knobs, "health": health}

    async def _push_loop(self) -> None:
        while True:
            await asyncio.sleep(PUSH_CHECK)
            self._push_if_changed()

    def _push_if_changed(self) -> None:
        state = {"t": "state", **self._state()}
        now = time.monotonic()
        if state == self._last_push and now - self._last_full < PUSH_FULL:
            return
        self._last_push, self._last_full = state, now
        for handle in list(self.workers.values()):
            if handle.ready.is_set() and not handle.writer.is_closing():
                self._spawn_task(self._send(handle, state))

    async def _send(self, handle: WorkerHandle, message: dict[str, Any]) -> None:
        with contextlib.suppress(ConnectionError, OSError):  # exiting: _serve restarts it
            await ipc.send(handle.writer, message)

    # reload ----------------------------------------------------------------------------------
    async def _reload(self, started: asyncio.Event) -> None:
        await started.wait()
        proxy = self.proxy
        assert proxy is not None
        try:
            text = await asyncio.to_thread(Path(self.config_path).read_text, encoding="utf-8")
            config = config_from_text(text, self.config_path)
        except (OSError, UnicodeDecodeError) as exc:
            proxy._refuse_reload([f"{self.config_path}: cannot read the config file: {exc}"])
            return
        except ConfigError as exc:
            proxy._refuse_reload(exc.errors)
            return
        if config.workers != self.count:
            proxy._refuse_reload(["workers: changing the number of workers takes a restart"])
            return
        async with proxy._reload_lock:
            if not await proxy.apply(config):
                return
        self.config, self.text = config, text
        message = {"t": "reload", "config": text}
        for handle in list(self.workers.values()):
            if handle.ready.is_set():
                await self._send(handle, message)
        self._push_if_changed()


def _reserve(host: str, port: int) -> socket.socket:
    """A socket bound to host:port with SO_REUSEPORT, not listening: holds the port."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    return sock

"""A worker process: serves ``listen`` (SO_REUSEPORT) for its supervisor.

It is started by the supervisor with one end of a socketpair (``--fd``) and takes
everything from it: the config text the supervisor checked, the listen port, the cookie
secrets and the services' knobs. From then on:
- every ``FLUSH_INTERVAL`` it sends what it counted: each service's tally rows (the judge
  is the supervisor's), its cumulative metric samples and fallback counts; nothing on
  the request path waits for this;
- it applies what the supervisor pushes: knobs (weights, ejections, epochs) and the active
  health of every backend; a reload is a new config text, applied whole or not at all;
- SIGTERM (or the supervisor gone) drains it like a single process, then it sends a last
  flush, so the counts of the drained requests are not lost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from typing import Any

from canaryproxy.app import Proxy
from canaryproxy.config.load import Config, ConfigError, config_from_text
from canaryproxy.config.schema import Address
from canaryproxy.fleet import ipc
from canaryproxy.outcomes import logs
from canaryproxy.outcomes.merge import worker_samples
from canaryproxy.state.store import MemoryStateStore, StateError, record_from_dict

log = logging.getLogger("canaryproxy.worker")

FLUSH_INTERVAL = 0.25


def _config(text: str, path: str, port: int) -> Config:
    config = config_from_text(text, path)
    return config.model_copy(update={"listen": Address(config.listen.host, port)})


class Worker:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.index = -1
        self.port = 0
        self.path = ""
        self.proxy: Proxy | None = None
        self.stop = asyncio.Event()

    async def run(self) -> int:
        hello = await ipc.receive(self.reader)
        if hello is None or hello.get("t") != "hello":
            log.error("no hello from the supervisor")
            return 1
        self.index, self.port, self.path = int(hello["worker"]), int(hello["port"]), hello["path"]
        records = {name: record_from_dict(r) for name, r in hello["knobs"].items()}
        config = _config(hello["config"], self.path, self.port)
        self.proxy = proxy = Proxy(
            config,
            config_path=self.path,
            store=MemoryStateStore(records),
            role="worker",
            secrets=tuple(hello["secrets"]),
        )
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stop.set)
        loop.add_signal_handler(signal.SIGINT, self.stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: None)  # the supervisor passes reloads on
        self._apply_state(hello)
        await proxy.start()
        await ipc.send(self.writer, {"t": "ready", "pid": os.getpid()})
        log.info("worker ready", extra={"worker": self.index, "pid": os.getpid()})
        listen = loop.create_task(self._listen())
        flush = loop.create_task(self._flush_loop())
        await self.stop.wait()
        flush.cancel()
        await proxy.stop()
        with contextlib.suppress(ConnectionError, OSError):
            await self._flush()  # the drained requests' counts
        listen.cancel()
        await asyncio.gather(listen, flush, return_exceptions=True)
        return 0

    async def _listen(self) -> None:
        """What the supervisor sends; end of file means it is gone: drain and stop."""
        while True:
            message = await ipc.receive(self.reader)
            if message is None:
                self.stop.set()
                return
            kind = message.get("t")
            if kind == "state":
                self._apply_state(message)
            elif kind == "reload":
                await self._reload(message)

    def _apply_state(self, message: dict[str, Any]) -> None:
        proxy = self.proxy
        assert proxy is not None
        knobs: dict[str, Any] = message.get("knobs", {})
        health: dict[str, Any] = message.get("health", {})
        for service in proxy.services:
            data = knobs.get(service.name)
            if data is not None:
                record = record_from_dict(data)
                if record != service.knobs.record():
                    service.follow_record(record)
            checks = {(pool, url): rest for pool, url, *rest in health.get(service.name, ())}
            for backend in service.routing.all_backends():
                check = backend.health.check if backend.health is not None else None
                state = checks.get((backend.pool, backend.url))
                if check is not None and state is not None:
                    check.follow(bool(state[0]), int(state[1]), state[2])

    async def _reload(self, message: dict[str, Any]) -> None:
        proxy = self.proxy
        assert proxy is not None
        try:
            config = _config(message["config"], self.path, self.port)
        except ConfigError as exc:  # the file checked out in the supervisor: rare (a cert)
            log.error("worker reload refused", extra={"worker": self.index, "errors": exc.errors})
            return
        await proxy.apply(config)  # no secrets in the file: the supervisor's, from hello

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            await self._flush()

    async def _flush(self) -> None:
        proxy = self.proxy
        assert proxy is not None
        tallies: dict[str, list[Any]] = {}
        fallbacks: dict[str, dict[str, int]] = {}
        for service in proxy.services:
            tally = service.tally
            if tally:
                tallies[service.name] = [service.knobs.epoch, tally.drain()]
            if service.fallbacks:
                fallbacks[service.name] = dict(service.fallbacks)
        message = {
            "t": "flush",
            "tallies": tallies,
            "fallbacks": fallbacks,
            "metrics": worker_samples(proxy.registry),
        }
        await ipc.send(self.writer, message)


async def _main(fd: int) -> int:
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    try:
        return await Worker(reader, writer).run()
    except StateError as exc:
        log.error("worker cannot start", extra={"error": str(exc)})
        return 1
    except OSError as exc:
        log.error("worker cannot start", extra={"error": str(exc)})
        return 1
    finally:
        writer.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="canaryproxy-worker")
    parser.add_argument("--fd", type=int, required=True)
    args = parser.parse_args(argv)
    logs.setup()
    import uvloop

    sys.exit(uvloop.run(_main(args.fd)))


if __name__ == "__main__":
    main()

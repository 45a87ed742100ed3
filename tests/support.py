"""Test tooling: real backends and a real proxy on 127.0.0.1 ephemeral ports.

``Backend`` is an aiohttp app with endpoints for every behaviour the proxy must handle;
``RawBackend`` answers with exact bytes (garbage, truncation, stale keep-alive);
``start_proxy`` runs the real engine in the test's event loop; ``raw_request`` talks bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import redis
from aiohttp import WSMsgType, web
from prometheus_client.parser import text_string_to_metric_families

from canaryproxy.app import Clocks, Proxy
from canaryproxy.config.load import Config, parse_config
from canaryproxy.outcomes.accesslog import AccessLog
from canaryproxy.state.store import MemoryStateStore, StateStore
from canaryproxy.vocabulary import hostport

LOCAL = "127.0.0.1"


class Backend:
    """A real HTTP backend that records what reached it."""

    def __init__(self, name: str, host: str = LOCAL) -> None:
        self.name = name
        self.host = host  # "::1" for an IPv6 backend
        self.seen: list[dict[str, Any]] = []
        self.peers: list[tuple[str, int]] = []
        self.health_status = 200
        self.fail_rate_every = 0  # every Nth request answers 500 (0: never)
        self.fail_fraction = 0.0  # this share of requests answers 500, evenly spread
        self.fail_paths: set[str] = set()  # requests for these paths answer 500 (bad inputs)
        self.mark_failure_every = 0  # every Nth answer says X-Canary-Outcome: failure
        self.marked = 0  # answers so marked
        self.delay = 0.0  # seconds before each answer to /
        self.count = 0
        self.runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{hostport(self.host, self.port)}"

    async def start(self) -> Backend:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/ws", self.ws)
        app.router.add_route("*", "/upload", self.upload)
        app.router.add_get("/download/{size}", self.download)
        app.router.add_get("/sleep/{seconds}", self.sleep)
        app.router.add_route("*", "/status/{code}", self.status)
        app.router.add_get("/hop", self.hop)
        app.router.add_get("/chunked", self.chunked)
        app.router.add_route("*", "/{tail:.*}", self.echo)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, 0)
        await site.start()
        server: Any = site._server
        self.port = server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def _note(self, request: web.Request, **extra: Any) -> None:
        self.count += 1
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if peer:
            self.peers.append(peer)
        self.seen.append(
            {
                "method": request.method,
                "path": request.path_qs,
                "headers": list(request.headers.items()),
                **extra,
            }
        )

    async def echo(self, request: web.Request) -> web.Response:
        body = await request.read()
        self._note(request, body=body)
        if self.delay:
            await asyncio.sleep(self.delay)
        if request.path in self.fail_paths or (
            self.fail_rate_every and self.count % self.fail_rate_every == 0
        ):
            return web.Response(status=500, text=f"{self.name} failed")
        n, share = self.count, self.fail_fraction
        if share and int(n * share) != int((n - 1) * share):
            return web.Response(status=500, text=f"{self.name} failed")
        headers = {}
        if self.mark_failure_every and n % self.mark_failure_every == 0:
            self.marked += 1
            headers["X-Canary-Outcome"] = "failure"
        payload = {
            "backend": self.name,
            "method": request.method,
            "path": request.path_qs,
            "headers": list(request.headers.items()),
            "body_sha256": hashlib.sha256(body).hexdigest(),
        }
        return web.json_response(payload, headers=headers)

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(status=self.health_status, text="ok")

    async def upload(self, request: web.Request) -> web.Response:
        digest = hashlib.sha256()
        size = 0
        async for data in request.content.iter_any():
            digest.update(data)
            size += len(data)
        self._note(request)
        return web.json_response({"sha256": digest.hexdigest(), "size": size})

    async def download(self, request: web.Request) -> web.StreamResponse:
        self._note(request)
        size = int(request.match_info["size"])
        resp = web.StreamResponse()
        resp.content_length = size
        await resp.prepare(request)
        block = b"x" * 65536
        sent = 0
        while sent < size:
            part = block[: min(len(block), size - sent)]
            await resp.write(part)
            sent += len(part)
        await resp.write_eof()
        return resp

    async def chunked(self, request: web.Request) -> web.StreamResponse:
        self._note(request)
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(5):
            await resp.write(f"part{i};".encode())
        await resp.write_eof()
        return resp

    async def sleep(self, request: web.Request) -> web.Response:
        self._note(request)
        await asyncio.sleep(float(request.match_info["seconds"]))
        return web.Response(text="slept")

    async def status(self, request: web.Request) -> web.Response:
        self._note(request)
        code = int(request.match_info["code"])
        if code in (204, 304):
            return web.Response(status=code)
        return web.Response(status=code, text=f"status {code}")

    async def hop(self, request: web.Request) -> web.Response:
        self._note(request)
        return web.Response(
            text="hop",
            headers={
                "Connection": "X-Secret-Hop",
                "X-Secret-Hop": "1",
                "Keep-Alive": "timeout=5",
                "Proxy-Authenticate": "Basic",
                "X-End-To-End": "kept",
            },
        )

    async def ws(self, request: web.Request) -> web.WebSocketResponse:
        self._note(request)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await ws.send_str("echo:" + msg.data)
            elif msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawBackend:
    """A backend that answers with whatever bytes a test scripts."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.server: asyncio.Server | None = None
        self.port = 0
        self.connections = 0
        self.requests: list[bytes] = []

    @property
    def url(self) -> str:
        return f"http://{LOCAL}:{self.port}"

    async def start(self) -> RawBackend:
        async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.handler(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        self.server = await asyncio.start_server(on_conn, LOCAL, 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


async def read_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOCAL, 0))
        return int(s.getsockname()[1])


def dead_url() -> str:
    """A URL nothing listens on (connect is refused)."""
    return f"http://{LOCAL}:{free_port()}"


_next_user_address = iter(range(1, 1 << 20))


def user_address() -> str:
    """A loopback address no other simulated user of this test run has: 127.x.y.z, so
    that the judge, which weighs one client address as one user, sees a crowd."""
    n = next(_next_user_address)
    return f"127.{16 + n // 62500 % 200}.{n // 250 % 250}.{n % 250 + 1}"


def user_session(address: str | None = None, **kwargs: Any) -> aiohttp.ClientSession:
    """A simulated user: its own cookie jar and its own source address (``address``, or
    one ``user_address`` gives)."""
    kwargs.setdefault("cookie_jar", aiohttp.CookieJar(unsafe=True))
    local = (address or user_address(), 0)
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=local), **kwargs)


def service(
    stable: list[str] | list[dict[str, Any]],
    canary: list[str] | list[dict[str, Any]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    def pool(urls: list[str] | list[dict[str, Any]]) -> dict[str, Any]:
        return {"backends": [u if isinstance(u, dict) else {"url": u} for u in urls]}

    out: dict[str, Any] = {"stable": pool(stable), **extra}
    if canary is not None:
        out["canary"] = pool(canary)
    return out


def make_config(services: dict[str, Any], **top: Any) -> Config:
    data: dict[str, Any] = {
        "listen": f"{LOCAL}:0",
        "admin": {"listen": f"{LOCAL}:0", "token": "test-token"},
        "sticky": {"secrets": ["test-secret"]},
        "services": services,
    }
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return parse_config(data, env={})


class RunningProxy:
    def __init__(self, proxy: Proxy, access: list[dict[str, Any]]) -> None:
        self.proxy = proxy
        self.access = access

    @property
    def port(self) -> int:
        return self.proxy.proxy_address[1]

    @property
    def url(self) -> str:
        return f"http://{LOCAL}:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://{LOCAL}:{self.proxy.admin_address[1]}"


class ListStream:
    """A text stream for the access log that keeps parsed lines."""

    def __init__(self, sink: list[dict[str, Any]]) -> None:
        self.sink = sink

    def write(self, text: str) -> int:
        self.sink.extend(json.loads(line) for line in text.splitlines() if line)
        return len(text)

    def flush(self) -> None:
        pass


@asynccontextmanager
async def start_proxy(
    config: Config, store: StateStore | None = None, clocks: Clocks | None = None
) -> AsyncIterator[RunningProxy]:
    access: list[dict[str, Any]] = []
    log = AccessLog(ListStream(access))  # type: ignore[arg-type]
    proxy = Proxy(config, store=store or MemoryStateStore(), clocks=clocks, access_log=log)
    await proxy.start()
    try:
        yield RunningProxy(proxy, access)
    finally:
        await proxy.stop()


async def raw_request(port: int, data: bytes, *, read_timeout: float = 5.0) -> bytes:
    """Send bytes, read until the server closes (or the timeout), return everything read."""
    reader, writer = await asyncio.open_connection(LOCAL, port)
    writer.write(data)
    await writer.drain()
    chunks = []
    try:
        async with asyncio.timeout(read_timeout):
            while True:
                part = await reader.read(65536)
                if not part:
                    break
                chunks.append(part)
    except TimeoutError:
        pass
    finally:
        writer.close()
    return b"".join(chunks)


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


# Real processes -------------------------------------------------------------------------------
class ProxyProcess:
    """``canaryproxy run`` as a child process; knows its bound ports from its log lines."""

    def __init__(self, config_path: Path, env: dict[str, str] | None = None) -> None:
        self.config_path = config_path
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.stderr_lines: list[dict[str, Any]] = []
        self.proxy_port = 0
        self.admin_port = 0

    def start(self, timeout: float = 15.0) -> ProxyProcess:
        cmd = [sys.executable, "-m", "canaryproxy", "run", "--config", str(self.config_path)]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=self.env
        )
        assert self.proc.stderr is not None
        deadline = time.monotonic() + timeout
        while not (self.proxy_port and self.admin_port):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"proxy did not start: {self.stderr_lines}")
            line = self.proc.stderr.readline()
            if not line:
                continue
            entry = json.loads(line)
            self.stderr_lines.append(entry)
            if entry.get("msg") == "listening":
                port = int(entry["address"].rsplit(":", 1)[1])
                if entry["listener"] == "proxy":
                    self.proxy_port = port
                else:
                    self.admin_port = port
        return self

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for the exit; collect the rest of the log and close the pipe."""
        assert self.proc is not None
        code = self.proc.wait(timeout)
        self._drain_log()
        return code

    def rest_of_log(self) -> list[dict[str, Any]]:
        self._drain_log()
        return self.stderr_lines

    def _drain_log(self) -> None:
        assert self.proc is not None
        if self.proc.stderr is not None and not self.proc.stderr.closed:
            lines = self.proc.stderr.read().splitlines()
            self.stderr_lines.extend(json.loads(line) for line in lines if line.startswith(b"{"))
            self.proc.stderr.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc is not None:
            self._drain_log()


class RedisServer:
    """A throwaway redis-server on an ephemeral port, no persistence."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        cmd = ["redis-server", "--port", str(self.port), "--bind", LOCAL, "--save", ""]
        cmd += ["--appendonly", "no"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        client = self.client()
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, host=LOCAL, decode_responses=True)

    @property
    def url(self) -> str:
        return f"redis://{LOCAL}:{self.port}/0"


# Several processes: configs and a client for the workers and shared-state tests --------------
PROCESS_TOKEN = "process-test-token"
PROCESS_AUTH = {"Authorization": f"Bearer {PROCESS_TOKEN}"}


def canary_config(
    tmp: Path,
    name: str,
    stable: Backend,
    canary: Backend,
    weight: float,
    web: dict[str, Any] | None = None,
    **top: Any,
) -> Path:
    """A config file for one service ``web`` with a stable and a canary backend (and the
    service's further keys in ``web``)."""
    config = {
        "listen": f"{LOCAL}:0",
        "admin": {"listen": f"{LOCAL}:0", "token": PROCESS_TOKEN},
        "sticky": {"secrets": ["process-secret"]},
        "access_log": "off",
        "limits": {"drain_timeout": "3s"},
        "services": {
            "web": {
                "stable": {"backends": [{"url": stable.url}]},
                "canary": {"backends": [{"url": canary.url}]},
                "canary_weight": weight,
                **(web or {}),
            }
        },
        **top,
    }
    path = tmp / f"{name}.yaml"
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    return path


class ProxyClient:
    """HTTP to a running ``canaryproxy`` process: its proxy port and its admin API."""

    def __init__(self, proc: ProxyProcess, session: aiohttp.ClientSession) -> None:
        self.proc = proc
        self.session = session
        self.base = f"http://{LOCAL}:{proc.proxy_port}"
        self.admin = f"http://{LOCAL}:{proc.admin_port}"

    async def state(self) -> dict[str, Any]:
        url = f"{self.admin}/admin/services/web"
        async with self.session.get(url, headers=PROCESS_AUTH) as resp:
            assert resp.status == 200
            result: dict[str, Any] = await resp.json()
            return result

    async def change(self, verb: str, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        url = f"{self.admin}/admin/services/web{path}"
        async with self.session.request(verb, url, json=body, headers=PROCESS_AUTH) as resp:
            return resp.status, await resp.json()

    async def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        async with self.session.get(f"{self.admin}/metrics") as resp:
            text = await resp.text()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    async def get(self, n: int, connections: int = 16) -> list[int]:
        """``n`` requests of as many new users (each from its own address, without a
        cookie), ``connections`` at a time; the statuses."""
        statuses: list[int] = []

        async def one() -> None:
            async with user_session() as session, session.get(f"{self.base}/") as resp:
                await resp.read()
                statuses.append(resp.status)

        for start in range(0, n, connections):
            await asyncio.gather(*(one() for _ in range(min(connections, n - start))))
        return statuses

    async def stop(self) -> int:
        """SIGTERM and the exit code (that of an earlier stop, if it already ended)."""
        assert self.proc.proc is not None
        if self.proc.proc.returncode is None:
            self.proc.proc.send_signal(signal.SIGTERM)
        return await asyncio.to_thread(self.proc.wait, 30)


async def until(check: Callable[[], Awaitable[bool]], within: float) -> float:
    """Seconds until ``check()`` is true; fails past ``within``."""
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < within, "not within the time allowed"
        await asyncio.sleep(0.02)
    return time.monotonic() - started

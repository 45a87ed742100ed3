"""The proxy's own CPU per request, without sockets: ``python -m benchmarks.engine_micro``.

Drives the real engine (server.Downstream, exchange, upstream.UpstreamConn, the director,
recorder, services, metrics, judge, cookies) with in-memory transports: a request goes in
as bytes, the proxy writes the upstream request, a canned response goes back in, the proxy
writes the client response.  What is left is Python work per request, free of the syscall costs that
dominate (and make noisy) the wrk runs on a shared VM — the number to compare before and
after a change to the hot path.  Prints µs per request for a few scenarios.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from canaryproxy.app import Proxy, Role
from canaryproxy.config.load import parse_config
from canaryproxy.engine.server import Downstream
from canaryproxy.engine.upstream import UpstreamConn
from canaryproxy.outcomes.accesslog import AccessLog
from canaryproxy.state.store import MemoryStateStore

RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Fri, 27 Nov 2026 08:00:00 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 100\r\nConnection: keep-alive\r\n\r\n"
    + b"a"
    * 100
)
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\n\r\n"


class FakeTransport:
    """Just enough of asyncio.Transport for the engine; counts the bytes written."""

    def __init__(self, peer: tuple[str, int]) -> None:
        self.peer = peer
        self.written = 0
        self.writes = 0
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written += len(data)
        self.writes += 1

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True


OUTCOMES = {"header": "X-Canary-Outcome", "failure_statuses": [429], "slow": "1s"}


def scenario_config(canary: bool, access_log: bool, outcomes: bool = False) -> Any:
    service: dict[str, Any] = {"stable": {"backends": [{"url": "http://127.0.0.1:9001"}]}}
    if canary:
        service["canary"] = {"backends": [{"url": "http://127.0.0.1:9002"}]}
        service["canary_weight"] = 5
    if outcomes:
        service["outcomes"] = OUTCOMES
    return parse_config(
        {
            "listen": "127.0.0.1:0",
            "admin": {"listen": "127.0.0.1:0", "token": "t"},
            "sticky": {"secrets": ["s"]},
            "services": {"web": service},
        },
        env={},
    )


class NullStream:
    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


async def run(
    canary: bool,
    access_log: bool,
    cookie: bool,
    n: int,
    role: Role = "single",
    outcomes: bool = False,
) -> float:
    log = AccessLog(NullStream() if access_log else None)  # type: ignore[arg-type]
    config = scenario_config(canary, access_log, outcomes)
    proxy = Proxy(config, store=MemoryStateStore(), access_log=log, role=role)
    down = Downstream(proxy.ctx)
    down.connection_made(FakeTransport(("127.0.0.1", 50000)))  # type: ignore[arg-type]
    conns = []
    for pool in proxy.upstreams.values():
        conn = UpstreamConn(pool)
        conn.connection_made(FakeTransport((pool.host, pool.port)))  # type: ignore[arg-type]
        pool.give_back(conn)
        conns.append(conn)
    request = REQUEST
    if cookie:
        down.data_received(REQUEST)
        conn = next(c for c in conns if c.exchange is not None)
        conn.data_received(RESPONSE)
        value = proxy.services.get("web").routing.codec
        assert value is not None
        signed = value.encode("stable", 9000, 0, time.time())
        request = REQUEST[:-2] + b"Cookie: cp_pool=" + signed.encode() + b"\r\n\r\n"
    start = time.process_time()
    for _ in range(n):
        down.data_received(request)
        for conn in conns:
            if conn.exchange is not None:
                conn.data_received(RESPONSE)
                break
        else:
            raise RuntimeError("the request reached no upstream connection")
    elapsed = time.process_time() - start
    log.flush()
    return elapsed / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=50_000, help="requests per scenario")
    parser.add_argument("--rounds", type=int, default=3, help="best of this many")
    args = parser.parse_args()
    scenarios: list[tuple[str, bool, bool, bool, Role, bool]] = [
        ("stable only, access log off", False, False, False, "single", False),
        ("stable only, access log on", False, True, False, "single", False),
        ("canary 5 %, new user (cookie signed)", True, True, False, "single", False),
        ("canary 5 %, returning user (cookie verified)", True, True, True, "single", False),
        # A worker's request path: outcomes counted for the supervisor's judge.
        ("canary 5 %, new user, in a worker", True, True, False, "worker", False),
        # The failure header looked for, the status looked up, the head latency compared.
        ("canary 5 %, new user, outcomes on", True, True, False, "single", True),
    ]
    print(f"{'scenario':<48} {'µs/request':>10}  (best of {args.rounds} × {args.n:,})")
    for name, canary, access, cookie, role, outcomes in scenarios:
        best = min(
            asyncio.run(run(canary, access, cookie, args.n, role, outcomes))
            for _ in range(args.rounds)
        )
        print(f"{name:<48} {best:>10.2f}")


if __name__ == "__main__":
    main()

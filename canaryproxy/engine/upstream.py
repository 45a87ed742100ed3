"""Upstream side of the data path: one protocol per backend connection, and each backend's
connection pool (its keep-alive connections; not to be confused with a traffic pool).

Rules:
- One request at a time on a connection (no upstream pipelining); a connection goes back to
  its pool only after a complete response to a fully sent request that both sides keep alive,
  and only once the read that completed it is parsed to its end: bytes beyond the response
  mean the backend broke framing, and must not become the answer to the next request.
- Idle connections are dropped within ``IDLE_TIMEOUT`` (shorter than common backend
  keep-alive timeouts, so the backend rarely closes first) and whenever they see bytes or
  EOF while idle.
- The pool decides under no lock: everything here runs on the event loop thread.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, cast

import httptools

from canaryproxy.engine.deadline import Watchdog
from canaryproxy.vocabulary import hostport

if TYPE_CHECKING:
    from canaryproxy.engine.exchange import Exchange

IDLE_TIMEOUT = 4.0  # longest a pooled connection stays idle (under common 5 s backends)
SWEEP_INTERVAL = 1.0
log = logging.getLogger("canaryproxy.upstream")
MAX_IDLE_PER_BACKEND = 128
MAX_RESPONSE_HEAD = 64 * 1024


class UpstreamConn(asyncio.Protocol):
    __slots__ = (
        "_watchdog",
        "exchange",
        "head_bytes",
        "head_read",
        "idle_since",
        "is_closed",
        "is_released",
        "last_read",
        "parser",
        "pool",
        "requests",
        "transport",
    )

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: Exchange | None = None
        self.requests = 0
        self.head_bytes = 0
        self.head_read = 0
        self.last_read = 0.0
        self.is_closed = False
        self.is_released = False
        self._watchdog = Watchdog(pool.loop, self._on_watch)
        self.idle_since = 0.0

    def __repr__(self) -> str:
        state = "closed" if self.is_closed else ("busy" if self.exchange else "idle")
        return f"<UpstreamConn {self.pool.address} {state} requests={self.requests}>"

    # asyncio callbacks -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = transport = cast(asyncio.Transport, transport)
        transport.set_write_buffer_limits(high=64 * 1024)

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:
            # Bytes on an idle connection: the backend broke framing or is closing. Drop it.
            self.close()
            return
        self.last_read = self.pool.loop.time()
        if exchange.is_tunnel:
            exchange.tunnel_from_upstream(data)
            return
        corked = exchange.cork_client()  # what one read produces leaves in one send
        try:
            self._parse(exchange, data)
        finally:
            if corked:
                exchange.uncork_client()

    def _parse(self, exchange: Exchange, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            # A 101: the bytes after its head already belong to the tunnel.
            if exchange.is_tunnel and len(data) > upgrade.args[0]:
                exchange.tunnel_from_upstream(data[upgrade.args[0] :])
        except httptools.HttpParserError as exc:
            if not exchange.is_done:  # garbage from the backend (or a fault of ours mid-way)
                if exc.__context__ is not None and not isinstance(exc.__context__, ValueError):
                    log.error("response handling failed", exc_info=exc.__context__)
                self.close()
                exchange.upstream_failed("protocol", f"bad upstream response: {exc}")
            else:
                self.close()  # bytes beyond the response the exchange released us after
        if self.is_released:
            self.is_released = False
            self.pool.give_back(self)  # closes instead when the surplus closed us
        elif self.exchange is exchange and not exchange.resp_started:
            # The head is still incomplete: bound what httptools buffers for a header that
            # never ends (on_header only sees complete ones).
            self.head_read += len(data)
            if self.head_read > MAX_RESPONSE_HEAD:
                exchange.upstream_failed("protocol", "upstream response head too large")

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.is_closed = True
        self._watchdog.cancel()
        self.pool.forget(self)
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.upstream_lost(exc)

    def pause_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.pause_request_body()

    def resume_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.resume_request_body()

    # httptools callbacks, forwarded to the exchange -------------------------------------------
    # A callback without an exchange means bytes beyond the response we asked for: raising
    # stops the parser, and data_received drops the connection.
    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_bytes += len(name) + len(value) + 4
        if self.exchange is None or self.head_bytes > MAX_RESPONSE_HEAD:
            raise ValueError("unexpected or oversized upstream response head")
        self.exchange.resp_headers.append((name, value))
        if len(name) == 10 and name.lower() == b"connection":
            self.exchange.resp_connection.append(value)

    def on_headers_complete(self) -> None:
        self.head_bytes = self.head_read = 0
        if self.exchange is None:
            raise ValueError("unexpected upstream response")
        self.exchange.on_response_head(self.parser.get_status_code(), self)

    def on_body(self, body: bytes) -> None:
        if self.exchange is None:
            raise ValueError("unexpected upstream body")
        self.exchange.on_response_body(body)

    def on_message_complete(self) -> None:
        if self.exchange is not None:
            self.exchange.on_response_complete()

    # pool life cycle -----------------------------------------------------------------------
    def attach(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self.requests += 1
        self.last_read = self.pool.loop.time()

    def release(self, reusable: bool) -> None:
        """The exchange is done with this connection; called from a parser callback.

        A reusable one goes back to the pool when the current ``data_received`` ends.
        """
        self.exchange = None
        transport = self.transport
        if reusable and transport is not None and transport.get_write_buffer_size() == 0:
            self.is_released = True
        else:
            self.close()  # request bytes still unsent: never reuse a half-written connection

    def reset_parser(self) -> None:
        self.parser = httptools.HttpResponseParser(self)

    def park(self) -> None:
        self.exchange = None
        self.idle_since = self.pool.loop.time()
        self.resume_reading()  # a client's backpressure ends with its exchange

    def watch(self, deadline: float) -> None:
        """Have the watchdog look at this connection's exchange by ``deadline``.

        A connection reused request after request keeps its one timer, and the exchange's
        ``check_deadlines`` says when to look again (so no timer per request).
        """
        self._watchdog.arm(deadline)

    def _on_watch(self) -> None:
        exchange = self.exchange
        if exchange is not None and not self.is_closed:
            deadline = exchange.check_deadlines(self.pool.loop.time())
            if deadline is not None:
                self.watch(deadline)

    def pause_reading(self) -> None:
        if self.transport is not None and not self.is_closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.is_closed:
            self.transport.resume_reading()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.is_closed:
            self.transport.write(data)

    def close(self) -> None:
        self._shut(abort=False)

    def abort(self) -> None:
        """Cut the connection (RST-like): nothing more of this exchange may reach the backend."""
        self.exchange = None
        self._shut(abort=True)

    def _shut(self, *, abort: bool) -> None:
        self._watchdog.cancel()
        if self.is_closed:
            return
        self.is_closed = True
        self.pool.forget(self)
        if self.transport is not None:
            if abort:
                self.transport.abort()
            else:
                self.transport.close()


class ConnectionPool:
    """Keep-alive connections to one backend address; LIFO reuse keeps the hot ones warm."""

    def __init__(self, loop: asyncio.AbstractEventLoop, host: str, port: int) -> None:
        self.loop = loop
        self.host = host
        self.port = port
        self.address = hostport(host, port)
        self.idle: list[UpstreamConn] = []
        self._sweep: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        return f"<ConnectionPool {self.address} idle={len(self.idle)}>"

    def take_idle(self) -> UpstreamConn | None:
        idle = self.idle
        while idle:
            conn = idle.pop()
            if conn.is_closed:
                continue
            if self.loop.time() - conn.idle_since >= IDLE_TIMEOUT:
                conn.close()  # the backend may be closing it right now: not worth the race
                continue
            return conn
        return None

    def give_back(self, conn: UpstreamConn) -> None:
        if conn.is_closed or len(self.idle) >= MAX_IDLE_PER_BACKEND:
            conn.close()
            return
        conn.park()
        self.idle.append(conn)
        if self._sweep is None:
            self._sweep = self.loop.call_later(SWEEP_INTERVAL, self._close_stale)

    def _close_stale(self) -> None:
        """Close connections idle for ``IDLE_TIMEOUT - SWEEP_INTERVAL`` or more: none is
        kept idle past ``IDLE_TIMEOUT`` (one timer per pool, not one per park)."""
        self._sweep = None
        cutoff = self.loop.time() - (IDLE_TIMEOUT - SWEEP_INTERVAL)
        for conn in [c for c in self.idle if c.idle_since <= cutoff]:
            conn.close()
        if self.idle:
            self._sweep = self.loop.call_later(SWEEP_INTERVAL, self._close_stale)

    def forget(self, conn: UpstreamConn) -> None:
        try:  # noqa: SIM105 - cheaper than contextlib.suppress on every close
            self.idle.remove(conn)
        except ValueError:
            pass

    async def connect(self, connect_timeout: float) -> UpstreamConn:
        """Open a fresh connection; raises OSError or TimeoutError."""
        factory: Any = lambda: UpstreamConn(self)  # noqa: E731
        async with asyncio.timeout(connect_timeout):
            _, proto = await self.loop.create_connection(factory, self.host, self.port)
        assert isinstance(proto, UpstreamConn)
        return proto

    def close_all(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for conn in list(self.idle):
            conn.close()
        self.idle.clear()

"""Client side of the data path: an asyncio protocol per client connection on llhttp.

Rules:
- The request head is validated before anything is routed (RFC 9112 §3, §6): one valid
  ``Host``; HTTP/1.0 or 1.1; origin-, absolute- or asterisk-form target; ``chunked`` as the
  only transfer coding; ``Expect: 100-continue`` or nothing.  A refused request is answered
  with its status and the connection closed; it never reaches a backend.
- Deadlines protect the proxy: ``header_timeout`` from the first byte of a head to its end,
  ``body_timeout`` of silence while a body is read (both 408), ``keepalive_timeout`` idle.
  Silence while reading is paused (backpressure, a pipelined request waiting) is ours.
- A body that stalls or breaks its framing gets one answer (408 / 400) and the connection
  closes; whatever of it reached a backend is cut off, never completed.
- Pipelined requests are answered in order; reading pauses while one is in flight.
- The connection is the unit of draining: on SIGTERM idle ones close, busy ones close after
  their current response.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, cast

import httptools

from canaryproxy.engine.deadline import Watchdog
from canaryproxy.engine.exchange import Exchange
from canaryproxy.http import http11
from canaryproxy.http.http11 import BadRequest
from canaryproxy.http.request import RequestHead, read_head

if TYPE_CHECKING:
    from canaryproxy.config.load import LimitsConfig
    from canaryproxy.decide.director import Director, Outcome, Route
    from canaryproxy.engine.upstream import ConnectionPool

MAX_HEADERS = 100
LINGER_SECONDS = 2.0  # how long a closing connection still reads and discards
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Recorder(Protocol):
    """Who hears how requests went (recorder.py): routed, ended, refused."""

    def request_started(self, route: Route) -> None: ...
    def request_done(self, outcome: Outcome) -> None: ...
    def request_rejected(self, status: int, reason: str, client_ip: bytes) -> None: ...


class ProxyContext:
    """Everything a connection needs, built once at startup and shared by all connections."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        director: Director,
        upstreams: dict[str, ConnectionPool],
        limits: LimitsConfig,
        trusted_proxies: Sequence[Network],
        recorder: Recorder,
    ) -> None:
        self.loop = loop
        self.director = director
        self.upstreams = upstreams  # by backend address (``BackendRuntime.address``)
        self.limits = limits
        self.trusted_proxies = tuple(trusted_proxies)
        self.recorder = recorder
        self.connections: set[Downstream] = set()
        self.is_draining = False
        self.scheme = b"http"  # b"https" once the listener speaks TLS

    def is_trusted(self, ip: str) -> bool:
        if not self.trusted_proxies:
            return False
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in self.trusted_proxies)


class Downstream(asyncio.Protocol):
    def __init__(self, ctx: ProxyContext) -> None:
        self.ctx = ctx
        self.loop = ctx.loop
        self.limits = ctx.limits
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: http11.Headers = []
        self.lheaders: http11.Headers = []
        self.head_bytes = 0
        self.header_bytes = 0
        self.client_ip = b""
        self.is_trusted = False
        self.current: Exchange | None = None
        self.parsing: Exchange | None = None
        self.upgrading: Exchange | None = None
        self.pipeline: deque[Exchange] = deque()
        self.in_message = False
        self.message_started = 0.0
        self.last_read = 0.0
        self.is_closing = False
        self._write_paused_at = 0.0  # since when the client has not taken our bytes
        self._body_paused = False
        self._pipeline_paused = False
        self._reading_paused = False
        self._bad: BadRequest | None = None
        self._pending_reject: bytes | None = None
        self._corked: list[bytes] | None = None
        self._watchdog = Watchdog(self.loop, self._on_timer)

    def __repr__(self) -> str:
        return (
            f"<Downstream {self.client_ip.decode()} current={self.current!r} "
            f"pipeline={len(self.pipeline)} closing={self.is_closing}>"
        )

    # connection life cycle -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = transport = cast(asyncio.Transport, transport)
        transport.set_write_buffer_limits(high=64 * 1024)
        peer = transport.get_extra_info("peername")
        ip = peer[0] if isinstance(peer, tuple) else "unknown"
        self.client_ip = ip.encode()
        self.is_trusted = self.ctx.is_trusted(ip)
        self.ctx.connections.add(self)
        self.last_read = self.loop.time()
        self._arm(self.last_read + self.limits.keepalive_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.is_closing = True
        self.ctx.connections.discard(self)
        self._watchdog.cancel()
        current, self.current = self.current, None
        if current is not None:
            current.client_lost()
        self.pipeline.clear()

    def data_received(self, data: bytes) -> None:
        if self.upgrading is not None:
            self.upgrading.tunnel_from_client(data)
            return
        if self.is_closing:
            return
        self.last_read = self.loop.time()
        if self.parsing is None:
            self.head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._tunnel_tail(data[upgrade.args[0] :])
        except httptools.HttpParserError as exc:
            bad, self._bad = self._bad, None
            broken, self.parsing = self.parsing, None
            if broken is not None:  # bad body framing: that request cannot be completed
                self._body_failed(broken, 400, f"malformed request body: {exc}")
            elif bad is not None:
                self._reject(bad.status, bad.reason)
            elif isinstance(exc, httptools.HttpParserInvalidMethodError):
                # llhttp stops at the first byte no known method starts with, so "FOO / HTTP/1.1"
                # and "GARBAGE" look alike: 501 only for a well-formed request line.
                if http11.is_request_line(data):
                    self._reject(501, "method not implemented")
                else:
                    self._reject(400, "malformed request line")
            else:
                self._reject(400, f"malformed request: {exc}")
            return
        # A head still incomplete after this read: bound what llhttp may be buffering for us
        # (one read at most beyond the limit).
        if (
            self.in_message
            and self.parsing is None
            and self.head_bytes > self.limits.max_header_bytes + self.limits.max_url_bytes
        ):
            self._reject(431, "request header fields too large")

    def _tunnel_tail(self, tail: bytes) -> None:
        # A method of its own: the parser's callbacks have just set ``upgrading``, which
        # data_received's own narrowing (None, from its first line) does not know;
        # mypyc trusts that narrowing.
        if self.upgrading is not None and tail:
            self.upgrading.tunnel_from_client(tail)

    def pause_writing(self) -> None:
        self._write_paused_at = self.loop.time()
        if self.current is not None:
            self.current.client_write_paused(self._write_paused_at)

    def resume_writing(self) -> None:
        self._write_paused_at = 0.0
        if self.current is not None:
            self.current.client_write_resumed()

    def _start(self, exchange: Exchange) -> None:
        self.current = exchange
        if self._write_paused_at:  # still paused by the response before this one
            exchange.client_write_paused(self._write_paused_at)
        exchange.start()

    # httptools callbacks ---------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.lheaders = []
        self.header_bytes = 0
        self.in_message = True
        self.message_started = time.monotonic()  # uvloop's loop.time() has ms resolution
        self._arm(self.loop.time() + self.limits.header_timeout)

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self.limits.max_url_bytes:
            self._fail(414, "request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        # A head that arrives in one read completes before data_received can measure it.
        self.header_bytes += len(name) + len(value) + 4
        if self.parsing is not None:
            # A chunked body's trailer (llhttp reports its fields here too): dropped, as
            # nginx does (RFC 9110 §6.5.1 lets a proxy discard them). Never added to the
            # head: one still queued behind a request in flight is forwarded later, and a
            # trailer must not smuggle fields past the head's validation.
            if self.header_bytes > self.limits.max_header_bytes:
                self._fail(431, "request trailer fields too large")
            return
        self.headers.append((name, value))
        self.lheaders.append((name.lower(), value))
        if self.header_bytes > self.limits.max_header_bytes:
            self._fail(431, "request header fields too large")
        if len(self.headers) > MAX_HEADERS:
            self._fail(431, "too many header fields")

    def on_headers_complete(self) -> None:
        head = self._build_head()
        self.head_bytes = 0
        exchange = Exchange(self, head)
        self.parsing = exchange
        if head.upgrade is not None:
            self.upgrading = exchange
            # Nothing more is read until the backend accepts (101) or refuses the upgrade:
            # what the client sends early must not pile up unbounded.
            self._pipeline_paused = True
            self._update_reading()
        if head.body_kind:
            self._arm(self.loop.time() + self.limits.body_timeout)
        if self.current is None:
            self._start(exchange)
        else:
            self.pipeline.append(exchange)
            self._pipeline_paused = True
            self._update_reading()

    def on_body(self, body: bytes) -> None:
        if self.parsing is not None:
            self.parsing.feed_body(body)

    def on_message_complete(self) -> None:
        exchange, self.parsing = self.parsing, None
        self.in_message = False
        if exchange is not None:
            exchange.body_complete()

    # request head validation -----------------------------------------------------------------
    def _build_head(self) -> RequestHead:
        parser = self.parser
        head = RequestHead()
        head.method = parser.get_method()
        head.keep_alive = parser.should_keep_alive()
        head.headers = self.headers
        head.lheaders = self.lheaders
        head.client_ip = self.client_ip
        head.is_trusted = self.is_trusted
        head.scheme = self.ctx.scheme
        head.started = self.message_started
        try:
            read_head(head, parser.get_http_version(), self.url, parser.should_upgrade())
        except BadRequest as bad:
            self._bad = bad  # re-raised by httptools as a callback error; data_received answers
            raise
        return head

    def _fail(self, status: int, reason: str) -> None:
        self._bad = BadRequest(status, reason)
        raise self._bad

    def _reject(self, status: int, reason: str) -> None:
        """Refuse a malformed request: answer with its status and close the connection."""
        if self.is_closing:
            return
        self.ctx.recorder.request_rejected(status, reason, self.client_ip)
        response = http11.simple_response(status, reason, keep_alive=False)
        self._pipeline_paused = True
        self._update_reading()
        if self.current is not None:
            self._pending_reject = response  # answer in order, after the request in flight
            return
        self.write(response)
        self._close()

    # used by the exchange --------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if self._corked is not None:
            self._corked.append(data)
            return
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def cork(self) -> bool:
        """Collect writes until ``uncork``: a response head and body leave in one send."""
        if self._corked is not None:
            return False
        self._corked = []
        return True

    def uncork(self) -> None:
        corked, self._corked = self._corked, None
        if corked:
            self.write(corked[0] if len(corked) == 1 else b"".join(corked))

    def can_keep_alive(self, head: RequestHead) -> bool:
        return (
            head.keep_alive
            and head.upgrade is None
            and not self.ctx.is_draining
            and not self.is_closing
        )

    def set_body_paused(self, paused: bool) -> None:
        self._body_paused = paused
        self._update_reading()

    def start_tunnel(self, exchange: Exchange) -> None:
        self._pipeline_paused = False
        self._body_paused = False
        self._update_reading()

    def abort(self) -> None:
        self.is_closing = True
        if self.transport is not None:
            self.transport.abort()

    def exchange_finished(self, exchange: Exchange, keep_alive: bool) -> None:
        if exchange is not self.current:
            return
        self.current = None
        self._body_paused = False  # backpressure from that exchange's upstream is over
        if exchange.is_tunnel or not keep_alive or self.is_closing:
            self._close()
            return
        if self.pipeline:
            current = self.pipeline.popleft()
            if current is self.parsing:
                # Its body is still to come: read it (body backpressure bounds the buffer).
                self._pipeline_paused = False
                self._update_reading()
            self._start(current)
            return
        if self._pending_reject is not None:
            # A refused request came after the ones answered: its answer, then the close.
            self.write(self._pending_reject)
            self._close()
            return
        self._pipeline_paused = False
        self._update_reading()
        self._arm(self.loop.time() + self.limits.keepalive_timeout)

    def close_if_idle(self) -> None:
        if self.current is None and not self.in_message:
            self._close()

    # internals -------------------------------------------------------------------------------
    def _close(self) -> None:
        self.uncork()  # what was written before the close still goes out
        self.is_closing = True
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self.in_message and transport.can_write_eof():
            # The client may still be sending a request we will not read. Closing now would
            # answer its bytes with a reset that can destroy our response in flight; instead
            # half-close and discard what arrives for a while (nginx's lingering close).
            transport.write_eof()
            transport.resume_reading()
            self.loop.call_later(LINGER_SECONDS, transport.close)
            return
        transport.close()

    def _update_reading(self) -> None:
        paused = self._body_paused or self._pipeline_paused
        if paused != self._reading_paused and self.transport is not None:
            self._reading_paused = paused
            if paused:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    def _arm(self, deadline: float) -> None:
        """Make sure the watchdog runs by ``deadline``; it re-reads the state when it fires."""
        self._watchdog.arm(deadline)

    def _on_timer(self) -> None:
        if self.is_closing:
            return
        now = self.loop.time()
        limits = self.limits
        parsing = self.parsing
        if self.upgrading is not None and self.upgrading.is_tunnel:
            return  # tunnels have no proxy-side deadline; either side may close
        # While reading is paused (backpressure, or a pipelined request waiting its turn) we
        # are the slow side, not the client.
        if self.in_message and parsing is None:
            deadline = now + self.message_started + limits.header_timeout - time.monotonic()
            if self._reading_paused:
                deadline = now + limits.header_timeout
            elif now >= deadline:
                self._reject(408, "timed out reading the request head")
                return
        elif parsing is not None and not parsing.req_done:
            deadline = self.last_read + limits.body_timeout
            if self._reading_paused:
                deadline = now + limits.body_timeout
            elif now >= deadline:
                self._body_failed(parsing, 408, "timed out reading the request body")
                return
        elif self.current is None:
            deadline = self.last_read + limits.keepalive_timeout
            if now >= deadline:
                self._close()
                return
        else:
            return  # waiting on the upstream: its own deadlines apply
        self._arm(deadline)

    def _body_failed(self, exchange: Exchange, status: int, reason: str) -> None:
        """A request whose body will not complete: stalled (408) or badly framed (400)."""
        if exchange is not self.current:
            # Queued behind the request in flight: it never starts, and is answered in turn.
            if exchange in self.pipeline:
                self.pipeline.remove(exchange)
            self._reject(status, reason)
        elif exchange.resp_started:
            self.abort()  # the answer is under way: cutting the connection is all that is left
            exchange.client_lost()
        else:
            # Routed and counted already: one response for it, not a rejection plus a 499.
            exchange.client_failed(status, reason)


class ProxyServer:
    """The listening socket(s) and the drain on shutdown."""

    def __init__(self, ctx: ProxyContext) -> None:
        self.ctx = ctx
        self.server: asyncio.Server | None = None

    async def start(
        self, host: str, port: int, tls: ssl.SSLContext | None = None, reuse_port: bool = False
    ) -> tuple[str, int]:
        """Listen on host:port, over TLS with ``tls`` (whose certificate may be re-loaded
        in place: new handshakes use the new one, open connections keep theirs)."""
        self.ctx.scheme = b"https" if tls is not None else b"http"
        self.server = await self.ctx.loop.create_server(
            lambda: Downstream(self.ctx),
            host,
            port,
            reuse_address=True,
            reuse_port=reuse_port,  # workers: each its own socket on one port (SO_REUSEPORT)
            backlog=1024,
            ssl=tls,
            ssl_handshake_timeout=self.ctx.limits.header_timeout if tls is not None else None,
        )
        server: Any = self.server  # uvloop's sockets are a list, typeshed says tuple
        sockets: Sequence[socket.socket] = server.sockets
        sockname = sockets[0].getsockname()
        return str(sockname[0]), int(sockname[1])

    async def drain(self, grace: float) -> None:
        """Stop accepting, let in-flight requests finish within ``grace``, then cut the rest."""
        self.ctx.is_draining = True
        if self.server is not None:
            self.server.close()
        for conn in list(self.ctx.connections):
            conn.close_if_idle()
        deadline = self.ctx.loop.time() + grace
        # Polling only while shutting down; an Event would cost every connection_lost a check.
        while self.ctx.connections and self.ctx.loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        for conn in list(self.ctx.connections):
            conn.abort()
        for upstream in self.ctx.upstreams.values():
            upstream.close_all()

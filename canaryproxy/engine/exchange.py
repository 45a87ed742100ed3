"""One request/response through the proxy: route, connect, stream both ways, record.

Rules (the README's "Proxying"; RFC 9112 §9.3.1 for retries):
- A connect failure (or connect timeout) is retried once on another backend of the pool,
  or of the other pool when this one has none left; the second failure answers 502.
- A reused keep-alive connection that dies before any response byte is retried once on a
  fresh connection, only for idempotent methods without a body: a request that may have
  reached a backend with a body is never sent twice (nginx's rule).
- No response head within ``timeouts.response`` of the request being sent → 504 (while the
  client still uploads, its own ``body_timeout`` applies; a backend that stops taking the
  body for that long is a 504 too); the same span of silence while the response body
  streams aborts the client connection, as does an upstream that dies mid-body.
- Bodies stream with backpressure: the client is paused while the upstream's write buffer is
  full (and vice versa); at most one socket read is buffered while no upstream is attached.
- Everything here runs in loop callbacks; only opening a connection is a coroutine.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from canaryproxy.decide.director import Outcome
from canaryproxy.http import http11
from canaryproxy.http.http11 import LAST_CHUNK, VIA, Headers, chunk
from canaryproxy.http.request import CHUNKED_BODY, NO_BODY, RequestHead, upstream_head
from canaryproxy.vocabulary import FailureKind

if TYPE_CHECKING:
    from canaryproxy.decide.director import BackendRuntime, Route
    from canaryproxy.engine.server import Downstream, ProxyContext
    from canaryproxy.engine.upstream import UpstreamConn

BODY_BUFFER_LIMIT = 64 * 1024
NO_BODY_STATUSES = frozenset({204, 304})
CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"
# RFC 9110 §9.3.7: ``OPTIONS *`` asks about the server itself; to its clients that is the proxy.
OPTIONS_ALLOW = ((b"Allow", b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),)


class Exchange:
    __slots__ = (
        "_connect_task",
        "backend",
        "body_buffer",
        "body_buffered",
        "client_paused_at",
        "conn",
        "connect_failures",
        "ctx",
        "down",
        "head",
        "head_latency",
        "is_done",
        "is_local",
        "is_tunnel",
        "limits",
        "marked_failed",
        "req_done",
        "resp_chunked",
        "resp_close",
        "resp_connection",
        "resp_headers",
        "resp_started",
        "resp_until_eof",
        "retried_reuse",
        "route",
        "send_paused_at",
        "sent_at",
        "status",
        "tunnel_pending",
        "upstream_head",
    )

    def __init__(self, down: Downstream, head: RequestHead) -> None:
        self.down = down
        self.ctx: ProxyContext = down.ctx
        self.limits = down.limits  # the connection's: a reload does not change them mid-way
        self.head = head
        self.route: Route | None = None
        self.backend: BackendRuntime | None = None
        self.conn: UpstreamConn | None = None
        self.body_buffer: list[bytes] = []
        self.body_buffered = 0
        self.req_done = head.body_kind == NO_BODY
        self.resp_headers: Headers = []
        self.resp_connection: list[bytes] = []  # values of the response's Connection fields
        self.resp_started = False
        self.resp_chunked = False
        self.resp_close = False
        self.resp_until_eof = False
        self.status = 0
        self.head_latency = -1.0  # request start to the backend's response head, seconds
        self.marked_failed = False  # the backend's outcomes.header said failure
        self.is_done = False
        self.is_local = False
        self.is_tunnel = False
        self.tunnel_pending: list[bytes] = []
        self.connect_failures = 0
        self.retried_reuse = False
        self.upstream_head = b""
        self.sent_at = 0.0  # when a body that streamed to an attached upstream ended
        self.send_paused_at = 0.0  # since when the upstream has not taken our body bytes
        self.client_paused_at = 0.0  # since when the client has not taken our response bytes
        self._connect_task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        h = self.head
        return (
            f"<Exchange {h.method.decode()} {h.target!r} status={self.status} done={self.is_done}>"
        )

    # start: route and pick a backend ---------------------------------------------------------
    def start(self) -> None:
        head = self.head
        route = self.ctx.director.route(head)
        if route is None:
            # No path_prefix matches "*" (config requires a leading "/"), so OPTIONS * lands
            # here, off the hot path, and is answered without connecting anywhere.
            if head.target == b"*":
                self.respond_locally(200, "", extra=OPTIONS_ALLOW)
            else:
                self.respond_locally(404, "no service matches this host and path")
            return
        self.route = route
        self.ctx.recorder.request_started(route)
        if head.expect_continue and not self.req_done:
            self.down.write(CONTINUE_100)
        self.upstream_head = upstream_head(head, route.service.strip_header)
        self._try_next_backend()

    def _try_next_backend(self) -> None:
        assert self.route is not None
        backend = self.ctx.director.next_backend(self.route)
        if backend is None:
            if self.connect_failures:
                self.respond_locally(502, "could not connect to any backend")
            else:
                self.respond_locally(503, "no healthy backend")
            return
        self.backend = backend
        conn = self.ctx.upstreams[backend.address].take_idle()
        if conn is not None:
            self._send(conn)
        else:
            self._connect_task = self.ctx.loop.create_task(self._connect(backend))

    async def _connect(self, backend: BackendRuntime) -> None:
        assert self.route is not None
        try:
            upstream = self.ctx.upstreams[backend.address]
            conn = await upstream.connect(self.route.service.connect_timeout)
        except (OSError, TimeoutError) as exc:
            self._connect_task = None
            if self.is_done:
                return
            kind: FailureKind = "timeout" if isinstance(exc, TimeoutError) else "connect"
            self.ctx.director.attempt_failed(self.route, backend, kind)
            self.connect_failures += 1
            if self.connect_failures >= 2:
                self.respond_locally(502, "could not connect to a backend")
            else:
                self._try_next_backend()
            return
        self._connect_task = None
        if self.is_done:
            conn.close()
            return
        self._send(conn)

    # request: head and body upstream ---------------------------------------------------------
    def _send(self, conn: UpstreamConn) -> None:
        assert self.route is not None
        self.conn = conn
        conn.attach(self)
        if self.head.host:
            conn.write(self.upstream_head)
        else:
            # HTTP/1.0 without Host: HTTP/1.1 upstream needs one; name the backend (as nginx).
            assert self.backend is not None
            host = self.backend.address.encode()
            conn.write(self.upstream_head[:-2] + b"Host: %b\r\n\r\n" % host)
        if self.body_buffer:
            conn.write(b"".join(self.body_buffer))
            self.body_buffer = []
            self.body_buffered = 0
            self.down.set_body_paused(False)
        now = self.ctx.loop.time()
        if self.req_done:
            self.sent_at = now  # the response deadline counts from the end of the request
        conn.watch(now + self.route.service.response_timeout)

    def feed_body(self, data: bytes) -> None:
        if self.head.body_kind == CHUNKED_BODY:
            data = chunk(data)
        self._forward_body(data)

    def body_complete(self) -> None:
        if self.head.body_kind == CHUNKED_BODY:
            self._forward_body(LAST_CHUNK)
        self.req_done = True
        if self.conn is not None:
            self.sent_at = self.ctx.loop.time()  # the response deadline counts from here

    def _forward_body(self, data: bytes) -> None:
        conn = self.conn
        if conn is not None:
            conn.write(data)
            return
        if self.is_done:
            return
        self.body_buffer.append(data)
        self.body_buffered += len(data)
        if self.body_buffered > BODY_BUFFER_LIMIT:
            self.down.set_body_paused(True)

    def pause_request_body(self) -> None:
        if not self.send_paused_at:
            self.send_paused_at = self.ctx.loop.time()
        self.down.set_body_paused(True)

    def resume_request_body(self) -> None:
        self.send_paused_at = 0.0
        self.down.set_body_paused(False)

    # backpressure between the two sides: each side calls the exchange, never the other --------
    def client_write_paused(self, now: float) -> None:
        """The client's write buffer is full: stop reading the backend until it drains; a
        client that stops reading for ``body_timeout`` is cut off (``check_deadlines``)."""
        self.client_paused_at = now
        conn = self.conn
        if conn is not None:
            conn.pause_reading()
            conn.watch(now + self.limits.body_timeout)

    def client_write_resumed(self) -> None:
        self.client_paused_at = 0.0
        if self.conn is not None:
            self.conn.resume_reading()

    def cork_client(self) -> bool:
        """Collect what goes to the client until ``uncork_client``: one send per read."""
        return self.down.cork()

    def uncork_client(self) -> None:
        self.down.uncork()

    # response: head, body, end ---------------------------------------------------------------
    def on_response_head(self, status: int, conn: UpstreamConn) -> None:
        if 100 <= status < 200 and status != 101:
            self.resp_headers = []  # interim responses are not forwarded (as nginx)
            self.resp_connection = []
            return
        self.status = status
        self.head_latency = time.monotonic() - self.head.started
        assert self.route is not None
        assert self.backend is not None
        self.ctx.director.upstream_answered(self.route, self.backend, status)
        if status == 101:
            if self.head.upgrade is None:
                self.upstream_failed("protocol", "unexpected 101 from upstream")
                return
            self._start_tunnel()
            return
        bodiless = self.head.method == b"HEAD" or status in NO_BODY_STATUSES
        self._write_response_head(status, bodiless)
        if bodiless:
            self.on_response_complete()  # reads keep-alive from the parser: before the reset
            conn.reset_parser()  # llhttp does not know the request was HEAD
        elif self.client_paused_at:
            # The client stopped taking bytes before this response began: read no more of
            # its body until it does (the head itself was read: the backend is not late).
            conn.pause_reading()

    def _write_response_head(self, status: int, bodiless: bool) -> None:
        assert self.route is not None
        out = [http11.status_line(status)]
        skip = http11.hop_by_hop_names(self.resp_connection)
        outcome_header = self.route.service.outcome_header
        has_length = has_te = False
        for name, value in self.resp_headers:
            lname = name.lower()
            if lname in skip or lname.startswith(b"proxy-"):
                if lname == b"transfer-encoding":
                    has_te = True
                continue
            if lname == outcome_header:
                if value.strip().lower() == b"failure":
                    self.marked_failed = True
                continue
            if lname == b"content-length":
                has_length = True
            out += (name, b": ", value, b"\r\n")  # joined once below: no bytes per line
        out.append(b"Via: " + VIA + b"\r\n")
        if self.route.set_cookie is not None:
            out.append(b"Set-Cookie: " + self.route.set_cookie + b"\r\n")
        # Never both framings here: llhttp refuses such a response (a 502, as nginx).
        if not bodiless and (has_te or not has_length):
            if self.head.version == b"1.1":
                self.resp_chunked = True
                out.append(b"Transfer-Encoding: chunked\r\n")
            else:
                self.resp_close = True
            self.resp_until_eof = not has_te
        # An upload still arriving cannot be read past: the connection closes after this.
        keep_alive = self.down.can_keep_alive(self.head) and not self.resp_close and self.req_done
        if not keep_alive:
            self.resp_close = True
            out.append(b"Connection: close\r\n")
        elif self.head.version == b"1.0":
            out.append(b"Connection: keep-alive\r\n")
        out.append(b"\r\n")
        self.resp_started = True
        self.down.write(b"".join(out))

    def on_response_body(self, data: bytes) -> None:
        if self.is_done:
            return
        self.down.write(chunk(data) if self.resp_chunked else data)

    def on_response_complete(self) -> None:
        if self.is_done or not self.resp_started or self.is_tunnel:
            return
        if self.resp_chunked:
            self.down.write(LAST_CHUNK)
        conn = self.conn
        self.conn = None
        if conn is not None:
            # llhttp says no keep-alive for an unframed HEAD response: a reconnect, not a risk.
            reusable = self.req_done and not self.resp_until_eof and conn.parser.should_keep_alive()
            conn.release(reusable)
        self._finish(self.status, keep_alive=not self.resp_close and self.req_done)

    # failures ------------------------------------------------------------------------------
    def upstream_lost(self, exc: Exception | None) -> None:
        """The backend connection closed while this exchange owned it."""
        conn, self.conn = self.conn, None
        if self.is_done:
            return
        if self.is_tunnel:
            self._finish(101, keep_alive=False)
            return
        if self.resp_started:
            if self.resp_until_eof and exc is None:  # a reset is no end of a body: abort
                self.on_response_complete_eof()
            else:
                self._abort_midbody("reset")
            return
        if (
            conn is not None
            and conn.requests > 1
            and not self.retried_reuse
            and self.head.method in http11.IDEMPOTENT
            and self.head.body_kind == NO_BODY
        ):
            # A stale keep-alive connection: the request provably never got an answer and
            # carries no body, so sending it again on a fresh connection is safe.
            self.retried_reuse = True
            assert self.backend is not None
            self._connect_task = self.ctx.loop.create_task(self._connect(self.backend))
            return
        self._fail(502, "reset", "upstream closed the connection before answering")

    def on_response_complete_eof(self) -> None:
        """A close-delimited upstream body ended cleanly at EOF."""
        self.resp_until_eof = False
        if self.resp_chunked:
            self.down.write(LAST_CHUNK)
        self._finish(self.status, keep_alive=not self.resp_close and self.req_done)

    def upstream_failed(self, kind: FailureKind, message: str) -> None:
        """Garbage, an oversized head, or a framing error from the backend."""
        if self.is_done:
            return
        if self.resp_started:
            self._abort_midbody(kind)
        else:
            self._fail(502, kind, message)

    def check_deadlines(self, now: float) -> float | None:
        """The connection's watchdog asks: act on a passed deadline, or say when to look again.

        Waiting for the head: ``timeouts.response`` from the end of the request (or from when
        the backend stopped taking its body) → 504.  Streaming the body: the same span of
        silence from the backend → the client connection is aborted.
        """
        conn = self.conn
        if self.is_done or self.is_tunnel or conn is None:
            return None
        assert self.route is not None
        timeout = self.route.service.response_timeout
        if self.resp_started:
            if self.client_paused_at:
                # The client is the slow side; one that stops reading altogether for
                # body_timeout is cut off (nginx's send_timeout), charged to no pool.
                due = self.client_paused_at + self.limits.body_timeout
                if now >= due:
                    self._drop_conn()
                    self.down.abort()
                    self._finish(self.status, keep_alive=False, aborted=True)
                    return None
                return min(due, now + timeout)
            due = conn.last_read + timeout
            if now >= due:
                self._abort_midbody("timeout")
                return None
            return due
        if self.req_done:
            due = self.sent_at + timeout
        elif self.send_paused_at:
            due = self.send_paused_at + timeout  # the backend stopped taking the body
        else:
            return now + timeout  # the client is still uploading: not the backend's time yet
        if now >= due:
            self._fail(504, "timeout", "upstream did not answer in time")
            return None
        return due

    def _fail(self, status: int, kind: FailureKind, message: str) -> None:
        """Answer the client ourselves after an upstream error charged to the backend."""
        assert self.route is not None
        assert self.backend is not None
        self.ctx.director.attempt_failed(self.route, self.backend, kind)
        self._drop_conn()
        self.respond_locally(status, message)

    def _abort_midbody(self, kind: FailureKind) -> None:
        assert self.route is not None
        assert self.backend is not None
        self.ctx.director.attempt_failed(self.route, self.backend, kind)
        self._drop_conn()
        self.down.abort()
        self._finish(self.status, keep_alive=False, aborted=True)

    def _drop_conn(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.abort()

    # websocket tunnel ----------------------------------------------------------------------
    def _start_tunnel(self) -> None:
        assert self.conn is not None
        self._write_upgrade_head()
        # Recorded once, now, as a 101 with the handshake's latency: a tunnel's lifetime is
        # no request latency (it must not feed the histogram or the judge's p99).
        self._record(101, False)
        self.is_tunnel = True
        pending, self.tunnel_pending = self.tunnel_pending, []
        for data in pending:
            self.conn.write(data)
        self.down.start_tunnel(self)

    def _write_upgrade_head(self) -> None:
        out = [http11.status_line(101)]
        named = http11.named_hop_by_hop(self.resp_connection)
        for name, value in self.resp_headers:
            lname = name.lower()
            if not http11.is_hop_by_hop(lname, named):
                out.append(b"%b: %b\r\n" % (name, value))
            elif lname == b"upgrade":
                out.append(b"Upgrade: %b\r\n" % value)
        out.append(b"Connection: upgrade\r\nVia: " + VIA + b"\r\n\r\n")
        self.resp_started = True
        self.down.write(b"".join(out))

    def tunnel_from_upstream(self, data: bytes) -> None:
        self.down.write(data)

    def tunnel_from_client(self, data: bytes) -> None:
        if self.conn is not None and self.is_tunnel:
            self.conn.write(data)
        elif not self.is_done:
            self.tunnel_pending.append(data)

    # the end -------------------------------------------------------------------------------
    def respond_locally(
        self, status: int, message: str, extra: Sequence[tuple[bytes, bytes]] = ()
    ) -> None:
        if self.is_done:
            return
        self.status = status
        self.is_local = True
        self.resp_started = True
        keep_alive = self.down.can_keep_alive(self.head) and self.req_done
        self.down.write(
            http11.simple_response(
                status,
                message,
                keep_alive=keep_alive,
                request_id=self.head.request_id,
                extra=extra,
            )
        )
        self._finish(status, keep_alive=keep_alive)

    def _finish(self, status: int, *, keep_alive: bool, aborted: bool = False) -> None:
        self.is_done = True
        try:
            if not self.is_tunnel:  # a tunnel was recorded when it opened
                self._record(status, aborted)
        finally:  # the connection must move on whatever accounting did
            self.down.exchange_finished(self, keep_alive)

    def _record(self, status: int, aborted: bool) -> None:
        outcome = Outcome(
            self.head,
            self.route,
            self.backend,
            status,
            time.monotonic() - self.head.started,
            is_local=self.is_local,
            answered=self.resp_started and not self.is_local,
            aborted=aborted,
            head_latency=self.head_latency,
            marked_failed=self.marked_failed,
        )
        self.ctx.recorder.request_done(outcome)

    def client_failed(self, status: int, reason: str) -> None:
        """The request body will not complete (the client stalled or broke its framing):
        answer ``status``; a partly sent request is cut off upstream, never completed."""
        self._drop_conn()  # a connect in flight closes what it opens once it sees is_done
        self.respond_locally(status, reason)

    def client_lost(self) -> None:
        """The client went away before the answer was complete: 499, charged to no pool."""
        if self.is_tunnel:  # the normal end of a tunnel, from the client's side
            self.is_done = True
            self._drop_conn()
            return
        if self.is_done:
            return
        self.is_done = True
        # A connect in flight is not cancelled: a cancel landing after the socket opened
        # would leak it. The task sees is_done and closes what it opened.
        self._drop_conn()
        self.status = 499
        self._record(499, True)

"""Differential fuzzing of the request path: what reaches a backend is what the client sent.

    python -m benchmarks.fuzz [--examples 20000] [--seed N]

Hypothesis builds request bytes and mutates them (framing headers, whitespace, control
characters, chunk sizes, duplicates, long values, bare LF, pipelined requests) and sends
each through a real canaryproxy to a recording backend. An independent parser, h11, reads
the same client bytes. The invariant, per example:

- the backend never receives more complete requests than h11 reads from the client's
  bytes (no smuggling), and each one it receives is the one h11 read: same method, target
  and body, and the same headers once hop-by-hop ones (and what ``Connection`` names),
  names with ``_``, and the ``X-Forwarded-*``/``X-Request-Id``/``Expect`` the proxy sets
  itself are left out on both sides;
- every request the proxy answered itself (its 4xx/5xx) reached the backend as no
  complete request: the backend's own answers carry ``X-Backend: yes``, so the number of
  them equals the number of requests the backend completed;
- the backend's parser never fails on what the proxy sent.

A request whose body stalls may reach the backend in part before the proxy answers 408
and cuts that connection: the proxy streams bodies (it does not buffer them as nginx does
by default), so only a *complete* request counts as received.

``tests/test_fuzz.py`` runs a bounded number of examples in CI; this module runs long
campaigns and prints what it found.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import h11
import hypothesis
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from canaryproxy.app import Proxy
from canaryproxy.config.load import parse_config
from canaryproxy.outcomes.accesslog import AccessLog
from canaryproxy.state.store import MemoryStateStore

HOST = "127.0.0.1"
# The RFC's hop-by-hop fields, written out here rather than taken from the proxy: a wrong
# list in the proxy must show up as a difference, not be shared by both sides.
HOP_BY_HOP = {
    b"connection",
    b"keep-alive",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
    b"http2-settings",
    b"proxy-connection",
    b"proxy-authenticate",
    b"proxy-authorization",
}
SET_BY_PROXY = {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-request-id"}
# Set by the proxy, or compared apart (Host: ``origin_form``).
ADDED_BY_PROXY = {*SET_BY_PROXY, b"via", b"content-length", b"expect", b"host"}


@dataclass(frozen=True)
class Request:
    method: bytes
    target: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes


class Reading:
    """One request as h11 delivers it, event by event."""

    def __init__(self) -> None:
        self.head: h11.Request | None = None
        self.body = b""

    def feed(self, event: object) -> Request | None:
        """Take an event; the whole request once its end arrives."""
        if isinstance(event, h11.Request):
            self.head, self.body = event, b""
        elif isinstance(event, h11.Data):
            self.body += event.data
        elif isinstance(event, h11.EndOfMessage) and self.head is not None:
            head = self.head
            headers = tuple((bytes(n), bytes(v)) for n, v in head.headers.raw_items())
            return Request(head.method, head.target, headers, self.body)
        return None


# --- the recording backend -------------------------------------------------------------------


@dataclass
class Recording:
    requests: list[Request] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    received: int = 0  # bytes, complete requests or not

    def clear(self) -> None:
        self.requests.clear()
        self.errors.clear()
        self.received = 0


async def _backend_connection(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, recording: Recording
) -> None:
    conn = h11.Connection(h11.SERVER)
    reading = Reading()
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                recording.received += len(data)
                conn.receive_data(data)
                if not data:
                    return
                continue
            if isinstance(event, h11.ConnectionClosed):
                return
            request = reading.feed(event)
            if request is not None:
                recording.requests.append(request)
                out = conn.send(
                    h11.Response(
                        status_code=200, headers=[("Content-Length", "2"), ("X-Backend", "yes")]
                    )
                )
                out += conn.send(h11.Data(data=b"ok")) + conn.send(h11.EndOfMessage())
                writer.write(out)
                await writer.drain()
                conn.start_next_cycle()
    except h11.RemoteProtocolError as exc:
        recording.errors.append(f"backend could not parse what the proxy sent: {exc}")
    except (ConnectionError, h11.LocalProtocolError):
        pass
    finally:
        writer.close()


# --- the proxy and backend, in a thread of their own ------------------------------------------


@dataclass
class Harness:
    port: int
    recording: Recording

    def send(self, data: bytes, timeout: float = 2.0) -> bytes:
        """Send ``data`` on a fresh connection, half-close, read until the proxy closes."""
        with socket.create_connection((HOST, self.port), timeout=timeout) as sock:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            chunks = []
            deadline = time.monotonic() + timeout
            try:
                while time.monotonic() < deadline:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
            except (TimeoutError, ConnectionError):
                pass
        return b"".join(chunks)


@contextmanager
def running_harness() -> Iterator[Harness]:
    """A real proxy in front of the recording backend, on loopback, in a background loop."""
    loop = uvloop.new_event_loop()
    recording = Recording()
    ready = threading.Event()
    holder: dict[str, Any] = {}

    async def start() -> None:
        backend = await asyncio.start_server(
            lambda r, w: _backend_connection(r, w, recording), HOST, 0
        )
        backend_port = backend.sockets[0].getsockname()[1]
        config = parse_config(
            {
                "listen": f"{HOST}:0",
                "admin": {"listen": f"{HOST}:0", "token": "fuzz" * 8},
                "sticky": {"secrets": ["fuzz" * 8]},
                "access_log": "off",
                "limits": {"header_timeout": "500ms", "body_timeout": "500ms"},
                "services": {
                    "web": {"stable": {"backends": [{"url": f"http://{HOST}:{backend_port}"}]}}
                },
            },
            env={},
        )
        proxy = Proxy(config, store=MemoryStateStore(), access_log=AccessLog(None))
        await proxy.start()
        holder.update(proxy=proxy, backend=backend)
        ready.set()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    if not ready.wait(15):
        raise RuntimeError("the proxy did not start")
    proxy: Proxy = holder["proxy"]
    try:
        yield Harness(proxy.proxy_address[1], recording)
    finally:

        async def stop() -> None:
            await proxy.stop()
            holder["backend"].close()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


# --- what h11 reads from the client's bytes ----------------------------------------------------


def client_requests(data: bytes) -> list[Request]:
    """The complete requests h11 reads from ``data``, up to its first complaint."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    conn.receive_data(b"")
    found: list[Request] = []
    reading = Reading()
    try:
        while True:
            event = conn.next_event()
            if not isinstance(event, h11.Request | h11.Data | h11.EndOfMessage):
                return found  # NEED_DATA at the end, a close, or PAUSED
            request = reading.feed(event)
            if request is not None:
                found.append(request)
                # Answer it, so that h11 reads the next one (pipelining).
                conn.send(h11.Response(status_code=200, headers=[("Content-Length", "0")]))
                conn.send(h11.EndOfMessage())
                conn.start_next_cycle()
    except (h11.RemoteProtocolError, h11.LocalProtocolError):
        return found


def comparable(headers: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The end-to-end headers both sides must agree on, in order, names lower-cased."""
    named = {
        token.strip().lower()
        for name, value in headers
        if name.lower() == b"connection"
        for token in value.split(b",")
    }
    kept = []
    for name, value in headers:
        lname = name.lower()
        if (
            lname in HOP_BY_HOP
            or lname in named
            or lname.startswith(b"proxy-")
            or b"_" in lname
            or lname in ADDED_BY_PROXY
        ):
            continue
        kept.append((lname, value.strip()))
    return kept


def origin_form(request: Request) -> tuple[bytes, bytes | None]:
    """(origin-form target, Host) as a reverse proxy forwards them (RFC 9112 §3.2.2): an
    absolute-form target's authority becomes the Host, its path the target."""
    host = next((v.strip() for n, v in request.headers if n.lower() == b"host"), None)
    target = request.target
    for scheme in (b"http://", b"https://"):
        if target[: len(scheme)].lower() == scheme:
            rest = target[len(scheme) :]
            cut = min([i for i in (rest.find(b"/"), rest.find(b"?")) if i != -1] or [len(rest)])
            host, path = rest[:cut], rest[cut:]
            target = path if path.startswith(b"/") else b"/" + path
    return target, host


def violations(data: bytes, response: bytes, recording: Recording) -> list[str]:
    """What breaks the invariant for one example (see the module docstring)."""
    problems = list(recording.errors)
    expected = client_requests(data)
    got = recording.requests
    if len(got) > len(expected):
        problems.append(f"backend got {len(got)} requests, the client sent {len(expected)}")
    for i, (g, e) in enumerate(zip(got, expected, strict=False)):
        (g_target, g_host), (e_target, e_host) = origin_form(g), origin_form(e)
        # HTTP/1.0 without Host: the proxy names the backend (as nginx); any Host will do.
        same_host = e_host is None or g_host == e_host
        if (g.method, g_target, g.body) != (e.method, e_target, e.body) or not same_host:
            problems.append(f"request {i}: backend got {g!r}, client sent {e!r}")
        elif comparable(g.headers) != comparable(e.headers):
            problems.append(
                f"request {i}: headers differ: {comparable(g.headers)} vs {comparable(e.headers)}"
            )
    answered = response.lower().count(b"\r\nx-backend: yes\r\n")
    if answered > len(got):
        problems.append(f"{answered} backend answers for {len(got)} requests received")
    return problems


# --- the request bytes ------------------------------------------------------------------------

_TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-_0123456789", min_size=1, max_size=12)
_VALUE = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40),
    st.binary(max_size=12),  # control characters, obs-text, CR and LF
)
_FRAMING_NAMES = ["Content-Length", "Transfer-Encoding", "Connection", "Host", "Expect",
                  "Upgrade", "X-Forwarded-For", "X_Forwarded_For", "TE", "Keep-Alive",
                  "Proxy-Connection", "HTTP2-Settings", "X-Request-Id"]  # fmt: skip
_FRAMING_VALUES = ["chunked", "gzip, chunked", " chunked", "chunked, gzip", "identity",
                   "0", "5", "-1", "1, 1", "+5", "0x5", "close", "keep-alive", "upgrade",
                   "h2c", "websocket", "100-continue", "app.test", "app.test:99999", "",
                   "a b", "1.2.3.4"]  # fmt: skip


@st.composite
def header(draw: st.DrawFn) -> tuple[bytes, bytes]:
    if draw(st.booleans()):
        name = draw(st.sampled_from(_FRAMING_NAMES)).encode()
        value = draw(st.one_of(st.sampled_from(_FRAMING_VALUES).map(str.encode), _bytes(_VALUE)))
    else:
        name = draw(_TOKEN).encode()
        value = draw(_bytes(_VALUE))
    return name, value


def _bytes(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    return strategy.map(lambda v: v if isinstance(v, bytes) else v.encode("latin-1"))


@st.composite
def chunked(draw: st.DrawFn, body: bytes) -> bytes:
    out = b""
    rest = body
    while rest:
        size = draw(st.integers(1, max(1, len(rest))))
        piece, rest = rest[:size], rest[size:]
        hex_size = b"%x" % len(piece) if draw(st.booleans()) else b"%X" % len(piece)
        ext = draw(st.sampled_from([b"", b";a=b", b" ", b";"]))
        out += hex_size + ext + b"\r\n" + piece + b"\r\n"
    return out + draw(st.sampled_from([b"0\r\n\r\n", b"0\r\nX-T: 1\r\n\r\n", b"00\r\n\r\n"]))


@st.composite
def one_request(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH"]))
    path = draw(st.text(alphabet="abcxyz/?=&%.-_~", max_size=30)).encode()
    target = draw(st.sampled_from([b"/" + path, b"/" + path + b"#f", b"http://app.test/" + path]))
    version = draw(st.sampled_from([b"HTTP/1.1"] * 8 + [b"HTTP/1.0", b"HTTP/1.2"]))
    headers = [(b"Host", b"app.test")] if draw(st.integers(0, 9)) else []
    headers += draw(st.lists(header(), max_size=6))
    body = draw(st.binary(max_size=40))
    framing = draw(st.sampled_from(["none", "length", "chunked", "both", "wrong-length"]))
    if framing == "length" or framing == "both":
        headers.append((b"Content-Length", b"%d" % len(body)))
    if framing == "chunked" or framing == "both":
        headers.append((b"Transfer-Encoding", b"chunked"))
    if framing == "wrong-length":
        headers.append((b"Content-Length", b"%d" % max(0, len(body) - 3)))
    headers = draw(st.permutations(headers))
    eol = b"\r\n" if draw(st.integers(0, 9)) else b"\n"
    lines = [method + b" " + target + b" " + version]
    lines += [name + b":" + draw(st.sampled_from([b" ", b"", b"  "])) + value
              for name, value in headers]  # fmt: skip
    head = eol.join(lines) + eol + eol
    if framing == "chunked" or framing == "both":
        return head + draw(chunked(body))
    return head + (body if framing != "none" else b"")


def requests() -> st.SearchStrategy[bytes]:
    """One request, or a few pipelined ones, as raw bytes."""
    return st.lists(one_request(), min_size=1, max_size=3).map(b"".join)


# --- running ----------------------------------------------------------------------------------


def check(harness: Harness, data: bytes) -> list[str]:
    harness.recording.clear()
    response = harness.send(data)
    time.sleep(0.005)  # the backend's last read may land just after the client's
    return violations(data, response, harness.recording)


def campaign(examples: int, seed: int | None) -> list[tuple[bytes, list[str]]]:
    found: list[tuple[bytes, list[str]]] = []
    with running_harness() as harness:

        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            derandomize=seed is None,
            suppress_health_check=list(HealthCheck),
        )
        @given(requests())
        def explore(data: bytes) -> None:
            problems = check(harness, data)
            if problems:
                found.append((data, problems))

        if seed is not None:
            explore = hypothesis.seed(seed)(explore)
        explore()
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fuzz", description=__doc__)
    parser.add_argument("--examples", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    started = time.monotonic()
    found = campaign(args.examples, args.seed)
    elapsed = time.monotonic() - started
    print(f"{args.examples} examples in {elapsed:.0f} s: {len(found)} broke the invariant")
    for data, problems in found[:20]:
        print(f"\n{data!r}")
        for problem in problems:
            print(f"  {problem}")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())

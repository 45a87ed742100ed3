"""Malformed and refused requests, end to end: the exact status, and never a backend.

Where llhttp (strict) refuses a request before the proxy's own checks run, the status is the
one the parser error maps to; each such case says so in its id and comment.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.support import (
    LOCAL,
    Backend,
    RawBackend,
    make_config,
    raw_request,
    service,
    start_proxy,
    status_of,
)

LIMITS = {"max_url_bytes": 1024, "max_header_bytes": 4096}

BIG = b"a" * 5000

# (request bytes, expected status). Each must be answered by the proxy and then closed.
MALFORMED = [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: user@a\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: \r\n\r\n", 400),
    (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\nhello", 501),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        501,
    ),
    (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\nhello!", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -5\r\n\r\n", 400),
    (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
    (b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", 400),
    (b"GET / HTTP/0.9\r\nHost: a\r\n\r\n", 505),
    (b"GET / HTTP/3.0\r\nHost: a\r\n\r\n", 400),
    (b"GET /\r\n\r\n", 505),
    (b"FOO / HTTP/1.1\r\nHost: a\r\n\r\n", 501),
    (b"CONNECT evil.test:443 HTTP/1.1\r\nHost: evil.test:443\r\n\r\n", 501),
    (b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    (b"GET evil.test/x HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    (b"GET ftp://evil.test/x HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    (b"GET http://user@evil.test/x HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    (b"GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    (b"GET /" + b"x" * 1100 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + BIG + b"\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-Many: 1\r\n" * 101 + b"\r\n", 431),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX-Ctl: a\x01b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX-Ctl: a\x7fb\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX-Ctl: a\x00b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX-Ctl: a\rb\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nBad Name: 1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\n: no-name\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nExpect: something-else\r\n\r\n", 417),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX-Folded: one\r\n two\r\n\r\n", 400),
    (b"GET / HTTP/1.1\nHost: a\n\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\nX-Other: 1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello", 400),
    (b"GET / HTTP/1.1\r\nHost: a:99999\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a:0\r\n\r\n", 400),
    (b"GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    (b"GET http://a:70000/x HTTP/1.1\r\nHost: a\r\n\r\n", 400),
]
MALFORMED_IDS = [
    "garbage-request-line",
    "missing-host-http11",
    "duplicate-host",
    "duplicate-identical-host",
    "host-with-space",
    "host-with-slash",
    "host-with-userinfo",
    "empty-host",
    "content-length-and-transfer-encoding",
    "transfer-encoding-gzip",
    "transfer-encoding-gzip-chunked",
    "transfer-encoding-repeated-field",  # one list: gzip, chunked (RFC 9110 §5.3)
    "transfer-encoding-in-http-1.0",  # RFC 9112 §6.1: faulty framing
    "space-before-colon",
    "duplicate-differing-content-length",
    "content-length-list",
    "negative-content-length",
    "http-2.0-request-line",
    # llhttp refuses minor versions it does not know (HPE_INVALID_VERSION) before the proxy's
    # own 505 check sees the version, so these two are 400.
    "http-1.2-llhttp-400",
    "http-0.9-request-line",
    "http-3.0-llhttp-400",
    "http-0.9-simple-request",  # llhttp reads it as version 0.9
    # llhttp knows a fixed method table; anything else cannot be framed, so it is 501
    # (RFC 9110 §9.1: "not implemented"), never forwarded.
    "unknown-method",
    "connect",
    "asterisk-target-not-options",
    "authority-without-scheme",
    "absolute-form-not-http",
    "absolute-form-userinfo",
    "absolute-form-empty-host",
    "target-too-long",
    "head-too-large",
    "too-many-header-fields",
    "control-char-in-header",
    "del-in-header",
    "nul-in-header",
    "bare-cr-in-header",
    "space-in-header-name",
    "empty-header-name",
    "expect-other",
    "obs-fold",
    "bare-lf-line-endings",
    "bare-lf-inside-head",
    # RFC 9112 §6.3 allows merging identical values, but llhttp (strict) refuses any repeat.
    "duplicate-identical-content-length",
    "host-port-above-65535",
    "host-port-0",
    "fragment-in-target",  # RFC 9112 §3.2: no fragment in a request-target
    "absolute-form-port-above-65535",
]


@pytest.mark.parametrize(("request_bytes", "expected"), MALFORMED, ids=MALFORMED_IDS)
async def test_malformed_request_is_refused_before_any_backend(
    backend: Backend, request_bytes: bytes, expected: int
) -> None:
    config = make_config({"web": service([backend.url])}, limits=LIMITS)
    async with start_proxy(config) as proxy:
        response = await raw_request(proxy.port, request_bytes, read_timeout=2.0)
        await asyncio.sleep(0)
    assert response, "the proxy must answer before closing"
    assert status_of(response) == expected, response[:200]
    head = response.split(b"\r\n\r\n", 1)[0].lower()
    assert b"connection: close" in head
    assert backend.seen == []
    rejected = proxy.proxy.registry.get_sample_value(
        "canaryproxy_rejected_requests_total", {"code": str(expected)}
    )
    assert rejected == 1.0


async def test_http10_without_host_is_accepted(backend: Backend) -> None:
    config = make_config({"web": service([backend.url])})
    async with start_proxy(config) as proxy:
        response = await raw_request(proxy.port, b"GET /ten HTTP/1.0\r\n\r\n", read_timeout=2.0)
    assert status_of(response) == 200
    assert [s["path"] for s in backend.seen] == ["/ten"]


async def test_malformed_request_after_a_good_one_is_answered_in_order(
    backend: Backend,
) -> None:
    config = make_config({"web": service([backend.url])})
    request = b"GET /first HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"
    async with start_proxy(config) as proxy:
        response = await raw_request(proxy.port, request, read_timeout=2.0)
    first, _, rest = response.partition(b"HTTP/1.1 400")
    assert status_of(first) == 200
    assert rest, response
    assert [s["path"] for s in backend.seen] == ["/first"]


async def _never_answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(65536)


async def test_connect_method_never_connects_anywhere() -> None:
    raw = await RawBackend(_never_answers).start()
    config = make_config({"web": service([raw.url])})
    request = f"CONNECT {LOCAL}:{raw.port} HTTP/1.1\r\nHost: {LOCAL}:{raw.port}\r\n\r\n"
    try:
        async with start_proxy(config) as proxy:
            response = await raw_request(proxy.port, request.encode(), read_timeout=2.0)
    finally:
        await raw.stop()
    assert status_of(response) == 501
    assert raw.connections == 0


async def test_options_asterisk_is_answered_by_the_proxy() -> None:
    # RFC 9110 §9.3.7: OPTIONS * asks about the server itself. To the client the proxy is the
    # server, so it answers locally (as HAProxy and nginx never forward it as an origin-form
    # request) and connects nowhere.
    raw = await RawBackend(_never_answers).start()
    config = make_config({"web": service([raw.url])})
    request = b"OPTIONS * HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    try:
        async with start_proxy(config) as proxy:
            response = await raw_request(proxy.port, request, read_timeout=2.0)
    finally:
        await raw.stop()
    assert status_of(response) == 200, response
    head = response.split(b"\r\n\r\n", 1)[0].lower()
    assert b"allow: " in head
    assert raw.connections == 0


async def test_options_asterisk_keeps_the_connection_alive(backend: Backend) -> None:
    config = make_config({"web": service([backend.url])})
    request = b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\nGET /next HTTP/1.1\r\nHost: a\r\n\r\n"
    async with start_proxy(config) as proxy:
        response = await raw_request(proxy.port, request, read_timeout=1.0)
    assert status_of(response) == 200
    assert b'"path": "/next"' in response
    assert [(s["method"], s["path"]) for s in backend.seen] == [("GET", "/next")]


@pytest.mark.parametrize(
    ("target", "path"),
    [
        (b"http://evil.test/x?y=1", "/x?y=1"),
        (b"HTTP://EVIL.TEST:8080/x", "/x"),
        (b"https://evil.test", "/"),
        (b"http://127.0.0.1:1/x", "/x"),
    ],
    ids=["http", "upper-case-scheme-and-port", "https-no-path", "loopback-authority"],
)
async def test_absolute_form_goes_only_to_configured_backends(
    backend: Backend, target: bytes, path: str
) -> None:
    config = make_config({"web": service([backend.url])})
    request = b"GET " + target + b" HTTP/1.1\r\nHost: ignored.test\r\nConnection: close\r\n\r\n"
    async with start_proxy(config) as proxy:
        response = await raw_request(proxy.port, request, read_timeout=2.0)
    assert status_of(response) == 200
    assert [s["path"] for s in backend.seen] == [path]
    hosts = [v for k, v in backend.seen[0]["headers"] if k.lower() == "host"]
    authority = target.split(b"//", 1)[1].split(b"/", 1)[0].decode()
    assert hosts == [authority]  # RFC 9112 §3.2.2: the target's authority replaces Host


# Timeouts that protect the proxy --------------------------------------------------------------
TIMEOUTS = {"header_timeout": 0.3, "body_timeout": 0.3, "keepalive_timeout": 0.3}


async def _read_all(reader: asyncio.StreamReader, within: float) -> tuple[bytes, bool]:
    """Everything until EOF, and whether EOF came ``within`` seconds."""
    chunks = []
    try:
        async with asyncio.timeout(within):
            while part := await reader.read(65536):
                chunks.append(part)
    except TimeoutError:
        return b"".join(chunks), False
    return b"".join(chunks), True


@pytest.mark.parametrize(
    "partial",
    [
        b"GET / HT",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Half: ",
        b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n" + b"x" * 10,
        b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
    ],
    ids=["half-request-line", "half-head", "length-body-stalls", "chunked-body-stalls"],
)
async def test_stalled_client_gets_408_and_close(backend: Backend, partial: bytes) -> None:
    config = make_config({"web": service([backend.url])}, limits=TIMEOUTS)
    async with start_proxy(config) as proxy:
        reader, writer = await asyncio.open_connection(LOCAL, proxy.port)
        writer.write(partial)
        response, closed = await _read_all(reader, 3.0)
        writer.close()
    assert closed, "the proxy must close a stalled connection"
    assert status_of(response) == 408, response
    assert b"connection: close" in response.lower()
    assert backend.seen == []  # a truncated body never completes a request upstream


async def test_head_deadline_is_not_reset_by_trickling_bytes(backend: Backend) -> None:
    # Slowloris: one byte every 0.1 s keeps the socket busy but never finishes the head.
    config = make_config({"web": service([backend.url])}, limits=TIMEOUTS)
    async with start_proxy(config) as proxy:
        reader, writer = await asyncio.open_connection(LOCAL, proxy.port)
        writer.write(b"GET / HTTP/1.1\r\n")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 2.0
        reading = asyncio.ensure_future(_read_all(reader, 2.5))
        while not reading.done() and loop.time() < deadline:
            try:
                writer.write(b"X")
            except (ConnectionError, RuntimeError):  # uvloop: the transport is closed
                break
            await asyncio.sleep(0.1)
        response, closed = await reading
        writer.close()
    assert closed
    assert loop.time() < deadline
    assert status_of(response) == 408


async def test_idle_keep_alive_connection_is_closed(backend: Backend) -> None:
    config = make_config({"web": service([backend.url])}, limits=TIMEOUTS)
    async with start_proxy(config) as proxy:
        reader, writer = await asyncio.open_connection(LOCAL, proxy.port)
        started = asyncio.get_running_loop().time()  # the idle clock starts after this
        writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2.0)
        assert status_of(head) == 200
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        rest, closed = await _read_all(reader, 2.0)
        waited = asyncio.get_running_loop().time() - started
        writer.close()
    assert closed
    assert rest == b""  # closed silently: no 408 for an idle connection
    assert 0.25 <= waited < 1.5


async def test_fresh_connection_that_sends_nothing_is_closed(backend: Backend) -> None:
    config = make_config({"web": service([backend.url])}, limits=TIMEOUTS)
    async with start_proxy(config) as proxy:
        reader, writer = await asyncio.open_connection(LOCAL, proxy.port)
        rest, closed = await _read_all(reader, 2.0)
        writer.close()
    assert closed
    assert rest == b""


async def test_stalled_body_is_one_408_charged_to_no_backend(backend: Backend) -> None:
    config = make_config({"web": service([backend.url])}, limits=TIMEOUTS)
    partial = b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n" + b"x" * 10
    async with start_proxy(config) as proxy:
        response = await raw_request(proxy.port, partial, read_timeout=3.0)
        registry = proxy.proxy.registry
        aborts = registry.get_sample_value("canaryproxy_client_aborts_total", {"service": "web"})
        errors = [
            registry.get_sample_value(
                "canaryproxy_upstream_errors_total",
                {"service": "web", "pool": "stable", "kind": kind},
            )
            for kind in ("connect", "timeout", "reset", "protocol")
        ]
    assert status_of(response) == 408
    assert [e["status"] for e in proxy.access] == [408]
    assert aborts == 0
    assert errors == [0, 0, 0, 0]
    assert backend.seen == []


@pytest.mark.parametrize(
    "body",
    [b"5\r\nhelloXX0\r\n\r\n", b"5\nhello\n0\n\n", b"zz\r\nhello\r\n0\r\n\r\n"],
    ids=["chunk-longer-than-its-size", "bare-lf-framing", "bad-chunk-size"],
)
async def test_badly_framed_body_is_400_at_once_and_never_completes_upstream(
    backend: Backend, body: bytes
) -> None:
    config = make_config({"web": service([backend.url])})
    request = b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + body
    async with start_proxy(config) as proxy:
        reader, writer = await asyncio.open_connection(LOCAL, proxy.port)
        writer.write(request)
        response, closed = await _read_all(reader, 2.0)
        writer.close()
    assert closed
    assert status_of(response) == 400
    assert backend.seen == []
    assert [e["status"] for e in proxy.access] == [400]


async def test_pipelined_body_waiting_its_turn_is_not_a_timeout(backend: Backend) -> None:
    # Reading pauses while a pipelined request waits; that silence is ours, not the client's.
    config = make_config({"web": service([backend.url])}, limits=TIMEOUTS)
    request = (
        b"GET /sleep/0.8 HTTP/1.1\r\nHost: a\r\n\r\n"
        b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nConnection: close\r\n\r\n"
    )
    async with start_proxy(config) as proxy:
        reader, writer = await asyncio.open_connection(LOCAL, proxy.port)
        writer.write(request)
        await asyncio.sleep(0.1)
        writer.write(b"hello")
        response, closed = await _read_all(reader, 3.0)
        writer.close()
    assert closed
    assert [status_of(b"HTTP/1.1 " + part) for part in response.split(b"HTTP/1.1 ")[1:]] == [
        200,
        200,
    ]
    assert [s["path"] for s in backend.seen] == ["/sleep/0.8", "/upload"]


async def test_endless_head_is_cut_at_the_limit(backend: Backend) -> None:
    config = make_config({"web": service([backend.url])}, limits=LIMITS)
    async with start_proxy(config) as proxy:
        reader, writer = await asyncio.open_connection(LOCAL, proxy.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: a\r\nX-Endless: ")
        reading = asyncio.ensure_future(_read_all(reader, 3.0))
        for _ in range(64):
            if reading.done():
                break
            try:
                writer.write(b"a" * 1024)
            except (ConnectionError, RuntimeError):  # uvloop: the transport is closed
                break
            await asyncio.sleep(0.005)
        response, closed = await reading
        writer.close()
    assert closed
    assert status_of(response) == 431
    assert backend.seen == []


async def test_connection_cannot_strip_content_length(backend: Backend) -> None:
    # "Connection: content-length" must not make the body reach the backend unframed
    # (where it would be read as a second, smuggled request).
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
    request = (
        b"POST /upload HTTP/1.1\r\nHost: a\r\nConnection: close, content-length\r\n"
        b"Content-Length: %d\r\n\r\n%b" % (len(smuggled), smuggled)
    )
    config = make_config({"web": service([backend.url])})
    async with start_proxy(config) as proxy:
        response = await raw_request(proxy.port, request)
    assert status_of(response) == 200
    assert [seen["path"] for seen in backend.seen] == ["/upload"]


async def test_upgrade_request_with_a_body_is_refused(backend: Backend) -> None:
    request = (
        b"POST /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: h2c\r\n"
        b"Content-Length: 5\r\n\r\nhello"
    )
    config = make_config({"web": service([backend.url])})
    async with start_proxy(config) as proxy:
        response = await raw_request(proxy.port, request)
    assert status_of(response) == 400
    assert backend.seen == []


async def test_trailers_never_become_header_fields_of_a_queued_request() -> None:
    """Found by the differential fuzzer: a chunked request's trailer fields, arriving while
    the request waited behind another in the pipeline, were forwarded as part of its head,
    past the head's validation. (A framing field in a trailer llhttp refuses: 400.)"""
    heads: list[bytes] = []

    async def slow_first(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            heads.append(head)
            if b"transfer-encoding: chunked" in head.lower():
                await reader.readuntil(b"0\r\n\r\n")
            if b"/first" in head:
                await asyncio.sleep(0.3)  # the second request is parsed meanwhile
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    backend = await RawBackend(slow_first).start()
    try:
        config = make_config({"web": service([backend.url])})
        request = (
            b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n"
            b"POST /second HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n0\r\nX-Injected: 1\r\nCookie: session=forged\r\n\r\n"
            b"GET /third HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        )
        async with start_proxy(config) as proxy:
            response = await raw_request(proxy.port, request, read_timeout=3.0)
    finally:
        await backend.stop()
    assert response.count(b"HTTP/1.1 200 OK") == 3
    assert [h.split(b" ")[1] for h in heads] == [b"/first", b"/second", b"/third"]
    second = heads[1].lower()
    assert b"x-injected" not in second
    assert b"cookie" not in second

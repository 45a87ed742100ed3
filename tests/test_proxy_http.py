"""End to end through real sockets: forwarding rules, streaming, keep-alive, upgrades."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import os
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.support import (
    LOCAL,
    Backend,
    RawBackend,
    make_config,
    raw_request,
    read_head,
    service,
    start_proxy,
    status_of,
)


def headers_of(seen: dict[str, Any]) -> dict[str, str]:
    return {k.lower(): v for k, v in seen["headers"]}


async def test_get_is_forwarded_with_proxy_headers(backend: Backend) -> None:
    config = make_config({"web": service([backend.url])})
    async with start_proxy(config) as proxy, aiohttp.ClientSession() as session:
        async with session.get(proxy.url + "/hello?x=1", headers={"Host": "app.test"}) as resp:
            assert resp.status == 200
            body = await resp.json()
            assert resp.headers["Via"] == "1.1 canaryproxy"
    assert body["path"] == "/hello?x=1"
    seen = headers_of(backend.seen[0])
    assert seen["host"] == "app.test"
    assert seen["x-forwarded-for"] == LOCAL
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == "app.test"
    assert seen["via"] == "1.1 canaryproxy"
    assert len(seen["x-request-id"]) == 32
    assert "accept-encoding" in seen  # aiohttp's own, passed through untouched
    assert proxy.access[-1]["status"] == 200
    assert proxy.access[-1]["pool"] == "stable"


async def test_request_id_is_passed_on(backend: Backend) -> None:
    config = make_config({"web": service([backend.url])})
    async with start_proxy(config) as proxy, aiohttp.ClientSession() as session:
        async with session.get(proxy.url + "/", headers={"X-Request-Id": "abc-123"}) as resp:
            assert resp.status == 200
    assert headers_of(backend.seen[0])["x-request-id"] == "abc-123"
    assert proxy.access[-1]["request_id"] == "abc-123"


@pytest.mark.parametrize(
    ("trusted", "expected_xff", "expected_proto"),
    [
        (["127.0.0.0/8"], "203.0.113.9, 127.0.0.1", "https"),
        ([], "127.0.0.1", "http"),
        (["10.0.0.0/8"], "127.0.0.1", "http"),
    ],
    ids=["trusted-peer-appends", "no-trust-replaces", "other-net-replaces"],
)
async def test_forwarded_headers_trust(
    backend: Backend, trusted: list[str], expected_xff: str, expected_proto: str
) -> None:
    config = make_config({"web": service([backend.url])}, trusted_proxies=trusted)
    sent = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
    async with start_proxy(config) as proxy, aiohttp.ClientSession() as session:
        async with session.get(proxy.url + "/", headers=sent) as resp:
            assert resp.status == 200
    seen = headers_of(backend.seen[0])
    assert seen["x-forwarded-for"] == expected_xff
    assert seen["x-forwarded-proto"] == expected_proto


async def test_hop_by_hop_headers_are_stripped_both_ways(backend: Backend) -> None:
    config = make_config({"web": service([backend.url])})
    request = (
        b"GET /hop HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Client-Hop\r\n"
        b"X-Client-Hop: 1\r\nKeep-Alive: timeout=3\r\nTE: trailers\r\n"
        b"Proxy-Authorization: Basic eA==\r\nX-End-To-End: yes\r\nX-Canary: always\r\n\r\n"
    )
    async with start_proxy(config) as proxy:
        response = await raw_request(proxy.port, request, read_timeout=1.0)
    head = response.split(b"\r\n\r\n")[0].lower()
    assert status_of(response) == 200
    assert b"x-secret-hop" not in head
    assert b"keep-alive: timeout" not in head
    assert b"proxy-authenticate" not in head
    assert b"x-end-to-end: kept" in head
    seen = headers_of(backend.seen[0])
    for name in ("x-client-hop", "keep-alive", "te", "proxy-authorization", "connection"):
        assert name not in seen, name
    assert seen["x-end-to-end"] == "yes"


async def test_header_names_with_an_underscore_are_dropped_and_counted(backend: Backend) -> None:
    config = make_config({"web": service([backend.url])})
    request = (
        b"GET /x HTTP/1.1\r\nHost: a\r\nX_Forwarded_For: 6.6.6.6\r\n"
        b"X-Forwarded-For: 203.0.113.9\r\nMy_Header: 1\r\nMy-Header: 2\r\nConnection: close\r\n\r\n"
    )
    async with start_proxy(config) as proxy:
        response = await raw_request(proxy.port, request, read_timeout=1.0)
        body = proxy.proxy.metrics.exposition()[0].decode()
    assert status_of(response) == 200
    names = [name for name, _ in backend.seen[0]["headers"]]
    assert [n for n in names if "_" in n] == []
    seen = headers_of(backend.seen[0])
    assert seen["my-header"] == "2"
    assert seen["x-forwarded-for"] == "127.0.0.1"  # an untrusted peer's chain is replaced
    assert "canaryproxy_dropped_header_fields_total 2.0" in body


async def test_upload_8mib_arrives_byte_identical(backend: Backend) -> None:
    config = make_config({"web": service([backend.url])})
    payload = os.urandom(8 * 1024 * 1024)
    async with start_proxy(config) as proxy, aiohttp.ClientSession() as session:
        async with session.post(proxy.url + "/upload", data=io.BytesIO(payload)) as resp:
            result = await resp.json()

        async def gen() -> AsyncIterator[bytes]:
            for i in range(0, len(payload), 100_000):
                yield payload[i : i + 100_000]

        async with session.post(proxy.url + "/upload", data=gen()) as resp:  # chunked
            chunked = await resp.json()
    expected = hashlib.sha256(payload).hexdigest()
    assert result == {"sha256": expected, "size": len(payload)}
    assert chunked == {"sha256": expected, "size": len(payload)}


async def test_download_streams(backend: Backend) -> None:
    config = make_config({"web": service([backend.url])})
    size = 32 * 1024 * 1024
    async with start_proxy(config) as proxy, aiohttp.ClientSession() as session:
        async with session.get(proxy.url + f"/download/{size}") as resp:
            got = 0
            async for data in resp.content.iter_any():
                got += len(data)
    assert got == size


async def test_chunked_response_is_rechunked(backend: Backend) -> None:
    config = make_config({"web": service([backend.url])})
    async with start_proxy(config) as proxy, aiohttp.ClientSession() as session:
        async with session.get(proxy.url + "/chunked") as resp:
            assert resp.headers["Transfer-Encoding"] == "chunked"
            assert await resp.text() == "part0;part1;part2;part3;part4;"


async def test_http10_client_gets_close_delimited_body(backend: Backend) -> None:
    config = make_config({"web": service([backend.url])})
    async with start_proxy(config) as proxy:
        response = await raw_request(proxy.port, b"GET /chunked HTTP/1.0\r\n\r\n")
    head, body = response.split(b"\r\n\r\n", 1)
    assert b"transfer-encoding" not in head.lower()
    assert body == b"part0;part1;part2;part3;part4;"


@pytest.mark.parametrize(
    ("method", "path"),
    [("HEAD", "/"), ("GET", "/status/204"), ("GET", "/status/304")],
    ids=["head", "204", "304"],
)
async def test_bodiless_responses_keep_the_connection_usable(
    backend: Backend, method: str, path: str
) -> None:
    config = make_config({"web": service([backend.url])})
    request = f"{method} {path} HTTP/1.1\r\nHost: a\r\n\r\nGET /after HTTP/1.1\r\nHost: a\r\n\r\n"
    async with start_proxy(config) as proxy:
        response = await raw_request(proxy.port, request.encode(), read_timeout=1.0)
    _, rest = response.split(b"\r\n\r\n", 1)
    assert rest.startswith(b"HTTP/1.1 200 OK"), rest[:80]
    assert b'"path": "/after"' in rest
    assert len(backend.seen) == 2


async def test_keep_alive_reuses_one_upstream_connection(backend: Backend) -> None:
    config = make_config({"web": service([backend.url])})
    async with start_proxy(config) as proxy, aiohttp.ClientSession() as session:
        for _ in range(10):
            async with session.get(proxy.url + "/") as resp:
                assert resp.status == 200
    assert len(set(backend.peers)) == 1


async def test_pipelined_requests_are_answered_in_order(backend: Backend) -> None:
    config = make_config({"web": service([backend.url])})
    request = (
        b"".join(f"GET /p{i} HTTP/1.1\r\nHost: a\r\n\r\n".encode() for i in range(5))
        + b"GET /last HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    async with start_proxy(config) as proxy:
        response = await raw_request(proxy.port, request)
    order = [
        seg.split(b'"path": "')[1].split(b'"')[0] for seg in response.split(b"HTTP/1.1 200")[1:]
    ]
    assert order == [b"/p0", b"/p1", b"/p2", b"/p3", b"/p4", b"/last"]


async def test_expect_100_continue_is_answered_by_the_proxy(backend: Backend) -> None:
    config = make_config({"web": service([backend.url])})
    async with start_proxy(config) as proxy:
        reader, writer = await asyncio.open_connection(LOCAL, proxy.port)
        writer.write(
            b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim.startswith(b"HTTP/1.1 100 Continue")
        writer.write(b"hello")
        final = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert final.startswith(b"HTTP/1.1 200")
        writer.close()
    assert "expect" not in headers_of(backend.seen[0])


async def test_websocket_upgrade_is_proxied(backend: Backend) -> None:
    config = make_config({"web": service([backend.url])})
    async with start_proxy(config) as proxy, aiohttp.ClientSession() as session:
        async with session.ws_connect(proxy.url + "/ws") as ws:
            await ws.send_str("hi")
            assert (await ws.receive_str()) == "echo:hi"
            await ws.send_bytes(b"\x00\x01")
            assert (await ws.receive_bytes()) == b"\x00\x01"
    seen = headers_of(backend.seen[0])
    assert seen["upgrade"].lower() == "websocket"


@pytest.mark.parametrize(
    "upgrade",
    [b"h2c", b"foo/1", b"websocket, h2c", b"tls/1.0"],
    ids=["h2c", "unknown", "websocket-and-h2c", "tls"],
)
async def test_only_websocket_becomes_a_tunnel(upgrade: bytes) -> None:
    heads: list[bytes] = []

    async def h2c_capable(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A backend that would switch to any protocol it is offered.
        while True:
            head = await read_head(reader)
            heads.append(head)
            if b"\r\nupgrade:" in head.lower():
                writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n")
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    raw_backend = await RawBackend(h2c_capable).start()
    try:
        config = make_config({"web": service([raw_backend.url])})
        request = (
            b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n"
            b"Upgrade: %b\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
            b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n" % upgrade
        )
        async with start_proxy(config) as proxy:
            response = await raw_request(proxy.port, request, read_timeout=2.0)
    finally:
        await raw_backend.stop()
    assert status_of(response) == 200
    assert b"connection: close" in response.lower()
    assert len(heads) == 1  # the bytes after the head never became a request or a tunnel
    assert b"upgrade" not in heads[0].lower()
    assert b"http2-settings" not in heads[0].lower()
    assert b"/smuggled" not in heads[0]


async def test_weighted_round_robin_exact_counts() -> None:
    a, b = await Backend("a").start(), await Backend("b").start()
    config = make_config(
        {"web": service([{"url": a.url, "weight": 3}, {"url": b.url, "weight": 1}])}
    )
    try:
        async with start_proxy(config) as proxy, aiohttp.ClientSession() as session:
            for _ in range(40):
                async with session.get(proxy.url + "/") as resp:
                    assert resp.status == 200
    finally:
        await a.stop()
        await b.stop()
    assert (len(a.seen), len(b.seen)) == (30, 10)


async def test_services_are_matched_by_host_and_longest_prefix() -> None:
    a, b, c = [await Backend(n).start() for n in "abc"]
    config = make_config(
        {
            "root": service([a.url]),
            "api": service([b.url], match={"path_prefix": "/api"}),
            "admin": service([c.url], match={"hosts": ["*.example.com"], "path_prefix": "/"}),
        }
    )
    try:
        async with start_proxy(config) as proxy, aiohttp.ClientSession() as session:
            for path, host, expected in [
                ("/x", "other.test", "a"),
                ("/api/v1", "other.test", "b"),
                ("/x", "www.example.com", "c"),
                ("/api/v1", "www.example.com", "b"),
            ]:
                async with session.get(proxy.url + path, headers={"Host": host}) as resp:
                    assert (await resp.json())["backend"] == expected, (path, host)
    finally:
        for backend in (a, b, c):
            await backend.stop()


async def test_no_matching_service_is_404() -> None:
    backend = await Backend("x").start()
    config = make_config({"web": service([backend.url], match={"hosts": ["app.test"]})})
    try:
        async with start_proxy(config) as proxy:
            response = await raw_request(
                proxy.port, b"GET / HTTP/1.1\r\nHost: nope\r\n\r\n", read_timeout=1
            )
    finally:
        await backend.stop()
    assert status_of(response) == 404
    assert backend.seen == []


async def test_a_websocket_is_accounted_once_as_101(backend: Backend) -> None:
    config = make_config({"web": service([backend.url])})
    async with start_proxy(config) as proxy, aiohttp.ClientSession() as session:
        async with session.ws_connect(proxy.url + "/ws") as ws:
            await ws.send_str("hi")
            assert (await ws.receive_str()) == "echo:hi"
            await asyncio.sleep(0.3)  # a tunnel's lifetime is not request latency
        await asyncio.sleep(0.7)  # let the access log flush
        pool = proxy.proxy.services.get("web").metrics.pools["stable"]
        assert pool.codes == {101: 1}
        attempts = proxy.proxy.registry.get_sample_value(
            "canaryproxy_upstream_attempts_total",
            {"service": "web", "pool": "stable", "outcome": "ok"},
        )
        assert attempts == 1
        assert pool.in_flight.value == 0
        assert pool.buckets[-1] == 0  # handshake latency, well under the top bucket
    assert [entry["status"] for entry in proxy.access] == [101]


async def test_bodies_and_content_encoding_pass_untouched() -> None:
    gzipped = gzip.compress(b"hello " * 100)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await read_head(reader)
        seen.append(head)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%b"
            % (len(gzipped), gzipped)
        )
        await writer.drain()

    seen: list[bytes] = []
    raw = await RawBackend(answer).start()
    config = make_config({"web": service([raw.url])})
    try:
        async with start_proxy(config) as proxy:
            response = await raw_request(
                proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
            )
    finally:
        await raw.stop()
    head, body = response.split(b"\r\n\r\n", 1)
    assert b"Content-Encoding: gzip" in head
    assert body == gzipped  # not decompressed
    upstream = seen[0].lower()
    assert b"user-agent" not in upstream  # nothing the client did not send
    assert b"accept-encoding" not in upstream


async def test_a_client_that_stops_reading_is_cut_off_after_body_timeout(
    backend: Backend,
) -> None:
    config = make_config({"web": service([backend.url])}, limits={"body_timeout": "500ms"})
    async with start_proxy(config) as proxy:
        _, writer = await asyncio.open_connection(LOCAL, proxy.port)
        writer.write(b"GET /download/268435456 HTTP/1.1\r\nHost: a\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(2.0)  # read nothing: the proxy's buffers fill and it waits
        assert proxy.proxy.ctx.connections == set()  # ... then it gave up on us
        writer.close()
        await asyncio.sleep(0.6)
    assert proxy.access[-1]["aborted"] is True

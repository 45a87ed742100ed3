"""Upstream failures end to end: retries, 502/503/504, aborts, 499, and who is charged.

the README's "Proxying": only connect failures and requests provably never sent are retried; a
request that may have reached a backend with a body is never sent twice; failures count
against the pool that caused them.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import aiohttp
import pytest

from tests.support import (
    LOCAL,
    Backend,
    Handler,
    RawBackend,
    RunningProxy,
    dead_url,
    make_config,
    raw_request,
    read_head,
    service,
    start_proxy,
    status_of,
)

ERROR_KINDS = ("connect", "timeout", "reset", "protocol")


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    b = await Backend("stable").start()
    yield b
    await b.stop()


def sample(proxy: RunningProxy, name: str, **labels: str) -> float:
    value = proxy.proxy.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def requests_total(proxy: RunningProxy, pool: str, code: int) -> float:
    return sample(proxy, "canaryproxy_requests_total", service="web", pool=pool, code=str(code))


def upstream_errors(proxy: RunningProxy, pool: str) -> dict[str, float]:
    return {
        kind: sample(
            proxy, "canaryproxy_upstream_errors_total", service="web", pool=pool, kind=kind
        )
        for kind in ERROR_KINDS
    }


def all_requests_total(proxy: RunningProxy) -> dict[tuple[str, str], float]:
    """Every non-zero canaryproxy_requests_total series, keyed by (pool, code)."""
    found: dict[tuple[str, str], float] = {}
    for family in proxy.proxy.registry.collect():
        if family.name != "canaryproxy_requests":
            continue
        for s in family.samples:
            if s.name.endswith("_total") and s.value:
                found[(s.labels["pool"], s.labels["code"])] = s.value
    return found


async def get(proxy: RunningProxy, path: str, **headers: str) -> tuple[int, bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(proxy.url + path, headers=headers) as resp,
    ):
        return resp.status, await resp.read()


# Connect failures and retries -----------------------------------------------------------------
async def test_connect_failure_is_retried_on_the_other_backend(backend: Backend) -> None:
    dead = dead_url()
    config = make_config({"web": service([dead, backend.url])})
    async with start_proxy(config) as proxy:
        statuses = [(await get(proxy, f"/r{i}"))[0] for i in range(4)]
        errors = upstream_errors(proxy, "stable")
        served = requests_total(proxy, "stable", 200)
    assert statuses == [200] * 4
    assert [s["path"] for s in backend.seen] == ["/r0", "/r1", "/r2", "/r3"]
    assert errors["connect"] >= 1  # the dead backend is charged even though retries saved it
    assert served == 4
    assert {e["backend"] for e in proxy.access} == {backend.url}


@pytest.mark.parametrize("count", [1, 2], ids=["one-dead-backend", "two-dead-backends"])
async def test_every_backend_dead_is_502(count: int) -> None:
    config = make_config({"web": service([dead_url() for _ in range(count)])})
    async with start_proxy(config) as proxy:
        status, _ = await get(proxy, "/")
        errors = upstream_errors(proxy, "stable")
        answered = requests_total(proxy, "stable", 502)
    assert status == 502
    assert errors == {"connect": count, "timeout": 0, "reset": 0, "protocol": 0}
    assert answered == 1


@pytest.mark.parametrize(
    ("weight", "headers"),
    [(100, {}), (0, {"X-Canary": "always"})],
    ids=["weight-100", "override-always"],
)
async def test_dead_canary_is_served_by_stable_and_charged(
    backend: Backend, weight: int, headers: dict[str, str]
) -> None:
    config = make_config(
        {
            "web": service(
                [backend.url],
                [dead_url()],
                canary_weight=weight,
                override_header="X-Canary",
            )
        }
    )
    async with start_proxy(config) as proxy:
        status, body = await get(proxy, "/", **headers)
        canary_errors = upstream_errors(proxy, "canary")
        stable_errors = upstream_errors(proxy, "stable")
        served = requests_total(proxy, "stable", 200)
    assert status == 200
    assert b'"backend": "stable"' in body
    assert canary_errors["connect"] == 1
    assert sum(stable_errors.values()) == 0
    assert served == 1
    assert proxy.access[-1]["pool"] == "stable"


async def test_no_routable_backend_is_503() -> None:
    outlier = {"consecutive_failures": 1, "base_ejection_time": "60s"}
    config = make_config({"web": service([dead_url()], outlier_detection=outlier)})
    async with start_proxy(config) as proxy:
        first, _ = await get(proxy, "/")
        second, _ = await get(proxy, "/")
        errors = upstream_errors(proxy, "stable")
        unavailable = requests_total(proxy, "stable", 503)
    assert (first, second) == (502, 503)
    assert errors["connect"] == 1  # the ejected backend was not tried again
    assert unavailable == 1


@pytest.mark.parametrize("weight", [0, 5], ids=["weight-0", "weight-5"])
async def test_a_stable_503_burst_never_sends_stable_users_to_the_canary(
    pools: tuple[Backend, Backend], weight: int
) -> None:
    stable, canary = pools
    outlier = {"consecutive_failures": 5, "base_ejection_time": "30s"}
    config = make_config(
        {
            "web": service(
                [stable.url],
                [canary.url],
                canary_weight=weight,
                outlier_detection=outlier,
                override_header="X-Canary",
            )
        }
    )
    async with start_proxy(config) as proxy:
        burst = [(await get(proxy, "/status/503", **{"X-Canary": "never"}))[0] for _ in range(8)]
        after = [
            json.loads((await get(proxy, f"/after{i}", **{"X-Canary": "never"}))[1])["backend"]
            for i in range(10)
        ]
        state = proxy.proxy.services.get("web").state()
    assert burst == [503] * 8  # the app's own answer, passed on (as nginx and HAProxy do)
    assert after == ["stable"] * 10  # its only backend stayed in rotation
    assert state["fallbacks"] == {}
    assert canary.count == 0


# Slow, broken and lying backends --------------------------------------------------------------
async def test_no_answer_within_response_timeout_is_504(backend: Backend) -> None:
    timeouts = {"connect": "1s", "response": "300ms"}
    config = make_config({"web": service([backend.url], timeouts=timeouts)})
    async with start_proxy(config) as proxy:
        started = time.monotonic()
        status, _ = await get(proxy, "/sleep/1")
        elapsed = time.monotonic() - started
        errors = upstream_errors(proxy, "stable")
        answered = requests_total(proxy, "stable", 504)
    assert status == 504
    assert 0.25 <= elapsed < 2.0
    assert errors["timeout"] == 1
    assert answered == 1


Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def answer_with(data: bytes) -> Script:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(data)
        await writer.drain()

    return handler


@asynccontextmanager
async def raw_backend(script: Script) -> AsyncIterator[RawBackend]:
    raw = await RawBackend(script).start()
    try:
        yield raw
    finally:
        await raw.stop()


async def expect_cut_off(handler: Handler) -> RunningProxy:
    """The backend's 200 reaches the client, whose body then ends in an error (not cleanly),
    and the backend is charged one reset."""
    async with raw_backend(handler) as raw:
        config = make_config({"web": service([raw.url])})
        async with start_proxy(config) as proxy:
            async with aiohttp.ClientSession() as session:
                async with session.get(proxy.url + "/") as resp:
                    assert resp.status == 200
                    with pytest.raises(aiohttp.ClientPayloadError):
                        await resp.read()
            errors = upstream_errors(proxy, "stable")
    assert errors["reset"] == 1
    return proxy


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n" + b"x" * 10 + b"\r\n",
    ],
    ids=["content-length", "chunked"],
)
async def test_upstream_dying_mid_body_aborts_the_client(head: bytes) -> None:
    proxy = await expect_cut_off(answer_with(head))
    assert len(proxy.access) == 1


async def test_reset_during_a_close_delimited_body_aborts_the_client() -> None:
    # Without Content-Length or chunking the body ends at EOF; a reset is not an EOF.
    async def resets(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n\r\npartial")
        await writer.drain()
        await asyncio.sleep(0.1)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # SO_LINGER 0: RST, not FIN

    await expect_cut_off(resets)


async def test_close_delimited_body_ends_cleanly_at_eof() -> None:
    async with raw_backend(answer_with(b"HTTP/1.1 200 OK\r\n\r\nall of it")) as raw:
        config = make_config({"web": service([raw.url])})
        async with start_proxy(config) as proxy:
            status, body = await get(proxy, "/")
            errors = upstream_errors(proxy, "stable")
    assert (status, body) == (200, b"all of it")
    assert sum(errors.values()) == 0


async def test_upstream_dying_mid_body_is_no_clean_end_on_the_wire() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10
    async with raw_backend(answer_with(head)) as raw:
        config = make_config({"web": service([raw.url])})
        async with start_proxy(config) as proxy:
            reader, writer = await asyncio.open_connection(LOCAL, proxy.port)
            writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            response_head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
            with pytest.raises((asyncio.IncompleteReadError, ConnectionResetError)):
                await asyncio.wait_for(reader.readexactly(1000), 3)
            writer.close()
    assert status_of(response_head) == 200
    assert b"content-length: 1000" in response_head.lower()


HUGE_VALUE = b"a" * 100_000
MANY_HEADERS = b"".join(b"X-H%d: %b\r\n" % (i, b"v" * 90) for i in range(1000))

BAD_RESPONSES = [
    (b"HELLO\r\n\r\n", None),
    (b"HTTP/1.1 200 OK\r\nX-Big: " + HUGE_VALUE + b"\r\nContent-Length: 0\r\n\r\n", None),
    (b"HTTP/1.1 200 OK\r\n" + MANY_HEADERS + b"Content-Length: 0\r\n\r\n", None),
    (b"HTTP/1.1 200 OK\r\nX-Evil: a\x01b\r\nContent-Length: 2\r\n\r\nok", b"a\x01b"),
    (b"HTTP/1.1 200 OK\r\nX-Evil: a\x00b\r\nContent-Length: 2\r\n\r\nok", b"a\x00b"),
    (b"HTTP/1.1 200 OK\r\nX-Evil: a\x7fb\r\nContent-Length: 2\r\n\r\nok", b"a\x7fb"),
    (b"HTTP/1.1 200 OK\r\nX-Evil: a\x1bb\r\nContent-Length: 2\r\n\r\nok", b"a\x1bb"),
    (b"HTTP/1.1 200 OK\r\nX-Evil: a\rSet-Cookie: x=1\r\nContent-Length: 2\r\n\r\nok", b"x=1"),
    (b"HTTP/1.1 200 OK\r\nX-Evil: a\nSet-Cookie: x=1\r\nContent-Length: 2\r\n\r\nok", b"x=1"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!", None),
    (b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n", None),
    (b"HTTP/1.1 200 OK\r\nBad Name: 1\r\nContent-Length: 0\r\n\r\n", None),
]
BAD_RESPONSE_IDS = [
    "garbage",
    "one-100kb-header",
    "100kb-of-headers",
    "ctl-in-value",
    "nul-in-value",
    "del-in-value",
    "esc-in-value",
    "bare-cr-splits-header",
    "bare-lf-splits-header",
    "differing-content-lengths",
    "bad-status-code",
    "space-in-header-name",
]


@pytest.mark.parametrize(("data", "leak"), BAD_RESPONSES, ids=BAD_RESPONSE_IDS)
async def test_bad_upstream_response_is_502(data: bytes, leak: bytes | None) -> None:
    async with raw_backend(answer_with(data)) as raw:
        config = make_config({"web": service([raw.url])})
        async with start_proxy(config) as proxy:
            response = await raw_request(
                proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
            )
            errors = upstream_errors(proxy, "stable")
            answered = requests_total(proxy, "stable", 502)
    assert status_of(response) == 502, response[:300]
    if leak is not None:
        assert leak not in response
    assert b"X-Evil" not in response
    assert len(response) < 1000
    assert errors["protocol"] == 1
    assert answered == 1


async def test_endless_upstream_head_is_502_without_waiting_for_the_deadline() -> None:
    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nX-Endless: ")
        for _ in range(200):
            writer.write(b"a" * 4096)
            await writer.drain()
            await asyncio.sleep(0.001)

    timeouts = {"connect": "1s", "response": "10s"}
    async with raw_backend(endless) as raw:
        config = make_config({"web": service([raw.url], timeouts=timeouts)})
        async with start_proxy(config) as proxy:
            started = time.monotonic()
            status, _ = await get(proxy, "/")
            elapsed = time.monotonic() - started
            errors = upstream_errors(proxy, "stable")
    assert status == 502
    assert elapsed < 3.0
    assert errors["protocol"] == 1


# Stale keep-alive connections: retried only when provably never processed -------------------
OK_KEEP_ALIVE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def answers_once_then(on_second: str, first: bytes = OK_KEEP_ALIVE) -> tuple[Script, list[bytes]]:
    """Answer a connection's first request with ``first``; then either close it after a
    short delay (``idle-close``) or read the second request and close without answering
    (``close-on-second``: the race of a backend closing as the proxy reuses the connection)."""
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_head(reader))
        writer.write(first)
        await writer.drain()
        if on_second == "idle-close":
            await asyncio.sleep(0.1)
            return
        seen.append(await read_head(reader))

    return handler, seen


def request_line(head: bytes) -> bytes:
    return head.split(b"\r\n", 1)[0]


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_connection_closed_while_idle_is_not_reused(method: str) -> None:
    script, seen = answers_once_then("idle-close")
    async with raw_backend(script) as raw:
        config = make_config({"web": service([raw.url])})
        async with start_proxy(config) as proxy, aiohttp.ClientSession() as session:
            async with session.get(proxy.url + "/one") as resp:
                assert resp.status == 200
            await asyncio.sleep(0.3)  # the backend has closed the parked connection
            async with session.request(method, proxy.url + "/two", data=b"hello") as resp:
                assert resp.status == 200
    assert raw.connections == 2
    assert [request_line(h) for h in seen] == [
        b"GET /one HTTP/1.1",
        f"{method} /two HTTP/1.1".encode(),
    ]


async def test_stale_connection_retries_a_get_on_a_fresh_one() -> None:
    script, seen = answers_once_then("close-on-second")
    async with raw_backend(script) as raw:
        config = make_config({"web": service([raw.url])})
        async with start_proxy(config) as proxy:
            first, _ = await get(proxy, "/one")
            second, body = await get(proxy, "/two")
            errors = upstream_errors(proxy, "stable")
    assert (first, second) == (200, 200)
    assert body == b"ok"
    assert raw.connections == 2
    assert [request_line(h) for h in seen] == [
        b"GET /one HTTP/1.1",
        b"GET /two HTTP/1.1",  # on the stale connection: read, never answered
        b"GET /two HTTP/1.1",  # again, on a fresh connection
    ]
    assert sum(errors.values()) == 0


@pytest.mark.parametrize("body", [b"hello", b""], ids=["post-with-body", "post-without-body"])
async def test_stale_connection_never_sends_a_post_twice(body: bytes) -> None:
    script, seen = answers_once_then("close-on-second")
    async with raw_backend(script) as raw:
        config = make_config({"web": service([raw.url])})
        async with start_proxy(config) as proxy, aiohttp.ClientSession() as session:
            async with session.get(proxy.url + "/one") as resp:
                assert resp.status == 200
            async with session.post(proxy.url + "/two", data=body) as resp:
                status = resp.status
            errors = upstream_errors(proxy, "stable")
    assert status == 502
    posts = [h for h in seen if h.startswith(b"POST")]
    assert len(posts) == 1
    assert raw.connections == 1
    assert errors["reset"] == 1


@pytest.mark.parametrize(
    ("method", "first"),
    [
        ("GET", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"),
        ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n"),
        ("GET", b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"),
        ("GET", b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    ],
    ids=["get-close", "head-close", "204-close", "http10-response"],
)
async def test_connection_the_backend_will_close_is_not_reused(method: str, first: bytes) -> None:
    script, seen = answers_once_then("close-on-second", first)
    async with raw_backend(script) as raw:
        config = make_config({"web": service([raw.url])})
        async with start_proxy(config) as proxy, aiohttp.ClientSession() as session:
            async with session.request(method, proxy.url + "/one") as resp:
                assert resp.status in (200, 204)
            async with session.post(proxy.url + "/two", data=b"hello") as resp:
                status = resp.status
    assert status == status_of(first)  # from a fresh connection: its first answer
    assert [request_line(h) for h in seen] == [
        f"{method} /one HTTP/1.1".encode(),
        b"POST /two HTTP/1.1",
    ]
    assert raw.connections == 2


# Client gives up: 499, charged to no pool -----------------------------------------------------
async def test_client_disconnect_before_the_answer_is_499(backend: Backend) -> None:
    config = make_config({"web": service([backend.url])})
    async with start_proxy(config) as proxy:
        _, writer = await asyncio.open_connection(LOCAL, proxy.port)
        writer.write(b"GET /sleep/1 HTTP/1.1\r\nHost: a\r\n\r\n")
        await writer.drain()
        for _ in range(100):  # until the request reached the backend
            if backend.seen:
                break
            await asyncio.sleep(0.01)
        writer.close()
        await writer.wait_closed()
        await asyncio.sleep(0.1)
        aborts = sample(proxy, "canaryproxy_client_aborts_total", service="web")
        in_flight = sample(proxy, "canaryproxy_requests_in_flight", service="web", pool="stable")
        counted = all_requests_total(proxy)
        errors = upstream_errors(proxy, "stable")
    assert [e["status"] for e in proxy.access] == [499]
    assert proxy.access[0]["service"] == "web"
    assert aborts == 1
    assert in_flight == 0
    assert counted == {}
    assert sum(errors.values()) == 0


# Upstream 5xx: passed through, not retried, charged to the pool that caused them -------------
@pytest.mark.parametrize(
    ("weight", "pool"), [(100, "canary"), (0, "stable")], ids=["canary", "stable"]
)
async def test_upstream_5xx_is_charged_to_its_pool(weight: int, pool: str) -> None:
    stable = [await Backend(f"stable{i}").start() for i in range(2)]
    canary = await Backend("canary").start()
    config = make_config(
        {"web": service([b.url for b in stable], [canary.url], canary_weight=weight)}
    )
    try:
        async with start_proxy(config) as proxy:
            status, _ = await get(proxy, "/status/503")
            counted = all_requests_total(proxy)
    finally:
        for b in (*stable, canary):
            await b.stop()
    assert status == 503
    assert counted == {(pool, "503"): 1}
    assert sum(len(b.seen) for b in (*stable, canary)) == 1  # a 5xx is an answer: no retry


async def test_canary_failure_saved_by_stable_is_charged_to_canary(backend: Backend) -> None:
    # Documented: failures count against the pool that caused them, also when a retry on another
    # pool saved the request; the response itself is counted under the pool that served it.
    config = make_config({"web": service([backend.url], [dead_url()], canary_weight=100)})
    async with start_proxy(config) as proxy:
        for _ in range(3):
            status, _ = await get(proxy, "/")
            assert status == 200
        counted = all_requests_total(proxy)
        canary_errors = upstream_errors(proxy, "canary")
    assert counted == {("stable", "200"): 3}
    assert canary_errors["connect"] == 3


# Request bodies and the response deadline ------------------------------------------------------
async def test_slow_upload_is_not_a_504(backend: Backend) -> None:
    # timeouts.response is how long the backend may take to answer a request it has been
    # sent; a client still uploading is guarded by limits.body_timeout instead (as nginx's
    # proxy_read_timeout starts once the request is sent).
    timeouts = {"connect": "1s", "response": "300ms"}
    config = make_config(
        {"web": service([backend.url], timeouts=timeouts)}, limits={"body_timeout": 2.0}
    )
    async with start_proxy(config) as proxy:
        reader, writer = await asyncio.open_connection(LOCAL, proxy.port)
        writer.write(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 20\r\n\r\n")
        for _ in range(4):
            writer.write(b"x" * 5)
            await asyncio.sleep(0.2)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
        writer.close()
    assert status_of(head) == 200
    assert len(backend.seen) == 1


async def test_backend_that_stops_reading_the_body_is_a_504() -> None:
    async def never_reads_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        await asyncio.sleep(3)

    timeouts = {"connect": "1s", "response": "300ms"}
    async with raw_backend(never_reads_body) as raw:
        config = make_config({"web": service([raw.url], timeouts=timeouts)})
        async with start_proxy(config) as proxy:
            reader, writer = await asyncio.open_connection(LOCAL, proxy.port)
            size = 64 * 1024 * 1024
            writer.write(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % size)
            block = b"x" * (1024 * 1024)

            async def upload() -> None:
                for _ in range(size // len(block)):
                    writer.write(block)
                    await writer.drain()

            pushing = asyncio.ensure_future(upload())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
            pushing.cancel()
            writer.close()
            errors = upstream_errors(proxy, "stable")
    assert status_of(head) == 504
    assert errors["timeout"] == 1


# Interim and surplus upstream responses --------------------------------------------------------
async def test_interim_responses_are_not_forwarded() -> None:
    data = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    )
    async with raw_backend(answer_with(data)) as raw:
        config = make_config({"web": service([raw.url])})
        async with start_proxy(config) as proxy:
            status, body = await get(proxy, "/")
    assert (status, body) == (200, b"ok")


async def test_unexpected_101_is_502() -> None:
    data = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\nraw"
    async with raw_backend(answer_with(data)) as raw:
        config = make_config({"web": service([raw.url])})
        async with start_proxy(config) as proxy:
            status, _ = await get(proxy, "/")
            errors = upstream_errors(proxy, "stable")
    assert status == 502
    assert errors["protocol"] == 1


async def test_surplus_response_never_answers_the_next_request() -> None:
    # A backend that answers one request twice: the second answer must not be handed to the
    # client's next (pipelined) request; the connection is dropped instead (as nginx's
    # "upstream sent more data than specified").
    seen: list[bytes] = []

    async def answers_twice(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await read_head(reader)
            seen.append(head)
            path = request_line(head).split(b" ")[1]
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(path), path))
            if path == b"/one":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL")
            await writer.drain()

    async with raw_backend(answers_twice) as raw:
        config = make_config({"web": service([raw.url])})
        request = (
            b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n"
            b"GET /two HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        )
        async with start_proxy(config) as proxy:
            response = await raw_request(proxy.port, request, read_timeout=3)
    assert b"EVIL" not in response
    bodies = [part.split(b"\r\n\r\n", 1)[1][:4] for part in response.split(b"HTTP/1.1 ")[1:]]
    assert bodies == [b"/one", b"/two"]


async def test_response_with_both_framings_is_a_502() -> None:
    # Content-Length and Transfer-Encoding in one response: llhttp refuses it, and so does
    # the proxy (502, counted as a protocol error), as nginx does since 1.23; the
    # ambiguous framing never reaches the client.
    async def both(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        )
        await writer.drain()

    async with raw_backend(both) as raw:
        config = make_config({"web": service([raw.url])})
        async with start_proxy(config) as proxy:
            request = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
            response = await raw_request(proxy.port, request, read_timeout=3)
            errors = upstream_errors(proxy, "stable")
    assert response.startswith(b"HTTP/1.1 502 "), response
    assert b"hello" not in response
    assert errors["protocol"] == 1

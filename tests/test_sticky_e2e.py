"""Sticky cookies and bucketing through real sockets (the README's "Routing")."""

from __future__ import annotations

import asyncio
from http.cookies import SimpleCookie
from typing import Any

import aiohttp
import pytest

from canaryproxy.app import Clocks
from canaryproxy.decide.routing import bucket_for_key, service_salt
from tests.support import (
    Backend,
    RawBackend,
    RunningProxy,
    dead_url,
    make_config,
    read_head,
    service,
    start_proxy,
)

COOKIE = "cp_pool"


def web(stable: Backend, canary: Backend | str, weight: float, **extra: Any) -> dict[str, Any]:
    url = canary if isinstance(canary, str) else canary.url
    return {"web": service([stable.url], [url], canary_weight=weight, **extra)}


async def get(
    session: aiohttp.ClientSession, proxy: RunningProxy, headers: dict[str, str] | None = None
) -> tuple[str, str | None]:
    """(backend name, Set-Cookie value of our cookie or None)."""
    async with session.get(proxy.url + "/", headers=headers or {}) as resp:
        assert resp.status == 200
        body = await resp.json()
        ours = [v for v in resp.headers.getall("Set-Cookie", []) if v.startswith(COOKIE + "=")]
        value = SimpleCookie(ours[0])[COOKIE].value if ours else None
        return str(body["backend"]), value


def cookieless() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())


def user() -> aiohttp.ClientSession:
    """A browser-like client that keeps cookies (also for an IP-address host)."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def test_share_of_new_users_follows_the_weight(pools: tuple[Backend, Backend]) -> None:
    config = make_config(web(*pools, 10))
    n = 10_000
    async with start_proxy(config) as proxy, cookieless() as session:
        sem = asyncio.Semaphore(32)

        async def one() -> str:
            async with sem:
                name, cookie = await get(session, proxy)
                assert cookie is not None  # every new user is pinned
                return name

        names = await asyncio.gather(*(one() for _ in range(n)))
    share = names.count("canary") / n
    assert 0.085 <= share <= 0.115, share


async def test_session_mode_pins_the_pool_while_the_weight_moves(
    pools: tuple[Backend, Backend],
) -> None:
    config = make_config(web(*pools, 50))
    pools_seen = set()
    async with start_proxy(config) as proxy:
        for _ in range(20):  # users of both pools (at 50 %, 20 users are both kinds)
            async with user() as client:
                first, _ = await get(client, proxy)
                seen = {first}
                for i in range(200):
                    weight = [0, 50, 10, 0, 50][i % 5]
                    await proxy.proxy.services.get("web").set_weight(weight, "test")
                    name, cookie = await get(client, proxy)
                    seen.add(name)
                    assert cookie is None  # a valid cookie for the pool it got: not set again
                assert seen == {first}
                pools_seen.add(first)
    assert pools_seen == {"stable", "canary"}


async def test_cohort_mode_keeps_canary_users_inside_as_the_weight_grows(
    pools: tuple[Backend, Backend],
) -> None:
    config = make_config(web(*pools, 5), sticky={"mode": "cohort"})
    async with start_proxy(config) as proxy:
        users = [user() for _ in range(600)]
        try:
            first = [(await get(u, proxy))[0] for u in users]
            canary_users = [u for u, name in zip(users, first, strict=True) if name == "canary"]
            assert canary_users
            counts = []
            for weight in (10, 25):
                await proxy.proxy.services.get("web").set_weight(weight, "test")
                now = [(await get(u, proxy))[0] for u in users]
                counts.append(now.count("canary"))
                for u in canary_users:
                    assert (await get(u, proxy))[0] == "canary"
            assert counts[0] < counts[1]
            # lowering moves the newest out first: back at 5 % the same first users remain
            await proxy.proxy.services.get("web").set_weight(5, "test")
            back = [(await get(u, proxy))[0] for u in users]
            assert back == first
        finally:
            for u in users:
                await u.close()


async def test_bucket_by_header_is_stable_across_restarts(pools: tuple[Backend, Backend]) -> None:
    config = make_config(web(*pools, 30, bucket_by="header:X-User-Id"))
    keys = [f"user-{i}" for i in range(150)]
    runs = []
    for _ in range(2):  # two proxies, one after the other: a restart
        async with start_proxy(config) as proxy, cookieless() as session:
            runs.append([(await get(session, proxy, {"X-User-Id": k}))[0] for k in keys])
    assert runs[0] == runs[1]
    expected = [
        "canary" if bucket_for_key(service_salt("web"), k) < 3000 else "stable" for k in keys
    ]
    assert runs[0] == expected


async def test_bucket_by_cookie(pools: tuple[Backend, Backend]) -> None:
    config = make_config(web(*pools, 50, bucket_by="cookie:uid"))
    async with start_proxy(config) as proxy, cookieless() as session:
        for i in range(40):
            key = f"u{i}"
            name, _ = await get(session, proxy, {"Cookie": f"uid={key}; other=1"})
            expected = bucket_for_key(service_salt("web"), key) < 5000
            assert (name == "canary") == expected


async def test_secret_rotation(pools: tuple[Backend, Backend]) -> None:
    def with_secrets(*secrets: str) -> Any:
        return make_config(web(*pools, 50), sticky={"secrets": list(secrets)})

    async with start_proxy(with_secrets("old")) as proxy, cookieless() as s:
        pinned = []
        for _ in range(30):
            name, cookie = await get(s, proxy)
            assert cookie is not None
            pinned.append((name, cookie))
    async with start_proxy(with_secrets("new", "old")) as proxy, cookieless() as s:
        for name, cookie in pinned:
            got, resigned = await get(s, proxy, {"Cookie": f"{COOKIE}={cookie}"})
            assert got == name  # old cookies still count
            assert resigned is not None
            assert resigned != cookie  # ... and are re-signed with the first secret
            again, none = await get(s, proxy, {"Cookie": f"{COOKIE}={resigned}"})
            assert (again, none) == (name, None)
    async with start_proxy(with_secrets("new")) as proxy, cookieless() as s:
        for _, cookie in pinned:
            _, fresh = await get(s, proxy, {"Cookie": f"{COOKIE}={cookie}"})
            assert fresh is not None  # not verifiable any more: reassigned


@pytest.mark.parametrize(
    "tamper",
    [
        lambda v: v[:-1] + ("A" if v[-1] != "A" else "B"),
        lambda v: v[: len(v) // 2],
        lambda v: "",
        lambda v: "garbage",
        lambda v: ("c" if v[0] == "s" else "s") + v[1:],
        lambda v: v.replace(".", "..", 1),
        lambda v: "x" * 4000,
        lambda v: "junk; cp_pool=" + v[:-1] + ("A" if v[-1] != "A" else "B"),
    ],
    # Two copies of a valid cookie are no tampering: the first valid one counts (see
    # test_of_several_sticky_cookies_the_first_valid_one_counts).
    ids=[
        "flipped",
        "truncated",
        "empty",
        "garbage",
        "pool-swapped",
        "extra-dot",
        "huge",
        "dup-all-bad",
    ],
)
async def test_tampered_cookies_get_200_and_a_fresh_cookie(
    pools: tuple[Backend, Backend], tamper: Any
) -> None:
    config = make_config(web(*pools, 50))
    async with start_proxy(config) as proxy, cookieless() as s:
        _, cookie = await get(s, proxy)
        assert cookie is not None
        _, fresh = await get(s, proxy, {"Cookie": f"{COOKIE}={tamper(cookie)}"})
        assert fresh is not None


async def test_cookie_attributes_and_upstream_set_cookie_pass_through() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_head(reader)
            writer.write(
                b"HTTP/1.1 200 OK\r\nSet-Cookie: app=1; Path=/app\r\n"
                b"Set-Cookie: theme=dark\r\nContent-Length: 2\r\n\r\nok"
            )
            await writer.drain()

    backend = await RawBackend(answer).start()
    config = make_config(
        {"web": service([backend.url], [backend.url.replace("127.0.0.1", "localhost")])},
        sticky={"secure": True, "same_site": "Strict", "max_age": "1h"},
    )
    try:
        async with start_proxy(config) as proxy, cookieless() as s:
            async with s.get(proxy.url + "/") as resp:
                cookies = resp.headers.getall("Set-Cookie", [])
    finally:
        await backend.stop()
    assert "app=1; Path=/app" in cookies
    assert "theme=dark" in cookies
    ours = next(c for c in cookies if c.startswith(COOKIE))
    for attribute in ("HttpOnly", "Path=/", "Max-Age=3600", "SameSite=Strict", "Secure"):
        assert attribute in ours
    assert len(ours.split(";")[0]) < 100
    assert "127.0.0.1" not in ours


async def test_override_header_forces_a_pool_and_is_not_forwarded(
    pools: tuple[Backend, Backend],
) -> None:
    stable, canary = pools
    config = make_config(web(stable, canary, 0, override_header="X-Canary"))
    async with start_proxy(config) as proxy, cookieless() as s:
        assert (await get(s, proxy, {"X-Canary": "always"}))[0] == "canary"
        assert (await get(s, proxy, {"X-Canary": "never"}))[0] == "stable"
        await proxy.proxy.controller.eject("web", "test", "test")
        assert (await get(s, proxy, {"X-Canary": "always"}))[0] == "stable"
    headers = {k.lower() for seen in canary.seen for k, _ in seen["headers"]}
    assert "x-canary" not in headers


async def test_ejection_moves_pinned_canary_users_to_stable(
    pools: tuple[Backend, Backend],
) -> None:
    config = make_config(web(*pools, 100))
    async with start_proxy(config) as proxy, user() as client:
        assert (await get(client, proxy))[0] == "canary"
        await proxy.proxy.controller.eject("web", "bad canary", "test")
        name, cookie = await get(client, proxy)
        assert (name, cookie is not None) == ("stable", True)
        await proxy.proxy.controller.restore("web", 100, "test")
        # the old canary pin is gone for good (its epoch is over); this user is now stable
        assert (await get(client, proxy))[0] == "stable"


async def test_canary_without_a_backend_serves_pinned_users_from_stable(
    pools: tuple[Backend, Backend],
) -> None:
    stable, _ = pools
    config = make_config(web(stable, dead_url(), 100))
    async with start_proxy(config) as proxy, user() as client:
        for _ in range(5):
            assert (await get(client, proxy))[0] == "stable"


async def test_expired_and_future_dated_cookies_are_replaced(
    pools: tuple[Backend, Backend],
) -> None:
    now = [1_800_000_000.0]
    clocks = Clocks(wall=lambda: now[0])
    config = make_config(web(*pools, 50), sticky={"max_age": "1h"})
    async with start_proxy(config, clocks=clocks) as proxy, cookieless() as s:
        _, cookie = await get(s, proxy)
        assert cookie is not None
        now[0] += 1800  # within max_age: kept, not re-set
        assert (await get(s, proxy, {"Cookie": f"{COOKIE}={cookie}"}))[1] is None
        now[0] += 1801  # older than max_age: ignored and replaced
        assert (await get(s, proxy, {"Cookie": f"{COOKIE}={cookie}"}))[1] is not None
        codec = proxy.proxy.services.get("web").routing.codec
        assert codec is not None
        future = codec.encode("stable", 1, 0, now[0] + 3600)  # issued an hour from now
        assert (await get(s, proxy, {"Cookie": f"{COOKIE}={future}"}))[1] is not None


async def test_of_several_sticky_cookies_the_first_valid_one_counts(
    pools: tuple[Backend, Backend],
) -> None:
    config = make_config(web(*pools, 50))
    async with start_proxy(config) as proxy, cookieless() as s:
        pins: dict[str, str] = {}
        while len(pins) < 2:  # one valid cookie for each pool
            backend, cookie = await get(s, proxy)
            assert cookie is not None
            pins.setdefault(backend, cookie)
        canary, stable = pins["canary"], pins["stable"]
        served = set()
        for cookies in (
            f"{COOKIE}=junk; {COOKIE}={canary}",
            f"{COOKIE}={canary}; {COOKIE}={stable}",
            f"{COOKIE}={canary[:-3]}abc; x=1; {COOKIE}={canary}; {COOKIE}={stable}",
        ):
            for _ in range(10):  # the same request pins the same way every time
                backend, again = await get(s, proxy, {"Cookie": cookies})
                served.add(backend)
                assert again is None  # a valid cookie for the pool it got: not set again
        backend, _ = await get(s, proxy, {"Cookie": f"{COOKIE}={stable}; {COOKIE}={canary}"})
    assert served == {"canary"}
    assert backend == "stable"

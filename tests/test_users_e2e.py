"""One client must not eject a canary (README "The error budget": the unit of evidence is
the user): real proxy, real backends, a crowd of users each from its own loopback address."""

from __future__ import annotations

import aiohttp

from tests.support import (
    Backend,
    RunningProxy,
    make_config,
    service,
    start_proxy,
    user_session,
)

BUDGET = {"min_requests": 50, "window": "30s"}


async def crowd(proxy: RunningProxy, users: int, requests: int) -> None:
    """``users`` users from 127.0.1.x, ``requests`` healthy requests each."""
    for u in range(users):
        async with user_session(f"127.0.1.{u + 1}") as s:
            for _ in range(requests):
                async with s.get(proxy.url + "/") as resp:
                    await resp.read()


async def fish_canary(s: aiohttp.ClientSession, proxy: RunningProxy) -> None:
    """Drop the cookie and ask again until the proxy pins this client to the canary."""
    for _ in range(2000):
        s.cookie_jar.clear()
        async with s.get(proxy.url + "/") as resp:
            if (await resp.json())["backend"] == "canary":
                return
    raise AssertionError("never drew the canary")


async def test_a_lone_client_does_not_eject_a_canary_as_good_as_stable(
    pools: tuple[Backend, Backend],
) -> None:
    stable, canary = pools
    for backend in pools:  # a bad input: fails in both versions, the canary's no fault
        backend.fail_paths = {"/poison"}
    config = make_config(
        {
            "web": service(
                [stable.url],
                [canary.url],
                canary_weight=5,
                override_header="X-Canary",
                error_budget=BUDGET,
            )
        }
    )
    async with start_proxy(config) as proxy:
        await crowd(proxy, users=60, requests=5)
        async with user_session("127.0.2.1") as lone:
            # a fished canary cookie, then the bad input over and over (and retried)
            await fish_canary(lone, proxy)
            for _ in range(100):
                async with lone.get(proxy.url + "/poison") as resp:
                    assert resp.status == 500
            # many canary cookies from the one address
            for _ in range(5):
                await fish_canary(lone, proxy)
                for _ in range(10):
                    async with lone.get(proxy.url + "/poison") as resp:
                        assert resp.status == 500
            # the override header: QA's traffic, never evidence
            for _ in range(100):
                headers = {"X-Canary": "always"}
                async with lone.get(proxy.url + "/poison", headers=headers) as resp:
                    assert resp.status == 500
        await crowd(proxy, users=20, requests=5)
        web = proxy.proxy.services.get("web")
        assert not web.knobs.is_ejected
        evidence = proxy.proxy.controller.service_state("web")["evidence"]
        assert isinstance(evidence, dict)
        error_users = evidence["error_users"]
        assert isinstance(error_users, dict)
        assert error_users["canary"] <= 1
        assert web.metrics.pools["canary"].overridden == 100

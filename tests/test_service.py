"""One home per service: STATE as plain JSON, IPv6 backends end to end, the failure vocabulary.

End-to-end cases run the real proxy with real backends on loopback (127.0.0.1 and ::1).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from jsonschema import Draft202012Validator

from canaryproxy.admin.openapi import openapi_document
from canaryproxy.vocabulary import FAILURE_KINDS
from tests.support import (
    Backend,
    RunningProxy,
    dead_url,
    make_config,
    raw_request,
    service,
    start_proxy,
    status_of,
)

AUTH = {"Authorization": "Bearer test-token"}
# What a Python repr looks like inside a string: "<BackendHealth check=…>", "<Judge …>".
REPR = re.compile(r"<[A-Z][A-Za-z_]*[ >]")


def strings(value: object, where: str = "$") -> Iterator[tuple[str, str]]:
    """Every string in a JSON value (keys included), with its path."""
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield f"{where}.{key}", str(key)
            yield from strings(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from strings(item, f"{where}[{i}]")


def state_validator() -> Draft202012Validator:
    """The OpenAPI document's State schema, its $refs resolved within the document."""
    document = openapi_document()
    schema = {"$ref": "#/components/schemas/State", "components": document["components"]}
    return Draft202012Validator(schema)


async def admin_get(proxy: RunningProxy, path: str) -> Any:
    async with aiohttp.ClientSession() as s, s.get(proxy.admin_url + path, headers=AUTH) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def get(url: str, path: str = "/") -> int:
    async with aiohttp.ClientSession() as s, s.get(url + path) as resp:
        await resp.read()
        return resp.status


# --- STATE is plain JSON, described by the OpenAPI document -----------------------------------


async def test_state_holds_no_python_repr_and_matches_the_openapi_schema(
    pools: tuple[Backend, Backend],
) -> None:
    stable, canary = pools
    outlier = {"consecutive_failures": 1, "base_ejection_time": "60s"}
    health = {"path": "/healthz", "interval": "100ms", "timeout": "80ms", "rise": 1, "fall": 1}
    config = make_config(
        {
            "web": service([stable.url], [canary.url], canary_weight=50, health_check=health),
            "api": service(
                [stable.url, dead_url()],
                match={"path_prefix": "/api"},
                outlier_detection=outlier,  # and no health_check
            ),
        }
    )
    canary.health_status = 503  # the canary's probes fail: an active error to show
    async with start_proxy(config) as proxy:
        for _ in range(4):  # round robin reaches the dead backend: ejected by outlier detection
            await get(proxy.url, "/api/x")
        await asyncio.sleep(0.5)  # a few probes
        await proxy.proxy.controller.eject("web", "bad build", "test")
        body = await admin_get(proxy, "/admin/services")
    states = body["services"]
    validator = state_validator()
    for name, state in states.items():
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(state)]
        assert errors == [], name
    assert [(path, text) for path, text in strings(states) if REPR.search(text)] == []
    api = {b["url"]: b for b in states["api"]["backends"]}
    dead = next(b for url, b in api.items() if url != stable.url)
    assert dead["healthy"] is False
    assert dead["health"]["active"] is None  # no health_check
    assert dead["health"]["outlier"]["ejected"] is True
    assert dead["health"]["outlier"]["ejections"] == 1
    until = dead["health"]["outlier"]["until"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", until)
    web = {b["url"]: b for b in states["web"]["backends"]}
    sick = web[canary.url]["health"]
    assert sick["active"]["healthy"] is False
    assert sick["active"]["last_error"] == "status 503"
    assert web[stable.url]["health"] == {
        "healthy": True,
        "active": {"healthy": True, "streak": 0, "last_error": None},
        "outlier": {"ejected": False, "until": None, "ejections": 0},
    }


def test_the_schema_refuses_a_repr_for_health() -> None:
    """The check above can fail: yesterday's STATE (a repr string) is refused."""
    state = {
        "name": "web",
        "canary_weight": 5,
        "ejected": False,
        "eject_reason": None,
        "verdict": "healthy",
        "evidence": {},
        "window": {
            "stable": {"requests": 0, "errors": 0, "error_rate": 0, "p50_ms": None, "p99_ms": None},
            "canary": None,
        },
        "backends": [
            {
                "pool": "stable",
                "url": "http://127.0.0.1:9001",
                "address": "127.0.0.1:9001",
                "weight": 1,
                "healthy": True,
                "health": "<BackendHealth check=None outlier=<OutlierDetector in rotation>>",
            }
        ],
    }
    assert not state_validator().is_valid(state)
    assert any(REPR.search(text) for _, text in strings(state))


# --- IPv6 backends ------------------------------------------------------------------------------


@pytest.fixture
async def v6() -> Any:
    backend = await Backend("v6", host="::1").start()
    yield backend
    await backend.stop()


async def test_an_ipv6_backend_is_proxied_health_checked_and_named_in_brackets(
    v6: Backend,
) -> None:
    assert v6.url.startswith("http://[::1]:")
    health = {"path": "/healthz", "interval": "100ms", "timeout": "80ms", "rise": 1, "fall": 1}
    config = make_config({"web": service([v6.url], health_check=health)})
    async with start_proxy(config) as proxy:
        assert await get(proxy.url, "/hello") == 200
        v6.health_status = 503
        await asyncio.sleep(0.5)
        down = (await admin_get(proxy, "/admin/services/web"))["backends"][0]
        v6.health_status = 200
        await asyncio.sleep(0.5)
        up = (await admin_get(proxy, "/admin/services/web"))["backends"][0]
        assert await get(proxy.url, "/again") == 200
        # HTTP/1.0 without Host: the proxy names the backend, an IPv6 literal in brackets.
        reply = await raw_request(proxy.port, b"GET /old HTTP/1.0\r\n\r\n")
    assert status_of(reply) == 200
    assert down["healthy"] is False  # the probe reached [::1] and saw the 503
    assert down["health"]["active"]["last_error"] == "status 503"
    assert up["healthy"] is True
    assert up["address"] == f"[::1]:{v6.port}"
    hosts = [dict(seen["headers"]).get("Host") for seen in v6.seen if seen["path"] == "/old"]
    assert hosts == [f"[::1]:{v6.port}"]
    assert proxy.access[0]["backend"] == v6.url


async def test_an_ipv6_backend_beside_an_ipv4_one_shares_the_traffic(v6: Backend) -> None:
    v4 = await Backend("v4").start()
    try:
        config = make_config({"web": service([v6.url, v4.url])})
        async with start_proxy(config) as proxy:
            statuses = [await get(proxy.url, f"/{i}") for i in range(4)]
    finally:
        await v4.stop()
    assert statuses == [200] * 4
    assert (v6.count, v4.count) == (2, 2)


# --- the failure vocabulary ---------------------------------------------------------------------


async def test_every_failure_kind_is_accounted_and_an_unknown_one_is_an_error(
    pools: tuple[Backend, Backend],
) -> None:
    stable, canary = pools
    config = make_config({"web": service([stable.url], [canary.url], canary_weight=50)})
    async with start_proxy(config) as proxy:
        web = proxy.proxy.services.get("web")
        for kind in FAILURE_KINDS:
            web.attempt_failed("stable", kind)
        with pytest.raises(ValueError, match="unknown upstream error kind"):
            web.attempt_failed("stable", "unavalable")  # type: ignore[arg-type]
        errors = web.metrics.pools["stable"].upstream_error
        with pytest.raises(ValueError, match="expected one of: connect, timeout, reset, protocol"):
            errors("unavailable")  # the judge's word, no backend's error
        evidence = web.state()["evidence"]
    assert isinstance(evidence, dict)
    # Every kind reached the judge; the misspelt one raised before anything was counted.
    assert evidence["stable"]["errors"] == len(FAILURE_KINDS)


async def test_a_reload_keeps_each_services_knobs_series_and_health(
    pools: tuple[Backend, Backend], tmp_path: Any
) -> None:
    stable, canary = pools
    config = make_config({"web": service([stable.url], [canary.url], canary_weight=10)})
    async with start_proxy(config) as proxy:
        before = proxy.proxy.services.get("web")
        await before.set_weight(30, "test")
        await get(proxy.url)
        proxy.proxy.install(
            type(proxy.proxy.services).build(config, proxy.proxy.env, proxy.proxy.services)
        )
        after = proxy.proxy.services.get("web")
    assert after is not before
    assert after.knobs is before.knobs
    assert after.knobs.canary_weight == 30
    assert after.metrics is before.metrics
    assert after.judge is before.judge
    assert after.routing.stable.backends[0].health is before.routing.stable.backends[0].health
    assert proxy.proxy.controller.services is proxy.proxy.services
    assert proxy.proxy.ctx.director is proxy.proxy.services.director


# --- requests and operators across a reload --------------------------------------------------


async def test_outcomes_in_flight_across_a_reload_reach_the_judge_in_force(
    pools: tuple[Backend, Backend],
) -> None:
    stable, canary = pools
    web = service([stable.url], [canary.url], canary_weight=50)
    api = service([stable.url], [canary.url], canary_weight=50, match={"path_prefix": "/api"})
    config = make_config({"web": web, "api": api})
    changed = make_config(
        {"web": {**web, "error_budget": {"min_requests": 7}}}  # a new judge; api removed
    )
    async with start_proxy(config) as proxy:
        app = proxy.proxy
        old_web, old_api = app.services.get("web"), app.services.get("api")
        old_judge = old_web.judge
        app.install(type(app.services).build(changed, app.env, app.services))
        new_web = app.services.get("web")
        assert new_web.judge is not old_judge
        old_web.attempt_failed("canary", "connect")  # a request routed before the reload
        for _ in range(50):
            old_api.attempt_failed("canary", "connect")  # its service is gone
        assert old_api.judge is None
        assert not old_api.knobs.is_ejected  # a discarded judge ejects nothing
        assert new_web.judge is not None
        assert old_judge is not None
        assert new_web.judge.evidence(0.0)["canary"]["errors"] == 1  # type: ignore[index]
        assert old_judge.evidence(0.0)["canary"]["errors"] == 0  # type: ignore[index]


async def test_a_restore_saved_across_a_reload_restores_the_judge_in_force(
    pools: tuple[Backend, Backend],
) -> None:
    stable, canary = pools
    web = service([stable.url], [canary.url], canary_weight=50)
    config = make_config({"web": web})
    changed = make_config({"web": {**web, "error_budget": {"min_requests": 7}}})
    async with start_proxy(config) as proxy:
        app = proxy.proxy
        await app.controller.eject("web", "bad build", "test")
        restoring = asyncio.ensure_future(app.controller.restore("web", 20, "test"))
        await asyncio.sleep(0)  # the restore is being saved (in a thread)
        app.install(type(app.services).build(changed, app.env, app.services))
        state = await restoring
    assert state["ejected"] is False
    assert state["verdict"] != "ejected"
    judge = app.services.get("web").judge
    assert judge is not None
    assert not judge.is_ejected

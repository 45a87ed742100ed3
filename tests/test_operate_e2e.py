"""Operating a running proxy: /metrics after a known request mix, the real admin API."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from canaryproxy.state.store import MemoryStateStore
from tests.support import (
    LOCAL,
    Backend,
    RunningProxy,
    dead_url,
    make_config,
    service,
    start_proxy,
)

AUTH = {"Authorization": "Bearer test-token"}


async def scrape(proxy: RunningProxy) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with aiohttp.ClientSession() as s, s.get(proxy.admin_url + "/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_after_a_known_request_mix(pools: tuple[Backend, Backend]) -> None:
    stable, canary = pools
    config = make_config(
        {
            "web": service(
                [stable.url],
                [canary.url],
                canary_weight=0,
                override_header="X-Canary",
                timeouts={"response": "300ms"},
            ),
            "dead": service([dead_url()], match={"path_prefix": "/dead"}),
        },
        metrics={"buckets": [0.1, 0.5, 1.0]},
    )
    async with start_proxy(config) as proxy, aiohttp.ClientSession() as s:
        for _ in range(3):
            async with s.get(proxy.url + "/ok") as resp:
                assert resp.status == 200
        for _ in range(2):
            async with s.get(proxy.url + "/status/503", headers={"X-Canary": "always"}) as resp:
                assert resp.status == 503
        async with s.get(proxy.url + "/sleep/1") as resp:
            assert resp.status == 504
        async with s.get(proxy.url + "/dead/x") as resp:
            assert resp.status == 502
        # a client that gives up: 499, charged to no pool
        _, writer = await asyncio.open_connection(LOCAL, proxy.port)
        writer.write(b"GET /sleep/0.2 HTTP/1.1\r\nHost: a\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.close()
        await asyncio.sleep(0.4)
        samples = await scrape(proxy)
    total = "canaryproxy_requests_total"
    assert value(samples, total, service="web", pool="stable", code="200") == 3
    assert value(samples, total, service="web", pool="canary", code="503") == 2
    assert value(samples, total, service="web", pool="stable", code="504") == 1
    assert value(samples, total, service="dead", pool="stable", code="502") == 1
    assert not any(k[0] == total and ("code", "499") in k[1] for k in samples)
    assert value(samples, "canaryproxy_client_aborts_total", service="web") == 1
    errors = "canaryproxy_upstream_errors_total"
    assert value(samples, errors, service="web", pool="stable", kind="timeout") == 1
    # one backend: nothing else to retry on (as nginx with a single server)
    assert value(samples, errors, service="dead", pool="stable", kind="connect") == 1
    attempts = "canaryproxy_upstream_attempts_total"
    assert value(samples, attempts, service="dead", pool="stable", outcome="failed") == 1
    # histogram: 3 fast 200s land in the first bucket; the 504 took ≥ 0.3 s
    bucket = "canaryproxy_request_duration_seconds_bucket"
    assert value(samples, bucket, service="web", pool="stable", le="0.1") == 3
    assert value(samples, bucket, service="web", pool="stable", le="0.5") == 4
    assert value(samples, bucket, service="web", pool="stable", le="+Inf") == 4
    assert value(samples, "canaryproxy_requests_in_flight", service="web", pool="stable") == 0
    assert value(samples, "canaryproxy_canary_weight", service="web") == 0
    assert value(samples, "canaryproxy_verdict", service="web", verdict="insufficient_samples")
    assert value(
        samples, "canaryproxy_backend_healthy", service="web", pool="canary", backend=canary.url
    )


async def test_malformed_requests_are_counted(pools: tuple[Backend, Backend]) -> None:
    config = make_config({"web": service([pools[0].url])})
    async with start_proxy(config) as proxy:
        for _ in range(2):
            reader, writer = await asyncio.open_connection(LOCAL, proxy.port)
            writer.write(b"GARBAGE\r\n\r\n")
            await reader.read()
            writer.close()
        samples = await scrape(proxy)
    assert value(samples, "canaryproxy_rejected_requests_total", code="400") == 2


async def admin(
    proxy: RunningProxy, method: str, path: str, **kwargs: Any
) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as s:
        async with s.request(method, proxy.admin_url + path, **kwargs) as resp:
            return resp.status, await resp.json()


async def test_admin_api_with_the_real_state(pools: tuple[Backend, Backend]) -> None:
    store = MemoryStateStore()
    config = make_config({"web": service([pools[0].url], [pools[1].url], canary_weight=5)})
    async with start_proxy(config, store=store) as proxy:
        status, body = await admin(proxy, "GET", "/admin/services/web")
        assert status == 401
        status, body = await admin(proxy, "GET", "/admin/services", headers=AUTH)
        assert status == 200
        assert body["services"]["web"]["canary_weight"] == 5
        state = body["services"]["web"]
        for key in ("name", "ejected", "eject_reason", "verdict", "evidence", "window"):
            assert key in state
        assert set(state["window"]["stable"]) >= {"requests", "errors", "error_rate", "p50_ms"}
        assert {b["pool"] for b in state["backends"]} == {"stable", "canary"}

        path = "/admin/services/web/weight"
        for bad in (-1, 101, "10", None):
            status, _ = await admin(proxy, "PUT", path, json={"canary": bad}, headers=AUTH)
            assert status == 400
        assert proxy.proxy.services.get("web").knobs.canary_weight == 5

        status, body = await admin(proxy, "PUT", path, json={"canary": 25}, headers=AUTH)
        assert (status, body["canary_weight"]) == (200, 25)
        status, body = await admin(
            proxy, "POST", "/admin/services/web/eject", json={"reason": "p99"}, headers=AUTH
        )
        assert (status, body["ejected"], body["verdict"]) == (200, True, "ejected")
        assert body["canary_weight"] == 0
        status, _ = await admin(proxy, "PUT", path, json={"canary": 30}, headers=AUTH)
        assert status == 409
        status, body = await admin(
            proxy, "POST", "/admin/services/web/restore", json={}, headers=AUTH
        )
        assert (status, body["ejected"], body["canary_weight"]) == (200, False, 25)
        samples = await scrape(proxy)
        assert value(samples, "canaryproxy_ejections_total", service="web", rule="manual") == 1
        assert value(samples, "canaryproxy_canary_ejected", service="web") == 0
        audit = store.audit_log("web")
    assert [a.action for a in reversed(audit)] == ["set_weight", "eject:manual", "restore"]
    assert audit[-1].old == "5"
    assert audit[-1].new == "25"
    assert all(a.who == LOCAL for a in audit)

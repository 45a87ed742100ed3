"""SIGHUP reloads in process: what changes, what stays, and requests in flight across it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from canaryproxy.app import Proxy
from canaryproxy.config.load import load_config
from canaryproxy.decide.sticky import CookieCodec
from canaryproxy.outcomes.accesslog import AccessLog
from canaryproxy.runtime.service import Service
from canaryproxy.state.store import (
    AuditEntry,
    MemoryStateStore,
    ServiceRecord,
    SqliteStateStore,
    StateError,
)
from tests.support import LOCAL, Backend


def write(path: Path, stable: Backend, canary: Backend | None, **service: Any) -> None:
    web: dict[str, Any] = {"stable": {"backends": [{"url": stable.url}]}, **service}
    if canary is not None:
        web["canary"] = {"backends": [{"url": canary.url}]}
    config = {
        "listen": f"{LOCAL}:0",
        "admin": {"listen": f"{LOCAL}:0", "token": "t"},
        "sticky": {"secrets": ["s"]},
        "services": {"web": web},
    }
    path.write_text(yaml.safe_dump(config))


def rewrite(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    config = yaml.safe_load(path.read_text())
    change(config)
    path.write_text(yaml.safe_dump(config))


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "c.yaml"


@asynccontextmanager
async def running(
    path: Path, stable: Backend, canary: Backend | None, **service: Any
) -> AsyncIterator[Proxy]:
    """A proxy started from a config file written at ``path`` (``reload`` re-reads it)."""
    write(path, stable, canary, **service)
    store, log = MemoryStateStore(), AccessLog(None)
    proxy = Proxy(load_config(path), config_path=str(path), store=store, access_log=log)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()


async def test_removing_the_canary_while_a_request_is_in_flight(
    path: Path, pools: tuple[Backend, Backend]
) -> None:
    stable, canary = pools
    async with running(path, stable, canary, canary_weight=100) as proxy:
        url = f"http://{LOCAL}:{proxy.proxy_address[1]}"
        async with aiohttp.ClientSession() as session:
            slow = asyncio.ensure_future(session.get(url + "/sleep/0.5"))
            await asyncio.sleep(0.2)
            write(path, stable, None)
            assert await proxy.reload()
            resp = await slow
            assert resp.status == 200
            resp.release()
            # the same client connection goes on working, now on stable only
            async with session.get(url + "/after") as resp:
                assert (await resp.json())["backend"] == "stable"


async def test_the_most_recent_weight_change_wins_across_reloads(
    path: Path, pools: tuple[Backend, Backend], caplog: pytest.LogCaptureFixture
) -> None:
    stable, canary = pools
    caplog.set_level(logging.INFO, logger="canaryproxy")
    async with running(path, stable, canary, canary_weight=5) as proxy:

        def web() -> Service:  # the table is swapped on reload
            return proxy.services.get("web")

        write(path, stable, canary, canary_weight=50)
        assert await proxy.reload()
        assert web().knobs.canary_weight == 50  # no runtime change: the file wins
        assert web().state()["weight_source"] == "config"
        await web().set_weight(30, "test")
        write(path, stable, canary, canary_weight=50, health_check={"path": "/healthz"})
        assert await proxy.reload()  # the file's weight did not change: the operator's stays
        assert web().knobs.canary_weight == 30
        state = web().state()
        assert (state["weight_source"], state["configured_weight"]) == ("admin", 50)
        kept = [r for r in caplog.records if r.getMessage() == "config reloaded"][-1]
        assert "kept the admin weight 30" in kept.weights["web"]  # type: ignore[attr-defined]
        write(path, stable, canary, canary_weight=70)
        assert await proxy.reload()  # the file changed after the operator: the file wins
        assert web().knobs.canary_weight == 70
        assert web().state()["weight_source"] == "config"
        audit = proxy.store.audit_log("web")
        assert (audit[0].who, audit[0].old, audit[0].new) == ("config", "30", "70")


async def test_a_file_changed_while_the_proxy_was_down_wins_at_start(
    path: Path, pools: tuple[Backend, Backend]
) -> None:
    stable, canary = pools
    db = str(path.with_suffix(".db"))
    for file_weight, expected, source in [(10, 40, "admin"), (10, 40, "admin"), (60, 60, "config")]:
        write(path, stable, canary, canary_weight=file_weight)
        store = SqliteStateStore(db)  # a restart: the same file, opened afresh
        first = not store.load()
        proxy = Proxy(
            load_config(path), config_path=str(path), store=store, access_log=AccessLog(None)
        )
        await proxy.start()
        try:
            if first:
                await proxy.services.get("web").set_weight(40, "operator")
            web = proxy.services.get("web")
            assert (web.knobs.canary_weight, web.state()["weight_source"]) == (expected, source)
        finally:
            await proxy.stop()


async def test_reload_applies_new_error_budget_and_health_settings(
    path: Path, pools: tuple[Backend, Backend]
) -> None:
    stable, canary = pools
    async with running(path, stable, canary, canary_weight=5) as proxy:
        write(
            path,
            stable,
            canary,
            canary_weight=5,
            error_budget={"min_requests": 7},
            outlier_detection={"consecutive_failures": 2},
        )
        assert await proxy.reload()
        web = proxy.services.get("web")
        assert web.judge is not None
        assert web.judge.params.min_requests == 7
        backend = web.routing.stable.backends[0]
        assert backend.health is not None
        settings, health = web.healths[("stable", stable.url)]
        assert health is backend.health
        assert settings[1].consecutive_failures == 2  # type: ignore[index]


async def test_reload_rotates_the_admin_token_and_cookie_secrets(
    path: Path, pools: tuple[Backend, Backend]
) -> None:
    stable, canary = pools
    async with running(path, stable, canary, canary_weight=50) as proxy:
        admin = f"http://{LOCAL}:{proxy.admin_address[1]}/admin/services"

        def rotate(config: dict[str, Any]) -> None:
            config["admin"]["token"] = "new-token"
            config["sticky"]["secrets"] = ["new-secret", "s"]

        rewrite(path, rotate)
        assert await proxy.reload()
        async with aiohttp.ClientSession() as session:
            for token, status in (("t", 401), ("new-token", 200)):
                auth = {"Authorization": f"Bearer {token}"}
                async with session.get(admin, headers=auth) as resp:
                    assert resp.status == status
        codec = proxy.services.get("web").routing.codec
        assert codec is not None
        before = CookieCodec(
            name="cp_pool", secrets=["s"], max_age=3600, secure=False, same_site="Lax", salt="web"
        )
        decoded = codec.decode(before.encode("canary", 10, 0, 1e9), 1e9)
        assert decoded is not None
        assert decoded.needs_resign  # still valid, re-signed with "new-secret" from now on
        assert codec.decode(codec.encode("canary", 10, 0, 1e9), 1e9) is not None


async def test_a_reload_that_cannot_open_its_access_log_changes_nothing(
    path: Path, pools: tuple[Backend, Backend]
) -> None:
    stable, canary = pools
    async with running(path, stable, canary, canary_weight=5) as proxy:
        proxy.owns_access_log = True  # as under `canaryproxy run`

        def break_it(config: dict[str, Any]) -> None:
            config["services"]["renamed"] = config["services"].pop("web")
            config["access_log"] = str(path.parent / "no-such-dir" / "access.log")

        rewrite(path, break_it)
        assert not await proxy.reload()
        assert list(proxy.config.services) == ["web"]
        assert proxy.services.names() == ["web"]
        assert proxy.services.get("web").metrics.pools["canary"] is not None
        proxy.tick()  # still consistent


async def test_reloads_run_one_at_a_time(path: Path, pools: tuple[Backend, Backend]) -> None:
    stable, canary = pools
    async with running(
        path, stable, canary, canary_weight=5, health_check={"interval": "2s"}
    ) as proxy:
        before = len(proxy.loops.tasks)
        assert all(await asyncio.gather(proxy.reload(), proxy.reload(), proxy.reload()))
        assert len(proxy.loops.tasks) == before


class FailingLoads(MemoryStateStore):
    """A store that stops answering reads once told to (a disk gone bad after start)."""

    def __init__(self) -> None:
        super().__init__()
        self.broken = False

    def load(self) -> dict[str, Any]:
        if self.broken:
            raise StateError("state file x.db: disk I/O error")
        return super().load()


async def test_a_reload_that_cannot_read_the_state_store_changes_nothing(
    path: Path, pools: tuple[Backend, Backend]
) -> None:
    stable, canary = pools
    write(path, stable, canary, canary_weight=5)
    store = FailingLoads()
    proxy = Proxy(load_config(path), config_path=str(path), store=store, access_log=AccessLog(None))
    await proxy.start()
    try:
        services, env, config = proxy.services, proxy.env, proxy.config
        rewrite(
            path,
            lambda c: c.update(admin={**c["admin"], "token": "new"}, sticky={"secrets": ["z"]}),
        )
        store.broken = True
        assert not await proxy.reload()
        assert (proxy.services, proxy.env, proxy.config) == (services, env, config)
        assert proxy.config.admin.token == "t"
        samples = proxy.metrics.exposition()[0].decode()
        assert 'canaryproxy_config_reloads_total{result="failed"} 1.0' in samples
    finally:
        store.broken = False
        await proxy.stop()


async def test_a_record_from_before_config_weights_were_kept_gets_its_baseline_saved(
    path: Path, pools: tuple[Backend, Backend]
) -> None:
    stable, canary = pools
    write(path, stable, canary, canary_weight=10)
    store = MemoryStateStore()
    legacy = ServiceRecord(40.0, False, None, None, None, None, 0)  # no source, no file weight
    store.save("web", legacy, AuditEntry(1.0, "operator", "web", "set_weight", "10", "40"))
    proxy = Proxy(load_config(path), config_path=str(path), store=store, access_log=AccessLog(None))
    await proxy.start()
    try:
        assert proxy.services.get("web").knobs.canary_weight == 40  # the operator's stays
        saved = store.load()["web"]
        assert (saved.canary_weight, saved.config_weight) == (40.0, 10.0)
        assert store.audit_log("web")[0].action == "config_baseline"
    finally:
        await proxy.stop()

"""The real `canaryproxy` process: CLI exit codes, signals, durability, streaming memory."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.support import LOCAL, Backend, ProxyProcess, user_session

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "process-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def write_config(tmp: Path, backend: Backend, **service_extra: Any) -> Path:
    config = {
        "listen": f"{LOCAL}:0",
        "admin": {"listen": f"{LOCAL}:0", "token": TOKEN},
        "state": {"path": str(tmp / "state.db")},
        "sticky": {"secrets": ["process-secret"]},
        "limits": {"drain_timeout": "5s"},
        "services": {
            "web": {
                "stable": {"backends": [{"url": backend.url}]},
                "canary": {"backends": [{"url": backend.url.replace(LOCAL, "127.0.0.2")}]},
                "canary_weight": 5,
                **service_extra,
            }
        },
    }
    path = tmp / "canaryproxy.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "canaryproxy", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "CANARYPROXY_ADMIN_TOKEN": "t", "CANARYPROXY_COOKIE_SECRET": "s"},
    )


async def start(path: Path) -> ProxyProcess:
    return await asyncio.to_thread(ProxyProcess(path).start)


async def state_of(proc: ProxyProcess) -> dict[str, Any]:
    url = f"http://{LOCAL}:{proc.admin_port}/admin/services/web"
    async with aiohttp.ClientSession() as s, s.get(url, headers=AUTH) as resp:
        assert resp.status == 200
        result: dict[str, Any] = await resp.json()
        return result


async def stop(proc: ProxyProcess, sig: int = signal.SIGTERM) -> int:
    assert proc.proc is not None
    proc.proc.send_signal(sig)
    return await asyncio.to_thread(proc.wait, 30)


# CLI -----------------------------------------------------------------------------------------
def test_check_accepts_the_spec_example() -> None:
    result = cli("check", "--config", str(ROOT / "config" / "canaryproxy.yaml"))
    assert result.returncode == 0, result.stderr
    assert "web" in result.stdout


def test_check_and_run_refuse_a_bad_config_with_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "services:\n  web:\n    stable: {backends: [{url: 'http://127.0.0.1:1'}]}\n"
        "    canary: {backends: [{url: 'http://127.0.0.1:2'}]}\n    canary_weight: 140\n"
        "    timeoutz: {}\n"
    )
    for command in ("check", "run"):
        result = cli(command, "--config", str(bad))
        assert result.returncode == 2, (command, result.stderr)
        assert "services.web.canary_weight: must be between 0 and 100, got 140" in result.stderr
        assert "services.web.timeoutz: unknown key" in result.stderr


def test_check_names_every_problem_of_a_file_at_once(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "listen: 127.0.0.1:9000\n"
        "admin: {listen: 127.0.0.1:9000, token: short}\n"
        "services:\n"
        "  web:\n"
        "    stable: {backends: [{url: 'http://127.0.0.1:9001'}]}\n"
        "    canary: {backends: [{url: 'http://127.0.0.1:9002'}]}\n"
        "    canary_weight: 140\n"
        "    timeouts: {connect: 2 parsecs}\n"
    )
    result = cli("check", "--config", str(bad))
    assert result.returncode == 2
    errors = result.stderr.splitlines()
    assert errors[0] == "services.web.canary_weight: must be between 0 and 100, got 140"
    assert errors[1].startswith("services.web.timeouts.connect: must be a duration")
    assert errors[2] == "admin.listen: same address as listen (127.0.0.1:9000)"
    assert len(errors) == 3


def test_check_warns_of_weak_secrets_and_passes(tmp_path: Path) -> None:
    good = tmp_path / "weak.yaml"
    good.write_text(
        "admin: {token: short}\n"
        "services: {web: {stable: {backends: [{url: 'http://127.0.0.1:9001'}]}}}\n"
    )
    result = cli("check", "--config", str(good))
    assert result.returncode == 0, result.stderr
    warnings = result.stderr.splitlines()
    assert warnings[0].startswith("warning: admin.token: shorter than 32 characters (5)")
    assert warnings[1].startswith("warning: sticky.secrets: none set")


def test_usage_error_exits_2() -> None:
    assert cli("run").returncode == 2
    assert cli("no-such-command").returncode == 2


# signals -------------------------------------------------------------------------------------
async def test_sigterm_drains_in_flight_requests(tmp_path: Path, backend: Backend) -> None:
    proc = await start(write_config(tmp_path, backend))
    url = f"http://{LOCAL}:{proc.proxy_port}"
    async with aiohttp.ClientSession() as session:
        slow = asyncio.ensure_future(session.get(url + "/sleep/1.0"))
        await asyncio.sleep(0.3)
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGTERM)
        resp = await slow
        assert resp.status == 200
        assert await resp.text() == "slept"
        resp.release()
        await asyncio.sleep(0.2)
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(url + "/")
    assert await asyncio.to_thread(proc.wait, 30) == 0


async def test_sighup_with_a_broken_file_keeps_the_running_config(
    tmp_path: Path, backend: Backend
) -> None:
    path = write_config(tmp_path, backend)
    proc = await start(path)
    try:
        good = path.read_text()
        path.write_text(good.replace("canary_weight: 5", "canary_weight: 500"))
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(0.5)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://{LOCAL}:{proc.proxy_port}/") as resp:
                assert resp.status == 200
            async with session.get(f"http://{LOCAL}:{proc.admin_port}/metrics") as resp:
                text = await resp.text()
        assert 'canaryproxy_config_reloads_total{result="failed"} 1.0' in text
        # A good file is taken: a new service appears.
        config = yaml.safe_load(good)
        config["services"]["api"] = {
            "match": {"path_prefix": "/api"},
            "stable": {"backends": [{"url": backend.url}]},
        }
        path.write_text(yaml.safe_dump(config))
        proc.proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(0.5)
        async with aiohttp.ClientSession() as session:
            url = f"http://{LOCAL}:{proc.admin_port}/admin/services/api"
            async with session.get(url, headers=AUTH) as resp:
                assert resp.status == 200
    finally:
        assert await stop(proc) == 0
    log = proc.rest_of_log()
    refused = [e for e in log if e.get("msg") == "config reload refused"]
    assert refused
    assert any("canary_weight" in err for err in refused[0]["errors"])


# durability ----------------------------------------------------------------------------------
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
async def test_weight_change_survives_restart(tmp_path: Path, backend: Backend, how: int) -> None:
    path = write_config(tmp_path, backend)
    proc = await start(path)
    try:
        url = f"http://{LOCAL}:{proc.admin_port}/admin/services/web/weight"
        async with aiohttp.ClientSession() as s:
            async with s.put(url, json={"canary": 25}, headers=AUTH) as resp:
                assert resp.status == 200
        await stop(proc, how)  # kill -9 right after the 200
    finally:
        proc.kill()
    again = await start(path)
    try:
        state = await state_of(again)
        assert state["canary_weight"] == 25
        assert state["weight_source"] == "admin"  # an operator set it
    finally:
        assert await stop(again) == 0


async def test_a_state_file_deleted_while_running_loses_no_acknowledged_change(
    tmp_path: Path, backend: Backend
) -> None:
    path = write_config(tmp_path, backend)
    proc = await start(path)
    url = f"http://{LOCAL}:{proc.admin_port}/admin/services/web"
    try:
        async with aiohttp.ClientSession() as s:
            async with s.put(url + "/weight", json={"canary": 30}, headers=AUTH) as resp:
                assert resp.status == 200
            for name in ("state.db", "state.db-wal", "state.db-shm"):
                (tmp_path / name).unlink(missing_ok=True)  # rm state.db*
            async with s.put(url + "/weight", json={"canary": 44}, headers=AUTH) as resp:
                assert resp.status == 200
            async with s.post(url + "/eject", json={"reason": "bad"}, headers=AUTH) as resp:
                assert resp.status == 200
        assert (tmp_path / "state.db").exists()
    finally:
        assert await stop(proc) == 0
    log = proc.rest_of_log()
    assert any("state file deleted" in e.get("msg", "") for e in log)
    again = await start(path)
    try:
        state = await state_of(again)
    finally:
        assert await stop(again) == 0
    assert state["ejected"] is True
    assert state["weight_before_eject"] == 44


async def test_corrupt_state_file_stops_the_start(tmp_path: Path, backend: Backend) -> None:
    path = write_config(tmp_path, backend)
    (tmp_path / "state.db").write_bytes(b"this is not a database" * 100)
    result = await asyncio.to_thread(cli, "run", "--config", str(path))
    assert result.returncode == 1
    errors = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert any("state" in e.get("msg", "") for e in errors)


# streaming memory ----------------------------------------------------------------------------
def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
async def test_256mib_download_does_not_grow_proxy_memory(tmp_path: Path, backend: Backend) -> None:
    proc = await start(write_config(tmp_path, backend))
    assert proc.proc is not None
    try:
        url = f"http://{LOCAL}:{proc.proxy_port}"
        async with aiohttp.ClientSession() as session:
            async with session.get(url + "/download/1024") as resp:
                await resp.read()
            before = peak_rss_kib(proc.proc.pid)
            size = 256 * 1024 * 1024
            got = 0
            async with session.get(url + f"/download/{size}") as resp:
                async for data in resp.content.iter_chunked(1 << 20):
                    got += len(data)
        after = peak_rss_kib(proc.proc.pid)
    finally:
        await stop(proc)
    assert got == size
    assert after - before < 32 * 1024, f"peak RSS grew {after - before} KiB"


def test_python_dash_m_matches_console_script() -> None:
    script = shutil.which("canaryproxy", path=str(Path(sys.executable).parent))
    assert script is not None
    out = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0
    assert cli("--help").stdout == out.stdout


async def test_access_log_to_a_file_is_reopened_on_sighup(tmp_path: Path, backend: Backend) -> None:
    path = write_config(tmp_path, backend)
    log_file = tmp_path / "access.log"
    config = yaml.safe_load(path.read_text())
    config["access_log"] = str(log_file)
    path.write_text(yaml.safe_dump(config))
    proc = await start(path)
    try:
        url = f"http://{LOCAL}:{proc.proxy_port}/first"
        async with aiohttp.ClientSession() as s, s.get(url) as resp:
            assert resp.status == 200
        await asyncio.sleep(0.8)  # flushed within 0.5 s
        log_file.rename(tmp_path / "access.log.1")  # what logrotate does
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(0.5)
        async with aiohttp.ClientSession() as s, s.get(url.replace("first", "second")) as resp:
            assert resp.status == 200
    finally:
        assert await stop(proc) == 0
    rotated = [json.loads(line) for line in (tmp_path / "access.log.1").read_text().splitlines()]
    fresh = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert [e["path"] for e in rotated] == ["/first"]
    assert [e["path"] for e in fresh] == ["/second"]
    assert fresh[0]["status"] == 200
    assert fresh[0]["service"] == "web"


def judge_config(tmp: Path, stable: Backend, canary: Backend) -> Path:
    path = write_config(tmp, stable, canary_weight=20, error_budget={"min_requests": 50})
    config = yaml.safe_load(path.read_text())
    config["services"]["web"]["canary"]["backends"] = [{"url": canary.url}]
    path.write_text(yaml.safe_dump(config))
    return path


async def drive(port: int, requests: int, users: int = 40) -> list[str]:
    """Requests from cookie-keeping users; the backend name (or status) of each answer."""
    jars = [user_session() for _ in range(users)]
    names = []
    try:
        for i in range(requests):
            async with jars[i % users].get(f"http://{LOCAL}:{port}/") as resp:
                body = await resp.json() if resp.status == 200 else {"backend": resp.status}
                names.append(str(body["backend"]))
    finally:
        for jar in jars:
            await jar.close()
    return names


async def test_a_failing_canary_is_ejected_and_stays_ejected_after_kill_9(
    tmp_path: Path, pools: tuple[Backend, Backend]
) -> None:
    stable, canary = pools
    canary.fail_rate_every = 5  # 20 % of canary requests fail
    path = judge_config(tmp_path, stable, canary)
    proc = await start(path)
    try:
        for _ in range(20):
            await drive(proc.proxy_port, 100)
            if (await state_of(proc))["ejected"]:
                break
        state = await state_of(proc)
        assert state["ejected"] is True
        assert state["eject_rule"] in ("comparative", "backstop")
        await stop(proc, signal.SIGKILL)  # no drain, no flush: the ejection was committed
    finally:
        proc.kill()
    again = await start(path)
    try:
        state = await state_of(again)
        assert (state["ejected"], state["verdict"], state["canary_weight"]) == (True, "ejected", 0)
        before = canary.count
        assert set(await drive(again.proxy_port, 200)) == {"stable"}
        assert canary.count == before
        url = f"http://{LOCAL}:{again.admin_port}/admin/services/web/restore"
        async with aiohttp.ClientSession() as s:
            async with s.post(url, json={"canary": 50}, headers=AUTH) as resp:
                assert resp.status == 200
        canary.fail_rate_every = 0
        names = await drive(again.proxy_port, 200, users=200)
        assert 0.3 < names.count("canary") / len(names) < 0.7
    finally:
        assert await stop(again) == 0


async def test_a_healthy_canary_beside_a_failing_stable_is_not_ejected(
    tmp_path: Path, pools: tuple[Backend, Backend]
) -> None:
    stable, canary = pools
    stable.fail_rate_every = 3  # stable fails a third of its requests: a shared problem
    proc = await start(judge_config(tmp_path, stable, canary))
    try:
        await drive(proc.proxy_port, 1000)
        state = await state_of(proc)
    finally:
        assert await stop(proc) == 0
    assert state["ejected"] is False
    assert state["verdict"] == "shared_degradation"


async def test_an_operator_change_racing_an_automatic_ejection_leaves_it_persisted(
    tmp_path: Path,
) -> None:
    from canaryproxy.state.runtime import Conflict, RuntimeState
    from canaryproxy.state.store import SqliteStateStore

    for attempt in range(5):
        store = SqliteStateStore(str(tmp_path / f"race-{attempt}.db"))
        state = RuntimeState(store, lambda: 1e9)
        web = state.adopt("web", 5.0, None, state.records())
        change = asyncio.ensure_future(state.set_weight(web, 25, "operator"))
        await asyncio.sleep(0)  # the operator's save is under way in its thread
        assert state.eject_now(web, "comparative", "burned its budget")
        with pytest.raises(Conflict):
            await change
        assert store.load()["web"].ejected  # what a restart would read
        assert web.is_ejected
        store.close()

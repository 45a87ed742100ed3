"""The operator's commands against a running proxy process (README "Command line"): every
command, every exit code: 0 done, 1 refused by the API, 2 usage, 3 admin unreachable."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support import (
    LOCAL,
    PROCESS_TOKEN,
    Backend,
    ProxyProcess,
    canary_config,
    dead_url,
)


class Cli:
    def __init__(self, admin: str) -> None:
        self.admin = admin
        self.env = {**os.environ, "CANARYPROXY_ADMIN_TOKEN": PROCESS_TOKEN}
        self.env.pop("CANARYPROXY_ADMIN_URL", None)

    async def __call__(
        self, *args: str, env: dict[str, str] | None = None, admin: bool = True
    ) -> tuple[int, str, str]:
        where = ["--admin", self.admin] if admin else []
        argv = [sys.executable, "-m", "canaryproxy", *args, *where]
        done = await asyncio.to_thread(
            subprocess.run, argv, capture_output=True, text=True, env=env or self.env, timeout=60
        )
        return done.returncode, done.stdout, done.stderr


@pytest.fixture
async def cli(tmp_path: Path, pools: tuple[Backend, Backend]) -> AsyncIterator[Cli]:
    stable, canary = pools
    path = canary_config(tmp_path, "cli", stable, canary, 5, state={"path": str(tmp_path / "s.db")})
    proc = await asyncio.to_thread(ProxyProcess(path).start)
    try:
        yield Cli(f"http://{LOCAL}:{proc.admin_port}")
    finally:
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0


async def test_status_shows_a_readable_table_and_json_for_scripts(cli: Cli) -> None:
    code, out, _ = await cli("status")
    assert code == 0
    for words in ("web", "canary weight 5 % (config)", "verdict", "stable", "canary", "up"):
        assert words in out, out
    assert "rollout: idle" in out
    code, out, _ = await cli("status", "web", "--json")
    assert code == 0
    state = json.loads(out)
    assert (state["name"], state["canary_weight"]) == ("web", 5.0)
    code, _, err = await cli("status", "nope")
    assert (code, err.strip()) == (1, "refused (404): there is no service named nope")


async def test_weight_eject_restore_change_the_proxy_and_refusals_exit_1(cli: Cli) -> None:
    assert (await cli("weight", "web", "25"))[:2] == (0, "web: canary weight 25 % (admin)\n")
    code, _, err = await cli("weight", "web", "140")
    assert code == 1
    assert "must be between 0 and 100" in err
    assert (await cli("weight", "web", "lots"))[0] == 2  # usage
    code, out, _ = await cli("eject", "web", "--reason", "p99 regression")
    assert (code, out) == (0, "web: canary ejected: p99 regression\n")
    code, _, err = await cli("eject", "web")
    assert (code, err.strip()) == (1, "refused (409): the canary is already ejected")
    assert (await cli("restore", "web", "10"))[:2] == (
        0,
        "web: canary restored at 10 %\n",
    )
    code, out, _ = await cli("status", "web")
    assert "canary weight 10 % (admin)" in out
    assert "restore" in out  # the recent changes, from the audit log
    assert "eject:manual" in out


async def test_rollout_commands_drive_the_plan(cli: Cli) -> None:
    code, out, _ = await cli("rollout", "start", "web", "--steps", "5,100")
    assert code == 0
    assert out.startswith("web: rollout: progressing, step 1/2 (5 %), waiting for")
    assert (await cli("rollout", "pause", "web"))[1] == "web: rollout: paused, step 1/2 (5 %)\n"
    assert (await cli("rollout", "resume", "web"))[0] == 0
    code, out, _ = await cli("rollout", "promote", "web")
    assert (code, out) == (0, "web: rollout: completed, step 2/2 (100 %)\n")
    code, _, err = await cli("rollout", "pause", "web")
    assert code == 1
    assert "not progressing" in err
    assert (await cli("rollout", "start", "web", "--steps", "5,x"))[0] == 2
    assert (await cli("rollout", "pause", "web", "--reason", "x"))[0] == 2
    assert (await cli("rollout", "jump", "web"))[0] == 2
    code, out, _ = await cli("rollout", "start", "web", "--steps", "10,60")
    assert code == 0
    code, out, _ = await cli("rollout", "abort", "web", "--reason", "not today")
    assert (code, out) == (0, "web: rollout: aborted, step 1/2 (10 %)\n")
    code, out, _ = await cli("status", "web")
    assert "ejected (rollout): not today" in out


async def test_the_admin_url_and_token_come_from_flag_env_or_config(
    cli: Cli, tmp_path: Path
) -> None:
    port = cli.admin.rsplit(":", 1)[1]
    env = {**cli.env, "CANARYPROXY_ADMIN_URL": cli.admin}
    assert (await cli("status", env=env, admin=False))[0] == 0
    config = tmp_path / "operator.yaml"
    config.write_text(
        json.dumps(
            {
                "admin": {"listen": f"0.0.0.0:{port}", "token": PROCESS_TOKEN},
                "services": {"web": {"stable": {"backends": [{"url": "http://127.0.0.1:1"}]}}},
            }
        )
    )
    no_token = {k: v for k, v in cli.env.items() if k != "CANARYPROXY_ADMIN_TOKEN"}
    code, out, _ = await cli("status", "--config", str(config), env=no_token, admin=False)
    assert (code, "web" in out) == (0, True)  # a wildcard listen is reached on loopback
    code, _, err = await cli("status", env={**no_token, "CANARYPROXY_ADMIN_TOKEN": "wrong"})
    assert (code, err.strip()) == (1, "refused (401): wrong bearer token")
    bad = tmp_path / "bad.yaml"
    bad.write_text("admin: {listen: nowhere}\n")
    assert (await cli("status", "--config", str(bad), admin=False))[0] == 2


async def test_an_unreachable_admin_api_exits_3(cli: Cli) -> None:
    for command in (["status"], ["weight", "web", "5"], ["rollout", "pause", "web"]):
        code, _, err = await Cli(dead_url())(*command)
        assert code == 3
        assert err.startswith("cannot reach the admin API at http://")


async def test_status_watch_refreshes_until_interrupted(cli: Cli) -> None:
    argv = [sys.executable, "-m", "canaryproxy", "status", "--watch", "--interval", "0.3"]
    proc = await asyncio.create_subprocess_exec(
        *argv, "--admin", cli.admin, env=cli.env, stdout=asyncio.subprocess.PIPE
    )
    await asyncio.sleep(3.0)
    proc.send_signal(signal.SIGINT)
    out, _ = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 0
    assert out.decode().count("verdict") >= 2  # printed again and again, not a terminal

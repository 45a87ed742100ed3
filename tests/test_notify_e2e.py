"""Webhook notifications to a real local receiver (README "Notifications"): delivered as
Slack/Teams-readable JSON, retried after a failure, counted, never on the request path."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.support import LOCAL, Backend, RunningProxy, make_config, service, start_proxy

AUTH = {"Authorization": "Bearer test-token"}


class Receiver:
    """A webhook endpoint: answers the statuses in ``answers`` in turn (then 200), or hangs."""

    def __init__(self, answers: list[int] | None = None, hang: float = 0.0) -> None:
        self.answers = list(answers or [])
        self.hang = hang
        self.posts: list[dict[str, Any]] = []
        self.url = ""
        self.runner: web.AppRunner | None = None

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self.hook)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, LOCAL, 0)
        await site.start()
        server: Any = site._server
        self.url = f"http://{LOCAL}:{server.sockets[0].getsockname()[1]}/hook"
        return self

    async def hook(self, request: web.Request) -> web.Response:
        self.posts.append({"type": request.content_type, "body": await request.json()})
        if self.hang:
            await asyncio.sleep(self.hang)
        status = self.answers.pop(0) if self.answers else 200
        return web.Response(status=status, text="ok")

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    hook = await Receiver(answers=[500]).start()
    yield hook
    await hook.stop()


def config(stable: Backend, canary: Backend, url: str, **notify: Any) -> Any:
    web_service = service([stable.url], [canary.url], canary_weight=10)
    return make_config({"web": web_service}, notify={"webhook": url, **notify})


async def post(proxy: RunningProxy, path: str, body: Any = None) -> int:
    url = f"{proxy.admin_url}/admin/services/web{path}"
    async with aiohttp.ClientSession() as s, s.post(url, json=body, headers=AUTH) as resp:
        return resp.status


async def counter(proxy: RunningProxy, result: str) -> float:
    async with aiohttp.ClientSession() as s, s.get(proxy.admin_url + "/metrics") as resp:
        text = await resp.text()
    line = f'canaryproxy_notifications_total{{result="{result}"}} '
    return float(next(x for x in text.splitlines() if x.startswith(line)).split()[-1])


async def until(check: Any, within: float) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "not within the time allowed"
        await asyncio.sleep(0.02)


async def test_an_ejection_is_posted_and_retried_after_a_first_failure(
    pools: tuple[Backend, Backend], receiver: Receiver
) -> None:
    stable, canary = pools
    async with start_proxy(config(stable, canary, receiver.url)) as proxy:
        assert await post(proxy, "/eject", {"reason": "p99 regression"}) == 200
        await until(lambda: len(receiver.posts) == 2, within=5)  # 500, then 200 after 0.5 s
        first, second = receiver.posts
        assert first == second  # the same event, sent again
        assert first["type"] == "application/json"
        body = first["body"]
        assert set(body) == {"service", "event", "text", "evidence", "at"}
        assert (body["service"], body["event"]) == ("web", "ejected")
        assert body["text"] == "web: canary ejected by 127.0.0.1 (rule manual): p99 regression"
        assert body["at"].endswith("Z")
        assert await counter(proxy, "sent") == 1
        assert await counter(proxy, "retried") == 1
        assert await counter(proxy, "failed") == 0
        assert await post(proxy, "/restore", {"canary": 5}) == 200
        await until(lambda: len(receiver.posts) == 3, within=5)
        restored = receiver.posts[2]["body"]
        assert restored["event"] == "restored"
        assert restored["text"] == "web: canary restored by 127.0.0.1 at 5 %; judged afresh"


async def test_rollout_moves_are_posted_with_their_reason(pools: tuple[Backend, Backend]) -> None:
    stable, canary = pools
    hook = await Receiver().start()
    try:
        async with start_proxy(config(stable, canary, hook.url)) as proxy:
            assert await post(proxy, "/rollout/start", {"steps": [10, 50]}) == 200
            assert await post(proxy, "/rollout/promote") == 200
            assert await post(proxy, "/rollout/abort", {"reason": "not today"}) == 200
            await until(lambda: len(hook.posts) == 4, within=5)
        events = [p["body"]["event"] for p in hook.posts]
        assert events == ["rollout_started", "rollout_promoted", "ejected", "rollout_aborted"]
        texts = [p["body"]["text"] for p in hook.posts]
        assert texts[1] == (
            "web: rollout promoted: progressing step 2/2 (50 %): promoted by an operator"
            " (127.0.0.1)"
        )
        assert texts[3] == (
            "web: rollout aborted: aborted step 2/2 (50 %): ejected (rollout): not today"
        )
    finally:
        await hook.stop()


async def test_a_hanging_receiver_never_slows_the_request_path_and_gives_up_counted(
    pools: tuple[Backend, Backend],
) -> None:
    stable, canary = pools
    hook = await Receiver(hang=10).start()
    try:
        cfg = config(stable, canary, hook.url, timeout="200ms", attempts=2)
        async with start_proxy(cfg) as proxy:
            started = time.monotonic()
            assert await post(proxy, "/eject") == 200
            async with aiohttp.ClientSession() as session:
                for _ in range(20):
                    async with session.get(proxy.url + "/") as resp:
                        assert resp.status == 200
            assert time.monotonic() - started < 1.0  # nothing waited for the receiver
            await until(lambda: len(hook.posts) == 2, within=5)
            for _ in range(100):
                if await counter(proxy, "failed") == 1:
                    break
                await asyncio.sleep(0.05)
            assert await counter(proxy, "failed") == 1
            assert await counter(proxy, "retried") == 1
            assert await counter(proxy, "sent") == 0
    finally:
        await hook.stop()


def test_the_payload_is_plain_json() -> None:
    from canaryproxy.runtime.notify import Notice, payload

    body = payload(Notice("web", "ejected", "web: canary ejected", {"odds": "2900:1"}), 0.25)
    assert json.loads(json.dumps(body)) == {
        "service": "web",
        "event": "ejected",
        "text": "web: canary ejected",
        "evidence": {"odds": "2900:1"},
        "at": "1970-01-01T00:00:00.250Z",
    }

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

import pytest
import uvloop

from tests.support import Backend, RedisServer


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], Any]]:
    # Test what ships: the proxy runs on uvloop.
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    b = await Backend("stable").start()
    yield b
    await b.stop()


@pytest.fixture
async def pools() -> AsyncIterator[tuple[Backend, Backend]]:
    stable, canary = await Backend("stable").start(), await Backend("canary").start()
    yield stable, canary
    await stable.stop()
    await canary.stop()


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server for the module (no persistence, ephemeral port)."""
    if shutil.which("redis-server") is None:
        pytest.skip("needs redis-server (Debian redis-server)")
    server = RedisServer().start()
    yield server
    server.stop()

"""An instance's part in shared state: the loops that keep it in step with Redis (the
README's "Running several instances").

- **Knobs**: a change published by any instance wakes ``_sync``, which re-reads every
  record and has each service follow what is newer (``Service.follow_record``); it also
  runs every ``RESYNC`` seconds, so a missed message heals. A service Redis does not know
  (Redis restarted empty) is written back from this instance's memory, its ejection
  included. Ejections made while Redis was away are written first.
- **Counts**: every ``FLUSH`` seconds each service's tally goes out in one pipelined
  write; ``_read`` replays every instance's flushes, in stream order, into the local
  judge, so every instance judges all the traffic and reaches the same verdict. While
  Redis is away an instance judges its own counts (safety first).
- While Redis does not answer, ``_sync`` backs off from 0.5 s to 5 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from redis.exceptions import RedisError

from canaryproxy.runtime.service import Services
from canaryproxy.state.shared import CHANGES, SharedState, tally_key

log = logging.getLogger("canaryproxy.state")

FLUSH = 0.25
RESYNC = 2.0
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 5.0
READ_BLOCK_MS = 200


class Sharing:
    def __init__(self, keeper: SharedState, services: Callable[[], Services]) -> None:
        self.keeper = keeper
        self.services = services
        self.wake = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        for job in (self._sync_loop, self._flush_loop, self._read_loop, self._listen_loop):
            self.tasks.append(loop.create_task(job()))

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks = []
        with contextlib.suppress(RedisError):  # the last counts, if Redis takes them
            await self.flush()

    # knobs -----------------------------------------------------------------------------------
    async def _sync_loop(self) -> None:
        backoff = BACKOFF_FIRST
        while True:
            if await self.sync():
                wait, backoff = RESYNC, BACKOFF_FIRST
            else:
                wait, backoff = backoff, min(backoff * 2, BACKOFF_MAX)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self.wake.wait()
            self.wake.clear()

    async def sync(self) -> bool:
        """One round: pending ejections out, every record in; False if Redis is away."""
        keeper = self.keeper
        await keeper.write_pending()
        stored = await keeper.fetch()
        if stored is None:
            return False
        for service in self.services():
            name = service.name
            if name in keeper.pending:
                continue  # our ejection goes first
            if name in stored:
                keeper.revs[name], keeper.cache[name] = stored[name]
            else:  # Redis lost it: write ours back (or follow whoever was first)
                await keeper.seed(name, service.knobs.record())
            record = keeper.cache.get(name)
            if record is not None and record != service.knobs.record():
                service.follow_record(record)
        return True

    async def _listen_loop(self) -> None:
        """PUBLISHed changes wake ``_sync``; reconnects with the sync loop's backoff."""
        delay = BACKOFF_FIRST
        while True:
            pubsub = self.keeper.client.pubsub()
            try:
                await pubsub.subscribe(CHANGES)
                delay = BACKOFF_FIRST
                self.wake.set()  # anything missed while not subscribed
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None:
                        self.wake.set()
            except (RedisError, OSError):
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()

    # counts ----------------------------------------------------------------------------------
    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH)
            await self.flush()

    async def flush(self) -> None:
        batch: list[tuple[str, int, list[list[int]]]] = []
        services = self.services()
        for service in services:
            if service.tally:
                assert service.tally is not None
                batch.append((service.name, service.knobs.epoch, service.tally.drain()))
        if not batch:
            return
        if not await self.keeper.publish_tallies(batch):
            for name, epoch, rows in batch:  # Redis away: judge what this instance saw
                services.get(name).judge_tally(rows, epoch)

    async def _read_loop(self) -> None:
        ids: dict[str, str] = {}
        start = ""
        while True:
            try:
                if not start:
                    start = await self.keeper.server_time_id()
                for service in self.services():
                    ids.setdefault(tally_key(service.name), start)
                entries = await self.keeper.read_tallies(ids, READ_BLOCK_MS)
            except (RedisError, OSError):
                await asyncio.sleep(BACKOFF_FIRST)
                continue
            services = self.services()
            for name, entry_id, epoch, rows in entries:
                ids[tally_key(name)] = entry_id
                try:
                    service = services.get(name)
                except KeyError:
                    continue
                service.judge_tally(rows, epoch)

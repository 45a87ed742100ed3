"""Notifications: a JSON event POSTed to ``notify.webhook`` on each ejection, restore and
rollout move (the README's "Notifications").

Rules this module keeps:
- Never on the request path: ``Notifier.send`` only puts the event in a bounded queue; one
  task delivers them in order. A full queue drops the newest event (counted ``failed`` and
  logged), so a dead receiver cannot grow memory.
- The body is ``{"service", "event", "text", "evidence", "at"}``: ``text`` is one sentence
  a person reads as is (Slack and Teams incoming webhooks show a top-level ``text``),
  ``evidence`` the numbers behind it, ``at`` ISO 8601 UTC.
- A delivery is a 2xx within ``notify.timeout``. Anything else is retried after 0.5 s,
  doubling up to 30 s, until ``notify.attempts`` attempts; then it is given up, logged and
  counted. ``canaryproxy_notifications_total{result}`` counts ``sent`` (delivered),
  ``retried`` (each attempt after a failed one) and ``failed`` (given up or dropped).
- On shutdown the queue gets a few seconds to drain; what is left is logged as dropped.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import aiohttp

from canaryproxy.vocabulary import iso_utc

__all__ = ["Notice", "Notifier"]

log = logging.getLogger("canaryproxy.notify")

QUEUE_SIZE = 1000
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 30.0
DRAIN_SECONDS = 3.0


@dataclass(frozen=True, slots=True)
class Notice:
    """One event about one service: ``ejected``, ``restored``, ``rollout_started``, …"""

    service: str
    event: str
    text: str
    evidence: Mapping[str, object] | None = None


class Notifier:
    """Delivers notices to one webhook URL, in order, retrying with backoff."""

    def __init__(
        self,
        url: str,
        timeout: float,
        attempts: int,
        count: Callable[[str], None],
        wall: Callable[[], float],
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.attempts = attempts
        self.count = count  # one of "sent", "retried", "failed"
        self.wall = wall
        self.queue: asyncio.Queue[tuple[Notice, float]] = asyncio.Queue(QUEUE_SIZE)
        self.task: asyncio.Task[None] | None = None
        self.session: aiohttp.ClientSession | None = None
        self.sleep = asyncio.sleep  # tests may shorten the backoff

    def send(self, notice: Notice) -> None:
        """Queue ``notice`` (returns at once)."""
        try:
            self.queue.put_nowait((notice, self.wall()))
        except asyncio.QueueFull:
            self.count("failed")
            log.error(
                "notification dropped: the queue is full",
                extra={"service": notice.service, "event": notice.event},
            )

    def start(self) -> None:
        if self.task is None:
            self.session = aiohttp.ClientSession()
            self.task = asyncio.get_running_loop().create_task(self._deliver_all())

    async def stop(self) -> None:
        """Let the queue drain for a moment, then stop; log what could not be sent."""
        if self.task is None:
            return
        try:
            await asyncio.wait_for(self.queue.join(), DRAIN_SECONDS)
        except TimeoutError:
            log.warning("notifications not sent at shutdown", extra={"pending": self.queue.qsize()})
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        self.task = None
        if self.session is not None:
            await self.session.close()
            self.session = None

    async def _deliver_all(self) -> None:
        while True:
            notice, at = await self.queue.get()
            try:
                await self._deliver(notice, at)
            except Exception:
                log.exception("notification failed", extra={"event": notice.event})
            finally:
                self.queue.task_done()

    async def _deliver(self, notice: Notice, at: float) -> None:
        body = json.dumps(payload(notice, at))
        delay = FIRST_BACKOFF
        for attempt in range(1, self.attempts + 1):
            problem = await self._post(body)
            if problem is None:
                self.count("sent")
                return
            if attempt == self.attempts:
                self.count("failed")
                log.error(
                    "notification given up",
                    extra={"event": notice.event, "attempts": attempt, "error": problem},
                )
                return
            log.warning(
                "notification failed; retrying",
                extra={"event": notice.event, "attempt": attempt, "error": problem, "in": delay},
            )
            await self.sleep(delay)
            self.count("retried")
            delay = min(delay * 2, MAX_BACKOFF)

    async def _post(self, body: str) -> str | None:
        """None when delivered, else what went wrong."""
        assert self.session is not None
        try:
            async with self.session.post(
                self.url,
                data=body,
                headers={"Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                allow_redirects=False,
            ) as resp:
                await resp.read()
                return None if 200 <= resp.status < 300 else f"status {resp.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return f"{type(exc).__name__}: {exc}"


def payload(notice: Notice, at: float) -> dict[str, object]:
    return {
        "service": notice.service,
        "event": notice.event,
        "text": notice.text,
        "evidence": None if notice.evidence is None else dict(notice.evidence),
        "at": iso_utc(at),
    }

"""One timer per connection that fires by the earliest deadline asked for.

Both sides of the engine keep several deadlines (a head, a body, keep-alive; a response, a
client that stopped reading), and most requests meet them all.  Rather than one timer per
deadline per request, each connection owns one ``Watchdog``: ``arm`` moves it earlier,
never later, and when it fires the owner re-reads its state, acts on what is due and arms
it again for what is not (uvicorn and nginx keep one timer per connection the same way).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Watchdog:
    __slots__ = ("_at", "_callback", "_handle", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
        self._loop = loop
        self._callback = callback
        self._handle: asyncio.TimerHandle | None = None
        self._at = 0.0

    def __repr__(self) -> str:
        return f"<Watchdog at={self._at:.3f}>" if self._handle else "<Watchdog idle>"

    def arm(self, deadline: float) -> None:
        """Make sure the callback runs by ``deadline`` (loop time)."""
        if self._handle is not None:
            if self._at <= deadline:
                return
            self._handle.cancel()
        self._at = deadline
        self._handle = self._loop.call_at(deadline, self._fire)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        self._callback()

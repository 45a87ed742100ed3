"""Messages between a supervisor and a worker: length-prefixed JSON over a Unix socketpair.

Why a socketpair: the supervisor makes one per worker before it starts it, so each
message's sender is known without an id in it, a worker that dies shows as end-of-file at
once, and one bidirectional channel carries both ways (counts up, state and reloads down)
with no path on disk to clean up. Messages are small (a flush is a few dozen tally rows and
the changed metric samples); a frame is a 4-byte big-endian length and UTF-8 JSON.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

Message = dict[str, Any]

MAX_FRAME = 64 << 20


async def send(writer: asyncio.StreamWriter, message: Message) -> None:
    data = json.dumps(message, separators=(",", ":")).encode()
    writer.write(len(data).to_bytes(4, "big") + data)
    await writer.drain()


async def receive(reader: asyncio.StreamReader) -> Message | None:
    """The next message, or None at end of file (the other side is gone)."""
    try:
        head = await reader.readexactly(4)
        size = int.from_bytes(head, "big")
        if size > MAX_FRAME:
            raise ValueError(f"frame of {size} bytes")
        message = json.loads(await reader.readexactly(size))
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    if not isinstance(message, dict):
        raise ValueError("a message must be a JSON object")
    return message

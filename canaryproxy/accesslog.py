"""The structured access log: one JSON object per request, one per line.

Lines are buffered and written at most every ``FLUSH_INTERVAL`` seconds or when the buffer
passes ``FLUSH_BYTES`` (as nginx's ``access_log ... buffer= flush=``), so logging costs one
``json.dumps`` per request and no syscall.
"""

from __future__ import annotations

import asyncio
import json
from json.encoder import encode_basestring as _quote  # C-accelerated
from typing import IO

FLUSH_INTERVAL = 0.5
FLUSH_BYTES = 64 * 1024


def where_fields(service: str | None, pool: str | None, backend: str | None) -> str:
    """The ``"service"``, ``"pool"`` and ``"backend"`` members of a line (null when unknown).

    A backend's are built once, when it is configured (``BackendRuntime.log_fields``).
    """
    return (
        f'"service":{_quote(service) if service is not None else "null"},'
        f'"pool":{_quote(pool) if pool is not None else "null"},'
        f'"backend":{_quote(backend) if backend is not None else "null"}'
    )


class AccessLog:
    def __init__(self, stream: IO[str] | None) -> None:
        self.stream = stream
        self.lines: list[str] = []
        self.size = 0
        self._handle: asyncio.TimerHandle | None = None

    @property
    def is_enabled(self) -> bool:
        return self.stream is not None

    def write(self, entry: dict[str, object]) -> None:
        if self.stream is not None:
            self.write_line(json.dumps(entry, separators=(",", ":")))

    def write_line(self, line: str) -> None:
        """Append one already-encoded JSON line (the request path builds its own)."""
        if self.stream is None:
            return
        self.lines.append(line)
        self.size += len(line)
        if self.size >= FLUSH_BYTES:
            self.flush()
        elif self._handle is None:
            self._handle = asyncio.get_running_loop().call_later(FLUSH_INTERVAL, self.flush)

    def flush(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self.stream is None or not self.lines:
            return
        self.lines.append("")
        self.stream.write("\n".join(self.lines))
        self.stream.flush()
        self.lines = []
        self.size = 0

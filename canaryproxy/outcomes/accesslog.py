"""The structured access log: one JSON object per request, one per line, ``time`` first
(ISO 8601 UTC with milliseconds, when the response ended).

Lines are buffered and written at most every ``FLUSH_INTERVAL`` seconds or when the buffer
passes ``FLUSH_BYTES`` (as nginx's ``access_log ... buffer= flush=``), so a request costs
no syscall.  A request's line is assembled by hand (``access_line``) from the ``Outcome``
the engine reports; the rare lines of other kinds go through ``json.dumps``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from json.encoder import encode_basestring as _quote  # C-accelerated
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from canaryproxy.decide.director import BackendRuntime, Outcome

FLUSH_INTERVAL = 0.5
FLUSH_BYTES = 64 * 1024


def where_fields(service: str | None, pool: str | None, backend: str | None) -> str:
    """The ``"service"``, ``"pool"`` and ``"backend"`` members of a line (null when unknown).

    A backend's are built once and remembered (``BackendFields``).
    """
    return (
        f'"service":{_quote(service) if service is not None else "null"},'
        f'"pool":{_quote(pool) if pool is not None else "null"},'
        f'"backend":{_quote(backend) if backend is not None else "null"}'
    )


class BackendFields:
    """Each backend's ``where_fields``, quoted once instead of per request (bounded)."""

    __slots__ = ("_known",)
    LIMIT = 4096

    def __init__(self) -> None:
        self._known: dict[BackendRuntime, str] = {}

    def of(self, backend: BackendRuntime) -> str:
        fields = self._known.get(backend)
        if fields is None:
            if len(self._known) >= self.LIMIT:  # reloads leave old backends behind
                self._known.clear()
            fields = where_fields(backend.service, backend.pool, backend.url)
            self._known[backend] = fields
        return fields


_MILLIS = tuple(f".{m:03d}Z" for m in range(1000))


class Clock:
    """Wall-clock time as ISO 8601 UTC with milliseconds, the second's text made once."""

    __slots__ = ("_prefix", "_second", "_time")

    def __init__(self, time_source: Callable[[], float] = time.time) -> None:
        self._time = time_source
        self._second = -1
        self._prefix = ""

    def iso(self) -> str:
        """``2026-12-02T23:51:08.120Z``"""
        now = self._time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        # One lookup, no formatting: a format spec would cost mypyc a str.format call.
        return self._prefix + _MILLIS[int((now - second) * 1000)]


def access_line(outcome: Outcome, known: BackendFields, at: str) -> str:
    """One JSON object, assembled by hand: a third of what json.dumps of a dict costs.

    ``at`` is the time the response ended (``Clock.iso``), first in the line."""
    head = outcome.head
    route = outcome.route
    backend = outcome.backend
    if backend is not None and route is not None and backend.pool == route.served:
        where = known.of(backend)
    else:
        where = where_fields(
            route.service.name if route else None,
            route.served if route else None,
            backend.url if backend else None,
        )
    cut = ',"aborted":true' if outcome.aborted else ""  # cut off, not completed
    # Formatted apart: a format spec in the f-string below would make mypyc build all of
    # it through str.format, at three times the cost.
    ms = f"{outcome.duration * 1000:.3f}"
    return (
        f'{{"time":"{at}","client":{_quote(head.client_ip.decode())},'
        f'"method":{_quote(head.method.decode())},'
        f'"path":{_quote(head.path)},"host":{_quote(head.host)},"status":{outcome.status},'
        f'{where},"duration_ms":{ms},"request_id":{_quote(head.request_id.decode())}{cut}}}'
    )


class AccessLog:
    def __init__(self, stream: IO[str] | None, clock: Clock | None = None) -> None:
        self.stream = stream
        # Workers share one stdout or file: then each write is whole lines of at most
        # PIPE_BUF bytes, which the kernel keeps together (0: one write per flush).
        self.chunk = 0
        self.backend_fields = BackendFields()
        self.clock = clock or Clock()
        self.lines: list[str] = []
        self.size = 0
        self._handle: asyncio.TimerHandle | None = None

    @property
    def is_enabled(self) -> bool:
        return self.stream is not None

    def write(self, entry: dict[str, object]) -> None:
        """A line of another kind (a refused request): ``time`` first, as in every line."""
        if self.stream is not None:
            line = json.dumps({"time": self.clock.iso(), **entry}, separators=(",", ":"))
            self.write_line(line)

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
        if self.chunk:
            self._write_chunked(self.stream, self.lines, self.chunk)
        else:
            self.lines.append("")
            self.stream.write("\n".join(self.lines))
            self.stream.flush()
        self.lines = []
        self.size = 0

    def _write_chunked(self, stream: IO[str], lines: list[str], limit: int) -> None:
        part: list[str] = []
        size = 0
        for line in lines:
            n = (len(line) if line.isascii() else len(line.encode())) + 1
            if part and size + n > limit:
                stream.write("".join(part))
                stream.flush()
                part, size = [], 0
            part.append(line + "\n")
            size += n
        if part:
            stream.write("".join(part))
            stream.flush()

"""Runtime state shared by every instance through Redis (the README's "Running several
instances"), with redis-py's asyncio client.

Rules this module keeps:
- One hash holds every service's record with a revision: ``{"rev": n, "record": {...}}``.
  A change is a compare-and-set in one Lua script: it is written only if the revision is
  still the one this instance last saw, together with its audit row (a stream) and a
  PUBLISH that tells every instance to re-read. Two operators racing through two
  instances: one wins, the other gets a Conflict (409) and changes nothing.
- An ejection is one script too: written (epoch bumped past the stored one, one audit row)
  unless the stored record is already ejected, in which case the instance that decided
  first has written it and this one follows. An ejection is applied locally at once; if
  Redis does not answer it waits in ``pending`` and is written when Redis returns, over
  whatever weight was stored: an ejection is never lost.
- Redis unreachable: reads keep the last state (fail-static), operator changes raise
  StoreUnavailable (503) and change nothing, ``up`` turns False with one log line, and
  True again with another when a command succeeds.
- Outcome counts: each flush is one pipelined XADD per service to a capped stream; every
  instance reads every stream and replays it into its own judge (runtime/sharing.py).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from canaryproxy.state.runtime import Conflict, RuntimeState, ServiceState
from canaryproxy.state.store import (
    AuditEntry,
    MemoryStateStore,
    ServiceRecord,
    StateError,
    StoreUnavailable,
    audit_from_dict,
    audit_to_dict,
    record_from_dict,
    record_to_dict,
)

log = logging.getLogger("canaryproxy.state")

PREFIX = "canaryproxy:"
SERVICES = PREFIX + "services"
AUDIT = PREFIX + "audit"
CHANGES = PREFIX + "changes"
AUDIT_MAX = 10_000
TALLY_MAX = 10_000
TIMEOUT = 1.0

# Every script: KEYS services, audit; ARGV name, record JSON, audit JSON, channel, audit
# cap, then its own argument. Each ends in _WRITE: the record with the next revision, its
# audit row and the PUBLISH, all or nothing (a script runs atomically).
_WRITE = """
local entry = '{"rev":' .. (rev + 1) .. ',"record":' .. record .. '}'
redis.call('HSET', KEYS[1], ARGV[1], entry)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'entry', ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[1])
return {1, entry}
"""

# An operator's change (or the file's weight): only over the revision last seen (ARGV[6]).
_COMMIT = (
    """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
local rev = 0
if cur then rev = cjson.decode(cur)['rev'] end
if rev ~= tonumber(ARGV[6]) then return {0, cur or ''} end
local record = ARGV[2]
"""
    + _WRITE
)

# An ejection: over any revision unless already ejected; its epoch (ARGV[6]) is bumped
# past the stored one, so every instance's cookies end together.
_EJECT = (
    """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
local rev = 0
local record = ARGV[2]
if cur then
  local stored = cjson.decode(cur)
  rev = stored['rev']
  if stored['record']['ejected'] then return {0, cur} end
  if stored['record']['epoch'] >= tonumber(ARGV[6]) then
    local mine = cjson.decode(ARGV[2])
    mine['epoch'] = stored['record']['epoch'] + 1
    record = cjson.encode(mine)
  end
end
"""
    + _WRITE
)

# A record Redis lost (restarted empty): written only where there is none.
_SEED = (
    """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then return {0, cur} end
local rev = 0
local record = ARGV[2]
"""
    + _WRITE
)


def tally_key(service: str) -> str:
    return f"{PREFIX}tally:{service}"


class SharedState(RuntimeState):
    """``RuntimeState`` whose records live in Redis; see the module's rules."""

    def __init__(self, url: str, instance: str, clock: Callable[[], float]) -> None:
        super().__init__(MemoryStateStore(), clock)
        self.instance = instance
        self.who_suffix = f"@{instance}"  # audit rows say which instance made the change
        self.client = aioredis.Redis.from_url(
            url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT, decode_responses=True
        )
        self._commit_script = self.client.register_script(_COMMIT)
        self._eject_script = self.client.register_script(_EJECT)
        self._seed_script = self.client.register_script(_SEED)
        self.revs: dict[str, int] = {}
        self.cache: dict[str, ServiceRecord] = {}
        self.pending: dict[str, tuple[ServiceRecord, AuditEntry]] = {}
        self.up = True
        self.on_up: Callable[[bool], None] = lambda up: None

    # what RuntimeState asks ------------------------------------------------------------------
    def records(self) -> dict[str, ServiceRecord]:
        return dict(self.cache)

    async def _save(self, state: ServiceState, new: ServiceRecord, audit: AuditEntry) -> None:
        name = state.name
        args = _args(name, new, audit, self.revs.get(name, 0))
        written, entry = await self._run(self._commit_script, args)
        self._remember(name, entry)
        if not written:
            raise Conflict("changed through another instance meanwhile; read it again and retry")

    def _save_ejection(self, name: str, record: ServiceRecord, audit: AuditEntry) -> None:
        """Applied already; written by ``write_pending`` now or when Redis is back."""
        self.pending[name] = (record, audit)
        self._in_background(self.write_pending())

    async def close(self) -> None:
        await self.client.aclose()

    # talking to Redis ------------------------------------------------------------------------
    async def load(self) -> None:
        """Read every record (at start); Redis down: start from the config, say so."""
        fetched = await self.fetch()
        if fetched is not None:
            for name, (rev, record) in fetched.items():
                self.revs[name], self.cache[name] = rev, record

    async def fetch(self) -> dict[str, tuple[int, ServiceRecord]] | None:
        """Every stored record with its revision; None while Redis does not answer."""
        try:
            raw: Any = await self.client.hgetall(SERVICES)
        except RedisError as exc:
            self._mark(False, exc)
            return None
        self._mark(True)
        out: dict[str, tuple[int, ServiceRecord]] = {}
        for name, entry in raw.items():
            try:
                out[name] = _parse_entry(entry)
            except StateError as exc:
                log.error("bad record in Redis", extra={"service": name, "error": str(exc)})
        return out

    async def write_pending(self) -> None:
        """Write ejections made while Redis was away (or just now); keep what fails."""
        for name, (record, audit) in list(self.pending.items()):
            try:
                _, entry = await self._run(
                    self._eject_script, _args(name, record, audit, record.epoch)
                )
            except StoreUnavailable:
                return
            if self.pending.get(name) == (record, audit):
                del self.pending[name]
            self._remember(name, entry)

    async def seed(self, name: str, record: ServiceRecord) -> None:
        """Write back a record Redis lost (restarted empty); the first instance wins."""
        audit = self._audit("canaryproxy", name, "rewrite", "missing", _json(record))
        try:
            _, entry = await self._run(self._seed_script, _args(name, record, audit, 0))
        except StoreUnavailable:
            return
        self._remember(name, entry)

    async def publish_tallies(self, batch: Sequence[tuple[str, int, list[list[int]]]]) -> bool:
        """One pipelined write of every service's rows; False if Redis did not take it."""
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for name, epoch, rows in batch:
                    fields: Any = {"i": self.instance, "e": epoch, "r": json.dumps(rows)}
                    pipe.xadd(tally_key(name), fields, maxlen=TALLY_MAX, approximate=True)
                await pipe.execute()
        except RedisError as exc:
            self._mark(False, exc)
            return False
        self._mark(True)
        return True

    async def server_time_id(self) -> str:
        seconds, micros = await self.client.time()
        return f"{int(seconds) * 1000 + int(micros) // 1000}-0"

    async def read_tallies(
        self, ids: dict[str, str], block_ms: int
    ) -> list[tuple[str, str, int, list[list[int]]]]:
        """Rows flushed by every instance after ``ids`` (stream key → last id), in order:
        (service, entry id, epoch, rows)."""
        streams: Any = ids
        got: Any = await self.client.xread(streams, block=block_ms, count=1000)
        out: list[tuple[str, str, int, list[list[int]]]] = []
        for key, entries in got or []:
            name = key.removeprefix(f"{PREFIX}tally:")
            for entry_id, fields in entries:
                out.append((name, entry_id, int(fields["e"]), json.loads(fields["r"])))
        return out

    async def audit(self, limit: int = 100) -> list[AuditEntry]:
        """The newest ``limit`` audit rows of every instance, newest first."""
        try:
            rows: Any = await self.client.xrevrange(AUDIT, count=max(limit, 1))
        except RedisError as exc:
            self._mark(False, exc)
            raise StoreUnavailable(f"Redis: {exc}") from exc
        out = []
        for _, fields in rows:
            try:
                out.append(audit_from_dict(json.loads(fields["entry"])))
            except (ValueError, KeyError, StateError) as exc:
                log.error("bad audit row in Redis", extra={"error": str(exc)})
        return out[: max(limit, 0)]

    async def _run(self, script: Any, args: list[Any]) -> tuple[bool, str]:
        try:
            written, entry = await script(keys=[SERVICES, AUDIT], args=args)
        except RedisError as exc:
            self._mark(False, exc)
            raise StoreUnavailable(f"Redis: {exc}") from exc
        self._mark(True)
        return bool(written), str(entry)

    def _remember(self, name: str, entry: str) -> None:
        if entry:
            self.revs[name], self.cache[name] = _parse_entry(entry)

    def _mark(self, up: bool, error: Exception | None = None) -> None:
        if up == self.up:
            return
        self.up = up
        if up:
            log.warning("state store back: Redis answers again")
        else:
            log.error(
                "state store lost: serving on the last state; admin changes answer 503",
                extra={"error": str(error)},
            )
        self.on_up(up)


def _args(name: str, record: ServiceRecord, audit: AuditEntry, extra: int) -> list[object]:
    """ARGV of every script, in the order the scripts read them."""
    return [name, _json(record), _audit_json(audit), CHANGES, AUDIT_MAX, extra]


def _json(record: ServiceRecord) -> str:
    return json.dumps(record_to_dict(record), separators=(",", ":"))


def _audit_json(a: AuditEntry) -> str:
    entry = audit_to_dict(a)
    del entry["time"]  # derived from "at" when read
    return json.dumps(entry, separators=(",", ":"))


def _parse_entry(entry: str) -> tuple[int, ServiceRecord]:
    try:
        data = json.loads(entry)
        rev = data["rev"]
        record = data["record"]
    except (ValueError, KeyError, TypeError) as exc:
        raise StateError(f"not a canaryproxy record: {exc}") from None
    if type(rev) is not int:
        raise StateError(f"rev: expected an integer, got {rev!r}")
    return rev, record_from_dict(record)

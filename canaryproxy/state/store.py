"""Runtime state that survives restarts: per-service weight, ejection and epoch, plus an audit log.

Rules this module keeps:

- A change and its audit line are written in one transaction, and that transaction is
  durable (fsynced) before `save` returns, so an admin 200 means "on disk" — also after
  `kill -9` or a power cut right after the response.
- A state file that is corrupt, unreadable, not a database, or not ours stops the start with
  a `StateError` naming the file. It is never silently replaced: an operator's ejection must
  not turn back into the config's weight because a disk hiccupped.
- Persistence sits behind the small `StateStore` protocol so that a store shared by several
  proxy instances can be added later without touching its callers.
- Calls are blocking. Operator changes run them in a worker thread (`asyncio.to_thread`); an
  automatic ejection saves on the event loop itself, at once, so that a crash a moment later
  cannot bring the canary back (runtime.py). One lock serialises them, so any thread may call.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from canaryproxy.decide.rollout import Plan, plan_from_dict, plan_to_dict
from canaryproxy.vocabulary import (
    EJECT_RULES,
    WEIGHT_SOURCES,
    EjectRule,
    WeightSource,
    iso_utc,
    require,
)

__all__ = [
    "AuditEntry",
    "MemoryStateStore",
    "ServiceRecord",
    "SqliteStateStore",
    "StateError",
    "StateStore",
    "StoreUnavailable",
    "audit_from_dict",
    "audit_to_dict",
    "record_from_dict",
    "record_to_dict",
]

# Bumped whenever the tables change; a file written by a newer canaryproxy is refused, an
# older one is migrated in place at open (_MIGRATIONS).
SCHEMA_VERSION = 3
# "CPXY": marks the file as ours, so a stray SQLite database at state.path is refused, not reused.
APPLICATION_ID = 0x43505859

_SCHEMA = """
CREATE TABLE services (
    name TEXT PRIMARY KEY,
    canary_weight REAL NOT NULL CHECK (canary_weight BETWEEN 0 AND 100),
    ejected INTEGER NOT NULL CHECK (ejected IN (0, 1)),
    eject_reason TEXT,
    eject_rule TEXT,
    ejected_at REAL,
    weight_before_eject REAL,
    epoch INTEGER NOT NULL,
    weight_source TEXT,
    config_weight REAL,
    rollout TEXT
);
CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    who TEXT NOT NULL,
    service TEXT NOT NULL,
    action TEXT NOT NULL,
    old TEXT NOT NULL,
    new TEXT NOT NULL,
    evidence TEXT
);
CREATE INDEX audit_by_service ON audit (service, id);
"""


# version → the statements that bring a file of that version to the next one.
_MIGRATIONS = {
    1: (
        # Who set the weight, and what the config file said then ("the most recent change
        # wins" needs both); NULL in a row written before: an operator's change, file unknown.
        "ALTER TABLE services ADD COLUMN weight_source TEXT",
        "ALTER TABLE services ADD COLUMN config_weight REAL",
    ),
    # The rollout plan (JSON: state, steps, step, elapsed, since, reason); NULL: never started.
    # ... and the numbers an automatic change rested on (JSON), for GET /admin/audit.
    2: (
        "ALTER TABLE services ADD COLUMN rollout TEXT",
        "ALTER TABLE audit ADD COLUMN evidence TEXT",
    ),
}


log = logging.getLogger("canaryproxy.state")


class StateError(Exception):
    """The state file cannot be used; the message names the file and says why."""


class StoreUnavailable(StateError):
    """The shared state store (Redis) does not answer: nothing was changed."""


@dataclass(frozen=True, slots=True)
class ServiceRecord:
    """What is persisted for one service (the runtime overrides of its config)."""

    canary_weight: float
    ejected: bool
    eject_reason: str | None
    eject_rule: EjectRule | None
    ejected_at: float | None  # wall-clock seconds since the epoch
    weight_before_eject: float | None
    epoch: int
    weight_source: WeightSource | None = None  # None: written before sources were kept
    config_weight: float | None = None  # the config file's weight when this was written
    rollout: Plan | None = None  # the rollout plan; None: never started


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One change: when (wall clock), who (client address or "canaryproxy"), what, old → new,
    and for a change the proxy decided, the evidence it rested on (JSON values)."""

    at: float
    who: str
    service: str
    action: str
    old: str
    new: str
    evidence: Mapping[str, object] | None = None


def audit_to_dict(entry: AuditEntry) -> dict[str, object]:
    """An audit row as plain JSON values (the admin API, Redis), with its time also in
    ISO 8601 UTC."""
    return {
        "at": entry.at,
        "time": iso_utc(entry.at),
        "who": entry.who,
        "service": entry.service,
        "action": entry.action,
        "old": entry.old,
        "new": entry.new,
        "evidence": None if entry.evidence is None else dict(entry.evidence),
    }


def audit_from_dict(data: object) -> AuditEntry:
    """An audit row read back from JSON (Redis); StateError if it is not one."""
    if not isinstance(data, dict):
        raise StateError(f"an audit row must be an object, got {data!r}")
    evidence = data.get("evidence")
    row = tuple(data.get(k) for k in ("at", "who", "service", "action", "old", "new"))
    return _audit_from_row((*row, None if evidence is None else json.dumps(evidence)))


class StateStore(Protocol):
    def load(self) -> dict[str, ServiceRecord]:
        """Every persisted service record, by service name."""
        ...

    def save(self, service: str, record: ServiceRecord, audit: AuditEntry) -> None:
        """Write the record and its audit line atomically; durable when this returns."""
        ...

    def audit_log(self, service: str | None = None, limit: int = 100) -> list[AuditEntry]:
        """The newest `limit` audit entries (of one service, or all), newest first."""
        ...

    def close(self) -> None: ...


class MemoryStateStore:
    """A `StateStore` that forgets on exit: for tests, and for callers that opt out of a file."""

    def __init__(self, records: dict[str, ServiceRecord] | None = None) -> None:
        self._records: dict[str, ServiceRecord] = dict(records or {})
        self._audit: list[AuditEntry] = []
        self._lock = threading.Lock()
        self._closed = False

    def load(self) -> dict[str, ServiceRecord]:
        with self._lock:
            self._check_open()
            return dict(self._records)

    def save(self, service: str, record: ServiceRecord, audit: AuditEntry) -> None:
        with self._lock:
            self._check_open()
            self._records[service] = record
            self._audit.append(audit)

    def audit_log(self, service: str | None = None, limit: int = 100) -> list[AuditEntry]:
        with self._lock:
            self._check_open()
            matching = [e for e in reversed(self._audit) if service is None or e.service == service]
            return matching[: max(limit, 0)]

    def close(self) -> None:
        with self._lock:
            self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise StateError("state store is closed")


class SqliteStateStore:
    """A `StateStore` in one SQLite file (stdlib sqlite3), opened and checked at construction.

    The file it writes must be the file it opened: one deleted (``rm state.db*``) or
    replaced while the proxy runs would swallow every later change into an unlinked inode
    and lose it at the next start. Before each read and write the path's inode is compared
    with the one opened; on a mismatch the file is recreated at the path with every record
    this store knows (what it loaded and saved since), and an error is logged.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._conn = _open(path)
        self._identity = _identity(path)
        # Every record read or written since open: what a recreated file is given.
        self._known: dict[str, ServiceRecord] = {}

    def __repr__(self) -> str:
        return f"SqliteStateStore({self._path!r})"

    def _ensure_same_file(self) -> None:
        """Recreate the file if it is no longer the one opened (called under the lock)."""
        if _identity(self._path) == self._identity:
            return
        log.error(
            "state file deleted or replaced while running: recreating it with the current "
            "state (the audit lines it held are gone)",
            extra={"path": self._path, "services": sorted(self._known)},
        )
        self._conn.close()
        fresh = self._path + ".recreating"
        for leftover in (fresh, fresh + "-wal", fresh + "-shm"):
            Path(leftover).unlink(missing_ok=True)
        conn = _open(fresh)
        try:
            conn.execute("BEGIN IMMEDIATE")
            for name, record in self._known.items():
                conn.execute(_UPSERT, (name, *_row_from_record(record)))
            conn.execute("COMMIT")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # all of it in the main file
        finally:
            conn.close()
        for leftover in (self._path + "-wal", self._path + "-shm"):
            Path(leftover).unlink(missing_ok=True)
        os.replace(fresh, self._path)  # the path holds a whole file at every moment
        self._conn = _open(self._path)
        self._identity = _identity(self._path)

    def load(self) -> dict[str, ServiceRecord]:
        with self._lock:  # one hold: a save in another thread lands before or after, whole
            try:
                self._ensure_same_file()
                rows = self._conn.execute(
                    "SELECT name, canary_weight, ejected, eject_reason, eject_rule, ejected_at,"
                    " weight_before_eject, epoch, weight_source, config_weight, rollout"
                    " FROM services ORDER BY name"
                ).fetchall()
            except (sqlite3.Error, OSError) as exc:
                raise StateError(f"state file {self._path}: cannot read: {exc}") from exc
            try:
                records = {_text(row[0], "name"): _record_from_row(row[1:]) for row in rows}
            except StateError as exc:
                raise StateError(f"state file {self._path}: bad service row: {exc}") from exc
            self._known.update(records)
            return records

    def save(self, service: str, record: ServiceRecord, audit: AuditEntry) -> None:
        with self._lock:
            try:
                self._ensure_same_file()
                # BEGIN IMMEDIATE takes the write lock up front, so the two statements commit
                # together or not at all; with synchronous=FULL the COMMIT returns after fsync.
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    self._conn.execute(_UPSERT, (service, *_row_from_record(record)))
                    self._conn.execute(_INSERT_AUDIT, _row_from_audit(audit))
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
                self._conn.execute("COMMIT")
            except (sqlite3.Error, OSError) as exc:
                raise StateError(f"state file {self._path}: cannot save {service}: {exc}") from exc
            self._known[service] = record

    def audit_log(self, service: str | None = None, limit: int = 100) -> list[AuditEntry]:
        where, params = ("WHERE service = ?", (service,)) if service is not None else ("", ())
        rows = self._query(
            f"SELECT at, who, service, action, old, new, evidence FROM audit {where}"
            " ORDER BY id DESC LIMIT ?",
            (*params, max(limit, 0)),
        )
        try:
            return [_audit_from_row(row) for row in rows]
        except StateError as exc:
            raise StateError(f"state file {self._path}: bad audit row: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _query(self, sql: str, params: tuple[object, ...]) -> list[tuple[object, ...]]:
        with self._lock:
            try:
                return list(self._conn.execute(sql, params).fetchall())
            except sqlite3.Error as exc:
                raise StateError(f"state file {self._path}: cannot read: {exc}") from exc


_UPSERT = """
INSERT INTO services (name, canary_weight, ejected, eject_reason, eject_rule, ejected_at,
                      weight_before_eject, epoch, weight_source, config_weight, rollout)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (name) DO UPDATE SET
    canary_weight = excluded.canary_weight, ejected = excluded.ejected,
    eject_reason = excluded.eject_reason, eject_rule = excluded.eject_rule,
    ejected_at = excluded.ejected_at, weight_before_eject = excluded.weight_before_eject,
    epoch = excluded.epoch, weight_source = excluded.weight_source,
    config_weight = excluded.config_weight, rollout = excluded.rollout
"""

_INSERT_AUDIT = (
    "INSERT INTO audit (at, who, service, action, old, new, evidence) VALUES (?, ?, ?, ?, ?, ?, ?)"
)


def _identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of the file at ``path``; None when there is none."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _open(path: str) -> sqlite3.Connection:
    """Connect, configure and check the file; any failure is a StateError naming it."""
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StateError(f"state file {path}: cannot create its directory: {exc}") from exc
    try:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves. check_same_thread=False: the
        # engine calls from a worker thread; the store's lock keeps one caller at a time.
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise StateError(f"state file {path}: cannot open: {exc}") from exc
    try:
        _prepare(conn, path)
    except sqlite3.Error as exc:
        conn.close()
        raise StateError(
            f"state file {path}: not a usable canaryproxy state database: {exc}"
        ) from exc
    except StateError:
        conn.close()
        raise
    return conn


def _prepare(conn: sqlite3.Connection, path: str) -> None:
    conn.execute("PRAGMA busy_timeout = 5000")
    # Identify the file before changing anything in it: a database that is not ours is
    # refused byte-for-byte untouched (switching it to WAL would rewrite its header).
    is_new = _is_empty_or_ours(conn, path)
    _configure(conn)
    if is_new:
        _create_schema(conn)
        return
    _check_integrity(conn, path)
    _migrate(conn)
    # Take and release the write lock now, so a read-only file fails at start, not at the
    # first admin change.
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("ROLLBACK")


def _configure(conn: sqlite3.Connection) -> None:
    # WAL: a reader (STATE, audit) never waits for the writer, and a crash mid-write leaves the
    # last committed state intact. synchronous=FULL: in WAL mode NORMAL may lose the last
    # commits on power loss; we promise "persisted before the response is sent", and changes
    # are rare operator actions or ejections, so one fsync per change costs nothing that matters.
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()
    if mode is None or str(mode[0]).lower() != "wal":
        raise sqlite3.OperationalError(f"cannot switch to WAL journal mode (got {mode})")
    conn.execute("PRAGMA synchronous = FULL")


def _is_empty_or_ours(conn: sqlite3.Connection, path: str) -> bool:
    """True for a new (empty) file, False for one of ours; StateError for anything else."""
    app_id = _pragma_int(conn, "application_id")
    version = _pragma_int(conn, "user_version")
    tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    if app_id == 0 and version == 0 and tables is not None and tables[0] == 0:
        return True
    if app_id != APPLICATION_ID:
        raise StateError(
            f"state file {path}: is an SQLite database but not a canaryproxy state file"
        )
    if version > SCHEMA_VERSION:
        raise StateError(
            f"state file {path}: schema version {version} is newer than this canaryproxy "
            f"understands ({SCHEMA_VERSION}); upgrade canaryproxy or point state.path elsewhere"
        )
    return False


def _create_schema(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring a file written by an older canaryproxy to this schema, in one transaction."""
    version = _pragma_int(conn, "user_version")
    if version >= SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        for old in range(version, SCHEMA_VERSION):
            for statement in _MIGRATIONS[old]:
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _check_integrity(conn: sqlite3.Connection, path: str) -> None:
    # quick_check reads every page: a torn or truncated file is caught at start. The file
    # holds one row per service and an audit line per operator action or ejection, so this is
    # cheap.
    problems = [str(row[0]) for row in conn.execute("PRAGMA quick_check").fetchall()]
    if problems != ["ok"]:
        raise StateError(f"state file {path}: is corrupt: {'; '.join(problems[:3])}")


def _pragma_int(conn: sqlite3.Connection, name: str) -> int:
    row = conn.execute(f"PRAGMA {name}").fetchone()
    return int(row[0]) if row is not None else 0


def _row_from_record(r: ServiceRecord) -> tuple[object, ...]:
    return (
        r.canary_weight,
        int(r.ejected),
        r.eject_reason,
        r.eject_rule,
        r.ejected_at,
        r.weight_before_eject,
        r.epoch,
        r.weight_source,
        r.config_weight,
        None if r.rollout is None else json.dumps(plan_to_dict(r.rollout)),
    )


def _record_from_row(row: tuple[object, ...]) -> ServiceRecord:
    weight, ejected, reason, rule, ejected_at, before, epoch, source, config, plan = row
    return ServiceRecord(
        canary_weight=_number(weight, "canary_weight"),
        ejected=bool(_integer(ejected, "ejected")),
        eject_reason=_optional_text(reason, "eject_reason"),
        eject_rule=_rule(_optional_text(rule, "eject_rule")),
        ejected_at=None if ejected_at is None else _number(ejected_at, "ejected_at"),
        weight_before_eject=None if before is None else _number(before, "weight_before_eject"),
        epoch=_integer(epoch, "epoch"),
        weight_source=_source(_optional_text(source, "weight_source")),
        config_weight=None if config is None else _number(config, "config_weight"),
        rollout=_plan(_optional_text(plan, "rollout")),
    )


_FIELDS = (
    "canary_weight", "ejected", "eject_reason", "eject_rule", "ejected_at",
    "weight_before_eject", "epoch", "weight_source", "config_weight",
)  # fmt: skip


def record_to_dict(record: ServiceRecord) -> dict[str, object]:
    """A record as plain JSON values (sent to workers, stored in Redis)."""
    data = {name: getattr(record, name) for name in _FIELDS}
    data["rollout"] = None if record.rollout is None else plan_to_dict(record.rollout)
    return data


def record_from_dict(data: object) -> ServiceRecord:
    """A record read back from JSON, checked like a row of the file; StateError if bad."""
    if not isinstance(data, dict):
        raise StateError(f"a service record must be an object, got {data!r}")
    row = tuple(data.get(name) for name in _FIELDS)
    ejected = row[1]
    plan = data.get("rollout")
    return _record_from_row(
        (
            row[0],
            int(ejected) if isinstance(ejected, bool) else ejected,
            *row[2:],
            None if plan is None else json.dumps(plan),
        )
    )


def _rule(value: str | None) -> EjectRule | None:
    try:
        return None if value is None else require(value, EJECT_RULES, "eject_rule")
    except ValueError as exc:
        raise StateError(f"column eject_rule: {exc}") from None


def _plan(value: str | None) -> Plan | None:
    if value is None:
        return None
    try:
        return plan_from_dict(json.loads(value))
    except ValueError as exc:  # JSONDecodeError is one
        raise StateError(f"column rollout: {exc}") from None


def _source(value: str | None) -> WeightSource | None:
    try:
        return None if value is None else require(value, WEIGHT_SOURCES, "weight_source")
    except ValueError as exc:
        raise StateError(f"column weight_source: {exc}") from None


# SQLite columns are loosely typed: a hand-edited row could hold text where a number belongs.
# These turn such a row into a StateError instead of a crash (or a wrong weight) later on.
def _number(value: object, column: str) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise StateError(f"column {column}: expected a number, got {value!r}")


def _integer(value: object, column: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise StateError(f"column {column}: expected an integer, got {value!r}")


def _optional_text(value: object, column: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise StateError(f"column {column}: expected text, got {value!r}")


def _text(value: object, column: str) -> str:
    if isinstance(value, str):
        return value
    raise StateError(f"column {column}: expected text, got {value!r}")


def _audit_from_row(row: tuple[object, ...]) -> AuditEntry:
    at, who, service, action, old, new, evidence = row
    return AuditEntry(
        at=_number(at, "at"),
        who=_text(who, "who"),
        service=_text(service, "service"),
        action=_text(action, "action"),
        old=_text(old, "old"),
        new=_text(new, "new"),
        evidence=_evidence(_optional_text(evidence, "evidence")),
    )


def _evidence(value: str | None) -> dict[str, object] | None:
    if value is None:
        return None
    try:
        data = json.loads(value)
    except ValueError as exc:
        raise StateError(f"column evidence: not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise StateError(f"column evidence: expected an object, got {data!r}")
    return data


def _row_from_audit(a: AuditEntry) -> tuple[object, ...]:
    evidence = None if a.evidence is None else json.dumps(a.evidence, separators=(",", ":"))
    return (a.at, a.who, a.service, a.action, a.old, a.new, evidence)

"""The state store: round trip, durability across reopen, audit log, and refusing bad files."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from canaryproxy.decide import rollout
from canaryproxy.state.store import (
    APPLICATION_ID,
    SCHEMA_VERSION,
    AuditEntry,
    MemoryStateStore,
    ServiceRecord,
    SqliteStateStore,
    StateError,
    StateStore,
    record_from_dict,
    record_to_dict,
)

SERVING = ServiceRecord(
    canary_weight=25.0,
    ejected=False,
    eject_reason=None,
    eject_rule=None,
    ejected_at=None,
    weight_before_eject=None,
    epoch=3,
)
EJECTED = ServiceRecord(
    canary_weight=0.0,
    ejected=True,
    eject_reason="canary errors 14 of 31 while serving 5 % of requests",
    eject_rule="comparative",
    ejected_at=1_700_000_000.25,
    weight_before_eject=5.5,
    epoch=4,
)


def audit(service: str, action: str, old: str, new: str, at: float = 1.0) -> AuditEntry:
    return AuditEntry(at=at, who="127.0.0.1", service=service, action=action, old=old, new=new)


@pytest.fixture(params=["sqlite", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    opened: StateStore
    if request.param == "sqlite":
        opened = SqliteStateStore(str(tmp_path / "state.db"))
    else:
        opened = MemoryStateStore()
    yield opened
    opened.close()


# --- the StateStore contract, for every implementation ---------------------------------------


def test_a_new_store_is_empty(store: StateStore) -> None:
    assert store.load() == {}
    assert store.audit_log() == []


@pytest.mark.parametrize("record", [SERVING, EJECTED], ids=["serving", "ejected"])
def test_a_saved_record_loads_back_equal(store: StateStore, record: ServiceRecord) -> None:
    store.save("web", record, audit("web", "weight", "5", "25"))
    assert store.load() == {"web": record}


def test_saving_again_replaces_the_record_of_that_service_only(store: StateStore) -> None:
    store.save("web", SERVING, audit("web", "weight", "5", "25"))
    store.save("api", SERVING, audit("api", "weight", "0", "25"))
    store.save("web", EJECTED, audit("web", "eject", "25", "ejected"))
    assert store.load() == {"web": EJECTED, "api": SERVING}


def test_audit_log_is_newest_first_and_filters_by_service(store: StateStore) -> None:
    entries = [
        audit("web", "weight", "5", "25", at=1.0),
        audit("api", "weight", "0", "10", at=2.0),
        audit("web", "eject", "25", "ejected", at=3.0),
    ]
    for entry in entries:
        store.save(entry.service, SERVING, entry)
    assert store.audit_log() == entries[::-1]
    assert store.audit_log("web") == [entries[2], entries[0]]
    assert store.audit_log("nope") == []


@pytest.mark.parametrize(("limit", "expected"), [(0, 0), (2, 2), (10, 3), (-1, 0)], ids=str)
def test_audit_log_limit_keeps_the_newest(store: StateStore, limit: int, expected: int) -> None:
    for i in range(3):
        store.save("web", SERVING, audit("web", "weight", str(i), str(i + 1), at=float(i)))
    got = store.audit_log(limit=limit)
    assert [e.at for e in got] == [2.0, 1.0, 0.0][:expected]


def test_a_closed_store_refuses_calls(store: StateStore) -> None:
    store.close()
    with pytest.raises(StateError):
        store.save("web", SERVING, audit("web", "weight", "5", "25"))
    with pytest.raises(StateError):
        store.load()


# --- SQLite specifics --------------------------------------------------------------------------


def test_state_survives_close_and_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    first = SqliteStateStore(path)
    first.save("web", EJECTED, audit("web", "eject", "5.5", "ejected", at=7.0))
    first.close()
    again = SqliteStateStore(path)
    assert again.load() == {"web": EJECTED}
    assert again.audit_log() == [audit("web", "eject", "5.5", "ejected", at=7.0)]
    again.close()


def test_a_save_is_visible_to_another_connection_before_close(tmp_path: Path) -> None:
    # Committed means committed: a second reader sees the change while the writer is still
    # open, which is what a kill -9 right after the admin 200 leaves on disk.
    path = str(tmp_path / "state.db")
    store = SqliteStateStore(path)
    store.save("web", SERVING, audit("web", "weight", "5", "25"))
    reader = sqlite3.connect(path)
    try:
        rows = reader.execute("SELECT name, canary_weight FROM services").fetchall()
        audit_rows = reader.execute("SELECT count(*) FROM audit").fetchone()
    finally:
        reader.close()
    store.close()
    assert rows == [("web", 25.0)]
    assert audit_rows == (1,)


def test_the_file_is_in_wal_mode(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    SqliteStateStore(path).close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        conn.close()


def test_the_parent_directory_is_created(tmp_path: Path) -> None:
    path = tmp_path / "var" / "lib" / "state.db"
    SqliteStateStore(str(path)).close()
    assert path.is_file()


def test_a_failed_save_writes_neither_record_nor_audit(tmp_path: Path) -> None:
    store = SqliteStateStore(str(tmp_path / "state.db"))
    bad = ServiceRecord(140.0, False, None, None, None, None, 1)  # violates the CHECK
    with pytest.raises(StateError, match="cannot save web"):
        store.save("web", bad, audit("web", "weight", "5", "140"))
    assert store.load() == {}
    assert store.audit_log() == []
    store.close()


def test_saves_from_several_threads_all_land(tmp_path: Path) -> None:
    store = SqliteStateStore(str(tmp_path / "state.db"))

    def save(i: int) -> None:
        store.save(f"svc{i}", SERVING, audit(f"svc{i}", "weight", "0", "25"))

    threads = [threading.Thread(target=save, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(store.load()) == sorted(f"svc{i}" for i in range(8))
    assert len(store.audit_log()) == 8
    store.close()


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def _garbage(path: Path) -> str:
    return _write(path, b"not a database at all\n" * 50)


def _directory(path: Path) -> str:
    path.mkdir()
    return str(path)


def _truncated_database(path: Path) -> str:
    full = path.with_suffix(".full")
    conn = sqlite3.connect(full)
    conn.execute("CREATE TABLE t (x BLOB)")
    conn.executemany("INSERT INTO t VALUES (?)", [(os.urandom(400),) for _ in range(200)])
    conn.commit()
    conn.close()
    data = full.read_bytes()
    return _write(path, data[: len(data) // 2])


def _foreign_database(path: Path) -> str:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (name TEXT)")
    conn.commit()
    conn.close()
    return str(path)


def _newer_schema(path: Path) -> str:
    SqliteStateStore(str(path)).close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.commit()
    conn.close()
    return str(path)


def _bad_row(path: Path) -> str:
    store = SqliteStateStore(str(path))
    store.save("web", SERVING, audit("web", "weight", "5", "25"))
    store.close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE services SET epoch = 'three'")
    conn.commit()
    conn.close()
    return str(path)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_garbage, "not a usable"),
        (_truncated_database, "malformed|corrupt"),
        (_foreign_database, "not a canaryproxy state file"),
        (_newer_schema, "schema version 99 is newer"),
        (_directory, "cannot open"),
    ],
    ids=["garbage", "truncated", "foreign-sqlite", "newer-schema", "a-directory"],
)
def test_an_unusable_file_raises_state_error_and_is_left_alone(
    tmp_path: Path, make: Callable[[Path], str], message: str
) -> None:
    path = tmp_path / "state.db"
    target = make(path)
    before = path.read_bytes() if path.is_file() else None
    with pytest.raises(StateError, match=message) as caught:
        SqliteStateStore(target)
    assert str(path) in str(caught.value)
    assert (path.read_bytes() if path.is_file() else None) == before


def test_a_row_of_the_wrong_type_raises_state_error_on_load(tmp_path: Path) -> None:
    store = SqliteStateStore(_bad_row(tmp_path / "state.db"))
    with pytest.raises(StateError, match="column epoch: expected an integer, got 'three'"):
        store.load()
    store.close()


def test_a_parent_that_is_a_file_raises_state_error(tmp_path: Path) -> None:
    blocker = tmp_path / "var"
    blocker.write_text("I am a file, not a directory")
    with pytest.raises(StateError, match="cannot create its directory"):
        SqliteStateStore(str(blocker / "state.db"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_a_read_only_directory_raises_state_error(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(StateError, match="cannot open"):
            SqliteStateStore(str(locked / "state.db"))
    finally:
        locked.chmod(0o700)


V1_SCHEMA = """
CREATE TABLE services (
    name TEXT PRIMARY KEY,
    canary_weight REAL NOT NULL CHECK (canary_weight BETWEEN 0 AND 100),
    ejected INTEGER NOT NULL CHECK (ejected IN (0, 1)),
    eject_reason TEXT,
    eject_rule TEXT,
    ejected_at REAL,
    weight_before_eject REAL,
    epoch INTEGER NOT NULL
);
CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL, who TEXT NOT NULL, service TEXT NOT NULL,
    action TEXT NOT NULL, old TEXT NOT NULL, new TEXT NOT NULL
);
"""


def test_a_file_of_the_first_schema_is_migrated_and_keeps_its_rows(tmp_path: Path) -> None:
    path = str(tmp_path / "v1.db")
    conn = sqlite3.connect(path)
    conn.executescript(V1_SCHEMA)
    conn.execute("INSERT INTO services VALUES ('web', 30.0, 0, NULL, NULL, NULL, NULL, 2)")
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    store = SqliteStateStore(path)
    try:
        (web,) = store.load().values()
        assert (web.canary_weight, web.epoch) == (30.0, 2)
        assert (web.weight_source, web.config_weight) == (None, None)  # an operator's, file unknown
        newer = ServiceRecord(30.0, False, None, None, None, None, 3, "config", 30.0)
        store.save("web", newer, AuditEntry(1.0, "config", "web", "set_weight", "30", "30"))
        assert store.load()["web"] == newer
    finally:
        store.close()
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    check.close()


def test_a_file_of_schema_two_gains_the_rollout_column_and_keeps_its_plans(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "v2.db")
    conn = sqlite3.connect(path)
    conn.executescript(V1_SCHEMA)
    conn.execute("ALTER TABLE services ADD COLUMN weight_source TEXT")
    conn.execute("ALTER TABLE services ADD COLUMN config_weight REAL")
    conn.execute(
        "INSERT INTO services VALUES ('web', 10.0, 0, NULL, NULL, NULL, NULL, 1, 'admin', 5)"
    )
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()
    store = SqliteStateStore(path)
    try:
        assert store.load()["web"].rollout is None  # never started
        plan = rollout.pause(rollout.start(rollout.IDLE, (5.0, 10.0, 100.0), 100.0), 160.0, "x")
        record = ServiceRecord(10.0, False, None, None, None, None, 1, "rollout", 5.0, plan)
        store.save("web", record, AuditEntry(1.0, "op", "web", "rollout:pause", "a", "b"))
    finally:
        store.close()
    reopened = SqliteStateStore(path)
    try:
        assert reopened.load()["web"].rollout == plan  # state, step and time served
        assert record_from_dict(json.loads(json.dumps(record_to_dict(record)))) == record
    finally:
        reopened.close()


def test_a_bad_rollout_plan_in_a_row_is_a_state_error(tmp_path: Path) -> None:
    path = str(tmp_path / "s.db")
    SqliteStateStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute(
        "INSERT INTO services VALUES ('web', 5.0, 0, NULL, NULL, NULL, NULL, 0, 'config', 5.0,"
        ' \'{"state": "flying"}\')'
    )
    conn.commit()
    conn.close()
    with pytest.raises(StateError, match="column rollout: unknown rollout state 'flying'"):
        SqliteStateStore(path).load()


def test_an_unknown_weight_source_in_a_row_is_a_state_error(tmp_path: Path) -> None:
    path = str(tmp_path / "s.db")
    SqliteStateStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute(
        "INSERT INTO services VALUES ('web', 5.0, 0, NULL, NULL, NULL, NULL, 0, 'magic', 5.0, NULL)"
    )
    conn.commit()
    conn.close()
    store = SqliteStateStore(path)
    with pytest.raises(StateError, match="weight_source"):
        store.load()
    store.close()


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_state_file_deleted_or_replaced_while_open_is_recreated_with_everything(
    tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.db"
    store = SqliteStateStore(str(path))
    store.save("web", SERVING, audit("web", "set_weight", "5", "25"))
    for name in ("state.db", "state.db-wal", "state.db-shm"):
        (tmp_path / name).unlink(missing_ok=True)  # rm state.db*
    if how == "replaced":
        path.write_bytes(b"")  # a new, empty file at the same path
    store.save("api", EJECTED, audit("api", "eject", "5", "bad"))  # acknowledged: on disk
    store.close()
    again = SqliteStateStore(str(path))
    try:
        assert again.load() == {"web": SERVING, "api": EJECTED}
    finally:
        again.close()
    assert any("recreating" in r.getMessage() for r in caplog.records)

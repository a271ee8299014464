"""The SQLite saga store on real files: journal, idempotency, reopen, migration, bad files.

What every backend must do (concurrent writers included) is in tests/store_conformance/.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from sagalab.orchestrator.errors import (
    ConcurrentUpdate,
    IdempotencyConflict,
    SagaNotFoundError,
    StoreError,
)
from sagalab.orchestrator.flow import FlowDefinition, flow_from_dict
from sagalab.orchestrator.journal import JournalEntry
from sagalab.orchestrator.saga import Event, EventType, Failure, Phase, SagaState, SagaStatus
from sagalab.orchestrator.sqlite_store import MIGRATIONS, SCHEMA_VERSION, SQLiteStore
from sagalab.orchestrator.store import SagaRecord, Store

FLOW_RAW = {
    "name": "order",
    "version": 1,
    "input": {"required": ["order_id"]},
    "steps": [
        {"name": "reserve", "handler": "reserve", "compensation_handler": "release"},
        {"name": "charge", "handler": "charge", "compensation_handler": "refund"},
    ],
}


def order_flow() -> FlowDefinition:
    return flow_from_dict(FLOW_RAW)


def create(
    store: Store, saga_id: str = "s1", key: str | None = None, **payload: Any
) -> tuple[SagaRecord, bool]:
    return store.create_saga(
        saga_id=saga_id,
        flow=order_flow(),
        payload=payload or {"order_id": "o-1"},
        trace_id="ab" * 16,
        idempotency_key=key,
        now=100.0,
    )


def advance(store: Store, saga_id: str, events: list[Event], **extra: Any) -> int:
    """Append `events` after the saga's current journal, with the state they lead to."""
    record, entries, state = store.state(saga_id)
    for event in events:
        state.apply(event)
    return store.append(
        saga_id,
        [JournalEntry(e, **extra) for e in events],
        expected_seq=record.last_seq,
        state=state,
        now=events[-1].at,
    )


def reserve_ok(at: float = 101.0) -> list[Event]:
    return [
        Event(EventType.ATTEMPT_STARTED, at, "reserve", Phase.ACTION, 1),
        Event(EventType.ATTEMPT_SUCCEEDED, at + 0.5, "reserve", Phase.ACTION, 1),
    ]


# --- basics --------------------------------------------------------------------------------


def test_create_load_and_journal(store: SQLiteStore) -> None:
    record, created = create(store)
    assert created
    assert record.id == "s1" and record.status is SagaStatus.PENDING
    assert record.flow == order_flow() and record.input == {"order_id": "o-1"}
    assert record.trace_id == "ab" * 16 and record.last_seq == 1
    (entry,) = store.journal("s1")
    assert entry.seq == 1 and entry.event == Event(EventType.SAGA_CREATED, 100.0)
    assert [(r.name, r.status, r.attempts) for r in store.steps("s1")] == [
        ("reserve", "pending", 0),
        ("charge", "pending", 0),
    ]
    assert store.load("s1") == record


def test_append_stores_every_field_and_materialises_status(store: SQLiteStore) -> None:
    create(store)
    failure = Failure("HTTP 503", retryable=True, maybe_applied=True, retry_after=2.0)
    events = [
        Event(EventType.ATTEMPT_STARTED, 101.0, "reserve", Phase.ACTION, 1),
        Event(EventType.ATTEMPT_FAILED, 101.5, "reserve", Phase.ACTION, 1, failure),
        Event(EventType.RETRY_SCHEDULED, 101.6, "reserve", Phase.ACTION, 2, not_before=103.0),
    ]
    seq = advance(
        store,
        "s1",
        events,
        request={"sku": "A"},
        response={"error": "busy"},
        status_code=503,
        duration_ms=12.5,
        span_id="cd" * 8,
    )
    assert seq == 4
    entries = store.journal("s1")
    assert [e.seq for e in entries] == [1, 2, 3, 4]
    assert [e.event for e in entries[1:]] == events
    assert entries[2].request == {"sku": "A"} and entries[2].response == {"error": "busy"}
    assert (entries[2].status_code, entries[2].duration_ms, entries[2].span_id) == (
        503,
        12.5,
        "cd" * 8,
    )
    record = store.load("s1")
    assert record.status is SagaStatus.RUNNING and record.last_seq == 4
    assert record.updated_at == 101.6
    reserve = store.steps("s1")[0]
    assert (reserve.status, reserve.attempts, reserve.last_error) == ("retrying", 1, "HTTP 503")


def test_append_nothing_is_a_no_op(store: SQLiteStore) -> None:
    create(store)
    state = SagaState(order_flow())
    assert store.append("s1", [], expected_seq=1, state=state, now=1.0) == 1
    assert len(store.journal("s1")) == 1


def test_stale_expected_seq_raises_concurrent_update_and_writes_nothing(
    store: SQLiteStore,
) -> None:
    create(store)
    record, _, state = store.state("s1")
    advance(store, "s1", reserve_ok())
    with pytest.raises(ConcurrentUpdate, match="journal is at 3, writer expected 1"):
        store.append(
            "s1",
            [JournalEntry(Event(EventType.ATTEMPT_STARTED, 1.0, "reserve", Phase.ACTION, 1))],
            expected_seq=record.last_seq,
            state=state,
            now=1.0,
        )
    assert [e.seq for e in store.journal("s1")] == [1, 2, 3]
    assert store.load("s1").status is SagaStatus.RUNNING


def test_unknown_saga(store: SQLiteStore) -> None:
    with pytest.raises(SagaNotFoundError, match="no saga with id 'nope'"):
        store.load("nope")
    with pytest.raises(SagaNotFoundError):
        store.journal("nope")
    with pytest.raises(SagaNotFoundError):
        store.append(
            "nope",
            [JournalEntry(Event(EventType.SAGA_COMPLETED, 1.0))],
            expected_seq=1,
            state=SagaState(order_flow()),
            now=1.0,
        )


def test_list_sagas_filters_and_orders(store: SQLiteStore) -> None:
    for i in range(3):
        store.create_saga(
            saga_id=f"s{i}",
            flow=order_flow(),
            payload={"order_id": str(i)},
            trace_id="t",
            idempotency_key=None,
            now=100.0 + i,
        )
    advance(store, "s1", reserve_ok())
    assert [r.id for r in store.list_sagas()] == ["s2", "s1", "s0"]
    assert [r.id for r in store.list_sagas(status=SagaStatus.RUNNING)] == ["s1"]
    assert [r.id for r in store.list_sagas(flow="other")] == []
    assert [r.id for r in store.list_sagas(limit=1)] == ["s2"]
    assert store.count_by_status() == {"pending": 2, "running": 1}


def test_flow_snapshot_is_kept_with_the_saga(store: SQLiteStore) -> None:
    """Editing the flow afterwards never changes a saga already stored."""
    create(store)
    edited = dict(FLOW_RAW, steps=[*FLOW_RAW["steps"], {"name": "ship", "handler": "ship"}])
    store.create_saga(
        saga_id="s2",
        flow=flow_from_dict(edited),
        payload={"order_id": "o-2"},
        trace_id="t",
        idempotency_key=None,
        now=101.0,
    )
    assert [s.name for s in store.load("s1").flow.steps] == ["reserve", "charge"]
    assert [s.name for s in store.load("s2").flow.steps] == ["reserve", "charge", "ship"]


# --- idempotency ---------------------------------------------------------------------------


def test_same_key_same_input_returns_the_same_saga(store: SQLiteStore) -> None:
    first, created = create(store, "s1", key="k")
    again, created_again = create(store, "s2", key="k")
    assert created and not created_again
    assert again.id == "s1" and again == first
    assert [r.id for r in store.list_sagas()] == ["s1"]
    with pytest.raises(SagaNotFoundError):
        store.load("s2")


def test_same_key_different_input_is_refused(store: SQLiteStore) -> None:
    create(store, "s1", key="k", order_id="o-1")
    with pytest.raises(IdempotencyConflict) as info:
        create(store, "s2", key="k", order_id="o-2")
    assert info.value.key == "k" and info.value.saga_id == "s1"
    assert "different flow or input" in str(info.value)
    assert [r.id for r in store.list_sagas()] == ["s1"]


def test_key_is_bound_to_the_flow_version_too(store: SQLiteStore) -> None:
    create(store, "s1", key="k")
    with pytest.raises(IdempotencyConflict):
        store.create_saga(
            saga_id="s2",
            flow=flow_from_dict(dict(FLOW_RAW, version=2)),
            payload={"order_id": "o-1"},
            trace_id="t",
            idempotency_key="k",
            now=1.0,
        )


def test_input_key_order_does_not_matter(store: SQLiteStore) -> None:
    store.create_saga(
        saga_id="s1",
        flow=order_flow(),
        payload={"order_id": "o", "n": 1},
        trace_id="t",
        idempotency_key="k",
        now=1.0,
    )
    record, created = store.create_saga(
        saga_id="s2",
        flow=order_flow(),
        payload={"n": 1, "order_id": "o"},
        trace_id="t",
        idempotency_key="k",
        now=1.0,
    )
    assert not created and record.id == "s1"


# --- reopen, migration, bad files ----------------------------------------------------------


def test_reopen_after_close_keeps_everything(db_path: Path) -> None:
    first = SQLiteStore(db_path)
    create(first, "s1", key="k")
    advance(first, "s1", reserve_ok(), response={"reservation_id": "r-1"})
    before = (first.load("s1"), first.journal("s1"), first.steps("s1"))
    first.close()

    second = SQLiteStore(db_path)
    try:
        assert (second.load("s1"), second.journal("s1"), second.steps("s1")) == before
        assert second.schema_version() == SCHEMA_VERSION
        assert second.migrate() == SCHEMA_VERSION  # nothing to do
        record, created = create(second, "s9", key="k")
        assert not created and record.id == "s1"
        _, _, state = second.state("s1")
        assert state.steps["reserve"].action.done
        assert state.next_forward() == "charge"
    finally:
        second.close()


def test_file_is_in_wal_mode(store: SQLiteStore, db_path: Path) -> None:
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def build_v1_file(path: Path) -> None:
    """A file as sagalab with schema version 1 left it, with one saga in it."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    for statement in MIGRATIONS[0].split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    conn.close()


def strip_to_v1(current: Path, v1: Path) -> None:
    """Write at `v1` a schema-version-1 file holding the sagas and journals of `current`.

    Also the store conformance suite's older database (tests/store_conformance/conftest.py).
    """
    reader = SQLiteStore(current)
    steps = [
        (record.id, r.name, r.index, r.status, r.attempts, r.compensation_attempts, r.last_error)
        for record in reader.list_sagas(limit=10_000)
        for r in reader.steps(record.id)
    ]
    reader.close()
    build_v1_file(v1)
    conn = sqlite3.connect(v1, isolation_level=None)
    conn.execute("ATTACH DATABASE ? AS cur", (str(current),))
    v1_columns = [r[1] for r in conn.execute("PRAGMA table_info(sagas)")]
    assert "lease_owner" not in v1_columns
    # A v1 file kept each saga's flow snapshot inline; today's keeps it in flow_snapshots.
    inline = "(SELECT body FROM cur.flow_snapshots f WHERE f.hash = s.flow_hash)"
    selected = [inline if c == "flow_snapshot" else f"s.{c}" for c in v1_columns]
    conn.execute(
        f"INSERT INTO sagas ({', '.join(v1_columns)}) SELECT {', '.join(selected)} FROM cur.sagas s"
    )
    conn.execute("INSERT INTO events SELECT * FROM cur.events")
    # v1 kept step rows in a table; today's keeps them in the saga's row.
    conn.executemany("INSERT INTO steps VALUES (?, ?, ?, ?, ?, ?, ?)", steps)
    conn.execute("DETACH DATABASE cur")
    conn.close()


def test_migration_from_v1_keeps_rows(db_path: Path) -> None:
    # Write a saga with today's code, then strip the file back to the v1 schema.
    store = SQLiteStore(db_path)
    create(store, "s1", key="k")
    advance(store, "s1", reserve_ok())
    before = (store.load("s1"), store.journal("s1"), store.steps("s1"))
    store.close()
    v1 = db_path.with_name("v1.db")
    strip_to_v1(db_path, v1)

    migrated = SQLiteStore(v1)
    try:
        assert migrated.schema_version() == SCHEMA_VERSION
        assert (migrated.load("s1"), migrated.journal("s1"), migrated.steps("s1")) == before
        columns = {r[1] for r in migrated.conn.execute("PRAGMA table_info(sagas)")}
        assert {"run_after", "lease_owner", "lease_until", "lease_epoch", "steps"} <= columns
        tables = {r[0] for r in migrated.conn.execute("SELECT name FROM sqlite_master")}
        assert "steps" not in tables
        epoch = migrated.conn.execute("SELECT lease_epoch FROM sagas").fetchone()[0]
        assert epoch == 0
        # The migrated file is fully usable.
        advance(
            migrated, "s1", [Event(EventType.ATTEMPT_STARTED, 200.0, "charge", Phase.ACTION, 1)]
        )
        assert migrated.load("s1").last_seq == 4
    finally:
        migrated.close()


def test_migration_to_v8_adds_the_fork_link_to_every_saga(db_path: Path) -> None:
    # Today's file, its fork link dropped back out: what v7 left.
    store = SQLiteStore(db_path)
    create(store, "s1", key="k")
    before = store.load("s1")
    store.close()
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("DROP INDEX sagas_by_forked_from")
    conn.execute("ALTER TABLE sagas DROP COLUMN forked_from")
    conn.execute("DROP TABLE batch_sagas")  # v9's, after it
    conn.execute("DROP TABLE batches")
    conn.execute("UPDATE meta SET value = '7' WHERE key = 'schema_version'")
    conn.close()

    migrated = SQLiteStore(db_path)
    try:
        assert migrated.schema_version() == SCHEMA_VERSION == 9
        assert migrated.load("s1") == before and before.forked_from is None
        assert migrated.forks("s1") == []
        indexes = {r[1] for r in migrated.conn.execute("PRAGMA index_list(sagas)")}
        assert "sagas_by_forked_from" in indexes
    finally:
        migrated.close()


def test_migration_to_v9_adds_bulk_batches(db_path: Path) -> None:
    store = SQLiteStore(db_path)
    create(store, "s1")
    store.close()
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("DROP TABLE batch_sagas")
    conn.execute("DROP TABLE batches")
    conn.execute("UPDATE meta SET value = '8' WHERE key = 'schema_version'")
    conn.close()

    migrated = SQLiteStore(db_path)
    try:
        assert migrated.schema_version() == SCHEMA_VERSION
        assert migrated.list_batches() == []
        migrated.create_batch(
            batch_id="b1", action="resume", filter={}, options={}, saga_ids=["s1"], now=1.0
        )
        assert [i.saga_id for i in migrated.load_batch("b1").pending()] == ["s1"]
    finally:
        migrated.close()


def test_newer_schema_is_refused_and_left_alone(db_path: Path) -> None:
    SQLiteStore(db_path).close()
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute(
        "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),)
    )
    conn.close()
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}, newer.*upgrade"):
        SQLiteStore(db_path)
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("SELECT value FROM meta").fetchone()[0] == str(SCHEMA_VERSION + 1)
    finally:
        conn.close()


def test_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="is a directory"):
        SQLiteStore(tmp_path)


def test_unwritable_path_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match=r"cannot create saga database .* is not a directory"):
        SQLiteStore(blocker / "sub" / "sagas.db")


def test_non_database_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("these are my notes, not a database\n" * 100)
    with pytest.raises(StoreError) as info:
        SQLiteStore(path)
    assert str(path) in str(info.value)
    assert "not a SQLite database" in str(info.value)
    assert path.read_text().startswith("these are my notes")


# --- several processes ---------------------------------------------------------------------


class SQLiteStoreCtx:
    """`with SQLiteStoreCtx(path) as store:` closes the store on the way out."""

    def __init__(self, path: Path) -> None:
        self.store = SQLiteStore(path)

    def __enter__(self) -> SQLiteStore:
        return self.store

    def __exit__(self, *exc: object) -> None:
        self.store.close()

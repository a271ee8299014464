"""Tenants in the SQLite store: scoped reads, per-tenant idempotency keys, the v7 migration."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from sagalab.orchestrator.errors import IdempotencyConflict, SagaNotFoundError
from sagalab.orchestrator.flow import FlowDefinition, flow_from_dict
from sagalab.orchestrator.sqlite_store import MIGRATIONS, SCHEMA_VERSION, SQLiteStore
from sagalab.orchestrator.store import DEFAULT_TENANT, SagaRecord

FLOW = {
    "name": "order",
    "version": 1,
    "input": {"required": ["order_id"]},
    "steps": [{"name": "reserve", "handler": "reserve", "compensation_handler": "release"}],
}


def flow() -> FlowDefinition:
    return flow_from_dict(FLOW)


def create(
    store: SQLiteStore, saga_id: str, *, tenant: str, key: str | None = None, order: str = "o-1"
) -> tuple[SagaRecord, bool]:
    return store.create_saga(
        saga_id=saga_id,
        flow=flow(),
        payload={"order_id": order},
        trace_id="ab" * 16,
        idempotency_key=key,
        now=100.0,
        tenant=tenant,
    )


def test_a_saga_is_found_only_by_its_own_tenant(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    try:
        record, _ = create(store, "a1", tenant="alice")
        assert record.tenant == "alice"
        assert store.load("a1", tenant="alice") == record
        assert store.load("a1") == record  # no tenant: local, all tenants
        with pytest.raises(SagaNotFoundError):
            store.load("a1", tenant="bob")
        create(store, "b1", tenant="bob", order="o-2")
        assert [r.id for r in store.list_sagas(tenant="alice")] == ["a1"]
        assert [r.id for r in store.list_sagas(tenant="bob")] == ["b1"]
        assert {r.id for r in store.list_sagas()} == {"a1", "b1"}
    finally:
        store.close()


def test_idempotency_keys_are_per_tenant(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    try:
        a, created_a = create(store, "a1", tenant="alice", key="k")
        b, created_b = create(store, "b1", tenant="bob", key="k", order="o-2")
        assert created_a and created_b and a.id != b.id
        again, created = create(store, "a2", tenant="alice", key="k")
        assert not created and again.id == "a1"
        # A conflict names only the caller's own saga.
        with pytest.raises(IdempotencyConflict) as info:
            create(store, "b2", tenant="bob", key="k", order="o-3")
        assert "b1" in str(info.value) and "a1" not in str(info.value)
    finally:
        store.close()


def build_v6_file(path: Path) -> None:
    """A file as sagalab with schema version 6 left it."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    for script in MIGRATIONS[:6]:
        if callable(script):
            script(conn)
            continue
        for statement in script.split(";"):
            if statement.strip():
                conn.execute(statement)
    conn.execute("INSERT INTO meta VALUES ('schema_version', '6')")
    conn.close()


def test_migration_from_v6_puts_sagas_in_the_default_tenant(tmp_path: Path) -> None:
    # Write sagas with today's code, then copy them into a v6 file by hand.
    current = tmp_path / "current.db"
    store = SQLiteStore(current)
    create(store, "s1", tenant=DEFAULT_TENANT, key="k")
    create(store, "s2", tenant=DEFAULT_TENANT, order="o-2")
    before = {r.id: r for r in store.list_sagas()}
    journals = {i: store.journal(i) for i in before}
    store.close()
    v6 = tmp_path / "v6.db"
    build_v6_file(v6)
    conn = sqlite3.connect(v6, isolation_level=None)
    v6_columns = [r[1] for r in conn.execute("PRAGMA table_info(sagas)")]
    assert "tenant" not in v6_columns
    conn.execute("ATTACH DATABASE ? AS cur", (str(current),))
    conn.execute("INSERT INTO flow_snapshots SELECT * FROM cur.flow_snapshots")
    cols = ", ".join(v6_columns)
    conn.execute(f"INSERT INTO sagas ({cols}) SELECT {cols} FROM cur.sagas")
    conn.execute("INSERT INTO events SELECT * FROM cur.events")
    conn.execute("DETACH DATABASE cur")
    conn.close()

    migrated = SQLiteStore(v6)
    try:
        assert migrated.schema_version() == SCHEMA_VERSION
        assert {r.id: r for r in migrated.list_sagas()} == before
        assert {i: migrated.journal(i) for i in before} == journals
        assert all(r.tenant == DEFAULT_TENANT for r in migrated.list_sagas())
        assert migrated.conn.execute("PRAGMA foreign_key_check").fetchall() == []
        indexes = {r[1] for r in migrated.conn.execute("PRAGMA index_list(sagas)")}
        assert {"sagas_by_created", "sagas_by_status", "sagas_queue"} <= indexes
        # The key stays the default tenant's; another tenant may use it for a saga of its own.
        again, created = create(migrated, "s9", tenant=DEFAULT_TENANT, key="k")
        assert not created and again.id == "s1"
        other, created = create(migrated, "t1", tenant="alice", key="k")
        assert created and other.id == "t1"
        assert migrated.migrate() == SCHEMA_VERSION  # nothing left to do
    finally:
        migrated.close()


def test_the_cli_works_on_every_tenant_and_list_filters_by_one(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from sagalab.cli.main import app

    db = tmp_path / "s.db"
    store = SQLiteStore(db)
    create(store, "a1", tenant="alice")
    create(store, "b1", tenant="bob", order="o-2")
    store.close()
    run = CliRunner().invoke
    every = run(app, ["orchestrate", "list", "--db", str(db), "--json"])
    assert every.exit_code == 0 and {r["tenant"] for r in json.loads(every.stdout)} == {
        "alice",
        "bob",
    }
    only = run(app, ["orchestrate", "list", "--db", str(db), "--tenant", "bob", "--json"])
    assert [r["id"] for r in json.loads(only.stdout)] == ["b1"]
    shown = run(app, ["orchestrate", "status", "a1", "--db", str(db), "--json"])
    assert shown.exit_code == 0 and json.loads(shown.stdout)["tenant"] == "alice"

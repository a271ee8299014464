"""Conformance: a whole database read and written table by table (`CopyStore`, db copy).

Each backend exports what it holds and imports it into a fresh database of its own kind;
tests/test_db_copy.py crosses backends through the CLI.
"""

from __future__ import annotations

import pytest
from conformancelab import Backend, advance, create, order_flow, reserve_ok

from sagalab.orchestrator.errors import CopyRefused, StoreError
from sagalab.orchestrator.store import COPY_COLUMNS, COPY_TABLES, Store


def _populate(backend: Backend) -> Store:
    """Sagas in several states (one forked, one leased, one with a tenant's key), a breaker
    that opened, a scaling decision and an operator's bulk batch half done."""
    store = backend.open()
    create(store, "s1")
    advance(store, "s1", reserve_ok())
    create(store, "s2", "key-1", tenant="acme", now=102.0, order_id="o-2")
    store.create_saga(
        saga_id="s3",
        flow=order_flow(),
        payload={"order_id": "o-1"},
        trace_id="cd" * 16,
        idempotency_key=None,
        now=103.0,
        forked_from="s1",
    )
    create(store, "s4", now=104.0, run_after=104.0)
    store.claim("s4", "worker-a", now=105.0, lease_seconds=1e9)
    breakers = backend.breakers()
    breakers.storage("payments", lambda: 100.0).try_open(100.0)
    breakers.record_transition("payments", 100.0, "open", owner="worker-a")
    store.record_scaling(at=106.0, before=1, after=2, depth=5, oldest_age=1.5, reason="depth")
    store.create_batch(
        batch_id="b1",
        action="resume",
        filter={"status": ["failed"]},
        options={"rps": 10},
        saga_ids=["s1", "s2"],
        now=107.0,
    )
    store.record_batch_outcome("b1", "s1", outcome="acted", detail=None, now=108.0)
    return store


def _everything(store: Store) -> tuple[object, ...]:
    """What a reader of the database sees, by the port's own reads."""
    ids = ["s1", "s2", "s3", "s4"]
    return (
        [store.load(i) for i in ids],
        [store.journal(i) for i in ids],
        [store.steps(i) for i in ids],
        store.forks("s1"),
        store.list_sagas(),
        store.count_by_status(),
        store.scaling_events(),
        store.list_batches(),
    )


def test_an_export_imports_into_a_fresh_database_as_it_was(store_factory: Backend) -> None:
    source = _populate(store_factory)
    reader = store_factory.open(readonly=True)  # a copy's source is only read
    destination = store_factory.open_url(store_factory.fresh())
    assert set(destination.table_counts().values()) == {0}
    with reader.export(batch_size=2) as exported:
        assert exported.counts == source.table_counts()
        seen = []
        for table, rows in exported.batches:
            assert 0 < len(rows) <= 2 and all(set(r) == set(COPY_COLUMNS[table]) for r in rows)
            seen.append(table)
            destination.import_rows([(table, rows)], merge=True)
    assert list(dict.fromkeys(seen)) == [t for t in COPY_TABLES if t in seen]  # in order
    assert destination.table_counts() == source.table_counts()
    assert _everything(destination) == _everything(source)
    breakers = store_factory.breakers()
    assert [r["state"] for r in breakers.rows()] == ["open"]


def test_an_import_is_one_transaction_and_refuses_a_database_that_is_not_empty(
    store_factory: Backend,
) -> None:
    source = _populate(store_factory)
    destination = store_factory.open_url(store_factory.fresh())
    with source.export() as exported:
        batches = list(exported.batches)
    copied = destination.import_rows(batches)
    assert copied == source.table_counts()
    with pytest.raises(CopyRefused, match="not empty"):
        destination.import_rows(batches)
    # With merge, a saga id there already refuses the whole import: nothing is added,
    # not even the rows before the collision.
    scaling = [("scaling_events", [dict(r) for r in dict(batches)["scaling_events"]])]
    with pytest.raises(CopyRefused, match="s1"):
        destination.import_rows(scaling + batches, merge=True)
    assert destination.table_counts() == source.table_counts()


def test_a_merge_adds_new_sagas_and_keeps_what_is_there(store_factory: Backend) -> None:
    source = _populate(store_factory)
    destination = store_factory.open_url(store_factory.fresh())
    create(destination, "d1", now=50.0)  # the same flow: its snapshot is there already
    with source.export() as exported:
        copied = destination.import_rows(exported.batches, merge=True)
    assert copied["sagas"] == 4 and copied["flow_snapshots"] == 0
    assert {r.id for r in destination.list_sagas()} == {"d1", "s1", "s2", "s3", "s4"}


def test_a_key_of_the_same_tenant_there_already_is_refused_on_merge(
    store_factory: Backend,
) -> None:
    source = _populate(store_factory)
    destination = store_factory.open_url(store_factory.fresh())
    create(destination, "d2", "key-1", tenant="acme", now=50.0, order_id="o-9")
    with source.export() as exported, pytest.raises(CopyRefused):
        destination.import_rows(exported.batches, merge=True)
    assert [r.id for r in destination.list_sagas()] == ["d2"]


def test_a_read_only_store_exports_but_never_imports(store_factory: Backend) -> None:
    _populate(store_factory)
    reader = store_factory.open(readonly=True)
    with reader.export() as exported:
        batches = list(exported.batches)
    empty = store_factory.fresh()
    store_factory.open_url(empty).close()  # created, empty
    with pytest.raises(StoreError):
        store_factory.open_url(empty, readonly=True).import_rows(batches)


def test_an_export_is_one_snapshot_while_writers_go_on(store_factory: Backend) -> None:
    _populate(store_factory)
    reader = store_factory.open(readonly=True)
    writer = store_factory.open()
    with reader.export(batch_size=1) as exported:
        first = next(exported.batches)
        create(writer, "late", now=200.0)  # committed while the export reads
        advance(writer, "s2", [reserve_ok(300.0)[0]])
        rest = list(exported.batches)
    sagas = [r["id"] for table, rows in [first, *rest] if table == "sagas" for r in rows]
    events = [r for table, rows in [first, *rest] if table == "events" for r in rows]
    assert sorted(sagas) == ["s1", "s2", "s3", "s4"] and len(sagas) == exported.counts["sagas"]
    assert len(events) == exported.counts["events"]
    assert max(r["seq"] for r in events if r["saga_id"] == "s2") == 1  # not the late one

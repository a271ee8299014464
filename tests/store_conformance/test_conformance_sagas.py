"""Conformance: sagas and their journal (`SagaStore`), reopen, read-only handles, migration."""

from __future__ import annotations

import pytest
from conformancelab import Backend, advance, create, order_flow, reserve_ok

from sagalab.orchestrator.errors import (
    ConcurrentUpdate,
    IdempotencyConflict,
    SagaNotFoundError,
    StoreError,
)
from sagalab.orchestrator.journal import JournalEntry
from sagalab.orchestrator.saga import Event, EventType, Phase, SagaState, SagaStatus
from sagalab.orchestrator.store import Store


def test_create_load_journal_state_and_steps(store: Store) -> None:
    record, created = create(store, "s1", order_id="o-9")
    assert created
    assert (record.id, record.status, record.last_seq, record.input) == (
        "s1",
        SagaStatus.PENDING,
        1,
        {"order_id": "o-9"},
    )
    assert store.load("s1") == record
    [entry] = store.journal("s1")
    assert (entry.seq, entry.event.type) == (1, EventType.SAGA_CREATED)
    assert [(r.name, r.index, r.status) for r in store.steps("s1")] == [
        ("reserve", 0, "pending"),
        ("charge", 1, "pending"),
    ]
    loaded, entries, state = store.state("s1")
    assert loaded == record and entries == [entry] and state.status is SagaStatus.PENDING


def test_append_stores_entries_in_order_and_moves_the_status_on(store: Store) -> None:
    create(store, "s1")
    assert advance(store, "s1", reserve_ok(), response={"reservation_id": "r-1"}) == 3
    record, entries, state = store.state("s1")
    assert record.last_seq == 3 and record.status is SagaStatus.RUNNING
    assert [e.seq for e in entries] == [1, 2, 3]
    assert entries[2].response == {"reservation_id": "r-1"}
    assert state.steps["reserve"].action.done
    assert store.steps("s1")[0].status == "succeeded"
    assert store.append("s1", [], expected_seq=3, state=state, now=103.0) == 3  # no-op


def test_create_is_idempotent_by_key_within_a_tenant(store: Store) -> None:
    first, created = create(store, "s1", key="k", order_id="o-1")
    again, created_again = create(store, "s2", key="k", order_id="o-1")
    assert created and not created_again and again.id == first.id
    with pytest.raises(IdempotencyConflict):
        create(store, "s3", key="k", order_id="o-2")
    other, created_other = create(store, "s4", key="k", tenant="acme", order_id="o-2")
    assert created_other and other.id == "s4" and other.tenant == "acme"
    assert sorted(r.id for r in store.list_sagas()) == ["s1", "s4"]
    for missing in ("s2", "s3"):
        with pytest.raises(SagaNotFoundError):
            store.load(missing)


def test_create_with_initial_entries_queues_and_stores_their_fold(store: Store) -> None:
    flow = order_flow()
    initial = [JournalEntry(e) for e in reserve_ok(100.0)]
    state = SagaState(flow)
    state.apply(Event(EventType.SAGA_CREATED, 100.0))
    for entry in initial:
        state.apply(entry.event)
    record, _ = store.create_saga(
        saga_id="s1",
        flow=flow,
        payload={"order_id": "o-1"},
        trace_id="t" * 32,
        idempotency_key=None,
        now=100.0,
        run_after=100.0,
        initial=initial,
        state=state,
    )
    assert record.last_seq == 3 and record.status is SagaStatus.RUNNING
    assert [e.event.type for e in store.journal("s1")][1:] == [e.event.type for e in initial]
    assert store.claim_next("w", now=100.0, lease_seconds=5.0) is not None  # queued


def test_unknown_saga_and_another_tenants_saga_are_not_found(store: Store) -> None:
    create(store, "s1", tenant="acme")
    assert store.load("s1", tenant="acme").tenant == "acme"
    for read in (
        lambda: store.load("nope"),
        lambda: store.load("s1", tenant="other"),
        lambda: store.journal("nope"),
        lambda: store.state("nope"),
        lambda: store.requeue("nope", 1.0),
        lambda: store.append(
            "nope",
            [JournalEntry(reserve_ok()[0])],
            expected_seq=1,
            state=SagaState(order_flow()),
            now=1.0,
        ),
    ):
        with pytest.raises(SagaNotFoundError):
            read()
    assert store.steps("nope") == []


def test_a_stale_expected_seq_is_refused_and_writes_nothing(store: Store) -> None:
    create(store, "s1")
    _, _, state = store.state("s1")
    advance(store, "s1", reserve_ok())
    with pytest.raises(ConcurrentUpdate):
        store.append(
            "s1",
            [JournalEntry(Event(EventType.ATTEMPT_STARTED, 200.0, "charge", Phase.ACTION, 1))],
            expected_seq=1,
            state=state,
            now=200.0,
        )
    assert [e.seq for e in store.journal("s1")] == [1, 2, 3]
    assert store.load("s1").last_seq == 3


def test_list_filters_orders_limits_and_counts(store: Store) -> None:
    for n in range(5):
        create(store, f"s{n}", now=100.0 + n, tenant="acme" if n % 2 else "default")
    advance(store, "s4", reserve_ok(200.0))
    assert [r.id for r in store.list_sagas()] == ["s4", "s3", "s2", "s1", "s0"]
    assert [r.id for r in store.list_sagas(limit=2)] == ["s4", "s3"]
    assert [r.id for r in store.list_sagas(tenant="acme")] == ["s3", "s1"]
    assert [r.id for r in store.list_sagas(status=SagaStatus.RUNNING)] == ["s4"]
    assert store.list_sagas(flow="other") == []
    assert len(store.list_sagas(flow="order")) == 5
    assert store.count_by_status() == {"pending": 4, "running": 1}


def test_reopen_keeps_everything(store_factory: Backend) -> None:
    first = store_factory.open()
    create(first, "s1", key="k", run_after=100.0)
    advance(first, "s1", reserve_ok())
    lease = first.claim_next("w1", now=110.0, lease_seconds=60.0)
    first.record_scaling(at=1.0, before=1, after=2, depth=5, oldest_age=3.0, reason="deep")
    states = store_factory.breakers()
    states.storage("payments", lambda: 100.0).increment_counter()
    before = (first.load("s1"), first.journal("s1"), first.steps("s1"), first.scaling_events())
    first.close()
    states.close()

    second = store_factory.open()
    assert (
        second.load("s1"),
        second.journal("s1"),
        second.steps("s1"),
        second.scaling_events(),
    ) == before
    assert lease is not None
    assert second.renew(lease, now=111.0, lease_seconds=60.0) is not None  # the lease held
    assert create(second, "s9", key="k")[0].id == "s1"
    assert store_factory.breakers().storage("payments", lambda: 100.0).counter == 1


def test_a_read_only_handle_reads_and_refuses_every_write(store_factory: Backend) -> None:
    writer = store_factory.open()
    create(writer, "s1", run_after=100.0)
    reader = store_factory.open(readonly=True)
    assert reader.load("s1").id == "s1" and [r.id for r in reader.list_sagas()] == ["s1"]
    assert reader.queue_stats(100.0)["depth"] == 1.0
    reader.ping()
    lease = writer.claim("s1", "w", now=100.0, lease_seconds=5.0)
    _, _, state = reader.state("s1")
    writes = [
        lambda: create(reader, "s2"),
        lambda: reader.append(
            "s1", [JournalEntry(reserve_ok()[0])], expected_seq=1, state=state, now=101.0
        ),
        lambda: reader.claim_next("w", now=1e9, lease_seconds=5.0),
        lambda: reader.claim("s1", "w2", now=1e9, lease_seconds=5.0),
        lambda: reader.claim_due("w", now=1e9, lease_seconds=5.0, limit=3),
        lambda: reader.renew(lease, now=100.0, lease_seconds=5.0),
        lambda: reader.renew_many([lease], now=100.0, lease_seconds=5.0),
        lambda: reader.release(lease, run_after=None),
        lambda: reader.park(lease, reason="r"),
        lambda: reader.requeue("s1", 1.0),
        lambda: reader.record_scaling(
            at=1.0, before=1, after=2, depth=0, oldest_age=0.0, reason="r"
        ),
    ]
    for write in writes:
        with pytest.raises(StoreError):
            write()
    assert writer.load("s1").last_seq == 1 and writer.scaling_events() == []
    assert writer.renew(lease, now=100.0, lease_seconds=5.0) is not None


def test_read_only_open_of_a_missing_database_is_refused(store_factory: Backend) -> None:
    with pytest.raises(StoreError):
        store_factory.open(readonly=True)
    with pytest.raises(StoreError):
        store_factory.open(create=False)
    store_factory.open().close()  # a write open creates it
    store_factory.open(readonly=True).ping()


def test_migration_from_an_older_schema_keeps_sagas_and_is_usable(
    store_factory: Backend,
) -> None:
    current = store_factory.open()
    create(current, "s1", key="k")
    advance(current, "s1", reserve_ok())
    before = (current.load("s1"), current.journal("s1"), current.steps("s1"))
    current.close()
    older = Backend(store_factory.name, store_factory.older(), store_factory.older)
    try:
        migrated = older.open()
        assert (migrated.load("s1"), migrated.journal("s1"), migrated.steps("s1")) == before
        advance(
            migrated, "s1", [Event(EventType.ATTEMPT_STARTED, 200.0, "charge", Phase.ACTION, 1)]
        )
        lease = migrated.claim("s1", "w", now=300.0, lease_seconds=5.0)
        assert lease.epoch == 1  # leases start afresh on a database from before them
        older.open(readonly=True).ping()
    finally:
        older.close_all()


def test_a_fork_names_its_origin_and_the_origin_lists_its_forks(store: Store) -> None:
    """`create_saga(forked_from=...)` is stored as is; `forks(id)` lists them, oldest first."""
    create(store, "old")
    assert store.load("old").forked_from is None and store.forks("old") == []
    initial = [JournalEntry(e) for e in reserve_ok()]
    state = SagaState.replay(order_flow(), [Event(EventType.SAGA_CREATED, 200.0)])
    for entry in initial:
        state.apply(entry.event)
    fork, created = store.create_saga(
        saga_id="fork-1",
        flow=order_flow(),
        payload={"order_id": "o-2"},
        trace_id="cd" * 16,
        idempotency_key=None,
        now=200.0,
        initial=initial,
        state=state,
        forked_from="old",
    )
    assert created and fork.forked_from == "old" and fork.last_seq == 3
    assert store.load("fork-1") == fork and store.load("fork-1").status is SagaStatus.RUNNING
    create(store, "fork-2", now=300.0)  # an unrelated saga is not a fork
    store.create_saga(
        saga_id="fork-3",
        flow=order_flow(),
        payload={"order_id": "o-3"},
        trace_id="ef" * 16,
        idempotency_key=None,
        now=400.0,
        forked_from="old",
    )
    assert store.forks("old") == ["fork-1", "fork-3"]
    assert store.forks("fork-1") == [] and store.forks("unknown") == []
    assert {r.id: r.forked_from for r in store.list_sagas()}["fork-3"] == "old"


def test_page_is_load_steps_and_forks_in_one_read(store: Store) -> None:
    """`page(id)`: what the API's GET shows, the same as the three reads it replaces; another
    tenant's saga and an unknown id are not found."""
    create(store, "old", tenant="t1")
    for i, now in ((2, 300.0), (1, 200.0)):  # created out of id order: oldest first
        store.create_saga(
            saga_id=f"fork-{i}",
            flow=order_flow(),
            payload={"order_id": f"o-{i}"},
            trace_id="cd" * 16,
            idempotency_key=None,
            now=now,
            forked_from="old",
            tenant="t1",
        )
    advance(store, "old", reserve_ok())
    page = store.page("old")
    assert page.record == store.load("old")
    assert page.steps == store.steps("old") and page.steps[0].status != "pending"
    assert page.forks == store.forks("old") == ["fork-1", "fork-2"]
    assert store.page("fork-1", tenant="t1").forks == []
    assert store.page("old", tenant="t1") == page
    for saga_id, tenant in (("old", "t2"), ("unknown", None)):
        with pytest.raises(SagaNotFoundError):
            store.page(saga_id, tenant=tenant)

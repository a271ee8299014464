"""The SQLite store's hot path (issue 14 item 2): what a saga's commits send to SQLite.

A durable in-process saga pays for every statement and every bound value, so the commit path
is held to its shape: one INSERT per commit for its journal rows, no None bound as a parameter
(Python's sqlite3 sends each through its adapter protocol: orchestrator/sqlite_rows.py), the
same four write transactions per 3-step saga, and rows that read back exactly as written.
Real SQLite files throughout; statements are counted with the connection's trace callback.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from store_conformance.conformancelab import advance, create, reserve_ok

from sagalab.orchestrator.errors import ConcurrentUpdate, LeaseLost
from sagalab.orchestrator.executors import PythonExecutor
from sagalab.orchestrator.flow import FlowDefinition, flow_from_dict
from sagalab.orchestrator.journal import JournalEntry
from sagalab.orchestrator.registry import step_handler
from sagalab.orchestrator.runner import SagaRunner
from sagalab.orchestrator.saga import Event, EventType, Failure, Phase, SagaState, SagaStatus
from sagalab.orchestrator.sqlite_rows import MAX_ROWS, RowInserts
from sagalab.orchestrator.sqlite_store import SQLiteStore
from sagalab.orchestrator.store_rows import steps_json

STEPS = ("hp_reserve", "hp_charge", "hp_ship")


@pytest.fixture(scope="module")
def noop_flow() -> FlowDefinition:
    """Three no-op in-process steps (bench_orchestrator.py's flow)."""
    for name in STEPS:
        step_handler(name)(lambda call: None)
    return flow_from_dict(
        {"name": "hot_path", "version": 1, "steps": [{"name": n, "handler": n} for n in STEPS]},
        source="(test)",
    )


@contextmanager
def adapted_nones() -> Iterator[list[object]]:
    """Counts the None parameters sqlite3 adapts (one per None bound) while inside."""
    seen: list[object] = []
    key = (type(None), sqlite3.PrepareProtocol)
    sqlite3.register_adapter(type(None), lambda value: seen.append(value))
    try:
        yield seen
    finally:
        sqlite3.adapters.pop(key, None)


@contextmanager
def traced(store: SQLiteStore) -> Iterator[list[str]]:
    """The statements the store's writes send to SQLite while inside."""
    sent: list[str] = []
    conn = store.write_connection()
    conn.set_trace_callback(sent.append)
    try:
        yield sent
    finally:
        conn.set_trace_callback(None)


@pytest.mark.parametrize("group_commit", [True, False], ids=["group-commit", "own-connection"])
def test_a_saga_binds_no_none_and_sends_one_insert_per_commit(
    tmp_path: Path, noop_flow: FlowDefinition, group_commit: bool
) -> None:
    store = SQLiteStore(tmp_path / "s.db", group_commit=group_commit)
    runner = SagaRunner(store, PythonExecutor())
    runner.start(noop_flow, {})  # the first saga also stores the flow's snapshot
    try:
        with adapted_nones() as nones, traced(store) as sent:
            saga_id, result = runner.start(noop_flow, {"order": None})
    finally:
        store.close()
    assert result.status is SagaStatus.COMPLETED
    assert nones == []
    begins = [s for s in sent if s.startswith("BEGIN IMMEDIATE")]
    inserts = [s for s in sent if s.startswith("INSERT INTO events")]
    assert len(begins) == 4  # the minimum: create + start 1, then one per step's outcome
    assert len(inserts) == len(begins)  # every commit's journal rows in one statement
    assert len(sent) == 16  # per commit: BEGIN, the saga's row, the journal rows, COMMIT


def _entries() -> list[JournalEntry]:
    """Journal rows with every optional column set somewhere and None elsewhere."""
    failure = Failure("HTTP 503", retryable=True, maybe_applied=True, retry_after=2.5)
    return [
        JournalEntry(Event(EventType.ROLLBACK_REQUESTED, 1.0, reason="operator")),
        JournalEntry(
            Event(EventType.ATTEMPT_STARTED, 2.0, step="a", phase=Phase.ACTION, attempt=1),
            span_id="s1",
        ),
        JournalEntry(
            Event(
                EventType.ATTEMPT_FAILED,
                3.0,
                step="a",
                phase=Phase.ACTION,
                attempt=1,
                failure=failure,
                not_before=4.0,
            ),
            request={"sku": "A", "n": None},
            response={"error": "busy"},
            status_code=503,
            duration_ms=1.5,
            span_id="s1",
        ),
        JournalEntry(
            Event(EventType.ATTEMPT_STARTED, 4.0, step="a", phase=Phase.ACTION, attempt=2),
            span_id="s2",
        ),
        JournalEntry(
            Event(EventType.ATTEMPT_SUCCEEDED, 5.0, step="a", phase=Phase.ACTION, attempt=2),
            request=[],
            response=0,
            status_code=200,
            duration_ms=0.0,
            span_id="s2",
        ),
        JournalEntry(Event(EventType.SAGA_COMPLETED, 6.0, reason="", force=True)),
    ]


def test_rows_of_every_shape_read_back_as_written(tmp_path: Path) -> None:
    """Six rows in one append (two statements of at most MAX_ROWS), Nones and falsy values
    (0, "", [], 0.0) side by side: each reads back as it was."""
    flow = flow_from_dict(
        {"name": "shapes", "version": 1, "steps": [{"name": "a", "handler": STEPS[0]}]},
        source="(test)",
    )
    step_handler(STEPS[0])(lambda call: None)
    store = SQLiteStore(tmp_path / "s.db")
    try:
        record, _ = store.create_saga(
            saga_id="s1",
            flow=flow,
            payload={},
            trace_id="t1",
            idempotency_key=None,
            now=0.5,
        )
        entries = _entries()
        assert len(entries) > MAX_ROWS
        seq = store.append(
            "s1", entries, expected_seq=record.last_seq, state=SagaState(flow), now=7.0
        )
        stored = store.journal("s1")[1:]  # after SAGA_CREATED
    finally:
        store.close()
    assert seq == 1 + len(entries)
    assert [e.seq for e in stored] == list(range(2, 2 + len(entries)))
    assert [
        (e.event, e.request, e.response, e.status_code, e.duration_ms, e.span_id) for e in stored
    ] == [
        (e.event, e.request, e.response, e.status_code, e.duration_ms, e.span_id) for e in entries
    ]


def test_row_inserts_keep_one_text_per_pattern_and_cut_large_batches() -> None:
    inserts = RowInserts("t", ("a", "b", "c"), limit=2)
    sql, args = inserts.statement([(1, None, "x"), (None, 0, "")])
    assert sql == "INSERT INTO t (a, b, c) VALUES (?, NULL, ?), (NULL, ?, ?)"
    assert args == [1, "x", 0, ""]
    assert inserts.statement([(2, None, "y"), (None, 3, "z")])[0] is sql  # kept, not rebuilt
    rows = [(i, None, None) for i in range(2 * MAX_ROWS + 1)]
    statements = list(inserts.statements(rows))
    assert [len(args) for _, args in statements] == [MAX_ROWS, MAX_ROWS, 1]
    with pytest.raises(ValueError, match="3 values"):
        inserts.statement([(1, 2)])
    # past the limit, texts are still right (built each time)
    assert inserts.statement([(None, None, None)])[0].endswith("VALUES (NULL, NULL, NULL)")


def test_row_inserts_bind_shared_values_once_per_statement(tmp_path: Path) -> None:
    """Shared columns are ?1..?k in every row and bound once; the rows' own values follow."""
    inserts = RowInserts("t", ("c", "d"), shared=("a", "b"))
    sql, args = inserts.statement([(1, None), (None, "y")], ("s", "t"))
    assert sql == "INSERT INTO t (a, b, c, d) VALUES (?1, ?2, ?3, NULL), (?1, ?2, NULL, ?4)"
    assert args == ["s", "t", 1, "y"]
    with pytest.raises(ValueError, match="2 shared values"):
        inserts.statement([(1, 2)])
    conn = sqlite3.connect(tmp_path / "t.db")
    conn.execute("CREATE TABLE t (a, b, c, d)")
    rows = [(i, None if i % 2 else str(i)) for i in range(2 * MAX_ROWS + 1)]
    for statement, values in inserts.statements(rows, ("s", "t")):
        conn.execute(statement, values)
    assert conn.execute("SELECT * FROM t ORDER BY c").fetchall() == [("s", "t", *r) for r in rows]
    conn.close()


@pytest.mark.parametrize(
    "fields",
    [
        [],
        [("a", "succeeded", 1, 0, None)],
        [("a", "compensated", 2, 1, 'boom "quoted" \\ é \n'), ("b", "pending", 0, 0, None)],
    ],
    ids=["none", "one", "escapes"],
)
def test_steps_document_is_the_json_of_its_fields(fields: list[Any]) -> None:
    expected = json.dumps(
        [
            {
                "name": n,
                "status": s,
                "attempts": a,
                "compensation_attempts": c,
                "last_error": e,
            }
            for n, s, a, c, e in fields
        ],
        separators=(",", ":"),
    )
    assert steps_json(fields) == expected
    assert steps_json(fields) == expected  # the second time from kept step texts


def test_an_append_that_keeps_the_status_does_not_assign_it(
    tmp_path: Path, noop_flow: FlowDefinition
) -> None:
    """Assigning the status, even to its own value, rewrites the saga's `sagas_by_status`
    entry (a page more per commit): only the commit that changes it assigns it."""
    store = SQLiteStore(tmp_path / "s.db")
    try:
        with traced(store) as sent:
            SagaRunner(store, PythonExecutor()).start(noop_flow, {})
    finally:
        store.close()
    updates = [s for s in sent if s.startswith("UPDATE sagas")]
    assert len(updates) == 3
    assert ["SET status =" in u for u in updates] == [False, False, True]  # completed last


def test_a_status_changed_behind_the_stores_back_is_still_overwritten(
    tmp_path: Path, noop_flow: FlowDefinition
) -> None:
    """The store remembers the status it last wrote; if another connection changed it
    without a journal entry, the append still stores the state's status, as it always did."""
    path = tmp_path / "s.db"
    store = SQLiteStore(path)
    try:
        state = SagaState(noop_flow)
        created = Event(EventType.SAGA_CREATED, 1.0)
        state.apply(created)
        started = Event(EventType.ATTEMPT_STARTED, 2.0, STEPS[0], Phase.ACTION, 1)
        state.apply(started)
        record, _ = store.create_saga(
            saga_id="s1",
            flow=noop_flow,
            payload={},
            trace_id="t1",
            idempotency_key=None,
            now=1.0,
            initial=[JournalEntry(started)],
            state=state,
        )
        other = sqlite3.connect(path)
        with other:
            other.execute("UPDATE sagas SET status = 'failed' WHERE id = 's1'")
        other.close()
        done = Event(EventType.ATTEMPT_SUCCEEDED, 3.0, STEPS[0], Phase.ACTION, 1)
        state.apply(done)
        store.append("s1", [JournalEntry(done)], expected_seq=record.last_seq, state=state, now=3.0)
        assert store.load("s1").status is state.status is SagaStatus.RUNNING
    finally:
        store.close()


def test_the_store_that_wrote_a_saga_last_is_still_fenced_and_checked(tmp_path: Path) -> None:
    """The writer of a saga knows its trace id and status (its appends need no RETURNING
    and leave the status alone), and its writes are refused all the same: by a lost lease
    (LeaseLost) and by a journal that moved on (ConcurrentUpdate)."""
    path = tmp_path / "s.db"
    first, second = SQLiteStore(path), SQLiteStore(path)
    try:
        create(first, "s1", run_after=100.0)
        old = first.claim_next("w1", now=100.0, lease_seconds=5.0)
        assert old is not None
        with traced(first) as sent:
            assert advance(first, "s1", reserve_ok(101.0), lease=old) == 3
        assert "RETURNING" not in [s for s in sent if s.startswith("UPDATE")][0]
        taken = second.claim_next("w2", now=106.0, lease_seconds=5.0)  # `old` expired
        assert taken is not None and taken.epoch == old.epoch + 1
        record, _, state = first.state("s1")
        charge = Event(EventType.ATTEMPT_STARTED, 106.5, "charge", Phase.ACTION, 1)
        state.apply(charge)
        entry = [JournalEntry(charge)]
        with pytest.raises(LeaseLost):
            first.append("s1", entry, expected_seq=3, state=state, now=106.5, lease=old)
        assert second.append("s1", entry, expected_seq=3, state=state, now=106.6, lease=taken)
        with pytest.raises(ConcurrentUpdate):  # `first` last wrote it at 3: it is at 4 now
            first.append("s1", entry, expected_seq=3, state=state, now=106.7, lease=taken)
        assert [e.seq for e in first.journal("s1")] == [1, 2, 3, 4]
        assert first.load("s1").trace_id == "ab" * 16
    finally:
        first.close()
        second.close()


def test_a_store_writes_on_after_its_writer_reopened_its_connection(
    tmp_path: Path, noop_flow: FlowDefinition
) -> None:
    """The store and the group writer keep a cursor for their hot statements; after the writer
    dropped its connection (as it does after an error that spoils it) both take a cursor of the
    new one instead of writing on the closed one."""
    store = SQLiteStore(tmp_path / "s.db", group_commit=True)
    runner = SagaRunner(store, PythonExecutor())
    try:
        first, result = runner.start(noop_flow, {})
        assert result.status is SagaStatus.COMPLETED
        writer = store._writer
        assert writer is not None
        writer._drop_connection()  # the old connection is closed
        second, result = runner.start(noop_flow, {})
        assert result.status is SagaStatus.COMPLETED
        assert [s.status for s in store.list_sagas()] == [SagaStatus.COMPLETED] * 2
        assert len(store.journal(second)) == len(store.journal(first)) == 8
    finally:
        store.close()

"""Operator refusals exit 4 (API 409) everywhere, and a completed saga shows no stale failure.

Real fake services over HTTP, a real SQLite file, the CLI through Typer's runner and the API on
a real uvicorn server.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import apilab
import pytest
from apilab import admin_api, order_json

from sagalab.cli.errors import EXIT_REFUSED, exit_code_for
from sagalab.fakeservices import FaultSpec, RunningServices
from sagalab.orchestrator.errors import ConcurrentUpdate, LeaseHeld, SagaError
from sagalab.orchestrator.flowfile import load_flow
from sagalab.orchestrator.journal import JournalEntry
from sagalab.orchestrator.leases import new_owner
from sagalab.orchestrator.saga import Event, EventType, Phase, SagaState
from sagalab.orchestrator.sqlite_store import SQLiteStore


def cli(*args: str) -> tuple[int, str, str]:
    """`sagalab orchestrate ARGS` in this process."""
    return apilab.cli("orchestrate", *args)


def run_wait(order_text: str) -> dict:
    _, out, _ = cli("run", "checkout", "-i", order_text, "--wait", "--json")
    return json.loads(out)


def journal_length(db: Path, saga_id: str) -> int:
    store = SQLiteStore(db)
    try:
        return len(store.journal(saga_id))
    finally:
        store.close()


def failed_after_pivot(lab: RunningServices, n: str) -> dict:
    """A checkout saga whose confirmation was refused for good (HTTP 400): failed, past the
    pivot, waiting for an operator."""
    lab.lab.add_fault(FaultSpec(service="notifications", status=400, error_rate=1.0))
    saga = run_wait(order_json(n))
    lab.lab.clear_faults()
    assert saga["status"] == "failed"
    assert "send_confirmation" in saga["reason"]
    return saga


def held_by_a_live_worker(db: Path, saga_id: str) -> None:
    """Lease the saga to an owner whose process is alive (this one), as a worker would."""
    store = SQLiteStore(db)
    try:
        store.claim(saga_id, new_owner("worker"), now=0.0, lease_seconds=1e12)
    finally:
        store.close()


def queued(db: Path) -> str:
    code, out, _ = cli("run", "checkout", "-i", order_json("q1"))
    assert code == 0
    return out.strip()


REFUSALS = [
    ("resume-failed", "failed", ["resume"], "resuming does not move it"),
    ("resume-completed", "completed", ["resume"], "nothing is left to resume"),
    ("resume-rolled-back", "rolled_back", ["resume"], "nothing is left to resume"),
    ("resume-run-by-a-worker", "leased", ["resume"], "is being run by"),
    ("rollback-past-pivot", "completed", ["rollback"], "past its pivot"),
    ("rollback-rolled-back", "rolled_back", ["rollback", "--force"], "already rolled back"),
    ("retry-not-failed", "completed", ["retry-step", "{id}", "charge_payment"], "not failed"),
    ("retry-other-step", "failed", ["retry-step", "{id}", "charge_payment"], "not what holds"),
    (
        "skip-not-failed",
        "completed",
        ["skip-step", "{id}", "charge_payment", "--reason", "r"],
        "not failed",
    ),
]


@pytest.mark.parametrize(
    ("setup", "args", "message"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS]
)
def test_every_refused_operator_action_exits_4_and_writes_nothing(
    env: Path, lab: RunningServices, setup: str, args: list[str], message: str
) -> None:
    if setup == "failed":
        saga_id = failed_after_pivot(lab, "r1")["id"]
    elif setup == "completed":
        saga_id = run_wait(order_json("r2"))["id"]
    elif setup == "rolled_back":
        saga_id = run_wait(order_json("r3", amount=99_999))["id"]  # card declined
    else:
        saga_id = queued(env)
        held_by_a_live_worker(env, saga_id)
    before = journal_length(env, saga_id)
    argv = [a.replace("{id}", saga_id) for a in args]
    if "{id}" not in args:
        argv.insert(1, saga_id)
    code, out, err = cli(*argv)
    assert code == 4, err
    assert message in err
    assert "Traceback" not in out + err
    assert journal_length(env, saga_id) == before


def test_api_refuses_resume_of_a_failed_saga_with_409(env: Path, lab: RunningServices) -> None:
    saga = failed_after_pivot(lab, "a1")
    with admin_api(env) as client:
        r = client.post(f"/v1/sagas/{saga['id']}/resume")
        assert r.status_code == 409
        assert r.headers["content-type"].startswith("application/problem+json")
        assert "retry-step" in r.json()["detail"]
        assert client.post(f"/v1/sagas/{saga['id']}/rollback").status_code == 409


def test_completed_saga_shows_no_stale_failure_reason(env: Path, lab: RunningServices) -> None:
    saga = failed_after_pivot(lab, "s1")
    code, out, _ = cli("retry-step", saga["id"], "send_confirmation", "--json")
    assert code == 0
    assert json.loads(out)["status"] == "completed"
    assert json.loads(out)["reason"] is None
    _, out, _ = cli("status", saga["id"], "--json")
    assert json.loads(out)["reason"] is None
    _, out, _ = cli("list", "--json")
    assert [(r["status"], r["reason"]) for r in json.loads(out)] == [("completed", None)]
    with admin_api(env) as client:
        got = client.get(f"/v1/sagas/{saga['id']}").json()
        assert (got["status"], got["reason"]) == ("completed", None)
        listed = client.get("/v1/sagas").json()["items"]
        assert [r["reason"] for r in listed] == [None]
    # the journal keeps what happened
    _, out, _ = cli("events", saga["id"], "--json")
    assert any(e["type"] == "step_failed" for e in json.loads(out))


def test_completed_row_stored_with_a_stale_reason_shows_none(env: Path) -> None:
    """Rows written before the core cleared the reason on completion still show none."""
    saga_id = run_wait(order_json("s2"))["id"]
    store = SQLiteStore(env)
    try:
        store.conn.execute("UPDATE sagas SET reason = 'old failure' WHERE id = ?", (saga_id,))
    finally:
        store.close()
    _, out, _ = cli("status", saga_id, "--json")
    assert json.loads(out)["reason"] is None


# --- a request judged against a journal that moved on ---------------------------------------


def saga_at_the_pivot(db: Path) -> str:
    """A stored checkout saga with stock reserved and the card charged; shipping not started."""
    flow = load_flow("checkout")
    events = [Event(EventType.SAGA_CREATED, 1.0)]
    for step in ("reserve_inventory", "charge_payment"):
        events.append(Event(EventType.ATTEMPT_STARTED, 2.0, step, Phase.ACTION, 1))
        events.append(Event(EventType.ATTEMPT_SUCCEEDED, 3.0, step, Phase.ACTION, 1))
    state = SagaState.replay(flow, events)
    store = SQLiteStore(db)
    try:
        record, _ = store.create_saga(
            saga_id="at-the-pivot",
            flow=flow,
            payload=json.loads(order_json("p1")),
            trace_id="0" * 31 + "1",
            idempotency_key=None,
            now=1.0,
            initial=[JournalEntry(e) for e in events[1:]],
            state=state,
        )
    finally:
        store.close()
    return record.id


def worker_sends_the_pivot(db: Path, saga_id: str) -> None:
    """What a worker does just before calling shipping: journal the pivot's attempt start."""
    store = SQLiteStore(db)
    try:
        record, _, state = store.state(saga_id)
        started = Event(EventType.ATTEMPT_STARTED, 4.0, "create_shipment", Phase.ACTION, 1)
        state.apply(started)
        store.append(
            saga_id, [JournalEntry(started)], expected_seq=record.last_seq, state=state, now=4.0
        )
    finally:
        store.close()


def test_rollback_read_before_the_pivot_started_is_judged_again_and_refused(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    saga_id = saga_at_the_pivot(env)
    real_state = SQLiteStore.state
    raced: list[int] = []

    def state_then_worker_appends(self: SQLiteStore, sid: str):  # type: ignore[no-untyped-def]
        got = real_state(self, sid)
        if not raced:  # the worker's append lands between the operator's read and write
            raced.append(os.getpid())
            worker_sends_the_pivot(env, sid)
        return got

    monkeypatch.setattr(SQLiteStore, "state", state_then_worker_appends)
    code, _, err = cli("rollback", saga_id)
    monkeypatch.undo()
    assert raced
    assert code == 4, err
    assert "the pivot is in flight: wait for it or use --force" in err
    store = SQLiteStore(env)
    try:
        types = [e.event.type for e in store.journal(saga_id)]
        _, _, state = store.state(saga_id)
    finally:
        store.close()
    assert EventType.ROLLBACK_REQUESTED not in types
    assert state.pivot_in_flight  # the worker's attempt stands, its result still to come


@pytest.mark.parametrize(
    "error",
    [ConcurrentUpdate("saga kept changing"), LeaseHeld("s1", "worker-1", 0.0)],
    ids=["overtaken", "held"],
)
def test_a_request_not_carried_out_exits_4_like_a_refusal(error: SagaError) -> None:
    assert exit_code_for(error) == EXIT_REFUSED == 4

"""Sagas for the operator-action tests, stored as real runs leave them, and the doors to them.

A flow of Python steps (`ops_flow`: reserve, charge, the pivot ship, notify after it) whose
handlers are registered here and fail on demand (`FAILING`), run by the real `SagaRunner` on a
real SQLite file; `RunsHere` is what the CLI hands the actions to run a saga in its process.
Call `reset_handlers()` around each test. Not a test module (pytest does not collect it).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from workerlab import REPO

from sagalab.orchestrator.executors import PythonExecutor
from sagalab.orchestrator.flow import FlowDefinition, flow_from_dict
from sagalab.orchestrator.flowfile import load_flow
from sagalab.orchestrator.journal import JournalEntry
from sagalab.orchestrator.leases import new_owner, owner_is_dead
from sagalab.orchestrator.registry import (
    PermanentStepError,
    StepCall,
    compensation_handler,
    step_handler,
)
from sagalab.orchestrator.runner import SagaRunner, start_saga
from sagalab.orchestrator.saga import Event, EventType, Phase, SagaState, SagaStatus
from sagalab.orchestrator.sqlite_store import SQLiteStore

PREFIX = "tops_"  # handler names owned by this helper
STEPS = ("reserve", "charge", "ship", "notify")  # ship is the pivot; notify comes after it

#: Steps whose handler fails for good (PermanentStepError) until a test clears it.
FAILING: set[str] = set()
#: What the handlers did, in order ("undo x" for a compensation).
DONE: list[str] = []


def _handler(word: str) -> Any:
    def handle(call: StepCall) -> dict[str, str]:
        if word in FAILING:
            raise PermanentStepError(f"{word} refused")
        DONE.append(word)
        return {"done": word}

    return handle


for _name in STEPS:
    step_handler(PREFIX + _name)(_handler(_name))
    compensation_handler(PREFIX + "undo_" + _name)(_handler("undo " + _name))


def ops_flow() -> FlowDefinition:
    """reserve, charge (compensable), ship (the pivot), notify (retriable, after the pivot)."""
    quick = {"max_attempts": 2, "initial_delay": 0.001, "max_delay": 0.001}
    steps: list[dict[str, Any]] = [
        {"name": n, "handler": PREFIX + n, "compensation_handler": PREFIX + "undo_" + n}
        for n in ("reserve", "charge")
    ]
    steps.append({"name": "ship", "handler": PREFIX + "ship", "kind": "pivot"})
    steps.append({"name": "notify", "handler": PREFIX + "notify", "kind": "retriable"})
    for step in steps:
        step["retry"] = quick
    return flow_from_dict({"name": "ops", "version": 1, "steps": steps})


class RunsHere:
    """What the CLI gives the actions: runs the saga in this process, under a lease."""

    def __init__(self, store: SQLiteStore, *, why_not: str | None = None) -> None:
        self.store = store
        self.why_not = why_not
        self.runs: list[str] = []

    def unavailable(self, flow: FlowDefinition) -> str | None:
        return self.why_not

    def run(self, saga_id: str, flow: FlowDefinition) -> SagaStatus:
        lease = self.store.claim(
            saga_id, new_owner("test"), now=0.0, lease_seconds=1e12, take_over=owner_is_dead
        )
        self.runs.append(saga_id)
        runner = SagaRunner(self.store, PythonExecutor(), sleep=lambda _s: None)
        status = runner.run(saga_id, lease=lease).status
        self.store.release(lease, run_after=None)
        return status


def stored(store: SQLiteStore, *, failing: tuple[str, ...] = (), queue: bool = True) -> str:
    """A saga of `ops_flow`, run to where it stops with `failing` steps failing for good
    (none run at all when `queue` is set: it waits, pending, on the workers' queue)."""
    record, _ = start_saga(store, ops_flow(), {}, queue=queue)
    if not queue:
        FAILING.update(failing)
        SagaRunner(store, PythonExecutor(), sleep=lambda _s: None).run(record.id)
        FAILING.clear()
        DONE.clear()
    return record.id


def failed_on_notify(store: SQLiteStore) -> str:
    """Past the pivot, its notification refused for good: failed, waiting for an operator."""
    saga_id = stored(store, failing=("notify",), queue=False)
    assert store.load(saga_id).status is SagaStatus.FAILED
    return saga_id


def completed(store: SQLiteStore) -> str:
    saga_id = stored(store, queue=False)
    assert store.load(saga_id).status is SagaStatus.COMPLETED
    return saga_id


def rolled_back(store: SQLiteStore) -> str:
    saga_id = stored(store, failing=("charge",), queue=False)
    assert store.load(saga_id).status is SagaStatus.ROLLED_BACK
    return saga_id


def leased(store: SQLiteStore) -> str:
    """Pending, held by a live worker (this process)."""
    saga_id = stored(store)
    store.claim(saga_id, new_owner("worker"), now=0.0, lease_seconds=1e12)
    return saga_id


def append_as_a_worker(db: Path, saga_id: str, event: Event) -> None:
    """What a worker does: append `event` after the journal as it stands (its own connection)."""
    worker = SQLiteStore(db)
    try:
        record, _, state = worker.state(saga_id)
        state.apply(event)
        worker.append(
            saga_id, [JournalEntry(event)], expected_seq=record.last_seq, state=state, now=1.0
        )
    finally:
        worker.close()


def charged(store: SQLiteStore) -> str:
    """Reserved and charged, the pivot not sent yet (a worker's run cut short there)."""
    saga_id = stored(store)
    for step in ("reserve", "charge"):
        append_as_a_worker(store.path, saga_id, Event(EventType.ATTEMPT_STARTED, 1.0, step, ACT, 1))
        append_as_a_worker(
            store.path, saga_id, Event(EventType.ATTEMPT_SUCCEEDED, 1.0, step, ACT, 1)
        )
    return saga_id


ACT = Phase.ACTION
PIVOT_SENT = Event(EventType.ATTEMPT_STARTED, 1.0, "ship", ACT, 1)


def pivot_in_flight(store: SQLiteStore) -> str:
    saga_id = charged(store)
    append_as_a_worker(store.path, saga_id, PIVOT_SENT)
    return saga_id


def footprint(store: SQLiteStore, saga_id: str) -> tuple[int, Any]:
    """The journal's length and the saga's queue entry: what an action would change."""
    (run_after,) = store.conn.execute(
        "SELECT run_after FROM sagas WHERE id = ?", (saga_id,)
    ).fetchone()
    return len(store.journal(saga_id)), run_after


def types(store: SQLiteStore, saga_id: str) -> list[EventType]:
    return [e.event.type for e in store.journal(saga_id)]


def reset_handlers() -> None:
    """No handler fails, and nothing is recorded as done."""
    FAILING.clear()
    DONE.clear()


def cli_subprocess(db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`sagalab orchestrate ARGS --db DB` in a process of its own, knowing no service."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SAGALAB_SERVICE") and k != "SAGALAB_DB"
    }
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "sagalab.cli.main", "orchestrate", *args, "--db", str(db)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def checkout_saga(db: Path, *, completed: bool = False) -> str:
    """A checkout saga, pending on the queue or (`completed`) stored as completed."""
    flow = load_flow("checkout")
    payload = {"order_id": "o1", "customer_id": "c1", "sku": "A", "quantity": 1, "amount": 1}
    store = SQLiteStore(db)
    try:
        if not completed:
            return start_saga(store, flow, payload)[0].id
        events = [Event(EventType.SAGA_CREATED, 1.0)]
        for step in flow.steps:
            events.append(Event(EventType.ATTEMPT_STARTED, 2.0, step.name, ACT, 1))
            events.append(Event(EventType.ATTEMPT_SUCCEEDED, 3.0, step.name, ACT, 1))
        events.append(Event(EventType.SAGA_COMPLETED, 4.0))
        record, _ = store.create_saga(
            saga_id=f"done-{len(store.list_sagas())}",
            flow=flow,
            payload=payload,
            trace_id="0" * 31 + "1",
            idempotency_key=None,
            now=1.0,
            initial=[JournalEntry(e) for e in events[1:]],
            state=SagaState.replay(flow, events),
        )
        return record.id
    finally:
        store.close()

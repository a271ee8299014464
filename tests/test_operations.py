"""The operator actions (`orchestrator.operations`) on a real SQLite file.

Each action is run against sagas stored as a real run leaves them (Python steps run by the real
`SagaRunner`), with the runner that carries an action out here and without one (the API's way:
queued for the workers). Refusals, bad arguments and unknown sagas write nothing; a worker's
append between the operator's read and write makes the request be judged again (two threads,
coordinated step by step); another tenant's saga is unknown. The last tests take the same
cases through both doors, the CLI as a real subprocess and the API on a real uvicorn server,
and expect the same class of answer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from apilab import admin_api
from workerlab import REPO

from edge.keys import MAX_BURST, MAX_RATE, KeyStore
from edge.server import serve_in_thread
from orchestrator import operations
from orchestrator.api import create_app
from orchestrator.errors import LeaseHeld
from orchestrator.executors import PythonExecutor
from orchestrator.flow import FlowDefinition, flow_from_dict
from orchestrator.flowfile import load_flow
from orchestrator.journal import JournalEntry
from orchestrator.leases import new_owner, owner_is_dead
from orchestrator.operations import ActionRefused, BadArgument, Carried, UnknownSaga
from orchestrator.registry import PermanentStepError, StepCall, compensation_handler, step_handler
from orchestrator.runner import SagaRunner, start_saga
from orchestrator.saga import Event, EventType, Phase, SagaState, SagaStatus
from orchestrator.sqlite_store import SQLiteStore

PREFIX = "tops_"  # handler names owned by this module
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


@pytest.fixture(autouse=True)
def handlers() -> Iterator[None]:
    FAILING.clear()
    DONE.clear()
    yield
    FAILING.clear()
    DONE.clear()


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


# --- each action, carried out -----------------------------------------------------------------


def test_resume_runs_an_unfinished_saga_here(store: SQLiteStore) -> None:
    saga_id = stored(store)
    result = operations.resume(store, saga_id, runner=RunsHere(store))
    assert (result.action, result.carried, result.status) == (
        "resume",
        Carried.RAN,
        SagaStatus.COMPLETED,
    )
    assert DONE == ["reserve", "charge", "ship", "notify"]


def test_resume_without_a_runner_queues_it_for_the_workers(store: SQLiteStore) -> None:
    saga_id = charged(store)
    store.conn.execute("UPDATE sagas SET run_after = NULL WHERE id = ?", (saga_id,))
    result = operations.resume(store, saga_id)
    assert (result.carried, result.status) == (Carried.QUEUED, SagaStatus.RUNNING)
    lease = store.claim_next("worker", now=1e12, lease_seconds=10)
    assert lease is not None and lease.saga_id == saga_id
    assert DONE == []


def test_requeue_puts_a_saga_nobody_runs_back_on_the_queue(store: SQLiteStore) -> None:
    saga_id = charged(store)
    store.conn.execute("UPDATE sagas SET run_after = NULL WHERE id = ?", (saga_id,))
    assert store.claim_next("worker", now=1e12, lease_seconds=10) is None
    result = operations.requeue(store, saga_id)
    assert (result.action, result.carried) == ("requeue", Carried.QUEUED)
    assert footprint(store, saga_id)[1] is not None
    assert len(store.journal(saga_id)) == 5  # a requeue journals nothing


def test_rollback_runs_the_compensations_here(store: SQLiteStore) -> None:
    saga_id = charged(store)
    result = operations.rollback(store, saga_id, reason="customer left", runner=RunsHere(store))
    assert (result.carried, result.status, result.message) == (
        Carried.RAN,
        SagaStatus.ROLLED_BACK,
        None,
    )
    assert DONE == ["undo charge", "undo reserve"]
    requested = store.journal(saga_id)[5].event
    assert (requested.type, requested.reason) == (EventType.ROLLBACK_REQUESTED, "customer left")


def test_rollback_without_a_runner_is_journaled_and_queued(store: SQLiteStore) -> None:
    saga_id = charged(store)
    result = operations.rollback(store, saga_id)
    assert (result.carried, result.status) == (Carried.QUEUED, SagaStatus.COMPENSATING)
    assert result.message == "rollback recorded; queued for the workers"
    assert EventType.ROLLBACK_REQUESTED in types(store, saga_id)
    assert DONE == []


def test_a_runner_that_cannot_run_the_flow_here_leaves_it_to_the_workers(
    store: SQLiteStore,
) -> None:
    saga_id = charged(store)
    here = RunsHere(store, why_not="no executor here")
    result = operations.rollback(store, saga_id, runner=here)
    assert result.carried is Carried.QUEUED
    assert result.message == "rollback recorded; queued for the workers (no executor here)"
    assert here.runs == []


def test_a_request_for_a_saga_a_live_worker_holds_is_left_to_that_worker(
    store: SQLiteStore,
) -> None:
    saga_id = leased(store)
    result = operations.rollback(store, saga_id, runner=RunsHere(store))
    assert result.carried is Carried.QUEUED
    assert result.message is not None
    assert result.message.startswith("rollback recorded; saga ")
    assert "is being run by" in result.message
    assert types(store, saga_id)[-1] is EventType.ROLLBACK_REQUESTED


def test_rollback_past_the_pivot_needs_force(store: SQLiteStore) -> None:
    saga_id = completed(store)
    with pytest.raises(ActionRefused, match="past its pivot step 'ship'"):
        operations.rollback(store, saga_id, runner=RunsHere(store))
    result = operations.rollback(store, saga_id, force=True, runner=RunsHere(store))
    assert result.status is SagaStatus.ROLLED_BACK
    assert DONE == ["undo charge", "undo reserve"]  # the pivot has no compensation


def test_retry_step_gives_the_failed_step_another_go(store: SQLiteStore) -> None:
    saga_id = failed_on_notify(store)
    result = operations.retry_step(store, saga_id, "notify", runner=RunsHere(store))
    assert (result.action, result.carried, result.status) == (
        "retry-step",
        Carried.RAN,
        SagaStatus.COMPLETED,
    )
    assert DONE == ["notify"]
    assert EventType.STEP_RETRY_REQUESTED in types(store, saga_id)


def test_skip_step_journals_the_reason_and_goes_on(store: SQLiteStore) -> None:
    saga_id = failed_on_notify(store)
    result = operations.skip_step(store, saga_id, "notify", reason="phoned the customer")
    assert (result.carried, result.status) == (Carried.QUEUED, SagaStatus.RUNNING)
    assert result.message == "skip recorded; queued for the workers"
    skipped = store.journal(saga_id)[-1].event
    assert (skipped.type, skipped.step, skipped.reason) == (
        EventType.STEP_SKIPPED,
        "notify",
        "phoned the customer",
    )
    assert operations.resume(store, saga_id, runner=RunsHere(store)).status is (
        SagaStatus.COMPLETED
    )
    assert DONE == []  # nothing was left to call


# --- refused, bad, unknown: nothing written ---------------------------------------------------

SETUPS = {
    "failed": failed_on_notify,
    "completed": completed,
    "rolled_back": rolled_back,
    "leased": leased,
    "in_flight": pivot_in_flight,
}

REFUSALS = [
    ("resume-failed", "failed", "resume", {}, "resuming does not move it"),
    ("resume-completed", "completed", "resume", {}, "nothing is left to resume"),
    ("resume-rolled-back", "rolled_back", "resume", {}, "nothing is left to resume"),
    ("resume-run-by-a-worker", "leased", "resume", {}, "is being run by"),
    ("requeue-completed", "completed", "requeue", {}, "nothing is left to resume"),
    ("requeue-run-by-a-worker", "leased", "requeue", {}, "is being run by"),
    ("rollback-past-pivot", "completed", "rollback", {}, "past its pivot"),
    ("rollback-pivot-in-flight", "in_flight", "rollback", {}, "the pivot is in flight"),
    ("rollback-rolled-back", "rolled_back", "rollback", {"force": True}, "already rolled back"),
    ("retry-not-failed", "completed", "retry_step", {"step": "notify"}, "not failed"),
    ("retry-other-step", "failed", "retry_step", {"step": "charge"}, "not what holds"),
    ("skip-not-failed", "completed", "skip_step", {"step": "notify", "reason": "r"}, "not failed"),
]


def act(store: SQLiteStore, action: str, saga_id: str, **options: Any) -> Any:
    """Call operations.ACTION with its positional step, if it takes one."""
    fn = getattr(operations, action)
    step = options.pop("step", None)
    if step is not None:
        return fn(store, saga_id, step, **options)
    return fn(store, saga_id, **options)


@pytest.mark.parametrize(
    ("setup", "action", "options", "message"),
    [r[1:] for r in REFUSALS],
    ids=[r[0] for r in REFUSALS],
)
@pytest.mark.parametrize("here", [True, False], ids=["cli-runner", "no-runner"])
def test_every_refusal_is_action_refused_and_writes_nothing(
    store: SQLiteStore,
    setup: str,
    action: str,
    options: dict[str, Any],
    message: str,
    here: bool,
) -> None:
    saga_id = SETUPS[setup](store)
    before = footprint(store, saga_id)
    runner = RunsHere(store) if here else None
    if action != "requeue":
        options = {**options, "runner": runner}
    with pytest.raises(ActionRefused, match=message) as refused:
        act(store, action, saga_id, **options)
    assert (refused.value.saga_id, refused.value.action) == (
        saga_id,
        action.replace("_", "-"),
    )
    assert footprint(store, saga_id) == before
    assert DONE == []


BAD = [
    ("retry-unknown-step", "failed", "retry_step", {"step": "nope"}, "has no step 'nope'"),
    ("skip-unknown-step", "failed", "skip_step", {"step": "nope", "reason": "r"}, "no step"),
    ("skip-blank-reason", "failed", "skip_step", {"step": "notify", "reason": " "}, "a reason"),
    ("skip-long-reason", "failed", "skip_step", {"step": "notify", "reason": "x" * 501}, "500"),
    ("rollback-long-reason", "completed", "rollback", {"reason": "x" * 501}, "at most 500"),
]


@pytest.mark.parametrize(
    ("setup", "action", "options", "message"), [r[1:] for r in BAD], ids=[r[0] for r in BAD]
)
def test_a_bad_argument_is_refused_before_anything_is_judged_or_written(
    store: SQLiteStore, setup: str, action: str, options: dict[str, Any], message: str
) -> None:
    saga_id = SETUPS[setup](store)
    before = footprint(store, saga_id)
    with pytest.raises(BadArgument, match=message):
        act(store, action, saga_id, runner=RunsHere(store), **options)
    assert footprint(store, saga_id) == before


ALL_ACTIONS = [
    ("resume", {}),
    ("requeue", {}),
    ("rollback", {"force": True}),
    ("retry_step", {"step": "notify"}),
    ("skip_step", {"step": "notify", "reason": "r"}),
]


@pytest.mark.parametrize(("action", "options"), ALL_ACTIONS, ids=[a for a, _ in ALL_ACTIONS])
def test_an_unknown_saga_is_unknown_to_every_action(
    store: SQLiteStore, action: str, options: dict[str, Any]
) -> None:
    with pytest.raises(UnknownSaga, match="no saga with id 'nope'"):
        act(store, action, "nope", **options)


@pytest.mark.parametrize(("action", "options"), ALL_ACTIONS, ids=[a for a, _ in ALL_ACTIONS])
def test_another_tenants_saga_is_unknown_and_untouched(
    store: SQLiteStore, action: str, options: dict[str, Any]
) -> None:
    saga_id = failed_on_notify(store)
    store.conn.execute("UPDATE sagas SET tenant = 'alice' WHERE id = ?", (saga_id,))
    before = footprint(store, saga_id)
    with pytest.raises(UnknownSaga):
        act(store, action, saga_id, tenant="bob", **options)
    assert footprint(store, saga_id) == before
    # Its own tenant, and the operator (tenant None), are answered about the saga itself.
    if action in ("rollback", "retry_step", "skip_step"):
        assert act(store, action, saga_id, tenant="alice", **options).saga_id == saga_id
    else:
        with pytest.raises(ActionRefused, match="resuming does not move it"):
            act(store, action, saga_id, tenant=None, **options)


# --- a worker's append between the operator's read and write -------------------------------


class RacedStore(SQLiteStore):
    """A store whose `state()` hands over to a worker thread once the operator has read, and
    waits until that worker appended: the interleaving a real race may produce, every time."""

    def __init__(self, path: Path, worker_events: list[Event]) -> None:
        super().__init__(path)
        self.worker_events = worker_events
        self.readings = 0

    def state(self, saga_id: str) -> tuple[Any, list[JournalEntry], SagaState]:
        got = super().state(saga_id)
        self.readings += 1
        if self.worker_events:
            event = self.worker_events.pop(0)
            worker = threading.Thread(target=append_as_a_worker, args=(self.path, saga_id, event))
            worker.start()
            worker.join(10)
            assert not worker.is_alive()
        return got


def test_a_rollback_read_before_the_pivot_was_sent_is_judged_again_and_refused(
    db: Path, store: SQLiteStore
) -> None:
    saga_id = charged(store)
    raced = RacedStore(db, [PIVOT_SENT])
    try:
        with pytest.raises(ActionRefused, match="the pivot is in flight"):
            operations.rollback(raced, saga_id)
    finally:
        raced.close()
    assert raced.readings == 2  # read, overtaken, read again
    assert types(store, saga_id)[-1] is EventType.ATTEMPT_STARTED  # the worker's stands
    assert EventType.ROLLBACK_REQUESTED not in types(store, saga_id)


def test_a_request_overtaken_by_a_harmless_append_is_judged_again_and_written_after_it(
    db: Path, store: SQLiteStore
) -> None:
    saga_id = failed_on_notify(store)
    store.conn.execute("UPDATE sagas SET tenant = 'alice' WHERE id = ?", (saga_id,))
    # An operator elsewhere skipped notify between this one's read and write: the retry is
    # judged again against the skip, and refused (the saga is no longer failed).
    raced = RacedStore(db, [Event(EventType.STEP_SKIPPED, 1.0, "notify", ACT, reason="other")])
    try:
        with pytest.raises(ActionRefused, match="not failed"):
            operations.retry_step(raced, saga_id, "notify", tenant="alice")
    finally:
        raced.close()
    assert raced.readings == 2
    # A forced rollback read before a worker sent the pivot still applies after it, and is
    # written after the worker's event, never before it.
    saga_id = charged(store)
    raced = RacedStore(db, [Event(EventType.ATTEMPT_STARTED, 1.0, "ship", ACT, 1)])
    try:
        result = operations.rollback(raced, saga_id, force=True)
    finally:
        raced.close()
    assert raced.readings == 2
    assert result.status is SagaStatus.COMPENSATING
    assert types(store, saga_id)[-2:] == [
        EventType.ATTEMPT_STARTED,
        EventType.ROLLBACK_REQUESTED,
    ]


def test_a_saga_that_keeps_changing_is_refused_after_a_bounded_number_of_readings(
    db: Path, store: SQLiteStore
) -> None:
    saga_id = stored(store)
    steps = [("reserve", EventType.ATTEMPT_STARTED), ("reserve", EventType.ATTEMPT_SUCCEEDED)]
    steps += [("charge", EventType.ATTEMPT_STARTED), ("charge", EventType.ATTEMPT_SUCCEEDED)]
    steps += [("ship", EventType.ATTEMPT_STARTED)]
    worker = [Event(t, 1.0, s, ACT, 1) for s, t in steps]
    raced = RacedStore(db, worker[: operations.JUDGE_TRIES])
    try:
        with pytest.raises(ActionRefused, match="kept changing"):
            operations.rollback(raced, saga_id, force=True)
    finally:
        raced.close()
    assert raced.readings == operations.JUDGE_TRIES
    assert EventType.ROLLBACK_REQUESTED not in types(store, saga_id)


def test_a_lease_taken_between_the_check_and_the_run_refuses_the_resume(
    store: SQLiteStore,
) -> None:
    saga_id = stored(store)

    class TakenMeanwhile(RunsHere):
        def run(self, saga_id: str, flow: FlowDefinition) -> SagaStatus:
            raise LeaseHeld(saga_id, "worker-2", 1e12)

    with pytest.raises(ActionRefused, match="is being run by worker-2"):
        operations.resume(store, saga_id, runner=TakenMeanwhile(store))


# --- the same case through both doors ---------------------------------------------------------


def cli_subprocess(db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`sagalab orchestrate ARGS --db DB` in a process of its own, knowing no service."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SAGALAB_SERVICE") and k != "SAGALAB_DB"
    }
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "cli.main", "orchestrate", *args, "--db", str(db)],
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


#: The class of an answer, by CLI exit code and by HTTP status.
CLASS_OF_EXIT = {0: "done", 2: "bad argument", 3: "unknown", 4: "refused"}
CLASS_OF_STATUS = {202: "done", 422: "bad argument", 404: "unknown", 409: "refused"}

LONG = "x" * 501

PARITY = [
    ("unknown-saga", "pending", ["resume", "nope"], ("resume", "nope", None), "unknown"),
    ("refused-past-pivot", "completed", ["rollback", "{id}"], ("rollback", "{id}", {}), "refused"),
    (
        "bad-unknown-step",
        "completed",
        ["retry-step", "{id}", "nope"],
        ("steps/nope/retry", "{id}", None),
        "bad argument",
    ),
    (
        "done-rollback-queued",
        "pending",
        ["rollback", "{id}"],
        ("rollback", "{id}", {}),
        "done",
    ),
]


@pytest.mark.parametrize(
    ("setup", "argv", "route", "expected"), [p[1:] for p in PARITY], ids=[p[0] for p in PARITY]
)
def test_the_cli_and_the_api_give_the_same_class_of_answer(
    db: Path, setup: str, argv: list[str], route: tuple[str, str, Any], expected: str
) -> None:
    # Two sagas alike, one per door: an accepted action changes the saga it is asked of.
    by_cli, by_api = (checkout_saga(db, completed=setup == "completed") for _ in range(2))
    cli = cli_subprocess(db, *(a.replace("{id}", by_cli) for a in argv))
    path, saga, body = route
    with admin_api(db) as client:
        answer = client.post(f"/v1/sagas/{saga.replace('{id}', by_api)}/{path}", json=body)
    assert "Traceback" not in cli.stderr
    assert answer.headers["content-type"].startswith("application/")
    got = (CLASS_OF_EXIT.get(cli.returncode), CLASS_OF_STATUS.get(answer.status_code))
    assert got == (expected, expected), (cli.returncode, cli.stderr, answer.text)


def test_a_reason_over_500_characters_is_bad_input_through_the_cli_as_through_the_api(
    db: Path,
) -> None:
    """Was a mismatch: the API refused such a rollback reason (422) and the CLI journaled it."""
    by_cli, by_api = checkout_saga(db), checkout_saga(db)
    cli = cli_subprocess(db, "rollback", by_cli, "--reason", LONG)
    with admin_api(db) as client:
        answer = client.post(f"/v1/sagas/{by_api}/rollback", json={"reason": LONG})
        skip = client.post(f"/v1/sagas/{by_api}/steps/charge_payment/skip", json={"reason": LONG})
    assert cli.returncode == 2, cli.stderr
    assert "at most 500" in cli.stderr
    assert (answer.status_code, skip.status_code) == (422, 422)
    store = SQLiteStore(db)
    try:
        for saga_id in (by_cli, by_api):
            assert EventType.ROLLBACK_REQUESTED not in types(store, saga_id)
    finally:
        store.close()


def test_the_api_retries_and_skips_the_step_a_failed_saga_waits_on(db: Path) -> None:
    """The API's step actions: 404, 422 and 409 as for the CLI, then 202 and queued."""
    store = SQLiteStore(db)
    try:
        saga_id = failed_on_notify(store)
    finally:
        store.close()
    with admin_api(db) as client:
        base = f"/v1/sagas/{saga_id}/steps"
        assert client.post("/v1/sagas/nope/steps/notify/retry").status_code == 404
        assert client.post(f"{base}/nope/retry").status_code == 422
        assert client.post(f"{base}/charge/retry").status_code == 409
        assert client.post(f"{base}/notify/skip", json={"reason": ""}).status_code == 422
        assert client.post(f"{base}/notify/skip").status_code == 422  # the reason is required
        retried = client.post(f"{base}/notify/retry")
        assert retried.status_code == 202, retried.text
        assert retried.json()["queued"] is True
        assert retried.json()["message"] == "retry recorded; queued for the workers"
        assert retried.headers["location"] == f"/v1/sagas/{saga_id}"
    store = SQLiteStore(db)
    try:
        assert types(store, saga_id)[-1] is EventType.STEP_RETRY_REQUESTED
        assert footprint(store, saga_id)[1] is not None  # on the workers' queue
    finally:
        store.close()


def test_json_answers_name_the_saga_status_after_the_action(db: Path) -> None:
    """The CLI prints the saga after a queued rollback as the API answers it: compensating."""
    by_cli, by_api = checkout_saga(db), checkout_saga(db)
    cli = cli_subprocess(db, "rollback", by_cli, "--json")
    assert cli.returncode == 0, cli.stderr
    assert "rollback recorded; queued for the workers (no services known here" in cli.stderr
    with admin_api(db) as client:
        answer = client.post(f"/v1/sagas/{by_api}/rollback")
    assert json.loads(cli.stdout)["status"] == answer.json()["status"] == "compensating"


def test_the_api_answers_another_tenants_operator_requests_as_unknown(
    db: Path, tmp_path: Path
) -> None:
    keys_db = tmp_path / "keys.db"
    keys = KeyStore(keys_db)
    try:
        _, alice = keys.create("alice", rate=MAX_RATE, burst=MAX_BURST)
        _, bob = keys.create("bob", rate=MAX_RATE, burst=MAX_BURST)
    finally:
        keys.close()
    store = SQLiteStore(db)
    try:
        saga_id = failed_on_notify(store)
        store.conn.execute("UPDATE sagas SET tenant = 'alice' WHERE id = ?", (saga_id,))
        before = footprint(store, saga_id)
    finally:
        store.close()
    requests = [
        ("resume", None),
        ("rollback", {"force": True}),
        ("steps/notify/retry", None),
        ("steps/notify/skip", {"reason": "by hand"}),
    ]
    with serve_in_thread(create_app(db, keys_db=keys_db)) as api:
        for key, expected in ((bob, 404), (alice, None)):
            with httpx.Client(
                base_url=api.url, timeout=5, headers={"Authorization": f"Bearer {key}"}
            ) as client:
                got = [
                    client.post(f"/v1/sagas/{saga_id}/{path}", json=body).status_code
                    for path, body in requests
                ]
            if expected is not None:
                assert got == [expected] * len(requests)
                store = SQLiteStore(db)
                try:
                    assert footprint(store, saga_id) == before  # bob changed nothing
                finally:
                    store.close()
    # Alice's own saga is answered about itself: a failed saga is not resumed (409), the
    # forced rollback is taken (202), and then it is compensating: no step waits to be
    # retried or skipped (409).
    assert got == [409, 202, 409, 409]

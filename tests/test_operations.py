"""The operator actions (`orchestrator.operations`) on a real SQLite file, and through both doors.

Each action is run against sagas stored as a real run leaves them (`opslab`: Python steps run by
the real `SagaRunner`), with the runner that carries an action out here and without one (the
API's way: queued for the workers). Refusals, bad arguments and unknown sagas write nothing; a
worker's append between the operator's read and write makes the request be judged again (two
threads, coordinated step by step); another tenant's saga is unknown. The last tests take the
same cases through both doors, the CLI as a real subprocess and the API on a real uvicorn
server, and expect the same class of answer.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from apilab import admin_api
from opslab import (
    ACT,
    DONE,
    PIVOT_SENT,
    RunsHere,
    append_as_a_worker,
    charged,
    checkout_saga,
    cli_subprocess,
    completed,
    failed_on_notify,
    footprint,
    leased,
    pivot_in_flight,
    reset_handlers,
    rolled_back,
    stored,
    types,
)

from sagalab.orchestrator import operations
from sagalab.orchestrator.errors import LeaseHeld
from sagalab.orchestrator.flow import FlowDefinition
from sagalab.orchestrator.journal import JournalEntry
from sagalab.orchestrator.operations import ActionRefused, BadArgument, Carried, UnknownSaga
from sagalab.orchestrator.saga import Event, EventType, SagaState, SagaStatus
from sagalab.orchestrator.sqlite_store import SQLiteStore


@pytest.fixture(autouse=True)
def handlers() -> Iterator[None]:
    reset_handlers()
    yield
    reset_handlers()


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


STEP_201 = "s" * 201

#: Requests whose own arguments are wrong, whatever the saga: (id, CLI argv, API route, API
#: body, the `operations` call as (action, options)).
BAD_WHATEVER_THE_SAGA = [
    (
        "rollback-long-reason",
        ["rollback", "{id}", "--reason", LONG],
        "rollback",
        {"reason": LONG},
        ("rollback", {"reason": LONG}),
    ),
    (
        "cancel-long-reason",
        ["cancel", "{id}", "--reason", LONG],
        "cancel",
        {"reason": LONG},
        ("cancel", {"reason": LONG}),
    ),
    (
        "skip-long-reason",
        ["skip-step", "{id}", "notify", "--reason", LONG],
        "steps/notify/skip",
        {"reason": LONG},
        ("skip_step", {"step": "notify", "reason": LONG}),
    ),
    (
        "skip-blank-reason",
        ["skip-step", "{id}", "notify", "--reason", " "],
        "steps/notify/skip",
        {"reason": " "},
        ("skip_step", {"step": "notify", "reason": " "}),
    ),
    (
        "fork-long-step",
        ["fork", "{id}", "--from-step", STEP_201],
        "fork",
        {"from_step": STEP_201},
        ("fork_plan", {"step": STEP_201}),
    ),
]


@pytest.mark.parametrize(
    ("argv", "route", "body", "call"),
    [r[1:] for r in BAD_WHATEVER_THE_SAGA],
    ids=[r[0] for r in BAD_WHATEVER_THE_SAGA],
)
@pytest.mark.parametrize("saga", ["unknown", "another-tenants"])
def test_bad_arguments_are_bad_input_before_the_saga_is_looked_up_through_both_doors(
    db: Path,
    saga: str,
    argv: list[str],
    route: str,
    body: dict[str, Any],
    call: tuple[str, dict[str, Any]],
) -> None:
    """Was a mismatch: for a saga the caller cannot see, the CLI looked the saga up first
    (exit 3) and the API validated the body first (422). One order for both: the request's
    own arguments, then the saga, then what depends on the saga (a step's name)."""
    store = SQLiteStore(db)
    try:
        if saga == "another-tenants":
            saga_id = failed_on_notify(store)
            store.conn.execute("UPDATE sagas SET tenant = 'alice' WHERE id = ?", (saga_id,))
            before = footprint(store, saga_id)
            action, options = call
            # The operations module itself, as another tenant's caller (the CLI is the admin).
            with pytest.raises(BadArgument):
                act(store, action, saga_id, tenant="bob", **dict(options))
            assert footprint(store, saga_id) == before
    finally:
        store.close()
    cli = cli_subprocess(db, *(a.replace("{id}", "nope") for a in argv))
    with admin_api(db) as client:
        answer = client.post(f"/v1/sagas/nope/{route}", json=body)
    assert "Traceback" not in cli.stderr
    got = (CLASS_OF_EXIT.get(cli.returncode), CLASS_OF_STATUS.get(answer.status_code))
    assert got == ("bad argument", "bad argument"), (cli.returncode, cli.stderr, answer.text)


def test_json_answers_name_the_saga_status_after_the_action(db: Path) -> None:
    """The CLI prints the saga after a queued rollback as the API answers it: compensating."""
    by_cli, by_api = checkout_saga(db), checkout_saga(db)
    cli = cli_subprocess(db, "rollback", by_cli, "--json")
    assert cli.returncode == 0, cli.stderr
    assert "rollback recorded; queued for the workers (no services known here" in cli.stderr
    with admin_api(db) as client:
        answer = client.post(f"/v1/sagas/{by_api}/rollback")
    assert json.loads(cli.stdout)["status"] == answer.json()["status"] == "compensating"

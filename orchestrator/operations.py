"""Operator actions: resume, rollback, retry-step, skip-step and requeue, in one place.

The CLI (`sagalab orchestrate ...`) and the HTTP API (`POST /v1/sagas/{id}/...`) both call these
functions and only parse, call and render around them, so a request is refused, retried and
carried out the same way through either door.

Every action goes the same way:

1. **Find** the saga as the caller may see it: `tenant` None is the operator (the CLI works on
   the database as an admin) and sees every saga; a tenant's caller finds only its own, and
   another tenant's saga is unknown, as if it did not exist.
2. **Judge** the request with the core (`saga.rollback_request`, `retry_step_request`,
   `skip_step_request`, `check_resume`) against the saga as read at some journal sequence, and
   append the operator event after that sequence (`journal_request`). A worker may append in
   between - the ATTEMPT_STARTED of the pivot, say - and an event judged against the older
   journal must not be written after the newer one: the store refuses the append
   (ConcurrentUpdate), and the request is read and judged again, which may now refuse it.
   A resume is not journaled: `check_resumable` says whether one applies.
3. **Carry it out**: run the saga here until it stops, when the caller gives a `RunHere`
   that can (the CLI, with services configured), or put it back on the workers' queue (the
   API, which never runs a saga; a CLI that knows no service; a saga a live worker holds,
   whose next append meets the request).

Errors: every action that is not carried out raises one family, which each shell maps in
one place (`cli.errors.exit_code_for`, the API's SagaError handler):

OperationError (SagaError)
 ├── UnknownSaga      no such saga for this caller            CLI exit 3, HTTP 404
 ├── ActionRefused    does not apply to the saga as it stands  CLI exit 4, HTTP 409
 │                    (or a live worker runs it, or it kept
 │                    changing while judged: try again)
 └── BadArgument      the request itself is wrong (a step     CLI exit 2, HTTP 422
                      the flow does not have, no reason)

Configuration and database errors (ServiceConfigError, StoreError, DamagedRecord) are not an
action's answer and pass through as they are.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

from orchestrator.errors import (
    ConcurrentUpdate,
    InvalidTransition,
    LeaseHeld,
    OperatorActionRefused,
    SagaError,
    SagaNotFoundError,
)
from orchestrator.flow import FlowDefinition
from orchestrator.journal import JournalEntry
from orchestrator.leases import owner_is_dead
from orchestrator.saga import (
    Event,
    SagaState,
    SagaStatus,
    check_resume,
    retry_step_request,
    rollback_request,
    skip_step_request,
)
from orchestrator.store import SagaRecord, Store

__all__ = [
    "ActionRefused",
    "BadArgument",
    "Carried",
    "Judge",
    "MAX_REASON",
    "OperationError",
    "OperationResult",
    "RunHere",
    "UnknownSaga",
    "check_resumable",
    "journal_request",
    "requeue",
    "resume",
    "retry_step",
    "rollback",
    "skip_step",
]

Clock = Callable[[], float]

Judge = Callable[[SagaState, float], Event]
"""(state as read, now) -> the operator event, or OperatorActionRefused."""

JUDGE_TRIES = 5

#: The longest reason a rollback or a skip journals, through the CLI and the API alike.
MAX_REASON = 500


# --- the answers ------------------------------------------------------------------------------


class OperationError(SagaError):
    """An operator action that was not carried out; nothing was written for it.

    `action` names it ("resume", "rollback", "retry-step", "skip-step", "requeue") and
    `saga_id` the saga it was asked of; the message says why and what to do next.
    """

    def __init__(self, message: str, *, action: str, saga_id: str) -> None:
        self.action = action
        self.saga_id = saga_id
        super().__init__(message)


class UnknownSaga(OperationError):
    """No saga with that id that this caller may see (another tenant's is unknown too)."""


class ActionRefused(OperationError):
    """The action does not apply to the saga as it stands, a live worker runs it, or the
    saga kept changing while the request was judged."""


class BadArgument(OperationError):
    """The request names something the saga does not have, or lacks what it needs."""


class Carried(enum.Enum):
    """Who carries an accepted action out."""

    RAN = "ran"  # this process ran the saga until it stopped
    QUEUED = "queued"  # the workers will: the saga is on their queue


@dataclass(frozen=True)
class OperationResult:
    """What an accepted action did: who carries it out, where the saga stands, and a line for
    the operator (None when there is nothing to add to the saga's status)."""

    action: str
    saga_id: str
    carried: Carried
    record: SagaRecord
    message: str | None = None

    @property
    def status(self) -> SagaStatus:
        """The saga's status after the action (when it ran here: where the run stopped)."""
        return self.record.status


class RunHere(Protocol):
    """Runs a saga in the caller's process (the CLI's, under a lease, with breakers)."""

    def unavailable(self, flow: FlowDefinition) -> str | None:
        """Why this process cannot run `flow` (the workers then carry the action out), or None.

        A configuration that is there but wrong raises (ServiceConfigError), before the action
        writes anything.
        """
        ...

    def run(self, saga_id: str, flow: FlowDefinition) -> SagaStatus:
        """Run the saga until it stops and return its status; LeaseHeld if a live worker holds
        it."""
        ...


# --- the actions ------------------------------------------------------------------------------


def resume(
    store: Store,
    saga_id: str,
    *,
    tenant: str | None = None,
    runner: RunHere | None = None,
    clock: Clock = time.time,
) -> OperationResult:
    """Continue an unfinished saga from its journal: here with `runner`, else on the workers'
    queue (`requeue`).

    ActionRefused for a failed, completed or rolled back saga, and for one a live worker runs
    (it goes on there).
    """
    if runner is None:
        return _queue("resume", store, saga_id, tenant, clock)
    with _answers("resume", saga_id):
        store.load(saga_id, tenant=tenant)
        _, state = check_resumable(store, saga_id, clock=clock)
    try:
        runner.run(saga_id, state.flow)
    except LeaseHeld as exc:  # a worker claimed it since the check: it goes on there
        raise ActionRefused(str(exc), action="resume", saga_id=saga_id) from None
    return OperationResult("resume", saga_id, Carried.RAN, store.load(saga_id))


def requeue(
    store: Store,
    saga_id: str,
    *,
    tenant: str | None = None,
    clock: Clock = time.time,
) -> OperationResult:
    """Put an unfinished saga back on the workers' queue, due now; a worker continues it from
    its journal. Refused as `resume` is (what is failed or finished has nothing to run)."""
    return _queue("requeue", store, saga_id, tenant, clock)


def _queue(
    action: str, store: Store, saga_id: str, tenant: str | None, clock: Clock
) -> OperationResult:
    with _answers(action, saga_id):
        store.load(saga_id, tenant=tenant)
        check_resumable(store, saga_id, clock=clock)
        store.requeue(saga_id, clock())
        return OperationResult(action, saga_id, Carried.QUEUED, store.load(saga_id))


def rollback(
    store: Store,
    saga_id: str,
    *,
    tenant: str | None = None,
    force: bool = False,
    reason: str = "operator rollback",
    runner: RunHere | None = None,
    clock: Clock = time.time,
) -> OperationResult:
    """Journal a rollback request, then compensate (here or by the workers).

    Refused past the pivot step, while the pivot's call is in flight, or with the pivot
    stranded, unless `force`; refused for a saga rolled back or rolling back already.
    """

    def judge(state: SagaState, now: float) -> Event:
        return rollback_request(state, now=now, reason=reason, force=force)

    _check_reason(reason, "rollback", saga_id)
    return _request("rollback", "rollback", store, saga_id, judge, tenant, runner, clock)


def retry_step(
    store: Store,
    saga_id: str,
    step: str,
    *,
    tenant: str | None = None,
    runner: RunHere | None = None,
    clock: Clock = time.time,
) -> OperationResult:
    """Give the step that holds a failed saga (or its compensation) a fresh retry budget, and
    continue the saga. BadArgument for a step the flow does not have."""

    def judge(state: SagaState, now: float) -> Event:
        return retry_step_request(state, now=now, step=step)

    with _answers("retry-step", saga_id):
        _check_step(store.load(saga_id, tenant=tenant), step, "retry-step")
    return _request("retry-step", "retry", store, saga_id, judge, tenant, runner, clock)


def skip_step(
    store: Store,
    saga_id: str,
    step: str,
    *,
    reason: str,
    tenant: str | None = None,
    runner: RunHere | None = None,
    clock: Clock = time.time,
) -> OperationResult:
    """Mark the step that holds a failed saga as handled by hand (the reason is journaled), and
    continue the saga. BadArgument for a step the flow does not have, or a blank reason."""

    def judge(state: SagaState, now: float) -> Event:
        return skip_step_request(state, now=now, step=step, reason=reason)

    with _answers("skip-step", saga_id):
        _check_step(store.load(saga_id, tenant=tenant), step, "skip-step")
    if not reason.strip():
        raise BadArgument(
            "skipping a step needs a reason for the journal", action="skip-step", saga_id=saga_id
        )
    _check_reason(reason, "skip-step", saga_id)
    return _request("skip-step", "skip", store, saga_id, judge, tenant, runner, clock)


# --- judged, journaled, carried out -----------------------------------------------------------


def journal_request(
    store: Store,
    saga_id: str,
    judge: Judge,
    *,
    clock: Clock = time.time,
    tries: int = JUDGE_TRIES,
) -> tuple[SagaRecord, SagaState]:
    """Judge and append one operator event; return the record as read and the new state.

    OperatorActionRefused if the core refuses it (now or after a conflicting append), or if
    the saga kept changing for `tries` readings.
    """
    for _ in range(tries):
        record, _, state = store.state(saga_id)
        now = clock()
        event = judge(state, now)
        try:
            state.apply(event)
        except InvalidTransition as exc:  # the state machine's own fence, same meaning
            raise OperatorActionRefused(str(exc)) from None
        try:
            store.append(
                saga_id, [JournalEntry(event)], expected_seq=record.last_seq, state=state, now=now
            )
        except ConcurrentUpdate:
            continue  # appended to since we read it: judge again against what is there now
        return record, state
    raise OperatorActionRefused(
        f"saga {saga_id} kept changing while the request was judged ({tries} readings); try again"
    )


def check_resumable(
    store: Store, saga_id: str, *, clock: Clock = time.time
) -> tuple[SagaRecord, SagaState]:
    """The saga as it stands, if a resume applies to it.

    OperatorActionRefused for a failed, completed or rolled back saga (`check_resume`);
    LeaseHeld while a live worker runs it (a lease whose owner is a dead process on this
    host does not count: that saga is stuck, and resuming it is what it needs).
    """
    record, _, state = store.state(saga_id)
    check_resume(state)
    store.check_lease_free(saga_id, now=clock(), take_over=owner_is_dead)
    return record, state


def _request(
    action: str,
    what: str,
    store: Store,
    saga_id: str,
    judge: Judge,
    tenant: str | None,
    runner: RunHere | None,
    clock: Clock,
) -> OperationResult:
    """Journal the operator event `judge` gives, then run the saga here (with `runner`, if it
    can) or queue it for the workers. `what` names the request in the messages."""
    with _answers(action, saga_id):
        record = store.load(saga_id, tenant=tenant)
        # Asked before anything is written: a wrong configuration leaves no request behind.
        unavailable = runner.unavailable(record.flow) if runner is not None else None
        record, _ = journal_request(store, saga_id, judge, clock=clock)
    # Journaled: from here on the request stands, whoever carries it out.
    message = f"{what} recorded; queued for the workers"
    if runner is not None and unavailable is None:
        try:
            runner.run(saga_id, record.flow)
            return OperationResult(action, saga_id, Carried.RAN, store.load(saga_id))
        except LeaseHeld as exc:  # a live worker holds it: it carries the request out
            message = f"{what} recorded; {exc}"
    elif unavailable is not None:
        message += f" ({unavailable})"
    store.requeue(saga_id, clock())
    return OperationResult(action, saga_id, Carried.QUEUED, store.load(saga_id), message)


def _check_step(record: SagaRecord, step: str, action: str) -> None:
    names = [s.name for s in record.flow.steps]
    if step not in names:
        raise BadArgument(
            f"flow {record.flow.name!r} has no step {step!r}; its steps: {', '.join(names)}",
            action=action,
            saga_id=record.id,
        )


def _check_reason(reason: str, action: str, saga_id: str) -> None:
    if len(reason) > MAX_REASON:
        raise BadArgument(
            f"the reason is {len(reason)} characters long; at most {MAX_REASON} are journaled",
            action=action,
            saga_id=saga_id,
        )


@contextmanager
def _answers(action: str, saga_id: str) -> Iterator[None]:
    """Translate what the store and the core raise into the action's answers."""
    try:
        yield
    except SagaNotFoundError as exc:
        raise UnknownSaga(str(exc), action=action, saga_id=saga_id) from None
    except (OperatorActionRefused, InvalidTransition, ConcurrentUpdate, LeaseHeld) as exc:
        # InvalidTransition: the state machine's own fence; ConcurrentUpdate: a write lost to
        # a worker's mid-run; LeaseHeld: a live worker runs it. None was carried out.
        raise ActionRefused(str(exc), action=action, saga_id=saga_id) from None

"""Operator actions: resume, rollback, cancel, retry-step, skip-step, requeue and fork, in one
place.

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

The checks come in one order, whichever door: the request's own arguments (a reason blank or
over `MAX_REASON`: BadArgument), then the saga (UnknownSaga, for another tenant's too), then
what needs the saga (a step its flow does not have: BadArgument), then the judgement
(ActionRefused). The API's request models check the same arguments before the route runs
(`max_length=MAX_REASON`), so a bad reason for a saga the caller cannot see is bad input
through both doors, never "unknown" through one and "bad input" through the other.

Errors: every action that is not carried out raises one family, which each shell maps in
one place (`cli.errors.exit_code_for`, the API's SagaError handler):

OperationError (SagaError)
 ├── UnknownSaga      no such saga for this caller            CLI exit 3, HTTP 404
 ├── ActionRefused    does not apply to the saga as it stands  CLI exit 4, HTTP 409
 │                    (or a live worker runs it, or it kept
 │                    changing while judged: try again)
 └── BadArgument      the request itself is wrong (a step     CLI exit 2, HTTP 422
                      the flow does not have, no reason)

A fork (`fork`, planned by the pure `orchestrator.forkplan`) is the one action that makes a
saga: it closes the old one with a rollback from the fork's step (compensating, here, what it
applied from there on) and then creates the new one, linked to it, with copies of the old
one's successful attempts of the steps before that step.

Configuration and database errors (ServiceConfigError, StoreError, DamagedRecord) are not an
action's answer and pass through as they are.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from sagalab.orchestrator.errors import (
    ConcurrentUpdate,
    InputError,
    InvalidTransition,
    LeaseHeld,
    OperatorActionRefused,
    SagaError,
    SagaNotFoundError,
)
from sagalab.orchestrator.flow import FlowDefinition
from sagalab.orchestrator.forkplan import ForkPlan, SetError, apply_sets, plan_fork
from sagalab.orchestrator.journal import JournalEntry
from sagalab.orchestrator.leases import owner_is_dead
from sagalab.orchestrator.runner import new_saga_id, new_trace_id, validate_input
from sagalab.orchestrator.saga import (
    Event,
    EventType,
    Phase,
    SagaState,
    SagaStatus,
    cancel_request,
    check_resume,
    retry_step_request,
    rollback_request,
    skip_step_request,
)
from sagalab.orchestrator.store import SagaRecord, Store

__all__ = [
    "ActionRefused",
    "BadArgument",
    "Carried",
    "Judge",
    "MAX_REASON",
    "MAX_SETS",
    "MAX_STEP_NAME",
    "OperationError",
    "OperationResult",
    "RunHere",
    "UnknownSaga",
    "cancel",
    "check_resumable",
    "fork",
    "fork_plan",
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
#: The longest step name a fork may name, and the most `--set` edits it takes (both doors).
MAX_STEP_NAME = 200
MAX_SETS = 100


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
        it. A concurrent append (another operator's request landing during a call) is read
        and driven on; ConcurrentUpdate only after repeated ones, with the saga given back to
        the workers' queue."""
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
    except ConcurrentUpdate as exc:  # it kept changing under the run: the workers go on
        return _gave_back("resume", store, saga_id, exc, clock)
    return OperationResult("resume", saga_id, Carried.RAN, store.load(saga_id))


def _gave_back(
    action: str, store: Store, saga_id: str, exc: ConcurrentUpdate, clock: Clock
) -> OperationResult:
    """The run here gave up after repeated concurrent appends (`RunHere.run` reads the saga
    again after each, up to a bound): the saga is on the workers' queue, never stranded."""
    store.requeue(saga_id, clock())
    message = (
        f"{exc}; saga {saga_id} kept changing while it ran here and is queued for the "
        f"workers (or `sagalab orchestrate resume {saga_id}`)"
    )
    return OperationResult(action, saga_id, Carried.QUEUED, store.load(saga_id), message)


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


def cancel(
    store: Store,
    saga_id: str,
    *,
    reason: str = "operator cancel",
    tenant: str | None = None,
    runner: RunHere | None = None,
    clock: Clock = time.time,
) -> OperationResult:
    """Stop a saga that has not passed its pivot and roll it back (here or by the workers).

    The request is journaled at once; a live worker that holds the saga meets it at its next
    commit (its append conflicts, it takes the saga again from the journal) and compensates.
    Refused past the pivot, while the pivot's call is in flight, and for a saga that is
    already stopped (`saga.cancel_request`); there is no --force (that is `rollback --force`).
    """

    def judge(state: SagaState, now: float) -> Event:
        return cancel_request(state, now=now, reason=reason)

    _check_reason(reason, "cancel", saga_id)
    return _request("cancel", "cancel", store, saga_id, judge, tenant, runner, clock)


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

    if not reason.strip():
        raise BadArgument(
            "skipping a step needs a reason for the journal", action="skip-step", saga_id=saga_id
        )
    _check_reason(reason, "skip-step", saga_id)
    with _answers("skip-step", saga_id):
        _check_step(store.load(saga_id, tenant=tenant), step, "skip-step")
    return _request("skip-step", "skip", store, saga_id, judge, tenant, runner, clock)


# --- fork --------------------------------------------------------------------------------------


def fork_plan(
    store: Store,
    saga_id: str,
    from_step: str,
    *,
    payload: dict[str, Any] | None = None,
    sets: Sequence[str] = (),
    tenant: str | None = None,
    force: bool = False,
    fork_id: str | None = None,
) -> tuple[ForkPlan, dict[str, Any]]:
    """The plan for forking `saga_id` from `from_step`, and the fork's input; nothing is
    written. The plan carries a refusal rather than raising it (a dry run shows it).

    `payload` replaces the old saga's input (None keeps it); `sets` then edit it
    (`input.key=value`). UnknownSaga; BadArgument for a step the flow does not have, a
    malformed `--set`, or an input the flow refuses.
    """
    if len(from_step) > MAX_STEP_NAME or len(sets) > MAX_SETS:
        raise BadArgument(
            f"a fork names a step of at most {MAX_STEP_NAME} characters and takes at most "
            f"{MAX_SETS} --set edits",
            action="fork",
            saga_id=saga_id,
        )
    with _answers("fork", saga_id):
        record = store.load(saga_id, tenant=tenant)
        _check_step(record, from_step, "fork")
        try:
            new_input = apply_sets(record.input if payload is None else payload, sets)
            validate_input(record.flow, new_input)
        except (SetError, InputError) as exc:
            raise BadArgument(str(exc), action="fork", saga_id=saga_id) from None
        _, _, state = store.state(saga_id)
        plan = plan_fork(
            state,
            saga_id=saga_id,
            fork_id=fork_id or new_saga_id(),
            from_step=from_step,
            forks=store.forks(saga_id),
            force=force,
        )
    return plan, new_input


def fork(
    store: Store,
    saga_id: str,
    from_step: str,
    *,
    payload: dict[str, Any] | None = None,
    sets: Sequence[str] = (),
    tenant: str | None = None,
    force: bool = False,
    runner: RunHere | None = None,
    on_plan: Callable[[ForkPlan], None] | None = None,
    clock: Clock = time.time,
) -> tuple[ForkPlan, OperationResult]:
    """Fork `saga_id` from `from_step` as its plan says (`fork_plan`): close the old saga with
    a rollback from that step (its compensations run here, with `runner`), then create the
    fork, linked to it, and run it here or queue it for the workers.

    `on_plan` sees the plan before anything is written. ActionRefused when the plan refuses,
    when compensations are needed and this process cannot run them, or when they do not end
    with the old saga rolled back (the fork is then not created; the old saga says why).
    """
    plan, new_input = fork_plan(
        store, saga_id, from_step, payload=payload, sets=sets, tenant=tenant, force=force
    )
    if on_plan is not None:
        on_plan(plan)
    if plan.refusal is not None:
        raise ActionRefused(plan.refusal, action="fork", saga_id=saga_id)
    with _answers("fork", saga_id):
        record = store.load(saga_id)
        unavailable = (
            runner.unavailable(record.flow) if runner is not None else "this process runs no saga"
        )
        if plan.compensate_first and unavailable is not None:
            raise ActionRefused(
                f"this fork compensates {', '.join(plan.compensate_first)} of saga {saga_id} "
                f"first, which runs in this process only ({unavailable}): fork it where the "
                "services are configured (--services)",
                action="fork",
                saga_id=saga_id,
            )
        if plan.old_status is not SagaStatus.ROLLED_BACK:
            _close_for_fork(store, plan, clock)
    if plan.compensate_first:
        assert runner is not None
        try:
            status = runner.run(saga_id, record.flow)
        except LeaseHeld as exc:
            raise ActionRefused(str(exc), action="fork", saga_id=saga_id) from None
        if status is not SagaStatus.ROLLED_BACK:
            why = store.load(saga_id).reason
            raise ActionRefused(
                f"compensating saga {saga_id} before the fork stopped it {status.value} "
                f"({why}); the fork was not created. Once {saga_id} is rolled back "
                "(`retry-step` or `skip-step` it), fork it again",
                action="fork",
                saga_id=saga_id,
            )
    with _answers("fork", saga_id):
        created = _create_fork(
            store, plan, record, new_input, queue=unavailable is not None, clock=clock
        )
    if unavailable is None:
        assert runner is not None
        try:
            runner.run(created.id, created.flow)
        except LeaseHeld as exc:  # a worker took it first: it runs there
            return plan, OperationResult(
                "fork", created.id, Carried.QUEUED, store.load(created.id), str(exc)
            )
        return plan, OperationResult("fork", created.id, Carried.RAN, store.load(created.id))
    message = f"fork {created.id} created; queued for the workers ({unavailable})"
    return plan, OperationResult("fork", created.id, Carried.QUEUED, created, message)


def _close_for_fork(store: Store, plan: ForkPlan, clock: Clock) -> None:
    """Journal the old saga's rollback from the fork's step (and, with nothing to compensate,
    its end), judged again against the journal it is appended after."""

    def judge(state: SagaState, now: float) -> list[Event]:
        again = plan_fork(
            state,
            saga_id=plan.saga_id,
            fork_id=plan.fork_id,
            from_step=plan.from_step,
            force=plan.forced,
        )
        if again.refusal is not None or again.compensate_first != plan.compensate_first:
            raise OperatorActionRefused(
                f"saga {plan.saga_id} changed while the fork was planned; plan it again"
            )
        reason = f"forked as {plan.fork_id} from step {plan.from_step!r}"
        events = [
            Event(
                EventType.ROLLBACK_REQUESTED,
                now,
                step=plan.from_step,
                reason=reason,
                force=plan.forced,
            )
        ]
        if not plan.compensate_first:
            events.append(Event(EventType.SAGA_ROLLED_BACK, now, reason=reason))
        return events

    _journal_events(store, plan.saga_id, judge, clock=clock, tries=JUDGE_TRIES)


def _create_fork(
    store: Store,
    plan: ForkPlan,
    old: SagaRecord,
    new_input: dict[str, Any],
    *,
    queue: bool,
    clock: Clock,
) -> SagaRecord:
    """Store the fork: the old saga's successful attempts of the reused steps, copied."""
    entries = store.journal(plan.saga_id)
    now = clock()
    state = SagaState(old.flow)
    state.apply(Event(EventType.SAGA_CREATED, now))
    initial: list[JournalEntry] = []
    for name in plan.reused:
        started, succeeded = _successful_attempt(entries, name)
        for entry in (started, succeeded):
            copied = JournalEntry(
                Event(entry.event.type, entry.event.at, name, Phase.ACTION, 1),
                request=entry.request,
                response=entry.response,
                status_code=entry.status_code,
                duration_ms=entry.duration_ms,
                span_id=entry.span_id,
            )
            state.apply(copied.event)
            initial.append(copied)
    record, _ = store.create_saga(
        saga_id=plan.fork_id,
        flow=old.flow,
        payload=new_input,
        trace_id=new_trace_id(),
        idempotency_key=None,
        now=now,
        run_after=now if queue else None,
        initial=initial,
        state=state,
        tenant=old.tenant,
        forked_from=plan.saga_id,
    )
    return record


def _successful_attempt(
    entries: Sequence[JournalEntry], step: str
) -> tuple[JournalEntry, JournalEntry]:
    """The ATTEMPT_STARTED and ATTEMPT_SUCCEEDED entries of `step`'s successful action."""
    succeeded = next(
        e
        for e in reversed(entries)
        if e.event.type is EventType.ATTEMPT_SUCCEEDED
        and e.event.step == step
        and e.event.phase is Phase.ACTION
    )
    started = next(
        e
        for e in reversed(entries)
        if e.event.type is EventType.ATTEMPT_STARTED
        and e.event.step == step
        and e.event.phase is Phase.ACTION
        and e.event.attempt == succeeded.event.attempt
    )
    return started, succeeded


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
    return _journal_events(
        store, saga_id, lambda state, now: [judge(state, now)], clock=clock, tries=tries
    )


def _journal_events(
    store: Store,
    saga_id: str,
    judge: Callable[[SagaState, float], list[Event]],
    *,
    clock: Clock,
    tries: int,
) -> tuple[SagaRecord, SagaState]:
    """`journal_request` for a judge that gives several events, appended in one write."""
    for _ in range(tries):
        record, _, state = store.state(saga_id)
        now = clock()
        events = judge(state, now)
        try:
            for event in events:
                state.apply(event)
        except InvalidTransition as exc:  # the state machine's own fence, same meaning
            raise OperatorActionRefused(str(exc)) from None
        try:
            store.append(
                saga_id,
                [JournalEntry(e) for e in events],
                expected_seq=record.last_seq,
                state=state,
                now=now,
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
        except ConcurrentUpdate as exc:
            return _gave_back(action, store, saga_id, exc, clock)
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

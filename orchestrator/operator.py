"""Operator requests journaled against the saga as it stands when they are written.

The core judges a request (`rollback_request`, `retry_step_request`, `skip_step_request`)
against a `SagaState` read at some journal sequence. A worker may append in between - the
ATTEMPT_STARTED of the pivot, say - and an event judged against the older journal must not be
written after the newer one. So the event is appended with the sequence it was judged at: the
store refuses it (ConcurrentUpdate) when anything was appended since, and the request is read
and judged again, which may now refuse it. The CLI and the HTTP API both go through here.

A resume is not journaled: `check_resumable` says whether one applies (an unfinished saga no
live worker runs), for the CLI (which then runs it) and the API (which queues it) alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from orchestrator.errors import ConcurrentUpdate, InvalidTransition, OperatorActionRefused
from orchestrator.journal import JournalEntry
from orchestrator.leases import owner_is_dead
from orchestrator.saga import Event, SagaState, check_resume
from orchestrator.store import SagaRecord, Store

__all__ = ["Judge", "check_resumable", "journal_request"]

Judge = Callable[[SagaState, float], Event]
"""(state as read, now) -> the operator event, or OperatorActionRefused."""

JUDGE_TRIES = 5


def journal_request(
    store: Store,
    saga_id: str,
    judge: Judge,
    *,
    clock: Callable[[], float] = time.time,
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
    store: Store, saga_id: str, *, clock: Callable[[], float] = time.time
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

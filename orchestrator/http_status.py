"""The HTTP answer to each error sagalab raises: the one mapping the API and the console share.

The operator family (`orchestrator.operations`: unknown saga, refused, bad argument), the
store's errors and a bad saga filter each have one status, whichever door they came through.
An exception outside these families has none (`http_status` gives None): the caller answers
500, a bug, without the details.
"""

from __future__ import annotations

from dataclasses import dataclass

from sagalab.orchestrator import operations
from sagalab.orchestrator.errors import (
    ConcurrentUpdate,
    DamagedRecord,
    FlowNotFoundError,
    FlowValidationError,
    IdempotencyConflict,
    InputError,
    InvalidTransition,
    LeaseHeld,
    OperatorActionRefused,
    SagaError,
    SagaNotFoundError,
)
from sagalab.orchestrator.sagafilter import FilterError
from sagalab.orchestrator.watchdog import DatabaseGone

__all__ = ["HttpAnswer", "http_status"]


@dataclass(frozen=True)
class HttpAnswer:
    """A status, the problem's title, and whether a client may retry shortly (Retry-After)."""

    status: int
    title: str
    retry_after: bool = False


# Checked in order: a subclass before its base (UnknownSaga is an OperationError, DatabaseGone
# a StoreError); the last SagaError row catches the store's own errors.
_TABLE: tuple[tuple[type[Exception] | tuple[type[Exception], ...], HttpAnswer], ...] = (
    (operations.UnknownSaga, HttpAnswer(404, "Saga not found")),
    (operations.ActionRefused, HttpAnswer(409, "Action refused")),
    (operations.BadArgument, HttpAnswer(422, "Invalid operator request")),
    (SagaNotFoundError, HttpAnswer(404, "Saga not found")),
    (IdempotencyConflict, HttpAnswer(409, "Idempotency key reused")),
    (
        (OperatorActionRefused, ConcurrentUpdate, InvalidTransition, LeaseHeld),
        HttpAnswer(409, "Action refused"),
    ),
    (
        (InputError, FlowNotFoundError, FlowValidationError),
        HttpAnswer(422, "Invalid saga request"),
    ),
    # One saga's stored row is unreadable: retrying will not help, the database is fine.
    (DamagedRecord, HttpAnswer(422, "Damaged saga record")),
    (FilterError, HttpAnswer(400, "Invalid filter")),
    (DatabaseGone, HttpAnswer(503, "Database gone")),
    (SagaError, HttpAnswer(503, "Store unavailable", retry_after=True)),
)


def http_status(exc: BaseException) -> HttpAnswer | None:
    """The answer to `exc`, or None if it is none of sagalab's errors (a bug: 500)."""
    for kinds, answer in _TABLE:
        if isinstance(exc, kinds):
            return answer
    return None

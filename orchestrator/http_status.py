"""The HTTP answer to each error sagalab raises: the one mapping the API and the console share.

The operator family (unknown saga, refused, bad request: `orchestrator.operator_answers`, the
table the CLI's exit codes read too), the store's errors and a bad saga filter each have one
status, whichever door they came through.
An exception outside these families has none (`http_status` gives None): the caller answers
500, a bug, without the details.
"""

from __future__ import annotations

from dataclasses import dataclass

from sagalab.orchestrator.errors import (
    DamagedRecord,
    FlowNotFoundError,
    FlowValidationError,
    IdempotencyConflict,
    InputError,
    SagaError,
)
from sagalab.orchestrator.operator_answers import OperatorAnswer, operator_answer
from sagalab.orchestrator.sagafilter import FilterError
from sagalab.orchestrator.watchdog import DatabaseGone

__all__ = ["HttpAnswer", "http_status"]


@dataclass(frozen=True)
class HttpAnswer:
    """A status, the problem's title, and whether a client may retry shortly (Retry-After)."""

    status: int
    title: str
    retry_after: bool = False


#: How HTTP says each `OperatorAnswer` (the CLI's exit codes: cli.errors.exit_code_for).
_OPERATOR_ANSWERS = {
    OperatorAnswer.UNKNOWN_SAGA: HttpAnswer(404, "Saga not found"),
    OperatorAnswer.REFUSED: HttpAnswer(409, "Action refused"),
    OperatorAnswer.BAD_REQUEST: HttpAnswer(422, "Invalid operator request"),
}

# The rest, checked in order after the operator family: a subclass before its base
# (DatabaseGone is a StoreError); the last SagaError row catches the store's own errors.
_TABLE: tuple[tuple[type[Exception] | tuple[type[Exception], ...], HttpAnswer], ...] = (
    (IdempotencyConflict, HttpAnswer(409, "Idempotency key reused")),
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
    operator = operator_answer(exc)
    if operator is not None:
        return _OPERATOR_ANSWERS[operator]
    for kinds, answer in _TABLE:
        if isinstance(exc, kinds):
            return answer
    return None

"""What an operator's request came to, when it was not carried out: the one table both doors read.

An operator action (`orchestrator.operations`: resume, rollback, retry-step, skip-step,
requeue, fork) and a look-up by saga id end in one of three answers: the saga is unknown, the
action was refused (it does not apply, a live worker holds the saga, or the saga kept
changing: try again later), or the request itself is wrong. `operator_answer` says which, from
the error raised; the CLI renders it as an exit code (`cli.errors.exit_code_for`: 3, 4, 2) and
the API and the console as an HTTP status (`orchestrator.http_status`: 404, 409, 422). A new
error of the family gets its row here, and both doors follow.

Errors outside the family (the store's, a bad flow or input, an idempotency key reused) are
each door's own: they are answered differently on purpose (an idempotency conflict is a
usage error to the CLI but a 409 conflict to an HTTP client).
"""

from __future__ import annotations

import enum

from sagalab.orchestrator import operations
from sagalab.orchestrator.errors import (
    ConcurrentUpdate,
    InvalidTransition,
    LeaseHeld,
    OperatorActionRefused,
    SagaNotFoundError,
)

__all__ = ["OperatorAnswer", "operator_answer"]


class OperatorAnswer(enum.Enum):
    """Why an operator's request was not carried out."""

    UNKNOWN_SAGA = "unknown saga"  # CLI 3, HTTP 404
    REFUSED = "refused"  # CLI 4, HTTP 409
    BAD_REQUEST = "bad request"  # CLI 2, HTTP 422


# Checked in order. None of these classes derives from another row's, so the order only
# reads from the operations family to the older errors that mean the same.
_TABLE: tuple[tuple[type[Exception] | tuple[type[Exception], ...], OperatorAnswer], ...] = (
    (operations.UnknownSaga, OperatorAnswer.UNKNOWN_SAGA),
    (operations.ActionRefused, OperatorAnswer.REFUSED),
    (operations.BadArgument, OperatorAnswer.BAD_REQUEST),
    (SagaNotFoundError, OperatorAnswer.UNKNOWN_SAGA),
    # A request a worker's writes kept overtaking, or a saga a live worker holds, was not
    # carried out either: the operator tries again later, as for a refusal.
    (
        (OperatorActionRefused, InvalidTransition, ConcurrentUpdate, LeaseHeld),
        OperatorAnswer.REFUSED,
    ),
)


def operator_answer(exc: BaseException) -> OperatorAnswer | None:
    """The answer `exc` gives an operator, or None if it is not of the family."""
    for kinds, answer in _TABLE:
        if isinstance(exc, kinds):
            return answer
    return None

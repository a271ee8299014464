"""One mapping from sagalab's errors to HTTP statuses (orchestrator/http_status.py), the one
the API and the console answer with: each family's status, subclasses before their bases, and
the console's `status_for` agreeing with it (its own 4xx aside, anything else a 500)."""

from __future__ import annotations

import pytest

from sagalab.orchestrator import operations
from sagalab.orchestrator.errors import (
    ConcurrentUpdate,
    CopyRefused,
    DamagedRecord,
    FlowNotFoundError,
    IdempotencyConflict,
    InputError,
    LeaseHeld,
    SagaNotFoundError,
    StoreError,
    StoreUnavailable,
)
from sagalab.orchestrator.http_status import http_status
from sagalab.orchestrator.sagafilter import FilterError
from sagalab.orchestrator.watchdog import DatabaseGone
from sagalab.ui.app import BadRequest, status_for


def op(kind: type[operations.OperationError]) -> operations.OperationError:
    return kind("why", action="resume", saga_id="s-1")


@pytest.mark.parametrize(
    ("error", "status", "title", "retry"),
    [
        (op(operations.UnknownSaga), 404, "Saga not found", False),
        (op(operations.ActionRefused), 409, "Action refused", False),
        (op(operations.BadArgument), 422, "Invalid operator request", False),
        (SagaNotFoundError("s-1"), 404, "Saga not found", False),
        (IdempotencyConflict("k", "s-1"), 409, "Idempotency key reused", False),
        (ConcurrentUpdate("x"), 409, "Action refused", False),
        (CopyRefused("x"), 409, "Action refused", False),
        (LeaseHeld("s-1", "w-1", 0.0), 409, "Action refused", False),
        (InputError("x"), 422, "Invalid saga request", False),
        (FlowNotFoundError("x"), 422, "Invalid saga request", False),
        (DamagedRecord("x"), 422, "Damaged saga record", False),
        (FilterError("--since is after --until"), 400, "Invalid filter", False),
        (DatabaseGone("gone"), 503, "Database gone", False),
        (StoreUnavailable("down"), 503, "Store unavailable", True),
        (StoreError("bad"), 503, "Store unavailable", True),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else None,
)
def test_each_error_has_one_answer_and_the_console_agrees(
    error: Exception, status: int, title: str, retry: bool
) -> None:
    answer = http_status(error)
    assert answer is not None
    assert (answer.status, answer.title, answer.retry_after) == (status, title, retry)
    assert status_for(error) == status


def test_anything_else_is_a_bug_500_and_the_console_keeps_its_own_4xx() -> None:
    assert http_status(KeyError("x")) is None
    assert status_for(KeyError("x")) == 500
    assert status_for(BadRequest("no", 413)) == 413

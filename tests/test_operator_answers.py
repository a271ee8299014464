"""One table for the operator family (orchestrator/operator_answers.py): the CLI's exit code and
the API's status both come from it, so an error of the family answers the same way at both
doors (3 and 404 unknown, 4 and 409 refused, 2 and 422 a bad request)."""

from __future__ import annotations

import pytest

from sagalab.cli import errors as cli_errors
from sagalab.cli.errors import EXIT_NOT_FOUND, EXIT_REFUSED, EXIT_USAGE, exit_code_for
from sagalab.orchestrator import http_status as http
from sagalab.orchestrator import operations
from sagalab.orchestrator.errors import (
    BatchNotFoundError,
    ConcurrentUpdate,
    CopyRefused,
    IdempotencyConflict,
    InputError,
    InvalidTransition,
    LeaseHeld,
    OperatorActionRefused,
    SagaError,
    SagaNotFoundError,
    StoreError,
)
from sagalab.orchestrator.http_status import http_status
from sagalab.orchestrator.operator_answers import OperatorAnswer, operator_answer

UNKNOWN, REFUSED, BAD = (
    OperatorAnswer.UNKNOWN_SAGA,
    OperatorAnswer.REFUSED,
    OperatorAnswer.BAD_REQUEST,
)


def op(kind: type[operations.OperationError]) -> operations.OperationError:
    return kind("why", action="rollback", saga_id="s-1")


@pytest.mark.parametrize(
    ("error", "answer", "code", "status"),
    [
        (op(operations.UnknownSaga), UNKNOWN, EXIT_NOT_FOUND, 404),
        (op(operations.ActionRefused), REFUSED, EXIT_REFUSED, 409),
        (op(operations.BadArgument), BAD, EXIT_USAGE, 422),
        (SagaNotFoundError("s-1"), UNKNOWN, EXIT_NOT_FOUND, 404),
        (BatchNotFoundError("b-1"), UNKNOWN, EXIT_NOT_FOUND, 404),
        (OperatorActionRefused("x"), REFUSED, EXIT_REFUSED, 409),
        (CopyRefused("x"), REFUSED, EXIT_REFUSED, 409),
        (InvalidTransition("x"), REFUSED, EXIT_REFUSED, 409),
        (ConcurrentUpdate("x"), REFUSED, EXIT_REFUSED, 409),
        (LeaseHeld("s-1", "w-1", 0.0), REFUSED, EXIT_REFUSED, 409),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else None,
)
def test_the_family_answers_alike_at_both_doors(
    error: SagaError, answer: OperatorAnswer, code: int, status: int
) -> None:
    assert operator_answer(error) is answer
    assert exit_code_for(error) == code
    found = http_status(error)
    assert found is not None and found.status == status


def test_every_answer_has_an_exit_code_and_a_status() -> None:
    assert set(cli_errors._OPERATOR_EXITS) == set(OperatorAnswer)
    assert set(http._OPERATOR_ANSWERS) == set(OperatorAnswer)


@pytest.mark.parametrize(
    "error",
    [IdempotencyConflict("k", "s-1"), InputError("x"), StoreError("x"), KeyError("x")],
    ids=lambda v: type(v).__name__,
)
def test_errors_outside_the_family_are_each_doors_own(error: Exception) -> None:
    assert operator_answer(error) is None

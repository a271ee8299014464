"""Exit codes and the translation of errors into one-line messages.

Exit codes (documented in the README and in `sagalab orchestrate --help`):
  0  success (for `run --wait`, `resume`, `rollback`: the saga completed or rolled back as asked)
  1  the saga ended rolled back or failed (when completion was expected), or a check failed
  2  bad input or usage: malformed flow or JSON, missing input key, unknown flow, a step the
     flow does not have (retry-step, skip-step), an operator reason over 500 characters
  3  unknown saga id
  4  the operator action does not apply (e.g. rollback past the pivot without --force), or
     was not carried out because a worker holds the saga or kept changing it: try again
  5  the database is not a saga database (a directory, not SQLite, corrupt, another
     application's, a newer sagalab's), cannot be opened or written, or a service's URL or
     breaker settings are missing or malformed
For a bulk action (cli/bulk.py: filters instead of an id): 1 some saga failed, 3 the filter
matches no saga, 4 none of them could be acted on (all refused) or the operator said no.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from sagalab.orchestrator.errors import (
    DamagedRecord,
    FlowNotFoundError,
    FlowValidationError,
    IdempotencyConflict,
    InputError,
    SagaError,
    ServiceConfigError,
    StoreError,
    TemplateError,
)
from sagalab.orchestrator.jsonsafe import MAX_BYTES, loads_strict
from sagalab.orchestrator.operator_answers import OperatorAnswer, operator_answer
from sagalab.orchestrator.redact import redacted
from sagalab.orchestrator.stores import driver_errors

EXIT_OK, EXIT_SAGA_FAILED, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_REFUSED, EXIT_ENVIRONMENT = range(6)

#: How the CLI says each `OperatorAnswer` (the API's statuses: orchestrator.http_status).
_OPERATOR_EXITS = {
    OperatorAnswer.UNKNOWN_SAGA: EXIT_NOT_FOUND,
    OperatorAnswer.REFUSED: EXIT_REFUSED,
    OperatorAnswer.BAD_REQUEST: EXIT_USAGE,
}

stderr = Console(stderr=True, highlight=False)


def fail(message: str, code: int) -> typer.Exit:
    """Print `message` on stderr (as text: a `[...]` in it is no markup) and return the Exit
    to raise."""
    # Through the one masking rule: no message shows a database password.
    stderr.print(f"[bold red]error:[/] {escape(redacted(message))}", soft_wrap=True)
    return typer.Exit(code)


def exit_code_for(exc: SagaError) -> int:
    """The documented exit code for `exc` (the one place the CLI maps errors to codes)."""
    # An operator's request not carried out: the one table the API reads too.
    answer = operator_answer(exc)
    if answer is not None:
        return _OPERATOR_EXITS[answer]
    if isinstance(exc, StoreError | ServiceConfigError | DamagedRecord):
        return EXIT_ENVIRONMENT
    bad_input = FlowValidationError | FlowNotFoundError | InputError | TemplateError
    if isinstance(exc, bad_input | IdempotencyConflict):
        return EXIT_USAGE
    return EXIT_SAGA_FAILED


@contextmanager
def handled() -> Iterator[None]:
    """Turn SagaErrors (and stray database driver errors) into one clear line and the
    documented exit code."""
    try:
        yield
    except FlowValidationError as exc:
        for issue in exc.issues:
            stderr.print(f"[bold red]error:[/] {issue}", soft_wrap=True)
        raise typer.Exit(EXIT_USAGE) from None
    except SagaError as exc:
        raise fail(str(exc), exit_code_for(exc)) from None
    except driver_errors() as exc:
        # A database error the store did not translate (damage found mid-read, a full disk):
        # still one line and the database exit code, never a traceback.
        raise fail(f"database error: {exc}", EXIT_ENVIRONMENT) from None


def parse_json_arg(value: str, what: str) -> object:
    """JSON text, or `@path` to read it from a file ('@-' reads stdin).

    A file or stdin is read up to one byte past `MAX_BYTES`, so /dev/zero or an endless pipe is
    refused at the limit instead of read into memory; `loads_strict` then refuses the size, bytes
    that are not UTF-8, and anything JSON cannot carry."""
    text: str | bytes = value
    if value.startswith("@"):
        source = value[1:]
        if not source:
            raise fail(f"{what} @ needs a file name (or @- for stdin)", EXIT_USAGE)
        try:
            if source == "-":
                text = sys.stdin.buffer.read(MAX_BYTES + 1)
            else:
                with Path(source).open("rb") as file:
                    text = file.read(MAX_BYTES + 1)
        except OSError as exc:
            raise fail(f"cannot read {what} file {source}: {exc.strerror}", EXIT_USAGE) from None
        if len(text) > MAX_BYTES:
            raise fail(f"{what} is over {MAX_BYTES} bytes, the most accepted", EXIT_USAGE)
    try:
        return loads_strict(text, what=what)
    except InputError as exc:
        raise fail(str(exc), EXIT_USAGE) from None

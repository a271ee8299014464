"""Errors raised by the orchestrator package.

SagaError
 ├── FlowValidationError   a flow definition is invalid (lists every issue with its location)
 ├── FlowNotFoundError     no flow file or registered flow by that name
 ├── TemplateError         a `${...}` template has no value at run time
 ├── InputError            the saga input is not what the flow needs
 ├── SagaNotFoundError     no saga with that id in the store
 ├── IdempotencyConflict   an idempotency key was reused with a different input
 ├── InvalidTransition     an event does not fit the saga's history (a bug or a race)
 ├── ConcurrentUpdate      another writer appended to the saga first (reload and retry)
 ├── OperatorActionRefused an operator command does not apply to the saga as it stands
 │    └── CopyRefused        `db copy` would overwrite or collide with the destination's rows
 ├── ServiceConfigError    a service name has no base URL
 │    └── LedgerUnavailable  a service's ledger cannot be read (`sagalab verify`)
 ├── DamagedRecord         a stored row cannot be read (tampered with, or other code's)
 └── StoreError            the database cannot be opened or written
      └── StoreUnavailable  the database server cannot be reached now (down, restarting)
"""

from __future__ import annotations

from dataclasses import dataclass

from sagalab.orchestrator.redact import redacted


class SagaError(Exception):
    """Base of every error the orchestrator raises on purpose."""


@dataclass(frozen=True)
class ValidationIssue:
    """One problem in a flow definition: where it is and what is wrong."""

    source: str
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.source}: {self.where}: {self.message}"


class FlowValidationError(SagaError):
    """A flow definition is invalid; `issues` lists every problem found."""

    def __init__(self, issues: list[ValidationIssue]) -> None:
        self.issues = issues
        lines = "; ".join(str(i) for i in issues)
        super().__init__(f"invalid flow ({len(issues)} issue(s)): {lines}")


class FlowNotFoundError(SagaError):
    """No flow file or registered flow by that name."""


class TemplateError(SagaError):
    """A template refers to a value that does not exist."""


class InputError(SagaError):
    """The saga input is malformed or lacks a required key."""


class SagaNotFoundError(SagaError):
    """No saga with that id."""

    def __init__(self, saga_id: str) -> None:
        self.saga_id = saga_id
        super().__init__(f"no saga with id {saga_id!r}; `sagalab orchestrate list` shows ids")


class BatchNotFoundError(SagaNotFoundError):
    """No bulk batch with that id."""

    def __init__(self, batch_id: str) -> None:
        self.saga_id = batch_id
        SagaError.__init__(
            self, f"no batch with id {batch_id!r}; `sagalab orchestrate batch list` shows ids"
        )


class IdempotencyConflict(SagaError):
    """An idempotency key already names a saga with a different flow or input."""

    def __init__(self, key: str, saga_id: str) -> None:
        self.key = key
        self.saga_id = saga_id
        super().__init__(
            f"idempotency key {key!r} already belongs to saga {saga_id} with a different "
            "flow or input; use a new key, or the same input to get that saga back"
        )


class InvalidTransition(SagaError):
    """An event does not fit the saga's recorded history."""


class ConcurrentUpdate(SagaError):
    """Another writer appended to this saga's journal first."""


class OperatorActionRefused(SagaError):
    """An operator command does not apply to the saga in its current state."""


class CopyRefused(OperatorActionRefused):
    """`sagalab db copy` would write over the destination's data (it is not empty, or a
    saga id or idempotency key of the source is there already): nothing was written."""


class ServiceConfigError(SagaError):
    """A step's service has no base URL configured."""


class LedgerUnavailable(ServiceConfigError):
    """A service's ledger cannot be read: no source for it, unreachable, or malformed."""

    def __init__(self, service: str, why: str, *, url: str | None = None) -> None:
        self.service = service
        self.url = url
        self.why = why
        where = f" at {url}" if url else ""
        super().__init__(f"cannot read the ledger of {service}{where}: {why}")


class StoreError(SagaError):
    """The saga database cannot be opened or written.

    Its message never shows a database password: it is masked as the error is made
    (orchestrator.redact, the one masking rule), whatever the message was built from.
    """

    def __init__(self, message: object = "", *args: object) -> None:
        super().__init__(redacted(str(message)), *args)


class StoreUnavailable(StoreError):
    """The database server could not be reached at the moment (connection refused, starting
    up, shutting down, too many connections): retrying later may succeed, unlike a wrong URL,
    wrong credentials or a missing database (a plain StoreError). A worker that already
    started backs off on it; a command that starts refuses it (exit 5) like any StoreError.
    """


class DamagedRecord(SagaError):
    """A stored row cannot be read as sagalab wrote it (tampered with, or other code's).

    Not a StoreError: the database is fine, one saga is not, so a worker parks that saga
    (with this reason) instead of backing off from the whole database.
    """


class LeaseLost(SagaError):
    """This worker's lease on a saga expired or was taken over: its writes are refused."""


class LeaseHeld(SagaError):
    """Another live worker holds the saga's lease."""

    def __init__(self, saga_id: str, owner: str, until: float) -> None:
        self.saga_id = saga_id
        self.owner = owner
        self.until = until
        super().__init__(
            f"saga {saga_id} is being run by {owner} (lease until {until:.0f}); "
            "it continues there, or here once that lease expires"
        )

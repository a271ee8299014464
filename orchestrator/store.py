"""The saga store's records, and the start of its interface.

The records (`SagaRecord`, `Lease`, `StepRow`) and `SagaStore` are what a store returns and
answers; `SQLiteStore` (orchestrator/sqlite_store.py) is the one implementation. The port is
not complete yet: `SagaStore` covers sagas and their journal only, and the runner, worker,
lease keeper, supervisor, API, demo and CLI import `SQLiteStore` itself (the queue, leases,
breakers and scaling events have no protocol here). Issue 9 makes this the one seam a second
backend implements.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from orchestrator.flow import FlowDefinition
from orchestrator.journal import JournalEntry
from orchestrator.saga import SagaState, SagaStatus

#: The tenant of sagas created before tenants existed, and of those the CLI creates locally.
DEFAULT_TENANT = "default"


@dataclass(frozen=True)
class SagaRecord:
    """A saga's current row: identity, flow snapshot, input and materialised status."""

    id: str
    flow: FlowDefinition
    input: dict[str, Any]
    status: SagaStatus
    trace_id: str
    idempotency_key: str | None
    reason: str | None
    created_at: float
    updated_at: float
    last_seq: int
    tenant: str = DEFAULT_TENANT
    #: Why the stored row could not be read as written (set by listings only, which show
    #: such a row rather than fail; everything else refuses it with `DamagedRecord`).
    damaged: str | None = None


@dataclass(frozen=True)
class Lease:
    """A worker's claim on a saga until `until`; `epoch` fences off earlier holders."""

    saga_id: str
    owner: str
    epoch: int
    until: float


@dataclass(frozen=True)
class StepRow:
    """Materialised status of one step, for listings and the status timeline."""

    name: str
    index: int
    status: str
    attempts: int
    compensation_attempts: int
    last_error: str | None


StepFields = tuple[str, str, int, int, str | None]


def step_fields(state: SagaState) -> list[StepFields]:
    """(name, status, attempts, compensation attempts, last error) per step, in flow order."""
    fields = []
    for definition in state.flow.steps:
        p = state.steps[definition.name]
        failure = p.compensation.last_failure or p.action.last_failure
        fields.append(
            (
                definition.name,
                p.display_status,
                p.action.attempts,
                p.compensation.attempts,
                failure.error if failure else None,
            )
        )
    return fields


def step_rows(state: SagaState, names: Sequence[str] | None = None) -> list[StepRow]:
    """Step rows derived from `state` (all steps, or only `names`)."""
    return [
        StepRow(name, index, status, attempts, compensation_attempts, last_error)
        for index, (name, status, attempts, compensation_attempts, last_error) in enumerate(
            step_fields(state)
        )
        if names is None or name in names
    ]


def input_fingerprint(flow_name: str, flow_version: int, payload: dict[str, Any]) -> str:
    """What an idempotency key is bound to: flow and canonical input."""
    canonical = json.dumps([flow_name, flow_version, payload], sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


class SagaStore(Protocol):
    """Durable saga storage. Every method is atomic; `append` is the only hot path."""

    def create_saga(
        self,
        *,
        saga_id: str,
        flow: FlowDefinition,
        payload: dict[str, Any],
        trace_id: str,
        idempotency_key: str | None,
        now: float,
        tenant: str = DEFAULT_TENANT,
    ) -> tuple[SagaRecord, bool]:
        """Store a new saga of `tenant` with its SAGA_CREATED event; (existing, False) for a
        key the same tenant used before (keys are unique per tenant)."""
        ...

    def load(self, saga_id: str, *, tenant: str | None = None) -> SagaRecord:
        """The saga's row (SagaNotFoundError if unknown, or if `tenant` is given and the saga
        belongs to another: another tenant's saga does not exist for the caller)."""
        ...

    def journal(self, saga_id: str) -> list[JournalEntry]:
        """Every journal entry of the saga, in order."""
        ...

    def append(
        self,
        saga_id: str,
        entries: Sequence[JournalEntry],
        *,
        expected_seq: int,
        state: SagaState,
        now: float,
        lease: Lease | None = None,
    ) -> int:
        """Append entries atomically after `expected_seq`; return the new last seq.

        Raises ConcurrentUpdate if another writer appended first, and LeaseLost if `lease`
        is no longer the saga's current lease (fencing).
        """
        ...

    def steps(self, saga_id: str) -> list[StepRow]:
        """Materialised step rows of the saga, in flow order."""
        ...

    def list_sagas(
        self,
        *,
        status: SagaStatus | None = None,
        flow: str | None = None,
        limit: int = 50,
        tenant: str | None = None,
    ) -> list[SagaRecord]:
        """Most recent sagas first, optionally filtered (`tenant` None: every tenant's)."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...

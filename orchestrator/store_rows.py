"""How a saga row reads and writes, the same on every backend.

The `sagas.steps` document (one JSON object per step, in flow order) and the reading of a
stored saga row into a `SagaRecord` (a damaged input refused, or shown in listings) are the
backends' common rules: orchestrator/sqlite_store.py and orchestrator/postgres_store.py both
use these.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from sagalab.orchestrator.errors import DamagedRecord
from sagalab.orchestrator.flow import FlowDefinition
from sagalab.orchestrator.journal import JournalEntry, entry_from_row
from sagalab.orchestrator.saga import SagaStatus
from sagalab.orchestrator.store import BatchItem, BatchRecord, SagaRecord, StepFields, StepRow

__all__ = ["batch_record", "journal_entry", "saga_record", "steps_from_json", "steps_json"]


def steps_json(fields: Iterable[StepFields]) -> str:
    """The `sagas.steps` document: one object per step, in flow order."""
    return json.dumps(
        [
            {
                "name": name,
                "status": status,
                "attempts": attempts,
                "compensation_attempts": compensation_attempts,
                "last_error": last_error,
            }
            for name, status, attempts, compensation_attempts, last_error in fields
        ],
        separators=(",", ":"),
    )


def steps_from_json(text: str) -> list[StepRow]:
    """The step rows a `sagas.steps` document holds, in flow order."""
    return [
        StepRow(
            name=r["name"],
            index=i,
            status=r["status"],
            attempts=r["attempts"],
            compensation_attempts=r["compensation_attempts"],
            last_error=r["last_error"],
        )
        for i, r in enumerate(json.loads(text))
    ]


def saga_record(
    row: Mapping[str, Any], flow: FlowDefinition, *, lenient: bool = False
) -> SagaRecord:
    """The stored row as a record. A damaged input or status raises DamagedRecord, or with
    `lenient` (listings) reads as {} / `failed` with `damaged` saying why."""
    damaged = None
    try:
        payload = json.loads(row["input"])
        if not isinstance(payload, dict):
            raise TypeError("not an object")
    except (TypeError, ValueError, RecursionError) as exc:
        damaged = f"damaged row: its stored input is not JSON ({exc})"
        if not lenient:
            raise DamagedRecord(
                f"saga {row['id']}: {damaged}; no command can run it until the row is repaired"
            ) from None
        payload = {}
    try:
        status = SagaStatus(row["status"])
    except ValueError:  # a status column written by hand: not one sagalab writes
        why = f"damaged row: its stored status {row['status']!r} is not a saga status"
        if not lenient:
            raise DamagedRecord(
                f"saga {row['id']}: {why}; no command can run it until the row is repaired"
            ) from None
        damaged = f"{damaged}; {why}" if damaged else why
        status = SagaStatus.FAILED  # listed as held for an operator, with `damaged` saying why
    return SagaRecord(
        id=row["id"],
        damaged=damaged,
        flow=flow,
        input=payload,
        status=status,
        trace_id=row["trace_id"],
        idempotency_key=row["idempotency_key"],
        reason=row["reason"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        last_seq=row["last_seq"],
        tenant=row["tenant"],
        forked_from=row.get("forked_from"),
    )


def journal_entry(saga_id: str, row: Mapping[str, Any]) -> JournalEntry:
    """A stored journal row as an entry; DamagedRecord when it is not one sagalab wrote."""
    try:
        return entry_from_row(dict(row))
    except (ValueError, KeyError, TypeError) as exc:  # JSONDecodeError is a ValueError
        raise DamagedRecord(
            f"saga {saga_id}: journal entry {row.get('seq')} is damaged: {exc}"
        ) from None


def batch_record(row: Mapping[str, Any], items: Iterable[Mapping[str, Any]]) -> BatchRecord:
    """A stored batch row and its item rows (in order) as a record."""
    return BatchRecord(
        id=row["id"],
        action=row["action"],
        filter=json.loads(row["filter"]),
        options=json.loads(row["options"]),
        created_at=row["created_at"],
        finished_at=row["finished_at"],
        items=tuple(
            BatchItem(i["saga_id"], i["position"], i["outcome"], i["detail"], i["at"])
            for i in items
        ),
    )

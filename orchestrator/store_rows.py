"""How a saga row reads and writes, the same on every backend.

The `sagas.steps` document (one JSON object per step, in flow order) and the reading of a
stored saga row into a `SagaRecord` (a damaged input refused, or shown in listings) are the
backends' common rules: orchestrator/sqlite_store.py and orchestrator/postgres_store.py both
use these.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sagalab.orchestrator.errors import DamagedRecord
from sagalab.orchestrator.flow import FlowDefinition
from sagalab.orchestrator.journal import JournalEntry, entry_from_row
from sagalab.orchestrator.saga import SagaStatus
from sagalab.orchestrator.sagafilter import InputMatch, SagaFilter
from sagalab.orchestrator.store import BatchItem, BatchRecord, SagaRecord, StepFields, StepRow

__all__ = [
    "FilterDialect",
    "batch_record",
    "journal_entry",
    "saga_filter_sql",
    "saga_record",
    "steps_from_json",
    "steps_json",
]


#: A step's `sagas.steps` object as JSON text, by its fields (`steps_json`), at most
#: `_STEP_TEXTS_LIMIT` of them (then forgotten all at once and built again).
_step_texts: dict[StepFields, str] = {}
_STEP_TEXTS_LIMIT = 4096
_compact = json.JSONEncoder(separators=(",", ":")).encode


def steps_json(fields: Iterable[StepFields]) -> str:
    """The `sagas.steps` document: one object per step, in flow order.

    Every commit writes the whole document though most of its steps did not change since
    the last: each step's text is kept by its fields and the document joined from them (the
    same text as encoding the list at once: compact separators, no spaces).
    """
    texts = _step_texts
    parts = []
    for step in fields:
        text = texts.get(step)
        if text is None:
            name, status, attempts, compensation_attempts, last_error = step
            text = _compact(
                {
                    "name": name,
                    "status": status,
                    "attempts": attempts,
                    "compensation_attempts": compensation_attempts,
                    "last_error": last_error,
                }
            )
            if len(texts) >= _STEP_TEXTS_LIMIT:
                texts.clear()
            texts[step] = text
        parts.append(text)
    return "[" + ",".join(parts) + "]"


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


@dataclass(frozen=True)
class FilterDialect:
    """What a backend's SQL says its own way in a saga filter; the rest is `saga_filter_sql`."""

    placeholder: str  # "?" (SQLite) or "%s" (psycopg)
    true: str  # the always-true clause the WHERE list starts with
    stopped_at: str  # a subquery: the step where the saga stopped
    error_match: str  # a clause taking the `--error` text twice
    statuses: Callable[[list[str]], tuple[str, list[Any]]]
    input_match: Callable[[InputMatch], tuple[str, list[Any]]]


def saga_filter_sql(
    criteria: SagaFilter, dialect: FilterDialect, *, after_created_at: Any = None
) -> tuple[str, list[Any]]:
    """The `SELECT * FROM sagas` query `criteria` selects (newest first), and its arguments.

    `after_created_at` is the creation time of `criteria.after` (the listing's cursor), which
    the backend looked up first (and refused when unknown).
    """
    ph = dialect.placeholder
    where: list[str] = [dialect.true]
    args: list[Any] = []
    if criteria.after is not None:
        where.append(f"(created_at < {ph} OR (created_at = {ph} AND id > {ph}))")
        args += [after_created_at, after_created_at, criteria.after]
    if criteria.statuses:
        clause, more = dialect.statuses([s.value for s in criteria.statuses])
        where.append(clause)
        args += more
    equal: tuple[tuple[str, Any], ...] = (
        ("flow_name =", criteria.flow),
        ("tenant =", criteria.tenant),
        ("idempotency_key =", criteria.key),
        ("created_at >=", criteria.since),
        ("created_at <", criteria.until),
    )
    for column, value in equal:
        if value is not None:
            where.append(f"{column} {ph}")
            args.append(value)
    if criteria.step is not None:
        where.append(f"({dialect.stopped_at}) = {ph}")
        args.append(criteria.step)
    if criteria.error is not None:
        where.append(dialect.error_match)
        args += [criteria.error, criteria.error]
    for match in criteria.inputs:
        clause, more = dialect.input_match(match)
        where.append(clause)
        args += more
    limit = "" if criteria.limit is None else f" LIMIT {int(criteria.limit)}"
    sql = f"SELECT * FROM sagas WHERE {' AND '.join(where)} ORDER BY created_at DESC, id{limit}"
    return sql, args

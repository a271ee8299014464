"""Plain-data views of sagas for `--json` output and the HTTP API."""

from __future__ import annotations

from typing import Any

from sagalab.orchestrator.journal import JournalEntry, entry_to_dict
from sagalab.orchestrator.saga import EventType, Phase, SagaStatus
from sagalab.orchestrator.store import SagaRecord, StepRow


def step_timings(entries: list[JournalEntry]) -> dict[str, dict[str, float | None]]:
    """Per step: first start, last end and total call time (ms) of its action attempts."""
    timings: dict[str, dict[str, float | None]] = {}
    for entry in entries:
        e = entry.event
        if e.step is None or e.phase is not Phase.ACTION:
            continue
        t = timings.setdefault(e.step, {"started_at": None, "ended_at": None, "call_ms": 0.0})
        if e.type is EventType.ATTEMPT_STARTED and t["started_at"] is None:
            t["started_at"] = e.at
        if e.type in (EventType.ATTEMPT_SUCCEEDED, EventType.ATTEMPT_FAILED):
            t["ended_at"] = e.at
            t["call_ms"] = (t["call_ms"] or 0.0) + (entry.duration_ms or 0.0)
    return timings


def saga_summary(record: SagaRecord) -> dict[str, Any]:
    """The saga's identity and status, without steps."""
    return {
        "id": record.id,
        "flow": record.flow.name,
        "flow_version": record.flow.version,
        "status": record.status.value,
        "tenant": record.tenant,
        "trace_id": record.trace_id,
        "idempotency_key": record.idempotency_key,
        # A completed saga shows no failure (the journal keeps the history); rows stored
        # before the core cleared the reason on completion may still carry a stale one.
        "reason": None if record.status is SagaStatus.COMPLETED else record.reason,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "forked_from": record.forked_from,
        **({"damaged": record.damaged} if record.damaged else {}),
    }


def saga_view(
    record: SagaRecord,
    steps: list[StepRow],
    entries: list[JournalEntry] | None = None,
    forks: list[str] | None = None,
) -> dict[str, Any]:
    """The saga with its input, the sagas forked from it, and a row per step (attempts,
    status, timing, last error)."""
    timings = step_timings(entries or [])
    rows = []
    for row in steps:
        definition = record.flow.step(row.name)
        t = timings.get(row.name, {})
        rows.append(
            {
                "name": row.name,
                "kind": definition.kind.value,
                "service": definition.service,
                "status": row.status,
                "attempts": row.attempts,
                "compensation_attempts": row.compensation_attempts,
                "last_error": row.last_error,
                "started_at": t.get("started_at"),
                "ended_at": t.get("ended_at"),
                "call_ms": t.get("call_ms"),
            }
        )
    return {**saga_summary(record), "forks": forks or [], "input": record.input, "steps": rows}


def events_view(entries: list[JournalEntry]) -> list[dict[str, Any]]:
    """Every journal entry as plain data."""
    return [entry_to_dict(e) for e in entries]

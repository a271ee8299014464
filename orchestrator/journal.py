"""Journal entries: a core `Event` plus what the shell observed around it.

The core decides from `Event`s alone; operators and tests also want the request and response
summaries, HTTP status, duration and span id, which live beside the event in the same row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sagalab.orchestrator.records import direct_init
from sagalab.orchestrator.saga import Event, EventType, Failure, Phase


@direct_init
@dataclass(frozen=True)
class JournalEntry:
    """One row of a saga's journal. `seq` is assigned by the store (0 until stored)."""

    event: Event
    seq: int = 0
    request: Any = None
    response: Any = None
    status_code: int | None = None
    duration_ms: float | None = None
    span_id: str | None = None


def failure_to_json(failure: Failure | None) -> str | None:
    """A failure as JSON text (None stays None)."""
    if failure is None:
        return None
    return json.dumps(
        {
            "error": failure.error,
            "retryable": failure.retryable,
            "maybe_applied": failure.maybe_applied,
            "retry_after": failure.retry_after,
        }
    )


def failure_from_json(text: str | None) -> Failure | None:
    """Inverse of `failure_to_json`."""
    if not text:
        return None
    d = json.loads(text)
    return Failure(d["error"], d["retryable"], d["maybe_applied"], d.get("retry_after"))


EVENT_COLUMNS = (
    "saga_id",
    "seq",
    "type",
    "step",
    "phase",
    "attempt",
    "at",
    "failure",
    "not_before",
    "reason",
    "force",
    "request",
    "response",
    "status_code",
    "duration_ms",
    "trace_id",
    "span_id",
)
"""The columns of a stored journal row, in the order `entry_values` gives them."""


#: Each event type's and phase's text. A dict look-up costs a tenth of `.value` (a Python
#: descriptor call on an enum member), and a store writes both for every journal row.
_TYPE_TEXT: dict[EventType, str] = {t: t.value for t in EventType}
_PHASE_TEXT: dict[Phase, str] = {p: p.value for p in Phase}


#: The columns `entry_row` gives: every journal column but the two a saga's rows share
#: (`saga_id` and `trace_id`), in `EVENT_COLUMNS` order.
ENTRY_ROW_COLUMNS = tuple(c for c in EVENT_COLUMNS if c not in ("saga_id", "trace_id"))


def entry_row(entry: JournalEntry, seq: int) -> tuple[Any, ...]:
    """The database row for `entry` stored at `seq` without its saga's id and trace id, as
    values in `ENTRY_ROW_COLUMNS` order (a store binds those two once per statement)."""
    e = entry.event
    phase, failure = e.phase, e.failure
    request, response = entry.request, entry.response
    # The None checks inline: most rows have no failure, request or response, and a call
    # costs more than the check (one row per journaled event).
    return (
        seq,
        _TYPE_TEXT[e.type],
        e.step,
        None if phase is None else _PHASE_TEXT[phase],
        e.attempt,
        e.at,
        None if failure is None else failure_to_json(failure),
        e.not_before,
        e.reason,
        1 if e.force else 0,
        None if request is None else json.dumps(request),
        None if response is None else json.dumps(response),
        entry.status_code,
        entry.duration_ms,
        entry.span_id,
    )


def entry_values(saga_id: str, trace_id: str, entry: JournalEntry, seq: int) -> tuple[Any, ...]:
    """The database row for `entry` stored at `seq`, as values in `EVENT_COLUMNS` order."""
    row = entry_row(entry, seq)
    return (saga_id, *row[:14], trace_id, row[14])


def entry_to_row(saga_id: str, trace_id: str, entry: JournalEntry, seq: int) -> dict[str, Any]:
    """The database row for `entry` stored at `seq`, by column name (`entry_values`)."""
    return dict(zip(EVENT_COLUMNS, entry_values(saga_id, trace_id, entry, seq), strict=True))


def entry_from_row(row: dict[str, Any]) -> JournalEntry:
    """Inverse of `entry_to_row`."""
    event = Event(
        type=EventType(row["type"]),
        at=row["at"],
        step=row["step"],
        phase=Phase(row["phase"]) if row["phase"] else None,
        attempt=row["attempt"],
        failure=failure_from_json(row["failure"]),
        not_before=row["not_before"],
        reason=row["reason"],
        force=bool(row["force"]),
    )
    return JournalEntry(
        event=event,
        seq=row["seq"],
        request=json.loads(row["request"]) if row["request"] else None,
        response=json.loads(row["response"]) if row["response"] else None,
        status_code=row["status_code"],
        duration_ms=row["duration_ms"],
        span_id=row["span_id"],
    )


def entry_to_dict(entry: JournalEntry) -> dict[str, Any]:
    """A JSON-ready view of an entry for `--json` output."""
    e = entry.event
    failure = None
    if e.failure is not None:
        failure = json.loads(failure_to_json(e.failure) or "null")
    return {
        "seq": entry.seq,
        "type": e.type.value,
        "at": e.at,
        "step": e.step,
        "phase": e.phase.value if e.phase else None,
        "attempt": e.attempt,
        "failure": failure,
        "not_before": e.not_before,
        "reason": e.reason,
        "force": e.force,
        "request": entry.request,
        "response": entry.response,
        "status_code": entry.status_code,
        "duration_ms": entry.duration_ms,
        "span_id": entry.span_id,
    }

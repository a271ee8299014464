"""A saga's swimlane timeline as plain data: what the console's script draws on one time axis.

Pure: the saga's record, its journal, the breaker transitions of the services it called and
`now` in, a JSON-ready dict out (no store, no clock). Times are seconds since the saga was
created (`t0`), so the script scales one axis for every lane.

Lanes, top to bottom: one per step in flow order (its action attempts; the pivot marked),
then one per compensated step in the order the compensations ran (the reverse of the
flow's), then one per breaker of a service the saga called. Each attempt is a bar (start,
end, outcome, error, HTTP status, request and response); a scheduled retry is a wait bar
until it was due (with the Retry-After the service asked for, if any). Markers: the saga's
creation and end, operator requests (rollback, cancel, retry-step, skip-step) and takeovers:
an attempt closed as interrupted is one whose worker died mid-call, and the run that closed
it took the saga's lease over (the store keeps only the current lease holder, so the journal's
interrupted attempts are where owner changes show).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sagalab.orchestrator.flow import StepKind
from sagalab.orchestrator.journal import JournalEntry
from sagalab.orchestrator.saga import INTERRUPTED, EventType, Phase
from sagalab.orchestrator.store import SagaRecord

__all__ = ["SUMMARY_CHARS", "build_timeline", "summary"]

#: The longest request or response summary a bar carries (the journal keeps all of it).
SUMMARY_CHARS = 400

_CLOSING = {
    EventType.ATTEMPT_SUCCEEDED: "succeeded",
    EventType.ATTEMPT_FAILED: "failed",
}
_MARKERS = {
    EventType.SAGA_CREATED: "created",
    EventType.ROLLBACK_REQUESTED: "operator",
    EventType.STEP_RETRY_REQUESTED: "operator",
    EventType.STEP_SKIPPED: "operator",
    EventType.STEP_FAILED: "step-failed",
    EventType.SAGA_COMPLETED: "end",
    EventType.SAGA_ROLLED_BACK: "end",
}


def summary(value: Any) -> str | None:
    """`value` as short text for a tooltip (None stays None)."""
    if value is None:
        return None
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= SUMMARY_CHARS else text[: SUMMARY_CHARS - 1] + "…"


def _lane_id(step: str, phase: Phase) -> str:
    return f"{phase.value}:{step}"


def _marker_label(entry: JournalEntry) -> str:
    e = entry.event
    if e.type is EventType.ROLLBACK_REQUESTED:
        word = "rollback" + (" (forced)" if e.force else "")
        return f"{word}: {e.reason}" if e.reason else word
    if e.type is EventType.STEP_RETRY_REQUESTED:
        return f"retry-step {e.step}"
    if e.type is EventType.STEP_SKIPPED:
        return f"skip-step {e.step}: {e.reason or ''}".rstrip(": ")
    if e.type is EventType.STEP_FAILED:
        return f"{e.step} failed" + (f": {e.failure.error}" if e.failure else "")
    if e.type is EventType.SAGA_COMPLETED:
        return "completed"
    if e.type is EventType.SAGA_ROLLED_BACK:
        return "rolled back"
    return "created"


def _breaker_lanes(
    services: Sequence[str], transitions: Iterable[Mapping[str, Any]], t0: float, end: float
) -> list[dict[str, Any]]:
    """Per service, its breaker's state segments over [t0, end] (closed before any record)."""
    by_name: dict[str, list[Mapping[str, Any]]] = {name: [] for name in services}
    for tr in transitions:
        if tr.get("name") in by_name:
            by_name[str(tr["name"])].append(tr)
    lanes = []
    for name in services:
        state, since = "closed", 0.0
        segments: list[dict[str, Any]] = []
        for tr in sorted(by_name[name], key=lambda r: float(r.get("at") or 0.0)):
            at = float(tr.get("at") or 0.0) - t0
            if at <= 0:  # before the saga: the state it started in
                state = str(tr.get("new"))
                continue
            if at >= end:
                break
            segments.append({"start": since, "end": at, "state": state})
            state, since = str(tr.get("new")), at
        segments.append({"start": since, "end": end, "state": state})
        lanes.append(
            {
                "id": f"breaker:{name}",
                "label": f"breaker {name}",
                "kind": "breaker",
                "segments": [s for s in segments if s["end"] > s["start"] or len(segments) == 1],
            }
        )
    return lanes


def build_timeline(
    record: SagaRecord,
    entries: Sequence[JournalEntry],
    *,
    now: float,
    breaker_transitions: Iterable[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The timeline of `record` from its journal `entries` (see the module docstring).

    An attempt still open is drawn up to `now` while the saga is active, and flagged
    `open` (it was interrupted if the saga ended without closing it).
    """
    t0 = record.created_at
    flow = record.flow
    open_bars: dict[tuple[str, Phase, int], dict[str, Any]] = {}
    bars: dict[str, list[dict[str, Any]]] = {}
    waits: dict[str, list[dict[str, Any]]] = {}
    first_compensation: dict[str, float] = {}
    markers: list[dict[str, Any]] = []
    last_at = t0
    for entry in entries:
        e = entry.event
        at = e.at - t0
        last_at = max(last_at, e.at)
        if e.type in _MARKERS:
            markers.append(
                {
                    "at": at,
                    "kind": _MARKERS[e.type],
                    "label": _marker_label(entry),
                    "step": e.step,
                }
            )
        if e.step is None or e.phase is None:
            continue
        lane = _lane_id(e.step, e.phase)
        if e.type is EventType.ATTEMPT_STARTED:
            if e.phase is Phase.COMPENSATION:
                first_compensation.setdefault(e.step, at)
            bar: dict[str, Any] = {
                "start": at,
                "end": None,
                "attempt": e.attempt,
                "outcome": "open",
                "error": None,
                "status_code": None,
                "request": None,
                "response": None,
                "retry_after": None,
            }
            bars.setdefault(lane, []).append(bar)
            open_bars[(e.step, e.phase, e.attempt)] = bar
        elif e.type in _CLOSING:
            closed = open_bars.pop((e.step, e.phase, e.attempt), None)
            if closed is None:  # an outcome copied into a fork without its start: a point
                closed = {"start": at, "attempt": e.attempt}
                bars.setdefault(lane, []).append(closed)
            interrupted = e.failure == INTERRUPTED
            closed.update(
                end=at,
                outcome="interrupted" if interrupted else _CLOSING[e.type],
                error=e.failure.error if e.failure else None,
                retry_after=e.failure.retry_after if e.failure else None,
                status_code=entry.status_code,
                request=summary(entry.request),
                response=summary(entry.response),
                duration_ms=entry.duration_ms,
            )
            if interrupted:
                markers.append(
                    {
                        "at": at,
                        "kind": "takeover",
                        "label": f"lease taken over: attempt {e.attempt} of {e.step} "
                        "was interrupted (its worker died)",
                        "step": e.step,
                    }
                )
        elif e.type is EventType.RETRY_SCHEDULED:
            # The Retry-After the service asked for is on the failure the wait follows.
            earlier = bars.get(lane) or []
            retry_after = earlier[-1].get("retry_after") if earlier else None
            waits.setdefault(lane, []).append(
                {
                    "start": at,
                    "end": (e.not_before - t0) if e.not_before is not None else at,
                    "retry_after": retry_after,
                }
            )
    active = not record.status.is_terminal
    end = max((now if active else last_at) - t0, last_at - t0, 0.001)
    for bar in open_bars.values():
        if active:
            bar["end"] = end
        else:
            bar["end"] = bar["start"]
    pivot = flow.pivot_index
    lanes: list[dict[str, Any]] = []
    for index, step in enumerate(flow.steps):
        lane = _lane_id(step.name, Phase.ACTION)
        lanes.append(
            {
                "id": lane,
                "label": step.name,
                "kind": "action",
                "step_kind": step.kind.value,
                "pivot": index == pivot or step.kind is StepKind.PIVOT,
                "service": step.service,
                "bars": bars.get(lane, []),
                "waits": waits.get(lane, []),
            }
        )
    known = {step.name: step for step in flow.steps}
    for name in sorted(first_compensation, key=lambda n: first_compensation[n]):
        lane = _lane_id(name, Phase.COMPENSATION)
        undone = known.get(name)  # a journal names its flow's steps; never fail a page on it
        lanes.append(
            {
                "id": lane,
                "label": f"undo {name}",
                "kind": "compensation",
                "step_kind": undone.kind.value if undone else None,
                "pivot": False,
                "service": undone.service if undone else None,
                "bars": bars.get(lane, []),
                "waits": waits.get(lane, []),
            }
        )
    services = sorted({s.service for s in flow.steps if s.service})
    lanes.extend(_breaker_lanes(services, breaker_transitions, t0, end))
    return {
        "saga_id": record.id,
        "status": record.status.value,
        "active": active,
        "t0": t0,
        "end": end,
        "lanes": lanes,
        "markers": markers,
    }

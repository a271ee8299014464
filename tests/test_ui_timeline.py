"""The console's timeline model (ui/timeline.py), from hand-written journals: pure, no store.

What the browser draws is checked in test_ui_browser.py; here, what it is given: lanes in
flow order then compensations in the order they ran, bars closed by their outcomes, retry
waits carrying the Retry-After asked for, takeovers, operator markers, and breaker states
over the saga's span.
"""

from __future__ import annotations

from dataclasses import replace

from opslab import ops_flow

from sagalab.orchestrator.flowfile import load_flow
from sagalab.orchestrator.journal import JournalEntry
from sagalab.orchestrator.saga import INTERRUPTED, Event, EventType, Failure, Phase, SagaStatus
from sagalab.orchestrator.store import SagaRecord
from sagalab.ui.timeline import SUMMARY_CHARS, build_timeline

T0 = 1_000.0
ACT, COMP = Phase.ACTION, Phase.COMPENSATION
START, OK, FAIL = EventType.ATTEMPT_STARTED, EventType.ATTEMPT_SUCCEEDED, EventType.ATTEMPT_FAILED
BUSY = Failure("HTTP 429", retryable=True, maybe_applied=False, retry_after=2.0)
REFUSED = Failure("HTTP 402", retryable=False, maybe_applied=False)


def record(status: SagaStatus) -> SagaRecord:
    return SagaRecord(
        id="s1",
        flow=ops_flow(),
        input={},
        status=status,
        trace_id="t" * 32,
        idempotency_key=None,
        reason=None,
        created_at=T0,
        updated_at=T0 + 10,
        last_seq=0,
    )


def entries(*events: Event, request: object = None) -> list[JournalEntry]:
    return [JournalEntry(e, request=request if e.type is not START else None) for e in events]


def at(t: float) -> float:
    return T0 + t


ROLLED_BACK = entries(
    Event(EventType.SAGA_CREATED, at(0)),
    Event(START, at(1), "reserve", ACT, 1),
    Event(OK, at(2), "reserve", ACT, 1),
    Event(START, at(2), "charge", ACT, 1),
    Event(FAIL, at(3), "charge", ACT, 1, BUSY),
    Event(EventType.RETRY_SCHEDULED, at(3), "charge", ACT, 2, not_before=at(5)),
    Event(START, at(5), "charge", ACT, 2),
    Event(FAIL, at(6), "charge", ACT, 2, REFUSED),
    Event(EventType.STEP_FAILED, at(6), "charge", ACT, 2, REFUSED),
    Event(START, at(7), "charge", COMP, 1),
    Event(OK, at(8), "charge", COMP, 1),
    Event(START, at(8), "reserve", COMP, 1),
    Event(OK, at(9), "reserve", COMP, 1),
    Event(EventType.SAGA_ROLLED_BACK, at(9)),
)


def test_lanes_in_flow_order_then_compensations_as_they_ran() -> None:
    drawn = build_timeline(record(SagaStatus.ROLLED_BACK), ROLLED_BACK, now=at(100))
    ids = [lane["id"] for lane in drawn["lanes"] if lane["kind"] != "breaker"]
    assert ids == [
        "action:reserve",
        "action:charge",
        "action:ship",
        "action:notify",
        "compensation:charge",
        "compensation:reserve",
    ]
    assert [lane["id"] for lane in drawn["lanes"] if lane.get("pivot")] == ["action:ship"]
    assert drawn["end"] == 9 and not drawn["active"]


def test_bars_waits_and_retry_after() -> None:
    drawn = build_timeline(record(SagaStatus.ROLLED_BACK), ROLLED_BACK, now=at(100))
    charge = drawn["lanes"][1]
    assert [(b["start"], b["end"], b["outcome"]) for b in charge["bars"]] == [
        (2, 3, "failed"),
        (5, 6, "failed"),
    ]
    assert charge["bars"][0]["error"] == "HTTP 429"
    assert charge["waits"] == [{"start": 3, "end": 5, "retry_after": 2.0}]
    assert [m["kind"] for m in drawn["markers"]] == ["created", "step-failed", "end"]


def test_an_open_attempt_runs_to_now_and_an_interrupted_one_is_a_takeover() -> None:
    journal = entries(
        Event(EventType.SAGA_CREATED, at(0)),
        Event(START, at(1), "reserve", ACT, 1),
        Event(FAIL, at(4), "reserve", ACT, 1, INTERRUPTED),
        Event(START, at(4), "reserve", ACT, 2),
        Event(EventType.ROLLBACK_REQUESTED, at(5), reason="<b>stop</b>"),
    )
    drawn = build_timeline(record(SagaStatus.RUNNING), journal, now=at(7))
    bars = drawn["lanes"][0]["bars"]
    assert [(b["outcome"], b["end"]) for b in bars] == [("interrupted", 4), ("open", 7)]
    kinds = {m["kind"]: m for m in drawn["markers"]}
    assert kinds["takeover"]["at"] == 4 and kinds["takeover"]["step"] == "reserve"
    assert kinds["operator"]["label"] == "rollback: <b>stop</b>"  # escaped where it is drawn
    assert drawn["active"] and drawn["end"] == 7


def test_breaker_states_over_the_saga_span() -> None:
    names = {"reserve": "reserve_inventory", "charge": "charge_payment"}
    journal = [
        JournalEntry(replace(e.event, step=names[e.event.step]) if e.event.step else e.event)
        for e in ROLLED_BACK
    ]
    checkout = replace(record(SagaStatus.ROLLED_BACK), flow=load_flow("checkout"))
    transitions = [
        {"name": "payments", "at": at(-50), "old": "closed", "new": "open"},
        {"name": "payments", "at": at(3), "old": "open", "new": "half-open"},
        {"name": "payments", "at": at(4), "old": "half-open", "new": "closed"},
        {"name": "elsewhere", "at": at(4), "old": "closed", "new": "open"},
    ]
    drawn = build_timeline(checkout, journal, now=at(100), breaker_transitions=transitions)
    lanes = {lane["id"]: lane for lane in drawn["lanes"]}
    services = ("inventory", "notifications", "payments", "shipping")
    assert {i for i in lanes if i.startswith("breaker:")} == {f"breaker:{s}" for s in services}
    assert [(s["start"], s["end"], s["state"]) for s in lanes["breaker:payments"]["segments"]] == [
        (0.0, 3, "open"),  # opened before the saga began
        (3, 4, "half-open"),
        (4, 9, "closed"),
    ]
    assert lanes["breaker:shipping"]["segments"] == [{"start": 0.0, "end": 9, "state": "closed"}]
    assert lanes["compensation:charge_payment"]["service"] == "payments"


def test_long_requests_are_summarised() -> None:
    journal = entries(
        Event(EventType.SAGA_CREATED, at(0)),
        Event(START, at(1), "reserve", ACT, 1),
        Event(OK, at(2), "reserve", ACT, 1),
        request={"body": "x" * 5000},
    )
    bar = build_timeline(record(SagaStatus.RUNNING), journal, now=at(3))["lanes"][0]["bars"][0]
    assert len(bar["request"]) == SUMMARY_CHARS and bar["request"].endswith("…")

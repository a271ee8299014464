"""The saga runner on a real SQLite file with Python steps registered in orchestrator.registry.

Handlers are registered under names unique to this module; what they do is scripted per test
through `Script`. Time is a fake clock that the runner's injected `sleep` advances: no test
here sleeps for real.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from sagalab.orchestrator.errors import InputError
from sagalab.orchestrator.executors import PythonExecutor
from sagalab.orchestrator.flow import FlowDefinition, flow_from_dict
from sagalab.orchestrator.registry import (
    PermanentStepError,
    StepCall,
    TransientStepError,
    compensation_handler,
    step_handler,
)
from sagalab.orchestrator.runner import SagaRunner, start_saga
from sagalab.orchestrator.saga import EventType, Phase, SagaStatus
from sagalab.orchestrator.sqlite_store import SQLiteStore

PREFIX = "trp_"  # handler names owned by this module


@dataclass
class Script:
    """What each handler does next, and what every handler saw."""

    behaviour: dict[str, list[Callable[[StepCall], Any]]] = field(default_factory=dict)
    calls: list[StepCall] = field(default_factory=list)

    def then(self, name: str, *actions: Callable[[StepCall], Any]) -> None:
        self.behaviour.setdefault(name, []).extend(actions)

    def run(self, name: str, call: StepCall) -> Any:
        # The runner passes its live responses mapping; keep what the handler saw then.
        self.calls.append(replace(call, responses=dict(call.responses)))
        queue = self.behaviour.get(name)
        if queue:
            return queue.pop(0)(call)
        return {"done": name, "attempt": call.attempt}

    def seen(self) -> list[str]:
        return [
            ("undo " if c.phase is Phase.COMPENSATION else "") + f"{c.step}#{c.attempt}"
            for c in self.calls
        ]


SCRIPT = Script()


def _register(step: str) -> None:
    step_handler(PREFIX + step)(lambda call: SCRIPT.run(step, call))
    compensation_handler(PREFIX + "undo_" + step)(lambda call: SCRIPT.run("undo " + step, call))


for _step in ("reserve", "charge", "ship"):
    _register(_step)


@pytest.fixture
def script() -> Iterator[Script]:
    SCRIPT.behaviour.clear()
    SCRIPT.calls.clear()
    yield SCRIPT
    SCRIPT.behaviour.clear()
    SCRIPT.calls.clear()


class FakeClock:
    """A clock that only moves when the runner sleeps (or a test advances it)."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def make_flow(retry: dict[str, Any] | None = None, ship_kind: str = "compensatable") -> Any:
    steps = []
    for name in ("reserve", "charge", "ship"):
        step: dict[str, Any] = {
            "name": name,
            "handler": PREFIX + name,
            "retry": retry or {"max_attempts": 3, "initial_delay": 0.5, "max_delay": 2.0},
        }
        if not (name == "ship" and ship_kind == "pivot"):
            step["compensation_handler"] = PREFIX + "undo_" + name
        if name == "ship":
            step["kind"] = ship_kind
        steps.append(step)
    return flow_from_dict(
        {"name": "py", "version": 1, "input": {"required": ["order_id"]}, "steps": steps}
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def runner_for(store: SQLiteStore, clock: FakeClock, **kwargs: Any) -> SagaRunner:
    return SagaRunner(
        store, PythonExecutor(), clock=clock, sleep=clock.sleep, rng=random.Random(1), **kwargs
    )


def start(store: SQLiteStore, clock: FakeClock, flow: FlowDefinition | None = None) -> str:
    record, created = start_saga(
        store, flow or make_flow(), {"order_id": "o-1"}, now=clock(), queue=False
    )
    assert created
    return record.id


def journal_words(store: SQLiteStore, saga_id: str) -> list[str]:
    words = []
    for entry in store.journal(saga_id):
        e = entry.event
        undo = "undo " if e.phase is Phase.COMPENSATION else ""
        words.append(f"{e.type.value} {undo}{e.step}".strip() if e.step else e.type.value)
    return words


def test_saga_of_python_steps_completes(script: Script, store: SQLiteStore, clock: FakeClock):
    saga_id = start(store, clock)
    result = runner_for(store, clock).run(saga_id)
    assert result.status is SagaStatus.COMPLETED
    assert script.seen() == ["reserve#1", "charge#1", "ship#1"]
    # Each handler sees the earlier steps' results and its own stable idempotency key.
    ship = script.calls[-1]
    assert ship.responses == {
        "reserve": {"done": "reserve", "attempt": 1},
        "charge": {"done": "charge", "attempt": 1},
    }
    assert ship.input == {"order_id": "o-1"}
    assert ship.idempotency_key == f"{saga_id}:ship:action"
    record = store.load(saga_id)
    assert record.status is SagaStatus.COMPLETED
    assert [(r.name, r.status, r.attempts) for r in store.steps(saga_id)] == [
        ("reserve", "succeeded", 1),
        ("charge", "succeeded", 1),
        ("ship", "succeeded", 1),
    ]
    assert store.journal(saga_id)[-1].event.type is EventType.SAGA_COMPLETED
    assert clock.sleeps == []


def test_permanent_failure_rolls_back_in_reverse(
    script: Script, store: SQLiteStore, clock: FakeClock
):
    script.then("ship", lambda call: (_ for _ in ()).throw(PermanentStepError("no carrier")))
    saga_id = start(store, clock)
    result = runner_for(store, clock).run(saga_id)
    assert result.status is SagaStatus.ROLLED_BACK
    assert script.seen() == ["reserve#1", "charge#1", "ship#1", "undo charge#1", "undo reserve#1"]
    assert [c.idempotency_key for c in script.calls[-2:]] == [
        f"{saga_id}:charge:compensation",
        f"{saga_id}:reserve:compensation",
    ]
    assert [r.status for r in store.steps(saga_id)] == ["compensated", "compensated", "failed"]
    record = store.load(saga_id)
    assert record.status is SagaStatus.ROLLED_BACK
    assert record.reason is not None and "no carrier" in record.reason


def test_handler_bug_counts_as_maybe_applied_and_is_compensated(
    script: Script, store: SQLiteStore, clock: FakeClock
):
    script.then("ship", lambda call: 1 / 0)
    saga_id = start(store, clock)
    assert runner_for(store, clock).run(saga_id).status is SagaStatus.ROLLED_BACK
    assert script.seen()[-3:] == ["undo ship#1", "undo charge#1", "undo reserve#1"]


def test_transient_errors_are_retried_with_the_injected_clock(
    script: Script, store: SQLiteStore, clock: FakeClock
):
    def busy(call: StepCall) -> Any:
        raise TransientStepError("bank busy")

    script.then("charge", busy, busy)
    saga_id = start(store, clock)
    started = time.monotonic()
    result = runner_for(store, clock).run(saga_id)
    assert time.monotonic() - started < 5.0  # the waits were on the fake clock
    assert result.status is SagaStatus.COMPLETED
    assert script.seen() == ["reserve#1", "charge#1", "charge#2", "charge#3", "ship#1"]
    # One idempotency key for every attempt of the step.
    assert len({c.idempotency_key for c in script.calls if c.step == "charge"}) == 1
    scheduled = [
        e.event for e in store.journal(saga_id) if e.event.type is EventType.RETRY_SCHEDULED
    ]
    assert [e.attempt for e in scheduled] == [2, 3]
    assert len(clock.sleeps) <= 2 and all(0.0 <= s <= 2.0 for s in clock.sleeps)
    starts = [
        e.event.at
        for e in store.journal(saga_id)
        if e.event.type is EventType.ATTEMPT_STARTED and e.event.step == "charge"
    ]
    for event, next_start in zip(scheduled, starts[1:], strict=True):
        assert event.not_before is not None and next_start >= event.not_before
    assert store.steps(saga_id)[1].attempts == 3


def test_transient_errors_exhaust_the_budget_then_roll_back(
    script: Script, store: SQLiteStore, clock: FakeClock
):
    def busy(call: StepCall) -> Any:
        raise TransientStepError("bank busy")

    script.then("charge", busy, busy, busy)
    saga_id = start(store, clock)
    assert runner_for(store, clock).run(saga_id).status is SagaStatus.ROLLED_BACK
    # Transient errors applied nothing: only reserve is undone.
    assert script.seen() == ["reserve#1", "charge#1", "charge#2", "charge#3", "undo reserve#1"]


def test_without_waiting_the_run_stops_at_a_scheduled_retry(
    script: Script, store: SQLiteStore, clock: FakeClock
):
    script.then("reserve", lambda call: (_ for _ in ()).throw(TransientStepError("later")))
    flow = make_flow(retry={"max_attempts": 3, "initial_delay": 10.0, "max_delay": 10.0})
    saga_id = start(store, clock, flow)
    runner = SagaRunner(
        store, PythonExecutor(), clock=clock, sleep=clock.sleep, rng=random.Random(3)
    )
    first = runner.run(saga_id, wait_for_retries=False)
    assert first.status is SagaStatus.RUNNING
    assert first.wait_until is not None and clock.now <= first.wait_until <= clock.now + 10.0
    assert clock.sleeps == []
    clock.now = first.wait_until
    assert runner.run(saga_id).status is SagaStatus.COMPLETED
    assert script.seen() == ["reserve#1", "reserve#2", "charge#1", "ship#1"]


def test_each_step_result_is_committed_before_the_next_step_starts(
    script: Script, store: SQLiteStore, clock: FakeClock, db_path: Path
):
    seen_by_observer: dict[str, list[str]] = {}

    def observe(step: str) -> Callable[[StepCall], Any]:
        def handler(call: StepCall) -> Any:
            observer = SQLiteStore(db_path)  # a second connection, as another process would
            try:
                seen_by_observer[step] = journal_words(observer, call.saga_id)
            finally:
                observer.close()
            return {"ok": step}

        return handler

    script.then("charge", observe("charge"))
    script.then("ship", observe("ship"))
    saga_id = start(store, clock)
    assert runner_for(store, clock).run(saga_id).status is SagaStatus.COMPLETED
    assert seen_by_observer["charge"] == [
        "saga_created",
        "attempt_started reserve",
        "attempt_succeeded reserve",
        "attempt_started charge",
    ]
    assert seen_by_observer["ship"][-3:] == [
        "attempt_started charge",
        "attempt_succeeded charge",
        "attempt_started ship",
    ]


class Crash(BaseException):
    """Stands for the process dying at a checkpoint."""


def test_crash_after_the_call_then_resume_retries_with_the_same_key(
    script: Script, store: SQLiteStore, clock: FakeClock
):
    def checkpoint(point: str, step: str, phase: Phase) -> None:
        if (point, step) == ("after-call", "charge"):
            raise Crash

    saga_id = start(store, clock)
    with pytest.raises(Crash):
        runner_for(store, clock, checkpoint=checkpoint).run(saga_id)
    # The attempt is durable; its outcome never was.
    last = store.journal(saga_id)[-1].event
    assert (last.type, last.step) == (EventType.ATTEMPT_STARTED, "charge")

    resumed = runner_for(store, clock).run(saga_id)
    assert resumed.status is SagaStatus.COMPLETED
    assert script.seen() == ["reserve#1", "charge#1", "charge#2", "ship#1"]
    keys = [c.idempotency_key for c in script.calls if c.step == "charge"]
    assert keys[0] == keys[1]
    interrupted = [
        e.event
        for e in store.journal(saga_id)
        if e.event.type is EventType.ATTEMPT_FAILED and e.event.step == "charge"
    ]
    assert len(interrupted) == 1 and interrupted[0].failure is not None
    assert interrupted[0].failure.maybe_applied


def test_on_event_sees_every_journaled_event(script: Script, store: SQLiteStore, clock: FakeClock):
    events: list[EventType] = []
    saga_id = start(store, clock)
    runner_for(store, clock, on_event=lambda sid, e: events.append(e.type)).run(saga_id)
    assert events == [e.event.type for e in store.journal(saga_id)[1:]]


def test_start_saga_validates_input_and_honours_idempotency(store: SQLiteStore, clock: FakeClock):
    flow = make_flow()
    with pytest.raises(InputError, match="needs input key"):
        start_saga(store, flow, {"other": 1}, now=clock())
    with pytest.raises(InputError, match="JSON object"):
        start_saga(store, flow, ["o-1"], now=clock())
    first, created = start_saga(store, flow, {"order_id": "o-1"}, idempotency_key="k", now=1.0)
    again, created_again = start_saga(
        store, flow, {"order_id": "o-1"}, idempotency_key="k", now=2.0
    )
    assert created and not created_again and again.id == first.id

"""`SagaMetrics` as the runner's observer, in-process: Python steps, a real SQLite file and a
fake clock, so every count and every second is known exactly."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sagalab.orchestrator.executors import PythonExecutor
from sagalab.orchestrator.flow import FlowDefinition, flow_from_dict
from sagalab.orchestrator.metrics import SagaMetrics
from sagalab.orchestrator.registry import (
    PermanentStepError,
    StepCall,
    TransientStepError,
    compensation_handler,
    step_handler,
)
from sagalab.orchestrator.runner import SagaRunner, start_saga
from sagalab.orchestrator.saga import SagaStatus
from sagalab.orchestrator.sqlite_store import SQLiteStore

PREFIX = "tmo_"  # handler names owned by this module
PLAN: dict[str, list[Callable[[], Any]]] = {}


def _scripted(name: str) -> Callable[[StepCall], Any]:
    def handler(call: StepCall) -> Any:
        queue = PLAN.get(name)
        return queue.pop(0)() if queue else {"ok": name}

    return handler


for _step in ("reserve", "charge"):
    step_handler(PREFIX + _step)(_scripted(_step))
    compensation_handler(PREFIX + "undo_" + _step)(_scripted("undo " + _step))


def _raise(exc: Exception) -> Callable[[], Any]:
    def go() -> Any:
        raise exc

    return go


class Clock:
    """Moves only when the runner sleeps, or by `tick` on each reading."""

    def __init__(self, tick: float = 0.0) -> None:
        self.now = 1_000.0
        self.tick = tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def plan() -> Iterator[dict[str, list[Callable[[], Any]]]]:
    PLAN.clear()
    yield PLAN
    PLAN.clear()


def flow() -> FlowDefinition:
    steps = [
        {
            "name": name,
            "handler": PREFIX + name,
            "compensation_handler": PREFIX + "undo_" + name,
            "retry": {"max_attempts": 3, "initial_delay": 0.5, "max_delay": 0.5},
        }
        for name in ("reserve", "charge")
    ]
    return flow_from_dict({"name": "py", "version": 1, "steps": steps})


def run(tmp_path: Path, clock: Clock) -> tuple[SagaMetrics, SagaStatus]:
    store = SQLiteStore(tmp_path / "sagas.db")
    metrics = SagaMetrics(clock=clock)
    try:
        record, _ = start_saga(store, flow(), {}, now=clock())
        runner = SagaRunner(
            store,
            PythonExecutor(),
            clock=clock,
            sleep=clock.sleep,
            rng=random.Random(1),
            observer=metrics,
        )
        status = runner.run(record.id).status
    finally:
        store.close()
    return metrics, status


def value(metrics: SagaMetrics, name: str, **labels: str) -> float:
    found = metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def test_a_compensation_that_fails_for_good_counts_one_failed_saga(
    tmp_path: Path, plan: dict[str, list[Callable[[], Any]]]
) -> None:
    plan["charge"] = [_raise(PermanentStepError("declined"))]
    plan["undo reserve"] = [_raise(PermanentStepError("cannot release"))]
    clock = Clock(tick=0.25)
    metrics, status = run(tmp_path, clock)
    assert status is SagaStatus.FAILED
    assert value(metrics, "sagalab_sagas_finished_total", flow="py", status="failed") == 1
    assert value(metrics, "sagalab_sagas_finished_total", flow="py", status="rolled_back") == 0
    assert value(metrics, "sagalab_saga_duration_seconds_count", flow="py", status="failed") == 1
    labels = {"service": "-", "step": "charge", "phase": "action", "result": "failed"}
    assert value(metrics, "sagalab_step_attempts_total", **labels) == 1
    undo = {"service": "-", "step": "reserve", "phase": "compensation", "result": "failed"}
    assert value(metrics, "sagalab_step_attempts_total", **undo) == 1


def test_retries_and_the_claim_wait_are_counted_in_seconds_of_the_clock(
    tmp_path: Path, plan: dict[str, list[Callable[[], Any]]]
) -> None:
    plan["charge"] = [_raise(TransientStepError("busy")), _raise(TransientStepError("busy"))]
    clock = Clock()
    metrics, status = run(tmp_path, clock)
    assert status is SagaStatus.COMPLETED
    labels = {"service": "-", "step": "charge", "phase": "action"}
    assert value(metrics, "sagalab_retries_scheduled_total", **labels) == 2
    assert value(metrics, "sagalab_step_attempts_total", **labels, result="failed") == 2
    assert value(metrics, "sagalab_step_attempts_total", **labels, result="succeeded") == 1
    assert value(metrics, "sagalab_sagas_finished_total", flow="py", status="completed") == 1
    # Created at 1000 on the fake clock, which only the two (jittered) backoffs moved.
    done = {"flow": "py", "status": "completed"}
    took = value(metrics, "sagalab_saga_duration_seconds_sum", **done)
    assert took == pytest.approx(clock.now - 1_000.0) and 0 < took <= 1.0
    # Claimed (run) at the moment it was created: no wait.
    assert value(metrics, "sagalab_schedule_to_claim_seconds_count", flow="py") == 1
    assert value(metrics, "sagalab_schedule_to_claim_seconds_sum", flow="py") == 0


def test_a_metrics_failure_never_stops_a_saga(
    tmp_path: Path, plan: dict[str, list[Callable[[], Any]]], caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    store = SQLiteStore(tmp_path / "sagas.db")
    metrics = SagaMetrics(clock=clock)

    def broken(*args: object) -> None:
        raise RuntimeError("a metrics bug")

    metrics._committed = broken  # type: ignore[method-assign]
    try:
        record, _ = start_saga(store, flow(), {}, now=clock())
        runner = SagaRunner(store, PythonExecutor(), clock=clock, observer=metrics)
        assert runner.run(record.id).status is SagaStatus.COMPLETED
    finally:
        store.close()
    assert "metrics: cannot count a commit" in caplog.text

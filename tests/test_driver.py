"""The saga driver on its own: the effects it yields for scripted replies (no runtime at all)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from sagalab.orchestrator.driver import (
    AskBreaker,
    BreakerRefused,
    Call,
    Commit,
    Done,
    RecordOutcome,
    WaitUntil,
    breaker_gates,
    drive,
)
from sagalab.orchestrator.flow import FlowDefinition, flow_from_dict
from sagalab.orchestrator.outcomes import classify_status
from sagalab.orchestrator.saga import Event, EventType, Phase, SagaState, SagaStatus


def _flow(pivot_first: bool = False) -> FlowDefinition:
    no_jitter = {"max_attempts": 2, "initial_delay": 0.5, "jitter": False}
    steps: list[dict[str, Any]] = [
        {
            "name": "a",
            "service": "svc",
            "action": {"method": "POST", "path": "/a"},
            "compensation": {"method": "POST", "path": "/a/undo"},
            "retry": no_jitter,
            "compensation_retry": no_jitter,
        },
        {
            "name": "b",
            "service": "svc",
            "action": {"method": "POST", "path": "/b"},
            "retry": no_jitter,
        },
    ]
    if pivot_first:
        steps[0]["kind"] = "pivot"
        del steps[0]["compensation"]
        steps[1]["kind"] = "retriable"
    return flow_from_dict({"name": "t", "version": 1, "steps": steps})


def start(flow: FlowDefinition, gated: bool = True) -> tuple[Any, SagaState]:
    state = SagaState(flow)
    state.apply(Event(EventType.SAGA_CREATED, 0.0))
    gates = breaker_gates(flow, {"svc"}) if gated else None
    driver = drive(state, saga_id="s", now=0.0, rng=random.Random(0), gates=gates)
    return driver, state


def kinds(events: list[Event]) -> list[str]:
    return [f"{e.type.value}:{e.step}" if e.step else e.type.value for e in events]


def test_a_clean_run_asks_commits_calls_and_reports_in_that_order() -> None:
    driver, state = start(_flow())
    assert next(driver) == AskBreaker("svc")
    call = driver.send(None)
    assert isinstance(call, Call) and (call.step, call.attempt) == ("a", 1)
    assert kinds(call.commit.events) == ["attempt_started:a"]  # durable before it is sent
    assert call.idempotency_key == "s:a:action"
    assert driver.send((1.0, None, False, "detail")) == RecordOutcome("svc", True)
    assert driver.send(None) == AskBreaker("svc")
    call = driver.send(None)
    assert isinstance(call, Call)
    # the previous outcome is committed with the next start, its detail beside it
    assert kinds(call.commit.events) == ["attempt_succeeded:a", "attempt_started:b"]
    assert call.commit.details == {0: "detail"}
    assert driver.send((2.0, None, False, None)) == RecordOutcome("svc", True)
    last = driver.send(None)
    assert isinstance(last, Commit) and kinds(last.events) == [
        "attempt_succeeded:b",
        "saga_completed",
    ]
    assert driver.send(2.0) == Done(SagaStatus.COMPLETED)
    assert state.status is SagaStatus.COMPLETED


def test_without_a_breaker_nothing_is_asked_or_reported() -> None:
    driver, _ = start(_flow(), gated=False)
    first = next(driver)
    assert isinstance(first, Call)
    assert isinstance(driver.send((1.0, None, False, None)), Call)


@pytest.mark.parametrize(
    ("status", "healthy"),
    [(500, False), (503, False), (429, True), (422, True), (409, True)],
    ids=["500", "503", "429", "422", "409 in_progress"],
)
def test_the_breaker_hears_unwell_only_for_what_the_classification_says(
    status: int, healthy: bool
) -> None:
    driver, _ = start(_flow())
    next(driver)
    driver.send(None)
    failure, unwell = classify_status(status, '{"error": "in_progress"}' if status == 409 else "")
    assert driver.send((1.0, failure, unwell, None)) == RecordOutcome("svc", healthy)


def test_a_retry_wait_commits_first() -> None:
    driver, _ = start(_flow())
    next(driver)
    driver.send(None)
    failure, unwell = classify_status(500)
    driver.send((1.0, failure, unwell, None))  # RecordOutcome
    commit = driver.send(None)
    assert isinstance(commit, Commit)
    assert kinds(commit.events) == ["attempt_failed:a", "retry_scheduled:a"]
    wait = driver.send(1.0)
    assert wait == WaitUntil(1.5)  # initial_delay 0.5, no jitter; not an open breaker's wait


def test_a_refused_action_before_the_pivot_fails_fast() -> None:
    driver, state = start(_flow())
    next(driver)
    assert driver.send(4.0) == BreakerRefused("svc", "a", Phase.ACTION, False)
    commit = driver.send(None)  # nothing applied, nothing to undo: rolled back at once
    assert isinstance(commit, Commit)
    assert kinds(commit.events) == [
        "attempt_started:a",
        "attempt_failed:a",
        "step_failed:a",
        "saga_rolled_back",
    ]
    failure = commit.events[1].failure
    assert failure is not None and not failure.retryable and not failure.maybe_applied
    assert "circuit breaker 'svc' is open" in failure.error
    assert driver.send(0.0) == Done(SagaStatus.ROLLED_BACK)


def test_a_refused_step_past_the_pivot_waits_journaling_nothing() -> None:
    driver, _ = start(_flow(pivot_first=True))
    next(driver)
    driver.send(None)  # the pivot's call
    driver.send((1.0, None, False, None))  # RecordOutcome
    assert driver.send(None) == AskBreaker("svc")
    refused = driver.send(0.1)  # may half-open in 0.1 s: waits at least MIN_REFUSAL_WAIT
    assert isinstance(refused, BreakerRefused) and refused.waits
    commit = driver.send(None)  # the pivot's success is made durable before waiting
    assert isinstance(commit, Commit) and kinds(commit.events) == ["attempt_succeeded:a"]
    assert driver.send(1.0) == WaitUntil(1.5, "b", "svc")
    assert driver.send(1.5) == AskBreaker("svc")

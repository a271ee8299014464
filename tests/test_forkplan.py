"""The pure pieces of fork and cancel, driven directly: no store, no clock, no I/O.

`plan_fork` (orchestrator/forkplan.py) against folded journals; the core's rollback *from a
step* (a fork's: the steps before it stay applied) and `cancel_request` (saga.py). Journals are
scripted with test_saga_machine's `Driver`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import pytest
from test_saga_machine import CHECKOUT, MAYBE, REFUSED, Driver, Outcome, flow

from sagalab.orchestrator.errors import InvalidTransition, OperatorActionRefused
from sagalab.orchestrator.flow import FlowDefinition
from sagalab.orchestrator.forkplan import ForkPlan, plan_fork
from sagalab.orchestrator.saga import (
    Event,
    EventType,
    Phase,
    SagaState,
    SagaStatus,
    cancel_request,
)

ABC = flow("a", "b", "c")


Outcomes = Mapping[str, Sequence[Outcome]]


def finished(definition: FlowDefinition = ABC, outcomes: Outcomes | None = None) -> Driver:
    """A saga of `definition` driven until it halts, with scripted `outcomes`."""
    driver = Driver(definition)
    driver.run(outcomes or {})
    return driver


def plan(
    state: SagaState, step: str, *, force: bool = False, forks: Sequence[str] = ()
) -> ForkPlan:
    return plan_fork(state, saga_id="old", fork_id="new", from_step=step, force=force, forks=forks)


# --- the core: a rollback from a step -----------------------------------------------------------


def test_a_rollback_from_a_step_compensates_only_from_there_in_reverse() -> None:
    driver = finished()
    driver.record(Event(EventType.ROLLBACK_REQUESTED, 10.0, step="b", reason="forked"))
    assert driver.state.kept == frozenset({"a"})
    driver.trace.clear()
    assert driver.run().status is SagaStatus.ROLLED_BACK
    assert driver.trace == ["undo c ok", "undo b ok", "rolled_back"]
    assert driver.state.steps["a"].display_status == "succeeded"


def test_a_rollback_from_an_unknown_step_does_not_fit_the_journal() -> None:
    driver = finished()
    with pytest.raises(InvalidTransition, match="no step 'z'"):
        driver.state.apply(Event(EventType.ROLLBACK_REQUESTED, 10.0, step="z"))


# --- the core: cancel ---------------------------------------------------------------------------


def test_cancel_before_the_pivot_is_a_rollback_with_the_reason() -> None:
    driver = Driver(CHECKOUT)
    assert cancel_request(driver.state, now=1.0, reason="dup").reason == "cancelled: dup"
    driver.attempt(driver.decide(), "ok")  # reserve applied
    event = cancel_request(driver.state, now=2.0, reason="dup")
    assert (event.type, event.force, event.step) == (EventType.ROLLBACK_REQUESTED, False, None)


@pytest.mark.parametrize(
    "outcomes, words",
    [
        ({"notify": [REFUSED] * 50}, "past its pivot step 'ship'"),
        ({"ship": [MAYBE] * 8}, "past its pivot step 'ship'"),  # stranded: may stand
        ({}, "completed; there is nothing to cancel"),
        ({"charge": [REFUSED], "undo reserve": [REFUSED]}, "failed, already stopped"),
        ({"charge": [REFUSED]}, "rolled_back; there is nothing to cancel"),
    ],
    ids=["past-the-pivot", "pivot-stranded", "completed", "failed-compensating", "rolled-back"],
)
def test_cancel_is_refused_where_a_saga_is_stopped_or_only_goes_forward(
    outcomes: Outcomes, words: str
) -> None:
    driver = Driver(CHECKOUT)
    driver.run(outcomes)
    with pytest.raises(OperatorActionRefused, match=words):
        cancel_request(driver.state, now=99.0, reason="x")


def test_cancel_while_the_pivot_is_in_flight_is_refused() -> None:
    driver = Driver(CHECKOUT)
    for _ in range(2):
        driver.attempt(driver.decide(), "ok")
    driver.record(Event(EventType.ATTEMPT_STARTED, 5.0, "ship", Phase.ACTION, 1))
    with pytest.raises(OperatorActionRefused, match="the pivot is in flight"):
        cancel_request(driver.state, now=6.0, reason="x")


# --- the plan ---------------------------------------------------------------------------------


def test_plan_reuses_before_compensates_after_in_reverse_and_names_keys() -> None:
    p = plan(finished().state, "b")
    assert p.to_dict() == {
        "saga_id": "old",
        "fork_id": "new",
        "from_step": "b",
        "old_status": "completed",
        "reused": ["a"],
        "compensate_first": ["c", "b"],
        "rerun": ["b", "c"],
        "new_keys": {"b": "new:b:action", "c": "new:c:action"},
        "reused_keys": {"a": "old:a:action"},
        "stays_applied": [],
        "pivot": None,
        "pivot_applied": False,
        "allowed": True,
        "refusal": None,
        "forced": False,
        "notes": [],
    }


def test_plan_compensates_a_step_that_may_have_applied() -> None:
    driver = finished(
        outcomes={"b": [MAYBE, MAYBE, MAYBE]}
    )  # b's outcome unknown for good: rolled back
    # rolled back, a compensated: only a fork from the first step has anything to reuse
    assert "'a' was compensated" in (plan(driver.state, "b").refusal or "")
    assert plan(driver.state, "a").allowed


@pytest.mark.parametrize(
    "outcomes, step, force, refusal",
    [
        ({"notify": [REFUSED] * 50}, "charge", True, "pivot 'ship' was applied"),
        ({"notify": [REFUSED] * 50}, "ship", False, "pivot 'ship' was applied"),
        ({}, "notify", False, "'notify' was applied .* --force accepts"),
        ({"notify": [REFUSED] * 50}, "notify", False, None),
        ({}, "notify", True, None),
    ],
    ids=[
        "before-an-applied-pivot-forced",
        "from-the-applied-pivot",
        "uncompensable-step-unforced",
        "from-the-failed-step",
        "uncompensable-step-forced",
    ],
)
def test_plan_refusals_around_the_pivot(
    outcomes: Outcomes, step: str, force: bool, refusal: str | None
) -> None:
    driver = Driver(CHECKOUT)
    driver.run(outcomes)
    p = plan(driver.state, step, force=force)
    if refusal is None:
        assert p.allowed, p.refusal
    else:
        assert p.refusal is not None and re.search(refusal, p.refusal), p.refusal


def test_plan_refuses_a_running_saga_and_one_forked_already() -> None:
    driver = Driver(ABC)
    driver.attempt(driver.decide(), "ok")
    assert "is running: a fork needs it stopped" in (plan(driver.state, "b").refusal or "")
    done = finished().state
    assert "forked already (as f1)" in (plan(done, "b", forks=["f1"]).refusal or "")


def test_a_fork_pivot_with_a_compensation_is_compensated_only_by_force() -> None:
    definition = flow("a", {"name": "p", "kind": "pivot"}, {"name": "c", "kind": "retriable"})
    state = finished(definition).state
    assert "--force compensates it first" in (plan(state, "p").refusal or "")
    assert plan(state, "c").pivot == "p" and plan(state, "c").pivot_applied
    forced = plan(state, "p", force=True)
    assert forced.allowed and forced.forced
    assert forced.compensate_first == ("p",) and forced.stays_applied == ("c",)

"""Table-driven transition tests for the saga state machine (orchestrator/saga.py).

In the style of h11's test_state.py: the tests drive `SagaState` and `decide` directly, with a
scripted list of attempt outcomes per step, a hand-held clock and a seeded rng; no mocks.
A run is summarised as a trace of short words so each table row reads like a journal:

    "a ok"          attempt of a's action succeeded
    "a fail"        attempt of a's action failed (retryable or not)
    "a retry"       RETRY_SCHEDULED for a's action
    "a failed"      STEP_FAILED for a's action (the saga turns compensating, or failed)
    "undo a ok"     a's compensation succeeded (and so on with the "undo" prefix)
    "completed" / "rolled_back"
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pytest

from sagalab.orchestrator.errors import InvalidTransition, OperatorActionRefused
from sagalab.orchestrator.flow import FlowDefinition, flow_from_dict
from sagalab.orchestrator.saga import (
    INTERRUPTED,
    Event,
    EventType,
    Failure,
    Halt,
    Phase,
    Record,
    RunAttempt,
    SagaState,
    SagaStatus,
    Wait,
    decide,
    idempotency_key,
    retry_step_request,
    rollback_request,
    skip_step_request,
    with_time,
)

OK = "ok"
RETRYABLE = Failure("HTTP 503", retryable=True, maybe_applied=False)
MAYBE = Failure("read timeout", retryable=True, maybe_applied=True)
REFUSED = Failure("HTTP 402: card declined", retryable=False, maybe_applied=False)
Outcome = str | Failure

FAST = {"max_attempts": 3, "initial_delay": 1.0, "max_delay": 4.0}
FOREVER = {"max_attempts": None, "initial_delay": 1.0, "max_delay": 4.0}


def flow(*steps: str | Mapping[str, Any]) -> FlowDefinition:
    """A flow of Python steps. A bare name is a compensatable step with a compensation.

    A mapping may set `kind`, `comp` (False: no compensation) and `retry`.
    """
    raw_steps = []
    for spec in steps:
        s = {"name": spec} if isinstance(spec, str) else dict(spec)
        kind = s.get("kind", "compensatable")
        d: dict[str, Any] = {"name": s["name"], "kind": kind, "handler": s["name"]}
        if s.get("comp", kind != "retriable"):
            d["compensation_handler"] = "undo_" + s["name"]
        d["retry"] = s.get("retry", FOREVER if kind == "retriable" else FAST)
        d["compensation_retry"] = s.get("compensation_retry", FAST)
        raw_steps.append(d)
    return flow_from_dict({"name": "t", "version": 1, "steps": raw_steps})


class Driver:
    """Holds a state, its journal and a clock; runs `decide` against scripted outcomes."""

    def __init__(self, definition: FlowDefinition, seed: int = 0) -> None:
        self.flow = definition
        self.state = SagaState(definition)
        self.journal: list[Event] = []
        self.now = 0.0
        self.rng = random.Random(seed)
        self.trace: list[str] = []
        self.record(Event(EventType.SAGA_CREATED, self.now))

    def record(self, event: Event) -> None:
        self.state.apply(event)
        self.journal.append(event)
        self.trace.extend(_words(event))

    def decide(self) -> Any:
        return decide(self.state, now=self.now, rng=self.rng)

    def run(
        self, outcomes: Mapping[str, Sequence[Outcome]] | None = None, *, limit: int = 200
    ) -> Halt:
        """Drive to a Halt. `outcomes["a"]` scripts a's action, `outcomes["undo a"]` its undo.

        An attempt without a scripted outcome succeeds.
        """
        queues = {k: list(v) for k, v in (outcomes or {}).items()}
        for _ in range(limit):
            command = self.decide()
            if isinstance(command, Halt):
                return command
            if isinstance(command, Wait):
                assert command.until > self.now
                self.now = command.until
            elif isinstance(command, Record):
                self.record(command.event)
            else:
                assert isinstance(command, RunAttempt)
                self.attempt(command, _pop(queues, _key(command.step, command.phase)))
        raise AssertionError(f"no halt within {limit} commands: {self.trace}")

    def attempt(self, command: RunAttempt, outcome: Outcome) -> None:
        self.record(
            Event(EventType.ATTEMPT_STARTED, self.now, command.step, command.phase, command.attempt)
        )
        self.now += 0.1
        if outcome == OK:
            event = Event(
                EventType.ATTEMPT_SUCCEEDED, self.now, command.step, command.phase, command.attempt
            )
        else:
            assert isinstance(outcome, Failure)
            event = Event(
                EventType.ATTEMPT_FAILED,
                self.now,
                command.step,
                command.phase,
                command.attempt,
                outcome,
            )
        self.record(event)


def _key(step: str, phase: Phase) -> str:
    return step if phase is Phase.ACTION else f"undo {step}"


def _pop(queues: dict[str, list[Outcome]], key: str) -> Outcome:
    queue = queues.get(key)
    return queue.pop(0) if queue else OK


def _words(event: Event) -> Iterable[str]:
    t = event.type
    prefix = _key(event.step, event.phase) if event.step and event.phase else ""
    if t is EventType.ATTEMPT_SUCCEEDED:
        yield f"{prefix} ok"
    elif t is EventType.ATTEMPT_FAILED:
        yield f"{prefix} fail"
    elif t is EventType.RETRY_SCHEDULED:
        yield f"{prefix} retry"
    elif t is EventType.STEP_FAILED:
        yield f"{prefix} failed"
    elif t is EventType.SAGA_COMPLETED:
        yield "completed"
    elif t is EventType.SAGA_ROLLED_BACK:
        yield "rolled_back"
    elif t is EventType.ROLLBACK_REQUESTED:
        yield "rollback"
    elif t is EventType.STEP_RETRY_REQUESTED:
        yield f"{prefix} retry_requested"
    elif t is EventType.STEP_SKIPPED:
        yield f"{prefix} skipped"


# --- whole runs ---------------------------------------------------------------------------

CHECKOUT = flow(
    "reserve",
    "charge",
    {"name": "ship", "kind": "pivot", "comp": False},
    {"name": "notify", "kind": "retriable"},
)

RUNS = [
    pytest.param(
        flow("a", "b", "c"),
        {},
        ["a ok", "b ok", "c ok", "completed"],
        SagaStatus.COMPLETED,
        id="forward",
    ),
    pytest.param(
        flow("a", "b"),
        {"b": [RETRYABLE, RETRYABLE]},
        ["a ok", "b fail", "b retry", "b fail", "b retry", "b ok", "completed"],
        SagaStatus.COMPLETED,
        id="retries-then-success",
    ),
    pytest.param(
        flow("a", "b", "c"),
        {"c": [REFUSED]},
        ["a ok", "b ok", "c fail", "c failed", "undo b ok", "undo a ok", "rolled_back"],
        SagaStatus.ROLLED_BACK,
        id="permanent-failure-rolls-back-in-reverse",
    ),
    pytest.param(
        flow("a", "b", "c"),
        {"c": [RETRYABLE, RETRYABLE, RETRYABLE]},
        ["a ok", "b ok"]
        + ["c fail", "c retry", "c fail", "c retry", "c fail", "c failed"]
        + ["undo b ok", "undo a ok", "rolled_back"],
        SagaStatus.ROLLED_BACK,
        id="retries-exhausted-roll-back",
    ),
    pytest.param(
        flow("a", "b", "c"),
        {"b": [MAYBE, REFUSED]},
        ["a ok", "b fail", "b retry", "b fail", "b failed", "undo b ok", "undo a ok"]
        + ["rolled_back"],
        SagaStatus.ROLLED_BACK,
        id="maybe-applied-step-is-compensated",
    ),
    pytest.param(
        flow("a", "b", "c"),
        {"b": [RETRYABLE, REFUSED]},
        ["a ok", "b fail", "b retry", "b fail", "b failed", "undo a ok", "rolled_back"],
        SagaStatus.ROLLED_BACK,
        id="step-that-applied-nothing-is-not-compensated",
    ),
    pytest.param(
        flow("a", {"name": "b", "comp": False}, "c"),
        {"c": [REFUSED]},
        ["a ok", "b ok", "c fail", "c failed", "undo a ok", "rolled_back"],
        SagaStatus.ROLLED_BACK,
        id="step-without-compensation-is-skipped-in-rollback",
    ),
    pytest.param(
        flow("a", "b"),
        {"a": [REFUSED]},
        ["a fail", "a failed", "rolled_back"],
        SagaStatus.ROLLED_BACK,
        id="first-step-refused-nothing-to-undo",
    ),
    pytest.param(
        CHECKOUT,
        {"charge": [REFUSED]},
        ["reserve ok", "charge fail", "charge failed", "undo reserve ok", "rolled_back"],
        SagaStatus.ROLLED_BACK,
        id="rollback-before-pivot",
    ),
    pytest.param(
        CHECKOUT,
        {"ship": [REFUSED]},
        ["reserve ok", "charge ok", "ship fail", "ship failed"]
        + ["undo charge ok", "undo reserve ok", "rolled_back"],
        SagaStatus.ROLLED_BACK,
        id="pivot-refused-rolls-back",
    ),
    pytest.param(
        CHECKOUT,
        {"notify": [RETRYABLE] * 12},
        ["reserve ok", "charge ok", "ship ok"]
        + ["notify fail", "notify retry"] * 12
        + ["notify ok", "completed"],
        SagaStatus.COMPLETED,
        id="after-pivot-retried-forever",
    ),
    pytest.param(
        CHECKOUT,
        {"notify": [RETRYABLE, REFUSED]},
        ["reserve ok", "charge ok", "ship ok", "notify fail", "notify retry", "notify fail"]
        + ["notify failed"],
        SagaStatus.FAILED,
        id="after-pivot-refusal-fails-for-operator",
    ),
    pytest.param(
        flow("a", "b", "c"),
        {"c": [REFUSED], "undo b": [REFUSED]},
        ["a ok", "b ok", "c fail", "c failed", "undo b fail", "undo b failed"],
        SagaStatus.FAILED,
        id="compensation-refused-fails",
    ),
    pytest.param(
        flow("a", "b"),
        {"b": [REFUSED], "undo a": [RETRYABLE, RETRYABLE, RETRYABLE]},
        ["a ok", "b fail", "b failed"]
        + ["undo a fail", "undo a retry", "undo a fail", "undo a retry", "undo a fail"]
        + ["undo a failed"],
        SagaStatus.FAILED,
        id="compensation-retries-exhausted-fails",
    ),
]


@pytest.mark.parametrize(("definition", "outcomes", "trace", "status"), RUNS)
def test_runs(
    definition: FlowDefinition,
    outcomes: Mapping[str, Sequence[Outcome]],
    trace: list[str],
    status: SagaStatus,
) -> None:
    driver = Driver(definition)
    halt = driver.run(outcomes)
    assert driver.trace == trace
    assert halt.status is status
    assert driver.state.status is status
    assert SagaState.replay(definition, driver.journal).status is status


# --- single transitions --------------------------------------------------------------------


def test_new_saga_runs_first_step_then_turns_running() -> None:
    driver = Driver(flow("a", "b"))
    assert driver.state.status is SagaStatus.PENDING
    assert driver.decide() == RunAttempt("a", Phase.ACTION, 1)
    driver.record(Event(EventType.ATTEMPT_STARTED, 0.0, "a", Phase.ACTION, 1))
    assert driver.state.status is SagaStatus.RUNNING
    assert driver.state.open_attempt == ("a", Phase.ACTION, 1)
    assert driver.state.steps["a"].display_status == "running"


def test_retry_is_scheduled_then_waited_for() -> None:
    driver = Driver(flow({"name": "a", "retry": {"max_attempts": 3, "initial_delay": 2.0}}))
    driver.attempt(RunAttempt("a", Phase.ACTION, 1), RETRYABLE)
    command = driver.decide()
    assert isinstance(command, Record)
    assert command.event.type is EventType.RETRY_SCHEDULED
    assert command.event.attempt == 2
    not_before = command.event.not_before
    assert not_before is not None and driver.now <= not_before <= driver.now + 2.0
    driver.record(command.event)
    assert driver.state.steps["a"].display_status == "retrying"
    if not_before > driver.now:
        assert driver.decide() == Wait(not_before)
    driver.now = not_before
    assert driver.decide() == RunAttempt("a", Phase.ACTION, 2)


def test_retry_after_is_a_floor_for_the_wait() -> None:
    driver = Driver(flow({"name": "a", "retry": {"initial_delay": 0.1, "max_delay": 0.2}}))
    throttled = Failure("HTTP 429", retryable=True, maybe_applied=False, retry_after=30.0)
    driver.attempt(RunAttempt("a", Phase.ACTION, 1), throttled)
    command = driver.decide()
    assert isinstance(command, Record)
    assert command.event.not_before == pytest.approx(driver.now + 30.0)


def test_interrupted_attempt_is_closed_as_maybe_applied() -> None:
    driver = Driver(flow("a", "b"))
    driver.attempt(RunAttempt("a", Phase.ACTION, 1), OK)
    driver.record(Event(EventType.ATTEMPT_STARTED, 1.0, "b", Phase.ACTION, 1))
    # A crash: a fresh runtime replays the journal and finds b's attempt open.
    resumed = SagaState.replay(driver.flow, driver.journal)
    command = decide(resumed, now=5.0, rng=random.Random(0))
    assert command == Record(
        Event(EventType.ATTEMPT_FAILED, 5.0, "b", Phase.ACTION, 1, INTERRUPTED)
    )
    resumed.apply(command.event)
    assert INTERRUPTED.maybe_applied and INTERRUPTED.retryable
    assert resumed.applied_order == ["a", "b"]
    assert resumed.open_attempt is None


def test_interrupted_step_is_compensated_when_the_saga_rolls_back() -> None:
    driver = Driver(flow("a", "b"))
    driver.record(Event(EventType.ATTEMPT_STARTED, 0.0, "a", Phase.ACTION, 1))
    driver.state = SagaState.replay(driver.flow, driver.journal)
    driver.run({"a": [REFUSED]})  # the interrupted attempt is closed, then a is refused
    assert driver.trace == ["a fail", "a retry", "a fail", "a failed", "undo a ok", "rolled_back"]
    assert driver.journal[2].failure == INTERRUPTED


def test_idempotency_key_is_stable_across_attempts_and_distinct_per_phase() -> None:
    assert idempotency_key("s1", "charge", Phase.ACTION) == "s1:charge:action"
    assert idempotency_key("s1", "charge", Phase.COMPENSATION) == "s1:charge:compensation"


# --- operator commands ---------------------------------------------------------------------


def failed_after_pivot() -> Driver:
    driver = Driver(CHECKOUT)
    driver.run({"notify": [REFUSED]})
    assert driver.state.status is SagaStatus.FAILED
    return driver


def failed_in_compensation() -> Driver:
    driver = Driver(flow("a", "b", "c"))
    driver.run({"c": [REFUSED], "undo b": [REFUSED]})
    assert driver.state.status is SagaStatus.FAILED
    return driver


def test_pivot_that_may_stand_and_fails_for_good_stops_for_an_operator() -> None:
    driver = Driver(CHECKOUT)
    halt = driver.run({"ship": [MAYBE, MAYBE, RETRYABLE]})
    assert halt.status is SagaStatus.FAILED
    assert driver.state.pivot_stranded and not driver.state.pivot_passed
    assert "undo" not in " ".join(driver.trace)  # nothing was compensated behind its back
    with pytest.raises(OperatorActionRefused, match="pivot step may have been applied"):
        rollback_request(driver.state, now=driver.now, reason="op", force=False)
    driver.record(retry_step_request(driver.state, now=driver.now, step="ship"))
    assert driver.run().status is SagaStatus.COMPLETED


def test_pivot_that_surely_did_not_apply_rolls_back() -> None:
    driver = Driver(CHECKOUT)
    assert driver.run({"ship": [RETRYABLE] * 3}).status is SagaStatus.ROLLED_BACK
    assert not driver.state.pivot_stranded


def test_breaker_refusal_fails_fast_only_where_a_rollback_undoes_the_saga() -> None:
    driver = Driver(CHECKOUT)
    state = driver.state
    assert not state.refusal_waits("reserve", Phase.ACTION)
    assert state.refusal_waits("reserve", Phase.COMPENSATION)
    driver.run({"ship": [MAYBE, MAYBE, RETRYABLE]})
    assert state.refusal_waits("ship", Phase.ACTION)  # a pivot that may stand goes through
    clean = Driver(CHECKOUT)
    clean.run({"ship": [RETRYABLE] * 3})
    assert not clean.state.refusal_waits("ship", Phase.ACTION)
    assert failed_after_pivot().state.refusal_waits("notify", Phase.ACTION)


def test_operator_retry_step_after_pivot_completes() -> None:
    driver = failed_after_pivot()
    event = retry_step_request(driver.state, now=driver.now, step="notify")
    assert (event.type, event.step, event.phase) == (
        EventType.STEP_RETRY_REQUESTED,
        "notify",
        Phase.ACTION,
    )
    driver.record(event)
    assert driver.state.status is SagaStatus.RUNNING
    assert driver.decide() == RunAttempt("notify", Phase.ACTION, 2)
    assert driver.run().status is SagaStatus.COMPLETED


def test_operator_skip_step_after_pivot_completes() -> None:
    driver = failed_after_pivot()
    driver.record(skip_step_request(driver.state, now=driver.now, step="notify", reason="sent"))
    assert driver.state.steps["notify"].display_status == "skipped"
    assert driver.run().status is SagaStatus.COMPLETED
    assert driver.trace[-2:] == ["notify skipped", "completed"]


def test_operator_retry_failed_compensation_finishes_rollback() -> None:
    driver = failed_in_compensation()
    driver.record(retry_step_request(driver.state, now=driver.now, step="b"))
    assert driver.state.status is SagaStatus.COMPENSATING
    assert driver.run().status is SagaStatus.ROLLED_BACK
    assert driver.trace[-4:] == ["undo b retry_requested", "undo b ok", "undo a ok", "rolled_back"]


def test_operator_skip_failed_compensation_goes_on_with_the_rest() -> None:
    driver = failed_in_compensation()
    driver.record(skip_step_request(driver.state, now=driver.now, step="b", reason="by hand"))
    assert driver.run().status is SagaStatus.ROLLED_BACK
    assert driver.trace[-3:] == ["undo b skipped", "undo a ok", "rolled_back"]
    assert driver.state.steps["b"].display_status == "compensation_skipped"


@pytest.mark.parametrize("request_fn", ["retry", "skip"], ids=["retry", "skip"])
def test_operator_cannot_restart_the_forward_step_of_a_saga_that_is_rolling_back(
    request_fn: str,
) -> None:
    # c failed for good, the rollback began, and undo b failed: going forward with c now would
    # leave b's possibly applied compensation in a saga that reports itself completed.
    driver = failed_in_compensation()
    with pytest.raises(OperatorActionRefused):
        if request_fn == "retry":
            retry_step_request(driver.state, now=driver.now, step="c")
        else:
            skip_step_request(driver.state, now=driver.now, step="c", reason="x")


def test_operator_rollback_of_running_saga_compensates_what_applied() -> None:
    driver = Driver(flow("a", "b", "c"))
    driver.attempt(RunAttempt("a", Phase.ACTION, 1), OK)
    driver.attempt(RunAttempt("b", Phase.ACTION, 1), MAYBE)
    event = rollback_request(driver.state, now=driver.now, reason="customer cancelled", force=False)
    driver.record(event)
    assert driver.state.status is SagaStatus.COMPENSATING
    assert driver.run().status is SagaStatus.ROLLED_BACK
    assert driver.trace[-3:] == ["undo b ok", "undo a ok", "rolled_back"]
    assert driver.state.steps["c"].display_status == "pending"


def test_operator_rollback_of_completed_saga_before_any_pivot() -> None:
    driver = Driver(flow("a", "b"))
    assert driver.run().status is SagaStatus.COMPLETED
    driver.record(rollback_request(driver.state, now=driver.now, reason="r", force=False))
    assert driver.run().status is SagaStatus.ROLLED_BACK
    assert driver.trace[-3:] == ["undo b ok", "undo a ok", "rolled_back"]


def test_operator_rollback_past_pivot_is_refused_without_force() -> None:
    driver = failed_after_pivot()
    with pytest.raises(OperatorActionRefused, match="pivot step 'ship'.*--force"):
        rollback_request(driver.state, now=driver.now, reason="r", force=False)


def test_operator_forced_rollback_past_pivot_compensates_what_can_be() -> None:
    driver = failed_after_pivot()
    event = rollback_request(driver.state, now=driver.now, reason="r", force=True)
    assert event.force
    driver.record(event)
    assert driver.run().status is SagaStatus.ROLLED_BACK
    assert driver.trace[-3:] == ["undo charge ok", "undo reserve ok", "rolled_back"]


def test_operator_rollback_of_failed_compensation_resets_its_budget() -> None:
    driver = failed_in_compensation()
    driver.record(rollback_request(driver.state, now=driver.now, reason="again", force=False))
    assert driver.state.steps["b"].compensation.attempts_in_budget == 0
    assert driver.run().status is SagaStatus.ROLLED_BACK
    assert driver.trace[-3:] == ["undo b ok", "undo a ok", "rolled_back"]


@pytest.mark.parametrize(
    ("setup", "call", "match"),
    [
        ("rolled_back", "rollback", "already rolled back"),
        ("compensating", "rollback", "already rolling back"),
        ("running", "retry", "not failed"),
        ("running", "skip", "not failed"),
        ("failed_after_pivot", "retry_other", "not what holds this saga"),
        ("failed_after_pivot", "skip_no_reason", "needs a reason"),
    ],
    ids=lambda v: str(v),
)
def test_operator_requests_refused(setup: str, call: str, match: str) -> None:
    if setup == "rolled_back":
        driver = Driver(flow("a"))
        driver.run({"a": [REFUSED]})
    elif setup == "compensating":
        driver = Driver(flow("a", "b"))
        driver.attempt(RunAttempt("a", Phase.ACTION, 1), OK)
        driver.record(rollback_request(driver.state, now=0, reason="r", force=False))
    elif setup == "running":
        driver = Driver(flow("a", "b"))
        driver.attempt(RunAttempt("a", Phase.ACTION, 1), OK)
    else:
        driver = failed_after_pivot()
    state = driver.state
    with pytest.raises(OperatorActionRefused, match=match):
        if call == "rollback":
            rollback_request(state, now=0, reason="r", force=True)
        elif call == "retry":
            retry_step_request(state, now=0, step="a")
        elif call == "skip":
            skip_step_request(state, now=0, step="a", reason="r")
        elif call == "retry_other":
            retry_step_request(state, now=0, step="reserve")
        else:
            skip_step_request(state, now=0, step="notify", reason="  ")


# --- histories that do not fit -------------------------------------------------------------

ET = EventType
ACT, COMP = Phase.ACTION, Phase.COMPENSATION


def _ev(t: EventType, step: str | None = None, phase: Phase | None = None, n: int = 0) -> Event:
    return Event(t, 0.0, step, phase, n, RETRYABLE if t is ET.ATTEMPT_FAILED else None)


C = _ev(ET.SAGA_CREATED)
A1 = _ev(ET.ATTEMPT_STARTED, "a", ACT, 1)
A1_OK = _ev(ET.ATTEMPT_SUCCEEDED, "a", ACT, 1)
NO_FAILURE = Event(ET.ATTEMPT_FAILED, 0.0, "a", ACT, 1)
RETRY_A2 = Event(ET.RETRY_SCHEDULED, 0.0, "a", ACT, 2, not_before=1.0)

INVALID = [
    ("event-before-created", [], A1, "before saga_created"),
    ("created-twice", [C], C, "twice"),
    ("unknown-step", [C], _ev(ET.ATTEMPT_STARTED, "zz", ACT, 1), "no step 'zz'"),
    ("attempt-number-gap", [C], _ev(ET.ATTEMPT_STARTED, "a", ACT, 2), "expected 1"),
    ("two-open-attempts", [C, A1], _ev(ET.ATTEMPT_STARTED, "b", ACT, 1), "still open"),
    ("outcome-without-start", [C], A1_OK, "open attempt is None"),
    ("outcome-for-other-attempt", [C, A1], _ev(ET.ATTEMPT_SUCCEEDED, "a", ACT, 2), "open"),
    ("failed-without-failure", [C, A1], NO_FAILURE, "without a failure"),
    ("compensation-while-pending", [C], _ev(ET.ATTEMPT_STARTED, "a", COMP, 1), "pending"),
    ("action-after-success", [C, A1, A1_OK], _ev(ET.ATTEMPT_STARTED, "a", ACT, 2), "finished"),
    ("retry-while-open", [C, A1], RETRY_A2, "closed, unfinished"),
    ("completed-while-pending", [C], _ev(ET.SAGA_COMPLETED), "while pending"),
    ("completed-too-early", [C, A1, A1_OK], _ev(ET.SAGA_COMPLETED), "unfinished steps"),
    ("rolled-back-while-pending", [C], _ev(ET.SAGA_ROLLED_BACK), "outstanding"),
    ("retry-of-healthy-step", [C], _ev(ET.STEP_RETRY_REQUESTED, "a", ACT), "failed for good"),
    ("attempt-without-step", [C], _ev(ET.ATTEMPT_STARTED), "needs a step and a phase"),
]


@pytest.mark.parametrize(
    ("history", "event", "match"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_invalid_transitions(history: list[Event], event: Event, match: str) -> None:
    state = SagaState(flow("a", "b"))
    for e in history:
        state.apply(e)
    before = state.events_applied
    with pytest.raises(InvalidTransition, match=match):
        state.apply(event)
    assert state.events_applied == before


def test_action_attempt_refused_while_compensating_and_after_completion() -> None:
    driver = Driver(flow("a", "b"))
    driver.attempt(RunAttempt("a", Phase.ACTION, 1), OK)
    driver.record(rollback_request(driver.state, now=0, reason="r", force=False))
    with pytest.raises(InvalidTransition, match="action attempt while saga is compensating"):
        driver.state.apply(Event(EventType.ATTEMPT_STARTED, 0.0, "b", Phase.ACTION, 1))
    done = Driver(flow("a"))
    done.run()
    with pytest.raises(InvalidTransition, match="completed"):
        done.state.apply(Event(EventType.ATTEMPT_STARTED, 0.0, "a", Phase.COMPENSATION, 1))


def test_saga_completed_does_not_fit_a_saga_that_is_rolling_back() -> None:
    driver = Driver(flow("a"))
    driver.run()
    driver.record(rollback_request(driver.state, now=0, reason="r", force=False))
    with pytest.raises(InvalidTransition):
        driver.state.apply(Event(EventType.SAGA_COMPLETED, 0.0))
    assert driver.state.status is SagaStatus.COMPENSATING


def test_halted_saga_keeps_halting() -> None:
    for status, outcomes in (
        (SagaStatus.COMPLETED, {}),
        (SagaStatus.ROLLED_BACK, {"a": [REFUSED]}),
    ):
        driver = Driver(flow("a"))
        driver.run(outcomes)
        assert driver.decide() == Halt(status)
        assert status.is_terminal
    assert not SagaStatus.FAILED.is_terminal


def test_with_time_restamps_an_event() -> None:
    event = Event(EventType.SAGA_COMPLETED, 1.0)
    assert with_time(event, 9.0) == Event(EventType.SAGA_COMPLETED, 9.0)


# --- the pivot is a fence ------------------------------------------------------------------

CHECKOUT_UNDOABLE_PIVOT = flow(
    "reserve",
    "charge",
    {"name": "ship", "kind": "pivot"},  # a pivot with a compensation (for forced rollbacks)
    {"name": "notify", "kind": "retriable"},
)


def _to_the_pivot(definition: FlowDefinition, ship: Sequence[Outcome]) -> Driver:
    """reserve and charge succeed, then ship's attempts end as `ship` says."""
    driver = Driver(definition)
    driver.attempt(RunAttempt("reserve", Phase.ACTION, 1), OK)
    driver.attempt(RunAttempt("charge", Phase.ACTION, 1), OK)
    for n, outcome in enumerate(ship, 1):
        driver.attempt(RunAttempt("ship", Phase.ACTION, n), outcome)
        if outcome != OK:
            command = driver.decide()
            assert isinstance(command, Record)
            driver.record(command.event)  # retry scheduled (budget of 3)
            driver.now = command.event.not_before or driver.now
    return driver


def _open_pivot(definition: FlowDefinition, before: Sequence[Outcome] = ()) -> Driver:
    driver = _to_the_pivot(definition, before)
    n = len(before) + 1
    driver.record(Event(EventType.ATTEMPT_STARTED, driver.now, "ship", Phase.ACTION, n))
    return driver


# (id, how the saga stands, whether a rollback without --force is accepted, refusal words)
FENCE = [
    ("pivot-not-started", lambda d: _to_the_pivot(d, []), True, None),
    ("pivot-in-flight", lambda d: _open_pivot(d), False, "pivot is in flight"),
    ("pivot-in-flight-again", lambda d: _open_pivot(d, [RETRYABLE]), False, "in flight"),
    ("pivot-retry-after-clean-failure", lambda d: _to_the_pivot(d, [RETRYABLE]), True, None),
    ("pivot-succeeded", lambda d: _to_the_pivot(d, [OK]), False, "past its pivot"),
]


@pytest.mark.parametrize(
    ("definition", "setup", "accepted", "match"),
    [
        pytest.param(d, *row[1:], id=f"{row[0]}-{name}")
        for row in FENCE
        for name, d in (("no-undo", CHECKOUT), ("undoable", CHECKOUT_UNDOABLE_PIVOT))
    ],
)
def test_rollback_waits_for_a_pivot_in_flight(
    definition: FlowDefinition, setup: Any, accepted: bool, match: str | None
) -> None:
    driver = setup(definition)
    if accepted:
        driver.record(rollback_request(driver.state, now=driver.now, reason="r", force=False))
        assert driver.state.status is SagaStatus.COMPENSATING
        return
    with pytest.raises(OperatorActionRefused, match=match):
        rollback_request(driver.state, now=driver.now, reason="r", force=False)
    # the refusal says what to do, and --force still gets through
    forced = rollback_request(driver.state, now=driver.now, reason="r", force=True)
    driver.record(forced)
    assert driver.state.status is SagaStatus.COMPENSATING


def test_pivot_maybe_applied_without_undo_still_needs_force() -> None:
    driver = _to_the_pivot(CHECKOUT, [MAYBE])
    with pytest.raises(OperatorActionRefused, match="may have been applied"):
        rollback_request(driver.state, now=driver.now, reason="r", force=False)


def test_refusal_of_a_pivot_in_flight_says_what_to_do() -> None:
    driver = _open_pivot(CHECKOUT)
    with pytest.raises(OperatorActionRefused) as refused:
        rollback_request(driver.state, now=driver.now, reason="r", force=False)
    message = str(refused.value)
    assert "the pivot is in flight" in message
    assert "wait for it" in message and "--force" in message


def test_pivot_in_flight_then_success_goes_forward_after_a_refused_rollback() -> None:
    driver = _open_pivot(CHECKOUT)
    with pytest.raises(OperatorActionRefused):
        rollback_request(driver.state, now=driver.now, reason="r", force=False)
    driver.record(Event(EventType.ATTEMPT_SUCCEEDED, driver.now, "ship", Phase.ACTION, 1))
    assert driver.run().status is SagaStatus.COMPLETED
    assert "undo" not in " ".join(driver.trace)


def test_state_machine_refuses_an_unforced_rollback_while_the_pivot_is_in_flight() -> None:
    """No shell can journal around the fence: `apply` refuses the event itself."""
    driver = _open_pivot(CHECKOUT)
    before = driver.state.events_applied
    with pytest.raises(InvalidTransition, match="pivot is in flight"):
        driver.state.apply(Event(EventType.ROLLBACK_REQUESTED, driver.now, reason="r"))
    assert driver.state.events_applied == before
    assert driver.state.status is SagaStatus.RUNNING
    driver.state.apply(Event(EventType.ROLLBACK_REQUESTED, driver.now, reason="r", force=True))
    assert driver.state.status is SagaStatus.COMPENSATING


def test_rollback_while_a_step_before_the_pivot_is_in_flight_compensates_it() -> None:
    driver = Driver(CHECKOUT)
    driver.attempt(RunAttempt("reserve", Phase.ACTION, 1), OK)
    driver.record(Event(EventType.ATTEMPT_STARTED, driver.now, "charge", Phase.ACTION, 1))
    driver.record(rollback_request(driver.state, now=driver.now, reason="r", force=False))
    assert driver.run().status is SagaStatus.ROLLED_BACK
    assert driver.trace[-3:] == ["undo charge ok", "undo reserve ok", "rolled_back"]


# --- the reason a saga shows ---------------------------------------------------------------


def test_completed_saga_keeps_no_failure_reason() -> None:
    driver = failed_after_pivot()
    assert driver.state.reason is not None and "notify" in driver.state.reason
    driver.record(retry_step_request(driver.state, now=driver.now, step="notify"))
    assert driver.state.reason is None  # running again: the failure is history
    assert driver.run().status is SagaStatus.COMPLETED
    assert driver.state.reason is None
    replayed = SagaState.replay(driver.flow, driver.journal)
    assert replayed.reason is None


def test_skipped_step_then_completion_keeps_no_failure_reason() -> None:
    driver = failed_after_pivot()
    driver.record(skip_step_request(driver.state, now=driver.now, step="notify", reason="sent"))
    assert driver.run().status is SagaStatus.COMPLETED
    assert driver.state.reason is None


def test_rolled_back_saga_shows_why_it_rolled_back_not_a_compensation_retried_since() -> None:
    driver = Driver(flow("a", "b", "c"))
    driver.run({"c": [REFUSED], "undo b": [REFUSED]})
    assert driver.state.reason is not None and "b compensation" in driver.state.reason
    driver.record(retry_step_request(driver.state, now=driver.now, step="b"))
    assert driver.run().status is SagaStatus.ROLLED_BACK
    assert driver.state.reason is not None and driver.state.reason.startswith("c action")


# --- what a step shows once the saga has turned back ---------------------------------------


def test_a_pivot_cut_off_by_a_forced_rollback_shows_interrupted_not_retrying() -> None:
    driver = Driver(
        flow(
            "a",
            {"name": "ship", "kind": "pivot", "comp": False},
            {"name": "c", "kind": "retriable"},
        )
    )
    driver.attempt(RunAttempt("a", Phase.ACTION, 1), OK)
    driver.record(Event(EventType.ATTEMPT_STARTED, driver.now, "ship", Phase.ACTION, 1))
    driver.record(rollback_request(driver.state, now=driver.now, reason="r", force=True))
    assert driver.state.steps["ship"].display_status == "running"  # still in flight
    assert driver.run() == Halt(SagaStatus.ROLLED_BACK)
    shown = {name: p.display_status for name, p in driver.state.steps.items()}
    # Never retried, its outcome never known, nothing to undo it: it may stand.
    assert shown == {"a": "compensated", "ship": "interrupted", "c": "pending"}
    replayed = SagaState.replay(driver.flow, driver.journal)  # it follows from the journal
    assert {n: p.display_status for n, p in replayed.steps.items()} == shown


@pytest.mark.parametrize(
    ("failure", "shown"),
    [(RETRYABLE, "abandoned"), (MAYBE, "outcome_unknown")],
    ids=["applied-nothing", "may-have-applied"],
)
def test_a_step_waiting_for_its_retry_when_the_saga_rolls_back_says_it_was_given_up(
    failure: Failure, shown: str
) -> None:
    driver = Driver(flow("a", {"name": "b", "comp": False}))
    driver.attempt(RunAttempt("a", Phase.ACTION, 1), OK)
    driver.attempt(RunAttempt("b", Phase.ACTION, 1), failure)
    command = driver.decide()
    assert command.event.type is EventType.RETRY_SCHEDULED
    driver.record(command.event)
    assert driver.state.steps["b"].display_status == "retrying"
    driver.record(rollback_request(driver.state, now=driver.now, reason="r", force=False))
    assert driver.run() == Halt(SagaStatus.ROLLED_BACK)
    assert driver.state.steps["b"].display_status == shown

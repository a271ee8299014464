"""Hypothesis properties of the saga state machine (orchestrator/saga.py).

Flows are generated with random step kinds that respect the pivot rules (compensatable steps,
at most one pivot, retriable steps after it), with and without compensations. A script of
attempt outcomes drives `decide` in a loop with an injected clock and a seeded rng:

* success, retryable failure (applied nothing, or maybe applied), permanent failure,
* a crash while an attempt is in flight: the attempt is abandoned with no outcome and the
  journal is replayed into a fresh `SagaState`, as a resumed runtime would do,
* an operator rollback between commands, and operator retry/skip/rollback of a FAILED saga.

A fake service records what really happened, so "maybe applied" is checked against the truth:
whatever the service really applied and can be undone is undone when the saga rolls back.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import flowgen
from hypothesis import given, settings
from hypothesis import strategies as st

from sagalab.orchestrator.errors import OperatorActionRefused
from sagalab.orchestrator.flow import FlowDefinition, flow_from_dict
from sagalab.orchestrator.flowfile import load_flow
from sagalab.orchestrator.saga import (
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
    blocking_step,
    decide,
    retry_step_request,
    rollback_request,
    skip_step_request,
)

# --- flows ---------------------------------------------------------------------------------

retry_policies = st.fixed_dictionaries(
    {
        "max_attempts": st.integers(1, 3),
        "initial_delay": st.sampled_from([0.0, 0.5, 1.0]),
        "max_delay": st.sampled_from([1.0, 3.0]),
    },
    optional={"deadline": st.sampled_from([1.0, 5.0])},
)


@st.composite
def flows(draw: st.DrawFn) -> FlowDefinition:
    steps: list[dict[str, Any]] = []
    for i, kind in enumerate(flowgen.step_kinds(draw, draw(st.integers(1, 5)))):
        name = f"s{i}"
        step: dict[str, Any] = {"name": name, "handler": name, "kind": kind}
        # A pivot may or may not have an undo (for a forced rollback); most other steps do.
        undo = draw(st.booleans()) if kind == "pivot" else draw(st.integers(0, 4)) > 0
        if kind != "retriable" and undo:
            step["compensation_handler"] = "undo_" + name
        if kind == "retriable":
            step["retry"] = {"max_attempts": None, "initial_delay": 0.5, "max_delay": 2.0}
        else:
            step["retry"] = draw(retry_policies)
        step["compensation_retry"] = draw(retry_policies)
        steps.append(step)
    return flow_from_dict({"name": "prop", "version": 1, "steps": steps})


# --- scripts of outcomes -------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """One attempt's fate. `applied`: whether the service really applied it."""

    kind: str  # ok | retryable | permanent | crash | rollback
    maybe_applied: bool = False
    applied: bool = False
    force: bool = False


outcomes = st.one_of(
    st.just(Outcome("ok", applied=True)),
    st.builds(
        lambda maybe, really: Outcome("retryable", maybe, maybe and really),
        st.booleans(),
        st.booleans(),
    ),
    st.builds(
        lambda maybe, really: Outcome("permanent", maybe, maybe and really),
        st.booleans(),
        st.booleans(),
    ),
    st.builds(lambda really: Outcome("crash", True, really), st.booleans()),
    st.builds(lambda force: Outcome("rollback", force=force), st.booleans()),
)
operator_moves = st.lists(st.sampled_from(["retry", "skip", "rollback", "force"]), max_size=4)


@dataclass
class World:
    """The saga as a runtime sees it, plus the service's ground truth."""

    flow: FlowDefinition
    state: SagaState
    journal: list[Event] = field(default_factory=list)
    now: float = 1000.0
    really_applied: set[str] = field(default_factory=set)
    crashes: int = 0

    def record(self, event: Event) -> None:
        self.state.apply(event)
        self.journal.append(event)

    def crash_and_resume(self) -> None:
        self.crashes += 1
        self.state = SagaState.replay(self.flow, self.journal)


def attempt(world: World, command: RunAttempt, outcome: Outcome) -> None:
    step, phase, n = command.step, command.phase, command.attempt
    world.record(Event(EventType.ATTEMPT_STARTED, world.now, step, phase, n))
    world.now += 0.05
    if phase is Phase.ACTION and outcome.applied:
        world.really_applied.add(step)
    if outcome.kind == "crash":
        world.crash_and_resume()
        return
    if outcome.kind == "ok":
        world.record(Event(EventType.ATTEMPT_SUCCEEDED, world.now, step, phase, n))
        return
    failure = Failure(
        f"{outcome.kind} failure",
        retryable=outcome.kind == "retryable",
        maybe_applied=outcome.maybe_applied,
    )
    world.record(Event(EventType.ATTEMPT_FAILED, world.now, step, phase, n, failure))


def operator(world: World, move: str) -> None:
    """Unblock a FAILED saga as an operator would; fall back to retrying the blocked step."""
    state = world.state
    if move in ("rollback", "force"):
        try:
            world.record(rollback_request(state, now=world.now, reason="op", force=move == "force"))
            return
        except OperatorActionRefused:
            # refused only past the pivot, or when the pivot may stand with nothing to undo it
            assert (state.pivot_passed or state.pivot_stranded) and move == "rollback"
    blocked = [
        (name, phase)
        for phase in (Phase.COMPENSATION, Phase.ACTION)
        for name, p in state.steps.items()
        if p.phase(phase).failed_for_good
    ]
    name = blocked[0][0]
    if move == "skip":
        world.record(skip_step_request(state, now=world.now, step=name, reason="by hand"))
    else:
        world.record(retry_step_request(state, now=world.now, step=name))


def summary(state: SagaState) -> tuple[Any, ...]:
    return (
        state.status,
        tuple(state.applied_order),
        state.pivot_passed,
        state.open_attempt,
        state.next_forward(),
        state.next_to_compensate(),
        tuple(p.display_status for p in state.steps.values()),
        tuple((p.action.attempts, p.compensation.attempts) for p in state.steps.values()),
    )


def drive(flow: FlowDefinition, script: list[Outcome], moves: list[str], seed: int) -> World:
    world = World(flow, SagaState(flow))
    world.record(Event(EventType.SAGA_CREATED, world.now))
    rng = random.Random(seed)
    script, moves = list(script), list(moves)
    bound = 12 * (len(script) + len(moves) + 2 * len(flow.steps) + 4)
    for _ in range(bound):
        if script and script[0].kind == "rollback":
            outcome = script.pop(0)
            state = world.state
            try:
                event = rollback_request(state, now=world.now, reason="op", force=outcome.force)
            except OperatorActionRefused:
                # refused once rolling back, past the pivot, with a pivot that may stand
                # and cannot be undone, or while the pivot is in flight (a crash left its
                # attempt open): all but the first need --force
                fenced = state.pivot_passed or state.pivot_stranded or state.pivot_in_flight
                assert state.status in (SagaStatus.ROLLED_BACK, SagaStatus.COMPENSATING) or (
                    fenced and not outcome.force
                )
            else:
                fenced = state.pivot_passed or state.pivot_stranded or state.pivot_in_flight
                assert not (fenced and not outcome.force)
                world.record(event)
            continue
        command = decide(world.state, now=world.now, rng=rng)
        if isinstance(command, Halt):
            if command.status is not SagaStatus.FAILED:
                return world
            operator(world, moves.pop(0) if moves else "retry")
        elif isinstance(command, Wait):
            assert command.until > world.now
            world.now = command.until
        elif isinstance(command, Record):
            world.record(command.event)
        else:
            assert isinstance(command, RunAttempt)
            outcome = script.pop(0) if script else Outcome("ok", applied=True)
            attempt(world, command, outcome)
        # A resumed runtime folds the journal to the same state, whenever it resumes.
        assert summary(SagaState.replay(flow, world.journal)) == summary(world.state)
    raise AssertionError(f"saga did not halt within {bound} commands")


def steps_of(journal: list[Event], type_: EventType, phase: Phase) -> list[str]:
    return [e.step for e in journal if e.type is type_ and e.phase is phase and e.step]


@settings(max_examples=300, deadline=None)
@given(
    flow=flows(),
    script=st.lists(outcomes, max_size=25),
    moves=operator_moves,
    seed=st.integers(0, 2**32 - 1),
)
def test_any_history_completes_forward_or_rolls_back_in_reverse(
    flow: FlowDefinition, script: list[Outcome], moves: list[str], seed: int
) -> None:
    world = drive(flow, script, moves, seed)
    journal, state = world.journal, world.state
    order = [s.name for s in flow.steps]
    done = steps_of(journal, EventType.ATTEMPT_SUCCEEDED, Phase.ACTION)
    undone = steps_of(journal, EventType.ATTEMPT_SUCCEEDED, Phase.COMPENSATION)
    undo_started = steps_of(journal, EventType.ATTEMPT_STARTED, Phase.COMPENSATION)
    action_started = set(steps_of(journal, EventType.ATTEMPT_STARTED, Phase.ACTION))
    skipped_undo = steps_of(journal, EventType.STEP_SKIPPED, Phase.COMPENSATION)
    skipped = steps_of(journal, EventType.STEP_SKIPPED, Phase.ACTION)
    forced = any(e.type is EventType.ROLLBACK_REQUESTED and e.force for e in journal)

    # Nothing is compensated twice, and a step that never started is never compensated.
    assert len(undone) == len(set(undone))
    assert set(undo_started) <= action_started
    # Forward work is over once compensation begins.
    types = [(e.type, e.phase) for e in journal]
    first_undo = next(
        (i for i, t in enumerate(types) if t == (EventType.ATTEMPT_STARTED, Phase.COMPENSATION)),
        len(types),
    )
    assert (EventType.ATTEMPT_STARTED, Phase.ACTION) not in types[first_undo:]
    # Action successes come in flow order: T1..Tj.
    finished = [e.step for e in journal if e.phase is Phase.ACTION and e.type in (
        EventType.ATTEMPT_SUCCEEDED, EventType.STEP_SKIPPED)]  # fmt: skip
    assert finished == order[: len(finished)]

    if state.status is SagaStatus.COMPLETED:
        assert finished == order
        assert undo_started == [] and journal[-1].type is EventType.SAGA_COMPLETED
        assert set(done) | set(skipped) == set(order)
        return

    assert state.status is SagaStatus.ROLLED_BACK
    assert journal[-1].type is EventType.SAGA_ROLLED_BACK
    # Cj..C1 over the steps that have a compensation and succeeded or may have applied.
    expected = [s for s in reversed(state.applied_order) if flow.step(s).has_compensation]
    handled = [
        e.step
        for e in journal
        if e.phase is Phase.COMPENSATION
        and (e.type is EventType.ATTEMPT_SUCCEEDED or e.type is EventType.STEP_SKIPPED)
    ]
    assert handled == expected
    assert set(skipped_undo) <= set(expected)
    # Against the ground truth: whatever really applied and can be undone was undone.
    for name in world.really_applied:
        if flow.step(name).has_compensation:
            assert name in handled, f"{name} applied but never compensated"
    # A passed pivot is never undone, nor anything before it, without --force.
    pivot = flow.pivot_index
    if pivot is not None and order[pivot] in done and not forced:
        raise AssertionError("a saga past its pivot was rolled back without force")


@settings(max_examples=150, deadline=None)
@given(flow=flows(), script=st.lists(outcomes, max_size=20), seed=st.integers(0, 2**16))
def test_decisions_are_deterministic_given_history_clock_and_rng(
    flow: FlowDefinition, script: list[Outcome], seed: int
) -> None:
    """The same journal, clock reading and rng seed give the same command, live or replayed."""
    world = drive(flow, script, [], seed)
    for cut in range(1, len(world.journal) + 1):
        live = SagaState.replay(flow, world.journal[:cut])
        again = SagaState.replay(flow, world.journal[:cut])
        now = world.journal[cut - 1].at + 0.01
        first = decide(live, now=now, rng=random.Random(seed))
        assert decide(again, now=now, rng=random.Random(seed)) == first


@settings(max_examples=100, deadline=None)
@given(flow=flows(), seed=st.integers(0, 2**16), crash_at=st.integers(0, 30))
def test_crash_at_any_point_then_resume_never_repeats_a_finished_step(
    flow: FlowDefinition, seed: int, crash_at: int
) -> None:
    """Resuming from any durable prefix of a run re-attempts only unfinished work."""
    world = drive(flow, [], [], seed)
    prefix = world.journal[: max(1, min(crash_at, len(world.journal)))]
    resumed = World(flow, SagaState.replay(flow, prefix), list(prefix), now=prefix[-1].at + 1)
    rng = random.Random(seed)
    for _ in range(100):
        command = decide(resumed.state, now=resumed.now, rng=rng)
        if isinstance(command, Halt):
            break
        if isinstance(command, Record):
            resumed.record(command.event)
        elif isinstance(command, Wait):
            resumed.now = command.until
        else:
            assert isinstance(command, RunAttempt)
            p = resumed.state.steps[command.step].phase(command.phase)
            assert not p.done, f"{command.step} {command.phase} re-run after it succeeded"
            attempt(resumed, command, Outcome("ok", applied=True))
    # The interrupted attempt may exhaust a one-attempt budget and roll the saga back, or,
    # if it was a pivot with no compensation, leave the saga FAILED for an operator.
    done = steps_of(resumed.journal, EventType.ATTEMPT_SUCCEEDED, Phase.ACTION)
    if resumed.state.status is SagaStatus.COMPLETED:
        assert done == [s.name for s in flow.steps]
    elif resumed.state.status is SagaStatus.FAILED:
        assert resumed.state.pivot_stranded
        assert not any(e.phase is Phase.COMPENSATION for e in resumed.journal)
    else:
        assert resumed.state.status is SagaStatus.ROLLED_BACK
        assert resumed.journal[-1].type is EventType.SAGA_ROLLED_BACK


# --- operator requests against every attempt state of the checkout flow ---------------------
#
# The real checkout flow (inventory, payments, the shipping pivot with no undo, notifications).
# Between the start and the outcome of any attempt, and between commands, an operator fires
# requests: rollback with or without --force, retry-step or skip-step of any step. As the
# shells do, a request is judged against the journal as read, and appended only if nobody
# appended since (the store's sequence check); otherwise it is judged again. A rollback that
# lands while an attempt is open makes the worker's outcome append conflict: the outcome is
# lost (the service's ground truth is not) and the attempt is closed as interrupted.

CHECKOUT = load_flow("checkout")
CHECKOUT_STEPS = [s.name for s in CHECKOUT.steps]
CHECKOUT_PIVOT = "create_shipment"

op_kinds = st.sampled_from(["rollback", "force", "retry", "skip"])
# (kind, step for retry/skip, whether the operator read the journal before the attempt began)
operator_ops = st.tuples(op_kinds, st.sampled_from(CHECKOUT_STEPS), st.booleans())
attempt_outcomes = st.one_of(
    st.just(Outcome("ok", applied=True)),
    st.builds(
        lambda kind, maybe, really: Outcome(kind, maybe, maybe and really),
        st.sampled_from(["retryable", "permanent"]),
        st.booleans(),
        st.booleans(),
    ),
    st.builds(lambda really: Outcome("crash", True, really), st.booleans()),
)
moments = st.tuples(
    attempt_outcomes,
    st.lists(operator_ops, max_size=2),  # while the attempt is open
    st.lists(operator_ops, max_size=1),  # once it is closed
)


@dataclass
class FencedWorld(World):
    """A World whose operator requests go through the append-with-sequence-check protocol."""

    forced: bool = False
    accepted: list[str] = field(default_factory=list)

    def request(self, kind: str, step: str, read_at: int) -> bool:
        """Judge `kind` against the journal's first `read_at` events; append if still current."""
        for _ in range(3):
            seen = SagaState.replay(self.flow, self.journal[:read_at])
            try:
                if kind in ("rollback", "force"):
                    event = rollback_request(seen, now=self.now, reason="op", force=kind == "force")
                elif kind == "retry":
                    event = retry_step_request(seen, now=self.now, step=step)
                else:
                    event = skip_step_request(seen, now=self.now, step=step, reason="by hand")
            except OperatorActionRefused:
                return False
            if read_at != len(self.journal):  # someone appended since: conflict, judge again
                read_at = len(self.journal)
                continue
            if kind == "rollback":
                # Never while the pivot is open, or when it may have applied with no undo.
                assert not seen.pivot_in_flight
                assert CHECKOUT_PIVOT not in self.really_applied
                assert CHECKOUT_PIVOT not in seen.applied_order
            self.forced |= kind == "force"
            self.accepted.append(kind)
            self.record(event)
            return True
        raise AssertionError("a request was judged three times without the journal settling")


def fenced_attempt(
    world: FencedWorld, command: RunAttempt, outcome: Outcome, during: list[Any]
) -> None:
    step, phase, n = command.step, command.phase, command.attempt
    before_start = len(world.journal)
    world.record(Event(EventType.ATTEMPT_STARTED, world.now, step, phase, n))
    seq_of_start = len(world.journal)
    world.now += 0.05
    if phase is Phase.ACTION and outcome.applied:
        world.really_applied.add(step)
    if outcome.kind == "crash":
        world.crash_and_resume()  # the attempt stays open: its outcome is unknown
    for kind, target, stale in during:
        world.request(kind, target, before_start if stale else len(world.journal))
    if outcome.kind == "crash":
        return
    if len(world.journal) != seq_of_start:
        return  # the worker's outcome append conflicts: that result is never journaled
    if outcome.kind == "ok":
        world.record(Event(EventType.ATTEMPT_SUCCEEDED, world.now, step, phase, n))
        return
    failure = Failure(
        f"{outcome.kind} failure",
        retryable=outcome.kind == "retryable",
        maybe_applied=outcome.maybe_applied,
    )
    world.record(Event(EventType.ATTEMPT_FAILED, world.now, step, phase, n, failure))


def drive_fenced(
    script: list[Any],
    moves: list[Any],
    at_waits: list[Any],
    at_pivot: list[Any],
    seed: int,
    quiet_until_pivot: bool = False,
) -> FencedWorld:
    """Run the checkout saga to a halt, firing operator requests as the lists say.

    `script`: per attempt, its outcome and the requests fired while it is open and once it is
    closed; `moves`: requests at a FAILED halt; `at_waits`: while a retry is scheduled;
    `at_pivot`: one more request during each shipment call. With `quiet_until_pivot` nobody
    asks for anything before the shipment call is first sent, so the pivot is reached often.
    """
    world = FencedWorld(CHECKOUT, SagaState(CHECKOUT))
    world.record(Event(EventType.SAGA_CREATED, world.now))
    rng = random.Random(seed)
    script, moves, at_waits, at_pivot = list(script), list(moves), list(at_waits), list(at_pivot)
    for _ in range(60 * (len(script) + len(moves) + 10)):
        command = decide(world.state, now=world.now, rng=rng)
        quiet = quiet_until_pivot and world.state.steps[CHECKOUT_PIVOT].action.attempts == 0
        if isinstance(command, Halt):
            if command.status is not SagaStatus.FAILED or not moves:
                return world
            kind, target, _ = moves.pop(0)
            world.request(kind, target, len(world.journal))
        elif isinstance(command, Wait):
            if at_waits and not quiet:  # a retry is scheduled and nothing is in flight
                kind, target, _ = at_waits.pop(0)
                world.request(kind, target, len(world.journal))
            world.now = command.until
        elif isinstance(command, Record):
            world.record(command.event)
        else:
            assert isinstance(command, RunAttempt)
            outcome, during, after = (
                script.pop(0) if script else (Outcome("ok", applied=True), [], [])
            )
            if quiet:
                during, after = [], []
            if command.step == CHECKOUT_PIVOT and command.phase is Phase.ACTION and at_pivot:
                during = [*during, at_pivot.pop(0)]  # aimed at the shipment call in flight
            fenced_attempt(world, command, outcome, during)
            for kind, target, _ in after:
                world.request(kind, target, len(world.journal))
        assert summary(SagaState.replay(CHECKOUT, world.journal)) == summary(world.state)
    raise AssertionError("the checkout saga did not halt")


@settings(max_examples=400, deadline=None)
@given(
    script=st.lists(moments, max_size=14),
    moves=st.lists(operator_ops, max_size=3),
    at_waits=st.lists(operator_ops, max_size=3),
    at_pivot=st.lists(operator_ops, max_size=3),
    seed=st.integers(0, 2**32 - 1),
    quiet_until_pivot=st.booleans(),
)
def test_operator_requests_never_undo_half_a_pivot(
    script: list[Any],
    moves: list[Any],
    at_waits: list[Any],
    at_pivot: list[Any],
    seed: int,
    quiet_until_pivot: bool,
) -> None:
    world = drive_fenced(script, moves, at_waits, at_pivot, seed, quiet_until_pivot)
    state, journal = world.state, world.journal
    pivot_may_stand = CHECKOUT_PIVOT in world.really_applied or (
        CHECKOUT_PIVOT in state.applied_order
    )
    if state.status is SagaStatus.COMPLETED:
        assert all(p.action.done or p.action.skipped for p in state.steps.values())
        assert state.reason is None  # a completed saga shows no stale failure
        assert not any(e.phase is Phase.COMPENSATION for e in journal)
        return
    if state.status is SagaStatus.FAILED:
        # failed for an operator: a step holds it, and the reason says why
        assert blocking_step(state) is not None and state.reason
        return
    assert state.status is SagaStatus.ROLLED_BACK
    if pivot_may_stand:
        assert world.forced, "rolled back while the pivot may stand, without --force"
    handled = {
        e.step
        for e in journal
        if e.phase is Phase.COMPENSATION
        and e.type in (EventType.ATTEMPT_SUCCEEDED, EventType.STEP_SKIPPED)
    }
    for name in world.really_applied:
        if CHECKOUT.step(name).has_compensation:
            assert name in handled, f"{name} applied but never compensated"

"""The saga state machine: the pure decision core of sagalab.

Theory of operation
-------------------
A saga's truth is its journal: an append-only list of `Event`s. `SagaState` folds that journal
(`apply`) into per-step progress, and `decide(state, now=..., rng=...)` returns the one next
`Command`. Runtimes (the SQLite/httpx orchestrator, the SimPy simulator) loop:

    command = decide(state, now=clock(), rng=rng)
    RunAttempt -> journal ATTEMPT_STARTED, perform the call, journal its outcome
    Record     -> journal the event it carries (retry scheduled, step failed, saga finished)
    Wait       -> come back at `until`
    Halt       -> the saga is terminal (or waits for an operator)

Nothing here reads a clock, draws a random number of its own, or does I/O; time and randomness
are arguments. The rules it enforces:

* Forward, steps run in flow order, one attempt at a time; a failed attempt is retried under
  the step's `RetryPolicy` (the delay is journaled as RETRY_SCHEDULED, so a crash loses neither
  the attempt count nor the wait).
* An attempt that was started but has no recorded outcome was interrupted (a crash): its
  outcome is unknown, so it is closed as a retryable failure that *may have applied*.
* A step that fails for good before the pivot has succeeded turns the saga to COMPENSATING.
  Compensations run in reverse order of application, over every step that succeeded or may
  have applied and has a compensation; nothing is compensated twice and a step that never
  started is never compensated.
* Once the pivot succeeds the flow only goes forward; a step after it that fails for good,
  or a compensation that fails for good, leaves the saga FAILED for an operator, who may
  retry or skip the step (STEP_RETRY_REQUESTED / STEP_SKIPPED) or request a rollback.
* The pivot is a fence. While its attempt is in flight (started, no outcome recorded) a
  rollback would throw away a result that may be a success, after which the saga only goes
  forward; so a rollback without `force` waits for the outcome, and `apply` refuses one that
  a shell journaled anyway. A rollback is judged against the journal it is appended after:
  shells append operator events with the sequence number they read, so a worker's
  ATTEMPT_STARTED in between makes the append conflict and the request is judged again.
* A fork (`orchestrator.forkplan`) closes the saga it forks with a rollback *from a step*
  (ROLLBACK_REQUESTED naming that step): only the steps from there on are compensated; the
  ones before it stay applied, and are the fork's from then on. A cancel is a rollback that
  never passes the pivot's fence, even by force (`cancel_request`).
* `reason` says why the saga stands where it does: the failure that holds a FAILED saga, or
  the cause of a rollback. It is cleared when the saga goes forward again and on completion;
  the journal keeps the history.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from enum import StrEnum

from sagalab.orchestrator.errors import InvalidTransition, OperatorActionRefused
from sagalab.orchestrator.flow import FlowDefinition, StepKind
from sagalab.orchestrator.policies.retry import MAX_RETRY_SECONDS, UniformSource
from sagalab.orchestrator.records import direct_init


class SagaStatus(StrEnum):
    """Where a saga stands as a whole."""

    PENDING = "pending"
    RUNNING = "running"
    COMPENSATING = "compensating"
    COMPLETED = "completed"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"

    @property
    def is_terminal(self) -> bool:
        """Completed or rolled back: nothing more will happen without an operator."""
        return self in (SagaStatus.COMPLETED, SagaStatus.ROLLED_BACK)


class Phase(StrEnum):
    """Which half of a step an attempt belongs to."""

    ACTION = "action"
    COMPENSATION = "compensation"


class EventType(StrEnum):
    """Kinds of journal entries."""

    SAGA_CREATED = "saga_created"
    ATTEMPT_STARTED = "attempt_started"
    ATTEMPT_SUCCEEDED = "attempt_succeeded"
    ATTEMPT_FAILED = "attempt_failed"
    RETRY_SCHEDULED = "retry_scheduled"
    STEP_FAILED = "step_failed"
    ROLLBACK_REQUESTED = "rollback_requested"
    STEP_RETRY_REQUESTED = "step_retry_requested"
    STEP_SKIPPED = "step_skipped"
    SAGA_COMPLETED = "saga_completed"
    SAGA_ROLLED_BACK = "saga_rolled_back"


@dataclass(frozen=True)
class Failure:
    """Why an attempt failed, as the runtime classified it.

    `retryable`: trying again may help (connection error, timeout, 5xx, 429).
    `maybe_applied`: the service may have applied the operation (the request may have been
    received), so the step must be compensated if the saga rolls back.
    """

    error: str
    retryable: bool
    maybe_applied: bool
    retry_after: float | None = None


INTERRUPTED = Failure(
    error="interrupted: the attempt started but its outcome was never recorded",
    retryable=True,
    maybe_applied=True,
)


@dataclass(slots=True)
class Event:
    """One journal entry. `at` is the runtime's clock reading when it was recorded.

    Immutable by convention (never assign to a field: `with_time` and `dataclasses.replace`
    make a changed copy). Not a frozen dataclass: a frozen one's initialiser pays an
    `object.__setattr__` per field (or, with `records.direct_init`, a `__dict__` per
    instance: two allocations), and runtimes build one per attempt and outcome; a plain
    slotted one is a single allocation and about half the cost (measured: the simulator's
    benchmark).
    Compared by value, not hashable.
    """

    type: EventType
    at: float
    step: str | None = None
    phase: Phase | None = None
    attempt: int = 0
    failure: Failure | None = None
    not_before: float | None = None
    reason: str | None = None
    force: bool = False


@dataclass(slots=True)
class RunAttempt:
    """Perform attempt number `attempt` of `step`'s `phase` (journal ATTEMPT_STARTED first).

    Slotted, not frozen, like `Event` (one per attempt); treat it as immutable."""

    step: str
    phase: Phase
    attempt: int


@direct_init
@dataclass(frozen=True)
class Record:
    """Append `event` to the journal; no I/O toward services."""

    event: Event


@dataclass(frozen=True)
class Wait:
    """Nothing to do before `until` (a scheduled retry)."""

    until: float


@direct_init
@dataclass(frozen=True)
class Halt:
    """The saga is terminal or waits for an operator."""

    status: SagaStatus


Command = RunAttempt | Record | Wait | Halt

# Enum members as module constants: reading `Phase.ACTION` goes through the enum class on
# every access, and these are read on every event of every saga.
_ACTION, _COMPENSATION = Phase.ACTION, Phase.COMPENSATION
_PENDING, _RUNNING, _COMPENSATING = SagaStatus.PENDING, SagaStatus.RUNNING, SagaStatus.COMPENSATING
_COMPLETED, _ROLLED_BACK, _FAILED = SagaStatus.COMPLETED, SagaStatus.ROLLED_BACK, SagaStatus.FAILED
_FINAL = (_COMPLETED, _ROLLED_BACK, _FAILED)
_SAGA_CREATED, _ATTEMPT_FAILED = EventType.SAGA_CREATED, EventType.ATTEMPT_FAILED
_PIVOT = StepKind.PIVOT

# How a refused rollback names the fence (the core's refusal and the API's problem say it).
PIVOT_IN_FLIGHT = "the pivot is in flight"


def idempotency_key(saga_id: str, step: str, phase: Phase) -> str:
    """The key every attempt of one step's phase carries: stable across retries and resumes."""
    return f"{saga_id}:{step}:{_PHASE_TEXT[phase]}"


#: Each phase's text: a dict look-up, where `.value` is two Python calls (the enum's
#: descriptor and property) for every attempt a runtime sends.
_PHASE_TEXT: dict[Phase, str] = {p: p.value for p in Phase}


@dataclass(slots=True)
class PhaseProgress:
    """Progress of one half (action or compensation) of one step."""

    attempts: int = 0
    budget_base: int = 0
    first_at: float | None = None
    open: bool = False
    done: bool = False
    skipped: bool = False
    failed_for_good: bool = False
    not_before: float | None = None
    last_failure: Failure | None = None
    #: The saga turned back (a rollback was requested) while this phase was unfinished: it
    #: will not be attempted again, whatever its retry policy says.
    abandoned: bool = False

    @property
    def attempts_in_budget(self) -> int:
        """Attempts made since the operator last reset this phase."""
        return self.attempts - self.budget_base

    def reset_budget(self) -> None:
        self.budget_base = self.attempts
        self.first_at = None
        self.failed_for_good = False
        self.not_before = None


@dataclass(slots=True)
class StepProgress:
    """Progress of one step: both phases, and whether the service may have applied it."""

    name: str
    action: PhaseProgress = field(default_factory=PhaseProgress)
    compensation: PhaseProgress = field(default_factory=PhaseProgress)
    maybe_applied: bool = False

    def phase(self, phase: Phase) -> PhaseProgress:
        return self.action if phase is _ACTION else self.compensation

    @property
    def display_status(self) -> str:
        """A one-word status for operators.

        An action a rollback gave up on is never shown "retrying": it says what happened to
        its last attempt - "interrupted" (cut off, outcome never recorded), "outcome_unknown"
        (it may have applied, e.g. a timeout) or "abandoned" (it applied nothing). A step that
        may have applied and has a compensation shows that compensation's progress instead.
        """
        a, c = self.action, self.compensation
        if c.done:
            return "compensated"
        if c.skipped:
            return "compensation_skipped"
        if c.open:
            return "compensating"
        if c.failed_for_good:
            return "compensation_failed"
        if c.attempts:
            return "compensating"
        if a.skipped:
            return "skipped"
        if a.done:
            return "succeeded"
        if a.open:
            return "running"
        if a.failed_for_good:
            return "failed"
        if a.abandoned and a.attempts:
            failure = a.last_failure
            if failure is None or not failure.maybe_applied:
                return "abandoned"
            return "interrupted" if failure == INTERRUPTED else "outcome_unknown"
        if a.attempts:
            return "retrying"
        return "pending"


class SagaState:
    """The fold of a saga's journal. Build with `SagaState(flow)` and `apply` events in order."""

    def __init__(self, flow: FlowDefinition) -> None:
        self.flow = flow
        self.steps: dict[str, StepProgress] = {s.name: StepProgress(s.name) for s in flow.steps}
        self.status = SagaStatus.PENDING
        self.created = False
        self.applied_order: list[str] = []
        self.pivot_passed = False
        self.reason: str | None = None
        # why the saga is rolling back: what `reason` returns to once a failed compensation
        # is retried or skipped (its own failure is no longer why the saga stands there)
        self._rollback_cause: str | None = None
        self.events_applied = 0
        self._open: tuple[str, Phase, int] | None = None
        #: Steps a rollback from a step (a fork's) leaves applied: never compensated here.
        self.kept: frozenset[str] = frozenset()

    @classmethod
    def replay(cls, flow: FlowDefinition, events: Iterable[Event]) -> SagaState:
        """State after applying `events` in order."""
        state = cls(flow)
        for event in events:
            state.apply(event)
        return state

    @property
    def open_attempt(self) -> tuple[str, Phase, int] | None:
        """(step, phase, attempt) started but without a recorded outcome, if any."""
        return self._open

    def progress(self, step: str) -> StepProgress:
        """Progress of step `step`."""
        try:
            return self.steps[step]
        except KeyError:
            raise InvalidTransition(f"flow {self.flow.name!r} has no step {step!r}") from None

    def _mark_applied(self, step: StepProgress) -> None:
        if not step.maybe_applied:
            step.maybe_applied = True
            self.applied_order.append(step.name)

    def apply(self, event: Event) -> None:
        """Fold one event in; raise InvalidTransition if it does not fit the history."""
        t = event.type
        if not self.created and t is not _SAGA_CREATED:
            raise InvalidTransition(f"{t.value} before saga_created")
        _HANDLERS[t](self, event)
        self.events_applied += 1

    def _require_step_phase(self, event: Event) -> tuple[StepProgress, PhaseProgress, Phase]:
        name, phase = event.step, event.phase
        if name is None or phase is None:
            raise InvalidTransition(f"{event.type.value} needs a step and a phase")
        step = self.steps.get(name)
        if step is None:
            step = self.progress(name)  # raises InvalidTransition for an unknown step
        return step, step.action if phase is _ACTION else step.compensation, phase

    def _on_saga_created(self, event: Event) -> None:
        if self.created:
            raise InvalidTransition("saga_created twice")
        self.created = True

    def _on_attempt_started(self, event: Event) -> None:
        # `_require_step_phase` inlined here and in `_close`: the two run for every attempt
        # (the simulator: 8 per request), and a call costs more than the lookup itself.
        name, phase = event.step, event.phase
        step = self.steps.get(name) if name is not None else None
        if step is None or phase is None:
            step, p, phase = self._require_step_phase(event)  # raises InvalidTransition
        p = step.action if phase is _ACTION else step.compensation
        if self._open is not None:
            raise InvalidTransition(f"attempt started while {self._open} is still open")
        status = self.status
        if phase is _COMPENSATION and status is not _COMPENSATING:
            raise InvalidTransition(f"compensation attempt while saga is {status.value}")
        if phase is _ACTION and status is not _PENDING and status is not _RUNNING:
            raise InvalidTransition(f"action attempt while saga is {status.value}")
        if p.done or p.skipped:
            raise InvalidTransition(f"{event.step} {phase.value} already finished")
        if event.attempt != p.attempts + 1:
            raise InvalidTransition(
                f"{event.step} {phase.value}: attempt {event.attempt}, expected {p.attempts + 1}"
            )
        p.attempts = event.attempt
        p.open = True
        p.not_before = None
        if p.first_at is None:
            p.first_at = event.at
        self._open = (step.name, phase, event.attempt)
        if status is _PENDING:
            self.status = _RUNNING

    def _close(self, event: Event) -> tuple[StepProgress, PhaseProgress, Phase]:
        name, phase = event.step, event.phase
        step = self.steps.get(name) if name is not None else None
        if step is None or phase is None:
            step, p, phase = self._require_step_phase(event)  # raises InvalidTransition
        p = step.action if phase is _ACTION else step.compensation
        if self._open != (step.name, phase, event.attempt):
            raise InvalidTransition(
                f"outcome for {step.name} {phase.value} attempt {event.attempt}, "
                f"but the open attempt is {self._open}"
            )
        p.open = False
        self._open = None
        return step, p, phase

    def _on_attempt_succeeded(self, event: Event) -> None:
        step, p, phase = self._close(event)
        p.done = True
        p.last_failure = None
        if phase is _ACTION:
            self._mark_applied(step)
            if self.flow.step(step.name).kind is _PIVOT:
                self.pivot_passed = True

    def _on_attempt_failed(self, event: Event) -> None:
        step, p, phase = self._close(event)
        if event.failure is None:
            raise InvalidTransition("attempt_failed without a failure")
        p.last_failure = event.failure
        if phase is _ACTION and event.failure.maybe_applied:
            self._mark_applied(step)

    def _on_retry_scheduled(self, event: Event) -> None:
        _, p, phase = self._require_step_phase(event)
        if p.open or p.done or event.not_before is None:
            raise InvalidTransition("retry_scheduled needs a closed, unfinished attempt")
        # No retry policy waits longer than MAX_RETRY_SECONDS (Retry-After is bounded below
        # it); a journal written before that bound may hold Infinity, NaN or years: retry
        # by then rather than never (`not <=` also catches NaN).
        latest = event.at + MAX_RETRY_SECONDS
        p.not_before = event.not_before if event.not_before <= latest else latest

    def _on_step_failed(self, event: Event) -> None:
        _, p, phase = self._require_step_phase(event)
        if p.open or p.done:
            raise InvalidTransition("step_failed needs a closed, unfinished phase")
        p.failed_for_good = True
        self.reason = event.reason
        if phase is Phase.ACTION and not self.pivot_passed and not self.pivot_stranded:
            self._rollback_cause = event.reason
            self.status = SagaStatus.COMPENSATING
        else:
            self.status = SagaStatus.FAILED

    @property
    def pivot_stranded(self) -> bool:
        """The pivot may have been applied but did not succeed, and nothing can undo it.

        Rolling back would report an undone saga whose irreversible step may stand, so such a
        saga stops FAILED for an operator: retry the pivot (forward) or force a rollback.
        """
        index = self.flow.pivot_index
        if index is None:
            return False
        pivot = self.flow.steps[index]
        progress = self.steps[pivot.name]
        return progress.maybe_applied and not progress.action.done and not pivot.has_compensation

    @property
    def pivot_in_flight(self) -> bool:
        """The pivot's action attempt was started and has no recorded outcome yet.

        Its result may still come back a success (and the saga then only goes forward), or it
        was cut off and may have applied: either way nobody knows yet whether it stands.
        """
        open_attempt = self._open
        if open_attempt is None or open_attempt[1] is not _ACTION:
            return False
        index = self.flow.pivot_index
        return index is not None and self.flow.steps[index].name == open_attempt[0]

    def refusal_waits(self, step: str, phase: Phase) -> bool:
        """Whether a call an open breaker refused waits for it instead of failing fast.

        Failing fast only helps where a rollback can then undo the saga: an action before the
        pivot. A compensation, an action past the pivot, and a pivot that may have been applied
        with nothing to undo it all have to go through eventually, so they wait.
        """
        if phase is Phase.COMPENSATION or self.pivot_passed:
            return True
        index = self.flow.pivot_index
        return index is not None and self.flow.steps[index].name == step and self.pivot_stranded

    def _on_rollback_requested(self, event: Event) -> None:
        if self.status in (SagaStatus.ROLLED_BACK, SagaStatus.COMPENSATING):
            raise InvalidTransition(f"rollback requested while {self.status.value}")
        if not event.force and self.pivot_in_flight:
            raise InvalidTransition(f"rollback requested while {PIVOT_IN_FLIGHT}")
        if event.step is not None:  # a fork's: the steps before `step` stay applied
            self.progress(event.step)  # InvalidTransition for an unknown step
            names = [s.name for s in self.flow.steps]
            self.kept = frozenset(names[: names.index(event.step)])
        for step in self.steps.values():
            if step.name in self.kept:
                continue
            if not step.compensation.done and not step.compensation.skipped:
                step.compensation.reset_budget()
            a = step.action
            if a.attempts and not (a.done or a.skipped or a.failed_for_good):
                a.abandoned = True  # in flight or waiting for a retry: never tried again
        self.reason = self._rollback_cause = event.reason
        self.status = SagaStatus.COMPENSATING

    def _resume_after_operator(self, phase: Phase) -> None:
        # The failure that held the saga is handled: forward, nothing holds it any more;
        # backward, it is rolling back for the reason it started to.
        if phase is _ACTION:
            self.status = SagaStatus.RUNNING
            self.reason = None
        else:
            self.status = SagaStatus.COMPENSATING
            self.reason = self._rollback_cause

    def _on_step_retry_requested(self, event: Event) -> None:
        _, p, phase = self._require_step_phase(event)
        if not p.failed_for_good:
            raise InvalidTransition("only a step that failed for good can be retried")
        p.reset_budget()
        self._resume_after_operator(phase)

    def _on_step_skipped(self, event: Event) -> None:
        _, p, phase = self._require_step_phase(event)
        if p.open or p.done:
            raise InvalidTransition("only an unfinished, idle step can be skipped")
        p.skipped = True
        p.failed_for_good = False
        self._resume_after_operator(phase)

    def _on_saga_completed(self, event: Event) -> None:
        if self.status is not SagaStatus.RUNNING:
            raise InvalidTransition(f"saga_completed while {self.status.value}")
        if self.next_forward() is not None:
            raise InvalidTransition("saga_completed with unfinished steps")
        self.status = SagaStatus.COMPLETED
        self.reason = None  # a completed saga has no failure to show; the journal keeps it

    def _on_saga_rolled_back(self, event: Event) -> None:
        if self.status is not SagaStatus.COMPENSATING or self.next_to_compensate() is not None:
            raise InvalidTransition("saga_rolled_back with compensations outstanding")
        self.status = SagaStatus.ROLLED_BACK

    def next_forward(self) -> str | None:
        """The first step whose action is not finished."""
        for step in self.steps.values():  # in flow order
            p = step.action
            if not (p.done or p.skipped):
                return step.name
        return None

    def next_to_compensate(self) -> str | None:
        """The most recently applied step that still needs its compensation."""
        for name in reversed(self.applied_order):
            if name in self.kept:
                continue
            step = self.steps[name]
            c = step.compensation
            if self.flow.step(name).has_compensation and not (c.done or c.skipped):
                return name
        return None


# `apply` dispatches on the event type to `SagaState._on_<type>`, looked up once here.
_HANDLERS = {t: getattr(SagaState, f"_on_{t.value}") for t in EventType}


def _advance(state: SagaState, name: str, phase: Phase, now: float, rng: UniformSource) -> Command:
    step = state.steps[name]
    p = step.action if phase is _ACTION else step.compensation
    if p.attempts == p.budget_base:  # no attempt in this budget yet
        return RunAttempt(name, phase, p.attempts + 1)
    if p.not_before is not None:
        if now < p.not_before:
            return Wait(p.not_before)
        return RunAttempt(name, phase, p.attempts + 1)
    failure = p.last_failure
    assert failure is not None  # closed, unfinished, attempted: the last attempt failed
    definition = state.flow.step(name)
    policy = definition.retry if phase is _ACTION else definition.compensation_retry
    delay = policy.next_delay(
        attempts_made=p.attempts_in_budget,
        first_attempt_at=p.first_at if p.first_at is not None else now,
        now=now,
        retryable=failure.retryable,
        rng=rng,
        retry_after=failure.retry_after,
    )
    if delay is None:
        why = "not retryable" if not failure.retryable else "retries exhausted"
        reason = (
            f"{name} {phase.value} failed for good after {p.attempts_in_budget} attempt(s) "
            f"({why}): {failure.error}"
        )
        if (
            definition.kind is _PIVOT
            and step.maybe_applied
            and phase is _ACTION
            and not definition.has_compensation
        ):
            reason += (
                "; the pivot may have been applied and cannot be undone: "
                "`retry-step` it to go forward, or `rollback --force`"
            )
        return Record(Event(EventType.STEP_FAILED, now, name, phase, p.attempts, reason=reason))
    return Record(
        Event(EventType.RETRY_SCHEDULED, now, name, phase, p.attempts + 1, not_before=now + delay)
    )


def decide(state: SagaState, *, now: float, rng: UniformSource) -> Command:
    """The next command for a saga whose runtime has no attempt in flight."""
    status = state.status
    if status in _FINAL:
        return Halt(status)
    if state._open is not None:
        open_step, phase, attempt = state._open
        return Record(Event(_ATTEMPT_FAILED, now, open_step, phase, attempt, INTERRUPTED))
    if status is _COMPENSATING:
        to_undo = state.next_to_compensate()
        if to_undo is None:
            return Record(Event(EventType.SAGA_ROLLED_BACK, now, reason=state.reason))
        return _advance(state, to_undo, _COMPENSATION, now, rng)
    to_do = state.next_forward()
    if to_do is None:
        return Record(Event(EventType.SAGA_COMPLETED, now))
    return _advance(state, to_do, _ACTION, now, rng)


# --- operator commands: validated here, journaled by the shell -------------------------------


def rollback_request(state: SagaState, *, now: float, reason: str, force: bool) -> Event:
    """The event that starts a rollback, or OperatorActionRefused saying why not.

    The shell appends it after the journal sequence `state` was read at; if that append
    conflicts, it must read the state again and ask again (see `orchestrator.operations`).
    """
    if state.status is SagaStatus.ROLLED_BACK:
        raise OperatorActionRefused("saga is already rolled back")
    if state.status is SagaStatus.COMPENSATING:
        raise OperatorActionRefused("saga is already rolling back; `resume` continues it")
    if state.pivot_in_flight and not force:
        name = state.open_attempt[0] if state.open_attempt else "?"
        raise OperatorActionRefused(
            f"{PIVOT_IN_FLIGHT}: wait for it or use --force. Step {name!r} was sent and its "
            "outcome is not recorded yet; a rollback now would discard it. Once a worker (or "
            "`sagalab orchestrate resume`, if nothing runs the saga) records it, ask again; "
            "--force compensates what can be undone even if the pivot stands"
        )
    if state.pivot_stranded and not force:
        raise OperatorActionRefused(
            "the pivot step may have been applied and has no compensation: a rollback would "
            "leave it standing. `retry-step` the pivot to go forward, or use --force"
        )
    if state.pivot_passed and not force:
        pivot = state.flow.pivot_index
        pivot_name = state.flow.steps[pivot].name if pivot is not None else "?"
        raise OperatorActionRefused(
            f"saga is past its pivot step {pivot_name!r}: it only goes forward. "
            "Use --force to compensate anyway (steps without a compensation stay applied)"
        )
    return Event(EventType.ROLLBACK_REQUESTED, now, reason=reason, force=force)


def cancel_request(state: SagaState, *, now: float, reason: str) -> Event:
    """The event that cancels a saga that has not passed its pivot, or OperatorActionRefused.

    A cancel is a rollback without `force`: it stops a pending or running saga at its next step
    boundary (a worker that holds it meets the request at its next commit) and compensates what
    was applied. It never crosses the pivot's fence: past the pivot, while its call is in
    flight, or with it stranded, the saga only goes forward (or an operator forces a rollback).
    """
    status = state.status
    if status in (SagaStatus.COMPLETED, SagaStatus.ROLLED_BACK):
        raise OperatorActionRefused(f"saga is {status.value}; there is nothing to cancel")
    if status is SagaStatus.COMPENSATING:
        raise OperatorActionRefused("saga is already rolling back; nothing to cancel")
    pivot = state.flow.pivot_index
    pivot_name = state.flow.steps[pivot].name if pivot is not None else "?"
    if state.pivot_passed or state.pivot_stranded:
        raise OperatorActionRefused(
            f"saga is past its pivot step {pivot_name!r} (it was applied and the saga only goes "
            "forward): it cannot be cancelled. `rollback --force` compensates what can be "
            "undone, and leaves the pivot applied"
        )
    if state.pivot_in_flight:
        raise OperatorActionRefused(
            f"{PIVOT_IN_FLIGHT}: step {pivot_name!r} was sent and its outcome is not recorded "
            "yet, so the saga may already be past it; it cannot be cancelled now. Ask again "
            "once the outcome is recorded (a success leaves it going forward)"
        )
    if status is SagaStatus.FAILED:
        raise OperatorActionRefused(
            "saga is failed, already stopped and waiting for an operator: `rollback` it"
        )
    return Event(EventType.ROLLBACK_REQUESTED, now, reason=f"cancelled: {reason}")


def blocking_step(state: SagaState) -> tuple[str, Phase] | None:
    """The step (and phase) whose failure for good holds a FAILED saga, if any."""
    if state.status is not SagaStatus.FAILED:
        return None
    for phase in (Phase.COMPENSATION, Phase.ACTION):
        for name, progress in state.steps.items():
            if progress.phase(phase).failed_for_good:
                return name, phase
    return None


def _failed_phase(state: SagaState, step: str) -> Phase:
    state.progress(step)  # InvalidTransition for an unknown step
    blocker = blocking_step(state)
    if blocker is None or blocker[0] != step:
        held = f"; it waits on {blocker[0]!r} ({blocker[1].value})" if blocker else ""
        raise OperatorActionRefused(
            f"step {step!r} is not what holds this saga{held}; "
            "only that step can be retried or skipped"
        )
    return blocker[1]


def retry_step_request(state: SagaState, *, now: float, step: str) -> Event:
    """The event that gives a failed step a fresh retry budget."""
    if state.status is not SagaStatus.FAILED:
        raise OperatorActionRefused(f"saga is {state.status.value}, not failed")
    phase = _failed_phase(state, step)
    return Event(EventType.STEP_RETRY_REQUESTED, now, step, phase)


def skip_step_request(state: SagaState, *, now: float, step: str, reason: str) -> Event:
    """The event that marks a failed step as handled by hand, so the saga can go on."""
    if state.status is not SagaStatus.FAILED:
        raise OperatorActionRefused(f"saga is {state.status.value}, not failed")
    if not reason.strip():
        raise OperatorActionRefused("skipping a step needs a reason for the journal")
    phase = _failed_phase(state, step)
    return Event(EventType.STEP_SKIPPED, now, step, phase, reason=reason)


def check_resume(state: SagaState) -> None:
    """Refuse (OperatorActionRefused) a resume that cannot move the saga.

    Only a pending, running or rolling back saga has work that resuming does: a failed one
    waits for an operator's retry, skip or rollback, and a completed or rolled back one has
    nothing left to do.
    """
    if state.status is SagaStatus.FAILED:
        blocker = blocking_step(state)
        held = f" on step {blocker[0]!r} ({blocker[1].value})" if blocker else ""
        raise OperatorActionRefused(
            f"saga is failed{held}, and resuming does not move it: `retry-step` or "
            "`skip-step` that step, or `rollback`"
        )
    if state.status in (SagaStatus.COMPLETED, SagaStatus.ROLLED_BACK):
        raise OperatorActionRefused(f"saga is {state.status.value}; nothing is left to resume")


def with_time(event: Event, at: float) -> Event:
    """`event` stamped at `at`."""
    return replace(event, at=at)

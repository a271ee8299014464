"""The saga driver: the one loop both runtimes run, as a sans-I/O generator of effects.

Theory of operation
-------------------
`decide` (orchestrator/saga.py) says what a saga needs next; something has to act on it: ask
the service's circuit breaker, journal the attempt, make the journal durable before the call,
call, count the outcome for the breaker, journal the outcome. That acting used to be written
twice (the real runner and the SimPy saga process). It lives here once, as a generator that
does no I/O itself: it *yields effects* (dataclasses) and is *sent* what happened.

    gates = breaker_gates(flow, services_with_breakers)   # once per flow
    driver = drive(state, saga_id=..., now=clock(), rng=rng, gates=gates)
    effect = next(driver)
    while not isinstance(effect, Done):
        effect = driver.send(act_on(effect))   # each effect says what it must be sent

The effects, and the reply each expects:

* `Commit(events, details)` -> the time after committing (float). Make these noted events
  durable, in one write. `details` maps an event's index to what the
  interpreter handed back with that outcome (`Answer`'s detail), to store beside it.
* `AskBreaker(service)` -> None if a call to `service` may go out now (in half-open: you are
  the probe), else the seconds until it may.
* `BreakerRefused(service, step, phase, waits)` -> ignored. Told once per refusal, so a
  runtime can count or show it; `waits` says which of the two refusal rules applies.
* `Call(events, details, saga_id, step, phase, attempt)` (and its `idempotency_key`) -> an
  `Answer`: first commit `events` and `details` as a `Commit` would (they end with this
  attempt's ATTEMPT_STARTED; `commit` gives them as one), then send the attempt. The
  answer is the tuple `(at, failure, unwell, detail)`: its outcome as `orchestrator.outcomes`
  classified it (failure None: success; `unwell`: the service, not the request, is the
  problem).
* `RecordOutcome(service, healthy)` -> ignored. Tell the service's breaker, now.
* `WaitUntil(until, step, service)` -> the time after waiting (float). `service` is set when
  the wait is for an open breaker (nothing is journaled for it), None for a scheduled retry.
  A runtime that does not wait (a worker handing the saga back to the queue) stops here:
  everything noted has been committed before a wait is asked for.
* `Done(status)`: the saga halted (terminal, or held for an operator); everything is committed.

The rules owned here:

* **Breaker gate and refusal.** A call to a service with a breaker (`gates`) asks it first.
  A refused action before the pivot fails fast: journaled as a non-retryable failure that
  applied nothing, so the flow rolls back. What has to go through anyway
  (`SagaState.refusal_waits`: a compensation, an action past the pivot, a stranded pivot)
  waits until the breaker may half-open (at least `MIN_REFUSAL_WAIT`), journaling nothing.
* **Breaker accounting.** Only a call the breaker let through is counted, and it counts as a
  failure exactly when the classification says the service is unwell (5xx, timeouts,
  refused or dropped connections); a 4xx, 429 and 409 `in_progress` included, is a healthy
  answer.
* **Commit points.** Events that need no I/O are noted and committed together with the next
  ATTEMPT_STARTED (which must be durable before the call is sent), before any wait, and at
  the end: one commit per call, and every step's result committed before the next step
  starts. A crash loses exactly the events noted since the last commit; `decide` then closes
  the open attempt as interrupted, and the retry carries the same idempotency key.

Pure: no I/O, no clock, no randomness of its own (time comes in with the replies; `rng` is the
runtime's generator, passed to `decide` for retry jitter).
"""

from __future__ import annotations

from collections.abc import Container, Generator
from dataclasses import dataclass
from typing import Any

from sagalab.orchestrator.flow import FlowDefinition
from sagalab.orchestrator.policies.breaker import MIN_REFUSAL_WAIT
from sagalab.orchestrator.policies.retry import UniformSource
from sagalab.orchestrator.records import direct_init
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
    decide,
    idempotency_key,
)

__all__ = [
    "Answer",
    "AskBreaker",
    "BreakerRefused",
    "Call",
    "Commit",
    "Done",
    "Effect",
    "Gates",
    "RecordOutcome",
    "WaitUntil",
    "breaker_gates",
    "drive",
    "refusal_failure",
]

_STARTED, _SUCCEEDED, _FAILED = (
    EventType.ATTEMPT_STARTED,
    EventType.ATTEMPT_SUCCEEDED,
    EventType.ATTEMPT_FAILED,
)


# --- effects (what the driver asks for) -------------------------------------------------------
#
# Commit and Call (one of each per attempt) are slotted and not frozen (treat them as
# immutable all the same): a frozen dataclass's initialiser pays an object.__setattr__ call per
# field and an object with a __dict__ is two allocations, and the simulator builds millions
# of these (measured: the simulator's benchmark). The breaker effects are built once
# per service and step (`drive`'s `gates`), so they carry no time: a breaker is asked and told
# at the interpreter's clock, which is the driver's time as far as the saga is concerned.


@dataclass(slots=True)
class Commit:
    """Make `events` durable in one write; reply with the time after it.

    `details` maps an index in `events` to what the interpreter handed back with that
    outcome's `Answer` (None when there is none).
    """

    events: list[Event]
    details: dict[int, Any] | None = None


@dataclass(frozen=True)
class AskBreaker:
    """May a call to `service` go out now? Reply None (yes) or the seconds until it may."""

    service: str


@dataclass(slots=True)
class Call:
    """Commit `events` (with `details`), then send attempt `attempt` of `step`'s `phase`;
    reply an `Answer`.

    `events` ends with this attempt's ATTEMPT_STARTED: it must be durable before anything is
    sent, so that a crash in between leaves an open attempt (which `decide` then closes as
    interrupted and retries under the same idempotency key). One effect, not a `Commit` then
    a call, because the two always go together and the simulator pays for every effect; and
    the commit's fields are the call's own rather than a nested `Commit` (one allocation less
    per attempt, measured: the simulator's benchmark). `commit` gives them as a `Commit`.
    """

    events: list[Event]
    details: dict[int, Any] | None
    saga_id: object
    step: str
    phase: Phase
    attempt: int

    @property
    def commit(self) -> Commit:
        """What must be committed before the call is sent, as a `Commit`."""
        return Commit(self.events, self.details)

    @property
    def idempotency_key(self) -> str:
        """The key every attempt of this step's phase carries (built only when sent for real)."""
        return idempotency_key(str(self.saga_id), self.step, self.phase)


@dataclass(frozen=True)
class RecordOutcome:
    """Tell the breaker of `service`, now, that a call it let through was `healthy` (or not)."""

    service: str
    healthy: bool


@dataclass(frozen=True)
class BreakerRefused:
    """The breaker of `service` refused `step`'s `phase`; it `waits` (or fails fast)."""

    service: str
    step: str
    phase: Phase
    waits: bool


@dataclass(frozen=True)
class WaitUntil:
    """Come back at `until`; reply with the time then. `service`: an open breaker's wait."""

    until: float
    step: str | None = None
    service: str | None = None


@direct_init
@dataclass(frozen=True)
class Done:
    """The saga halted with `status`; everything noted is committed."""

    status: SagaStatus


Effect = Commit | AskBreaker | BreakerRefused | Call | RecordOutcome | WaitUntil | Done

# --- replies (what the interpreter sends back) ------------------------------------------------

Answer = tuple[float, Failure | None, bool, Any]
"""A call's outcome, `(at, failure, unwell, detail)`: when it came, the failure (None for a
success) and whether the service is unwell, as `orchestrator.outcomes` classified it, and the
interpreter's own `detail` (what was sent and received, or None), which comes back beside the
outcome's event in the `Commit` that stores it. A plain tuple: one per call."""


def refusal_failure(service: str, retry_after: float) -> Failure:
    """The failure journaled for an action an open breaker refused (it fails fast)."""
    return Failure(
        f"circuit breaker {service!r} is open: not called (may half-open in {retry_after:.1f}s)",
        retryable=False,
        maybe_applied=False,
    )


Gates = dict[str, tuple["AskBreaker", "RecordOutcome", "RecordOutcome"]]
"""Per step whose service has a circuit breaker: the question and the two reports."""


def breaker_gates(flow: FlowDefinition, gated: Container[str]) -> Gates:
    """The `Gates` of `flow` when the services in `gated` have breakers (build once, reuse)."""
    return {
        s.name: (
            AskBreaker(s.service),
            RecordOutcome(s.service, True),
            RecordOutcome(s.service, False),
        )
        for s in flow.steps
        if s.service is not None and s.service in gated
    }


def drive(
    state: SagaState,
    *,
    saga_id: object,
    now: float,
    rng: UniformSource,
    gates: Gates | None = None,
) -> Generator[Effect, Any, None]:
    """Run `state`'s saga until it halts, as effects (see the module docstring).

    `state` is folded in place: after each effect it is the saga as journaled so far (noted
    events included). `gates` (from `breaker_gates`) says which steps' calls a breaker gates;
    none without. `now` is the time at the start; the replies bring the time on.
    """
    if gates is None:
        gates = {}
    apply = state.apply
    events: list[Event] = []  # noted since the last commit
    details: dict[int, Any] | None = None  # index in `events` -> the interpreter's detail
    while True:
        command = decide(state, now=now, rng=rng)
        if type(command) is RunAttempt:
            name, phase, attempt = command.step, command.phase, command.attempt
            gate = gates.get(name)
            if gate is not None:
                retry_after = yield gate[0]
                if retry_after is not None:
                    service = gate[0].service
                    waits = state.refusal_waits(name, phase)
                    yield BreakerRefused(service, name, phase, waits)
                    if waits:  # never dropped: asked again once it may half-open
                        until = now + max(retry_after, MIN_REFUSAL_WAIT)
                        if events:
                            now = yield Commit(events, details)
                            events, details = [], None
                        now = yield WaitUntil(until, name, service)
                        continue
                    refused = refusal_failure(service, retry_after)
                    for event in (
                        Event(_STARTED, now, name, phase, attempt),
                        Event(_FAILED, now, name, phase, attempt, refused),
                    ):
                        apply(event)
                        events.append(event)
                    continue
            started = Event(_STARTED, now, name, phase, attempt)
            apply(started)
            events.append(started)
            # durable before anything is sent: a crash now leaves an open attempt
            call = Call(events, details, saga_id, name, phase, attempt)
            events, details = [], None
            now, failure, unwell, detail = yield call
            if gate is not None:
                yield gate[2] if unwell else gate[1]
            if failure is None:
                event = Event(_SUCCEEDED, now, name, phase, attempt)
            else:
                event = Event(_FAILED, now, name, phase, attempt, failure)
            apply(event)
            if detail is not None:
                if details is None:
                    details = {}
                details[len(events)] = detail
            events.append(event)
        elif type(command) is Record:
            event = command.event
            apply(event)
            events.append(event)
        elif type(command) is Halt:
            if events:
                yield Commit(events, details)
            yield Done(command.status)
            return
        else:  # Wait: a scheduled retry
            if events:
                now = yield Commit(events, details)
                events, details = [], None
            now = yield WaitUntil(command.until)  # type: ignore[union-attr]

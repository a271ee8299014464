"""The saga driver: the one loop both runtimes run, as a sans-I/O generator of effects.

Theory of operation
-------------------
`decide` (orchestrator/saga.py) says what a saga needs next; something has to act on it: ask
the service's circuit breaker, journal the attempt, make the journal durable before the call,
call, count the outcome for the breaker, journal the outcome. That acting used to be written
twice (the real runner and the SimPy saga process). It lives here once, as a generator that
does no I/O itself: it *yields effects* (frozen dataclasses) and is *sent* what happened.

    driver = drive(state, saga_id=..., now=clock(), rng=rng, gated=services_with_breakers)
    effect = next(driver)
    while not isinstance(effect, Done):
        effect = driver.send(act_on(effect))   # each effect says what it must be sent

The effects, and the reply each expects:

* `Commit(events, details, before_call)` -> the time after committing (float). Make these
  noted events durable, in one write. `details` holds, per event, what the interpreter handed
  back with an answer (`Answer.detail`), for it to store beside the event.
* `AskBreaker(service)` -> `Admission(now, retry_after)`: may a call to `service` go now?
  `retry_after` None: yes (in half-open: you are the probe); else the seconds until it may.
* `BreakerRefused(service, step, phase, waits)` -> ignored. Told once per refusal, so a
  runtime can count or show it; `waits` says which of the two refusal rules applies.
* `Call(step, phase, attempt, idempotency_key)` -> `Answer(at, failure, unwell, detail)`:
  the attempt's outcome, classified by `orchestrator.outcomes` (failure None: success;
  `unwell`: the service, not the request, is the problem).
* `RecordOutcome(service, healthy, at)` -> ignored. Tell the service's breaker.
* `WaitUntil(until, step, service)` -> the time after waiting (float). `service` is set when
  the wait is for an open breaker (nothing is journaled for it), None for a scheduled retry.
  A runtime that does not wait (a worker handing the saga back to the queue) stops here:
  everything noted has been committed before a wait is asked for.
* `Done(status)`: the saga halted (terminal, or held for an operator); everything is committed.

The rules owned here:

* **Breaker gate and refusal.** A call to a service with a breaker (`gated`) asks it first.
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
  starts. A crash loses exactly the events noted since the last `Commit`; `decide` then closes
  the open attempt as interrupted, and the retry carries the same idempotency key.

Pure: no I/O, no clock, no randomness of its own (time comes in with the replies; `rng` is the
runtime's generator, passed to `decide` for retry jitter).
"""

from __future__ import annotations

from collections.abc import Container, Generator
from dataclasses import dataclass
from typing import Any, NamedTuple

from orchestrator.policies.breaker import MIN_REFUSAL_WAIT
from orchestrator.policies.retry import UniformSource
from orchestrator.saga import (
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
    "Admission",
    "Answer",
    "AskBreaker",
    "BreakerRefused",
    "Call",
    "Commit",
    "Done",
    "Effect",
    "RecordOutcome",
    "WaitUntil",
    "drive",
    "refusal_failure",
]

_STARTED, _SUCCEEDED, _FAILED = (
    EventType.ATTEMPT_STARTED,
    EventType.ATTEMPT_SUCCEEDED,
    EventType.ATTEMPT_FAILED,
)


# --- effects (what the driver asks for) -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Commit:
    """Make `events` durable in one write; reply with the time after it.

    `before_call`: the last event is the ATTEMPT_STARTED of the attempt about to be sent.
    """

    events: tuple[Event, ...]
    details: tuple[Any, ...]
    before_call: bool = False


@dataclass(frozen=True, slots=True)
class AskBreaker:
    """May a call to `service` go now? Reply with an `Admission`."""

    service: str


@dataclass(frozen=True, slots=True)
class BreakerRefused:
    """The breaker of `service` refused `step`'s `phase`; it `waits` (or fails fast)."""

    service: str
    step: str
    phase: Phase
    waits: bool


@dataclass(frozen=True, slots=True)
class Call:
    """Send attempt `attempt` of `step`'s `phase` under `idempotency_key`; reply an `Answer`."""

    step: str
    phase: Phase
    attempt: int
    idempotency_key: str


@dataclass(frozen=True, slots=True)
class RecordOutcome:
    """Tell the breaker of `service` that a call it let through was `healthy` (or not)."""

    service: str
    healthy: bool
    at: float


@dataclass(frozen=True, slots=True)
class WaitUntil:
    """Come back at `until`; reply with the time then. `service`: an open breaker's wait."""

    until: float
    step: str | None = None
    service: str | None = None


@dataclass(frozen=True, slots=True)
class Done:
    """The saga halted with `status`; everything noted is committed."""

    status: SagaStatus


Effect = Commit | AskBreaker | BreakerRefused | Call | RecordOutcome | WaitUntil | Done


# --- replies (what the interpreter sends back) ------------------------------------------------


class Admission(NamedTuple):
    """A breaker's answer at `now`: `retry_after` None lets the call go."""

    now: float
    retry_after: float | None = None


class Answer(NamedTuple):
    """A call's classified outcome at `at` (`orchestrator.outcomes.Verdict`'s two fields).

    `detail` is the interpreter's own (what was sent and received); it comes back beside the
    outcome's event in the `Commit` that stores it.
    """

    at: float
    failure: Failure | None
    unwell: bool
    detail: Any = None


def refusal_failure(service: str, retry_after: float) -> Failure:
    """The failure journaled for an action an open breaker refused (it fails fast)."""
    return Failure(
        f"circuit breaker {service!r} is open: not called (may half-open in {retry_after:.1f}s)",
        retryable=False,
        maybe_applied=False,
    )


def drive(
    state: SagaState,
    *,
    saga_id: object,
    now: float,
    rng: UniformSource,
    gated: Container[str] = (),
) -> Generator[Effect, Any, None]:
    """Run `state`'s saga until it halts, as effects (see the module docstring).

    `state` is folded in place: after each effect it is the saga as journaled so far (noted
    events included). `gated` holds the services that have a circuit breaker. `now` is the
    time at the start; every reply brings the time on.
    """
    flow = state.flow
    services = {s.name: s.service for s in flow.steps}
    apply = state.apply
    events: list[Event] = []  # noted since the last commit
    details: list[Any] = []
    while True:
        command = decide(state, now=now, rng=rng)
        if type(command) is RunAttempt:
            name, phase, attempt = command.step, command.phase, command.attempt
            service = services[name]
            gate = service is not None and service in gated
            if gate:
                assert service is not None
                admission: Admission = yield AskBreaker(service)
                now = admission.now
                retry_after = admission.retry_after
                if retry_after is not None:
                    waits = state.refusal_waits(name, phase)
                    yield BreakerRefused(service, name, phase, waits)
                    if waits:  # never dropped: asked again once it may half-open
                        if events:
                            now = yield Commit(tuple(events), tuple(details))
                            events.clear()
                            details.clear()
                        until = admission.now + max(retry_after, MIN_REFUSAL_WAIT)
                        now = yield WaitUntil(until, name, service)
                        continue
                    refused = refusal_failure(service, retry_after)
                    for event in (
                        Event(_STARTED, now, name, phase, attempt),
                        Event(_FAILED, now, name, phase, attempt, refused),
                    ):
                        apply(event)
                        events.append(event)
                        details.append(None)
                    continue
            started = Event(_STARTED, now, name, phase, attempt)
            apply(started)
            events.append(started)
            details.append(None)
            # durable before anything is sent: a crash now leaves an open attempt
            now = yield Commit(tuple(events), tuple(details), True)
            events.clear()
            details.clear()
            answer: Answer = yield Call(
                name, phase, attempt, idempotency_key(str(saga_id), name, phase)
            )
            now = answer.at
            if gate:
                assert service is not None
                yield RecordOutcome(service, not answer.unwell, now)
            failure = answer.failure
            if failure is None:
                event = Event(_SUCCEEDED, now, name, phase, attempt)
            else:
                event = Event(_FAILED, now, name, phase, attempt, failure)
            apply(event)
            events.append(event)
            details.append(answer.detail)
        elif type(command) is Record:
            event = command.event
            apply(event)
            events.append(event)
            details.append(None)
        elif type(command) is Halt:
            if events:
                yield Commit(tuple(events), tuple(details))
            yield Done(command.status)
            return
        else:  # Wait: a scheduled retry
            if events:
                now = yield Commit(tuple(events), tuple(details))
                events.clear()
                details.clear()
            now = yield WaitUntil(command.until)  # type: ignore[union-attr]

"""The saga runner: the real runtime's loop around the pure core.

It folds the stored journal, asks `decide` for the next command and acts on it, journaling
every step of the way. Events that need no I/O are batched and committed together with the
next ATTEMPT_STARTED (which must be durable before the call is sent) or at the end, so every
step's result is committed before the next step starts, with one commit per call.
"""

from __future__ import annotations

import random
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from orchestrator.errors import InputError, SagaError
from orchestrator.executors import AttemptContext, AttemptOutcome, StepExecutor
from orchestrator.flow import FlowDefinition
from orchestrator.journal import JournalEntry
from orchestrator.jsonsafe import check_json_value
from orchestrator.policies.breaker import MIN_REFUSAL_WAIT, Breaker
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
    Wait,
    decide,
    idempotency_key,
)
from orchestrator.store import Lease, SagaRecord, Store


class BreakerSource(Protocol):
    """Where the runner gets a service's circuit breaker (a `BreakerBoard`)."""

    def get(self, service: str) -> Breaker: ...


Checkpoint = Callable[[str, str, Phase], None]
"""Called as (point, step, phase) at "before-call" and "after-call"; used to inject crashes."""


def new_saga_id() -> str:
    """A 72-bit saga id: milliseconds since the epoch (48 bits) then 24 random bits.

    Time-ordered ids keep a saga's journal rows next to those of the sagas started just
    before it, so SQLite appends touch the same few pages instead of one per saga.
    """
    return f"{time.time_ns() // 1_000_000:012x}{secrets.token_hex(3)}"


def new_trace_id() -> str:
    """A W3C trace id (128 bits, hex)."""
    return secrets.token_hex(16)


def new_span_id() -> str:
    """A W3C span id (64 bits, hex)."""
    return secrets.token_hex(8)


def validate_input(flow: FlowDefinition, payload: Any) -> dict[str, Any]:
    """The input as a dict, or InputError naming what is wrong.

    Checked before a saga is stored: a JSON object that round-trips (no NaN or Infinity, see
    `orchestrator.jsonsafe`) holding every key the flow requires.
    """
    if not isinstance(payload, dict):
        raise InputError(f"flow input must be a JSON object, got {type(payload).__name__}")
    check_json_value(payload, what="input")
    missing = [k for k in flow.required_input if k not in payload]
    if missing:
        raise InputError(f"flow {flow.name!r} needs input key(s): {', '.join(missing)}")
    return payload


def start_saga(
    store: Store,
    flow: FlowDefinition,
    payload: Any,
    *,
    idempotency_key: str | None = None,
    now: float | None = None,
    queue: bool = True,
) -> tuple[SagaRecord, bool]:
    """Create (and queue) a saga; (existing saga, False) when the key was used before."""
    at = time.time() if now is None else now
    return store.create_saga(
        saga_id=new_saga_id(),
        flow=flow,
        payload=validate_input(flow, payload),
        trace_id=new_trace_id(),
        idempotency_key=idempotency_key,
        now=at,
        run_after=at if queue else None,
    )


@dataclass(frozen=True)
class RunResult:
    """Where a run stopped: a status, and `wait_until` if it stopped at a scheduled retry."""

    status: SagaStatus
    wait_until: float | None = None


class SagaRunner:
    """Drives sagas to a halt against one store and one executor (one per thread)."""

    def __init__(
        self,
        store: Store,
        executor: StepExecutor,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        checkpoint: Checkpoint | None = None,
        on_event: Callable[[str, Event], None] | None = None,
        breakers: BreakerSource | None = None,
        on_breaker_wait: Callable[[str, str, str, float], None] | None = None,
    ) -> None:
        self.store = store
        self.executor = executor
        self.clock = clock
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.checkpoint = checkpoint
        self.on_event = on_event
        self.breakers = breakers
        # (saga id, step, service, seconds): told before sleeping on an open breaker, which
        # journals nothing, so that a waiting operator sees why nothing moves
        self.on_breaker_wait = on_breaker_wait

    def run(
        self, saga_id: str, *, lease: Lease | None = None, wait_for_retries: bool = True
    ) -> RunResult:
        """Run until the saga halts (or, if not `wait_for_retries`, until it must wait).

        With a `lease` every write is fenced: LeaseLost stops the run at the next write.
        """
        record, entries, state = self.store.state(saga_id)
        return self._loop(
            record, state, _responses(entries), lease=lease, wait_for_retries=wait_for_retries
        )

    def start(
        self, flow: FlowDefinition, payload: Any, *, idempotency_key: str | None = None
    ) -> tuple[str, RunResult]:
        """Create a saga and run it here to the end; return its id and how it ended.

        The saga's creation is committed together with its first attempt's start, before that
        attempt is sent, so it costs one commit less than `start_saga` then `run`, with the same
        guarantee. A reused idempotency key runs (or returns) the saga it already names.
        """
        now = self.clock()
        record = SagaRecord(
            id=new_saga_id(),
            flow=flow,
            input=validate_input(flow, payload),
            status=SagaStatus.PENDING,
            trace_id=new_trace_id(),
            idempotency_key=idempotency_key,
            reason=None,
            created_at=now,
            updated_at=now,
            last_seq=0,
        )
        state = SagaState(flow)
        state.apply(Event(EventType.SAGA_CREATED, now))
        try:
            result = self._loop(record, state, {}, lease=None, wait_for_retries=True)
        except _AlreadyCreated as existing:
            return existing.saga_id, self.run(existing.saga_id)
        return record.id, result

    def _loop(
        self,
        record: SagaRecord,
        state: SagaState,
        responses: dict[str, Any],
        *,
        lease: Lease | None,
        wait_for_retries: bool,
    ) -> RunResult:
        saga_id = record.id
        seq = record.last_seq
        pending: list[JournalEntry] = []

        def flush() -> None:
            nonlocal seq
            if not pending:
                return
            if seq == 0:  # not stored yet (`start`): create it with these first entries
                stored, created = self.store.create_saga(
                    saga_id=saga_id,
                    flow=record.flow,
                    payload=record.input,
                    trace_id=record.trace_id,
                    idempotency_key=record.idempotency_key,
                    now=record.created_at,
                    initial=pending,
                    state=state,
                )
                if not created:
                    raise _AlreadyCreated(stored.id)
                seq = 1 + len(pending)
            else:
                seq = self.store.append(
                    saga_id, pending, expected_seq=seq, state=state, now=self.clock(), lease=lease
                )
            pending.clear()

        def note(entry: JournalEntry) -> None:
            state.apply(entry.event)
            pending.append(entry)
            if self.on_event is not None:
                self.on_event(saga_id, entry.event)

        while True:
            now = self.clock()
            command = decide(state, now=now, rng=self.rng)
            if isinstance(command, Halt):
                flush()
                return RunResult(command.status)
            if isinstance(command, Record):
                note(JournalEntry(command.event))
                continue
            if isinstance(command, Wait):
                flush()
                if not wait_for_retries:
                    return RunResult(state.status, wait_until=command.until)
                self.sleep(max(0.0, command.until - now))
                continue
            assert isinstance(command, RunAttempt)
            refused_until = self._attempt(record, state, command, responses, note, flush)
            if refused_until is not None:  # waits for the breaker to half-open
                flush()
                if not wait_for_retries:
                    return RunResult(state.status, wait_until=refused_until)
                pause = max(0.0, refused_until - self.clock())
                if self.on_breaker_wait is not None:
                    service = record.flow.step(command.step).service or "?"
                    self.on_breaker_wait(record.id, command.step, service, pause)
                self.sleep(pause)

    def _attempt(
        self,
        record: SagaRecord,
        state: SagaState,
        command: RunAttempt,
        responses: dict[str, Any],
        note: Callable[[JournalEntry], None],
        flush: Callable[[], None],
    ) -> float | None:
        """Perform one attempt; return a time to come back if the breaker refused it."""
        step = record.flow.step(command.step)
        breaker = None
        if self.breakers is not None and step.service is not None:
            breaker = self.breakers.get(step.service)
            now = self.clock()
            if not breaker.allow(now):
                wait = max(breaker.retry_after(now), MIN_REFUSAL_WAIT)
                if state.refusal_waits(command.step, command.phase):
                    return now + wait  # never dropped: asked again once it may half-open
                self._refuse(state, command, breaker, note)
                return None
        span_id = new_span_id()
        started = Event(
            EventType.ATTEMPT_STARTED, self.clock(), step.name, command.phase, command.attempt
        )
        note(JournalEntry(started, span_id=span_id))
        flush()  # durable before anything is sent: a crash now leaves an open attempt
        if self.checkpoint is not None:
            self.checkpoint("before-call", step.name, command.phase)
        ctx = AttemptContext(
            saga_id=record.id,
            trace_id=record.trace_id,
            span_id=span_id,
            step=step,
            phase=command.phase,
            attempt=command.attempt,
            idempotency_key=idempotency_key(record.id, step.name, command.phase),
            input=record.input,
            responses=responses,
        )
        try:
            outcome = self.executor.execute(ctx)
        except SagaError:
            raise  # the runtime's own (a service without a URL, the store): not this saga's
        except Exception as exc:
            # Executors must not raise for a failed call; one that does has a bug or met input
            # it cannot handle. Fail the attempt for good rather than the worker's thread; it
            # may have been sent, so it counts as maybe applied (compensated on rollback).
            error = f"executor error: {type(exc).__name__}: {exc}"
            outcome = AttemptOutcome(failure=Failure(error, False, True))
        if breaker is not None:
            # Which outcomes mean the service is unwell is the shared classification's
            # (`orchestrator.outcomes`): 5xx, timeouts, refused or dropped connections; a 4xx
            # (429 and 409 in_progress included) is a healthy service answering.
            if outcome.unwell:
                breaker.record_failure(self.clock())
            else:
                breaker.record_success(self.clock())
        if self.checkpoint is not None:
            self.checkpoint("after-call", step.name, command.phase)
        if outcome.failure is None:
            kind = EventType.ATTEMPT_SUCCEEDED
            if command.phase is Phase.ACTION:
                responses[step.name] = outcome.response
        else:
            kind = EventType.ATTEMPT_FAILED
        event = Event(
            kind, self.clock(), step.name, command.phase, command.attempt, outcome.failure
        )
        note(
            JournalEntry(
                event,
                request=outcome.request,
                response=outcome.response,
                status_code=outcome.status_code,
                duration_ms=outcome.duration_ms,
                span_id=span_id,
            )
        )
        return None

    def _refuse(
        self,
        state: SagaState,
        command: RunAttempt,
        breaker: Breaker,
        note: Callable[[JournalEntry], None],
    ) -> None:
        """An action refused by an open breaker fails fast: journaled, not retried."""
        now = self.clock()
        note(
            JournalEntry(
                Event(EventType.ATTEMPT_STARTED, now, command.step, command.phase, command.attempt)
            )
        )
        failure = Failure(
            f"circuit breaker {breaker.name!r} is open: not called "
            f"(may half-open in {breaker.retry_after(now):.1f}s)",
            retryable=False,
            maybe_applied=False,
        )
        note(
            JournalEntry(
                Event(
                    EventType.ATTEMPT_FAILED,
                    now,
                    command.step,
                    command.phase,
                    command.attempt,
                    failure,
                )
            )
        )


class _AlreadyCreated(Exception):
    """`start` found its idempotency key already naming a stored saga."""

    def __init__(self, saga_id: str) -> None:
        self.saga_id = saga_id


def _responses(entries: list[JournalEntry]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for entry in entries:
        e = entry.event
        if e.type is EventType.ATTEMPT_SUCCEEDED and e.phase is Phase.ACTION and e.step:
            found[e.step] = entry.response
    return found


def response_of(entries: list[JournalEntry], step: str) -> Mapping[str, Any] | None:
    """The recorded response of `step`'s successful action, if any."""
    return _responses(entries).get(step)

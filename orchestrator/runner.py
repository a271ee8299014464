"""The saga runner: the real runtime's loop around the pure core.

It folds the stored journal and interprets the saga driver's effects (`orchestrator.driver`,
which owns `decide`, the breaker gate and refusal, the breaker accounting and the commit
points): commits go to the store, calls to the executor, breaker questions to the
`BreakerSource`, waits to `sleep`. The SimPy saga process (simulator/orchestration.py)
interprets the same effects, so both runtimes journal and commit the same way.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from sagalab.orchestrator.driver import (
    AskBreaker,
    Call,
    Commit,
    Done,
    RecordOutcome,
    WaitUntil,
    breaker_gates,
    drive,
)
from sagalab.orchestrator.errors import InputError, SagaError
from sagalab.orchestrator.executors import AttemptContext, AttemptOutcome, StepExecutor
from sagalab.orchestrator.flow import FlowDefinition, StepDefinition
from sagalab.orchestrator.journal import JournalEntry
from sagalab.orchestrator.jsonsafe import check_json_value
from sagalab.orchestrator.policies.breaker import Breaker
from sagalab.orchestrator.records import direct_init
from sagalab.orchestrator.saga import Event, EventType, Failure, Phase, SagaState, SagaStatus
from sagalab.orchestrator.store import Lease, SagaRecord, Store


class BreakerSource(Protocol):
    """Where the runner gets a service's circuit breaker (a `BreakerBoard`)."""

    def get(self, service: str) -> Breaker: ...


class RunObserver(Protocol):
    """Told what a run reads and commits (a worker's metrics, `orchestrator.metrics`)."""

    def started(self, record: SagaRecord, entries: list[JournalEntry]) -> None: ...

    def committed(
        self, record: SagaRecord, state: SagaState, entries: list[JournalEntry]
    ) -> None: ...


Checkpoint = Callable[[str, str, Phase], None]
"""Called as (point, step, phase) at "before-call" and "after-call"; used to inject crashes."""


def new_saga_id() -> str:
    """A 72-bit saga id: milliseconds since the epoch (48 bits) then 24 random bits.

    Time-ordered ids keep a saga's journal rows next to those of the sagas started just
    before it, so SQLite appends touch the same few pages instead of one per saga.
    """
    return f"{time.time_ns() // 1_000_000:012x}{os.urandom(3).hex()}"


# The ids' random bits come from os.urandom, as `secrets.token_hex` draws them, without its
# three Python calls around it (a saga makes five ids).


def new_trace_id() -> str:
    """A W3C trace id (128 bits, hex)."""
    return os.urandom(16).hex()


def new_span_id() -> str:
    """A W3C span id (64 bits, hex)."""
    return os.urandom(8).hex()


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


@direct_init
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
        observer: RunObserver | None = None,
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
        self.observer = observer

    def run(
        self, saga_id: str, *, lease: Lease | None = None, wait_for_retries: bool = True
    ) -> RunResult:
        """Run until the saga halts (or, if not `wait_for_retries`, until it must wait).

        With a `lease` every write is fenced: LeaseLost stops the run at the next write.
        """
        record, entries, state = self.store.state(saga_id)
        if self.observer is not None:
            self.observer.started(record, entries)
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
        # Positional: a class called with keywords first gathers them into a dict.
        record = SagaRecord(
            new_saga_id(),  # id
            flow,
            validate_input(flow, payload),  # input
            SagaStatus.PENDING,
            new_trace_id(),
            idempotency_key,
            None,  # reason
            now,  # created_at
            now,  # updated_at
            0,  # last_seq
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
        """Interpret the driver's effects (`orchestrator.driver`) with this store and executor."""
        saga_id = record.id
        flow = record.flow
        seq = record.last_seq
        breakers = self.breakers
        driver = drive(
            state,
            saga_id=saga_id,
            now=self.clock(),
            rng=self.rng,
            gates=breaker_gates(flow, _EVERY_SERVICE) if breakers is not None else None,
        )
        reply: Any = None
        while True:
            effect = driver.send(reply)
            reply = None
            if type(effect) is Commit:
                entries = self._entries(effect.events, effect.details)
                seq = self._commit(record, state, entries, seq, lease)
                reply = self.clock()
            elif type(effect) is Call:
                span_id = new_span_id()  # the attempt's, on its ATTEMPT_STARTED and outcome
                entries = self._entries(effect.events, effect.details, span_id)
                seq = self._commit(record, state, entries, seq, lease)
                step = flow.step(effect.step)
                if self.checkpoint is not None:
                    self.checkpoint("before-call", step.name, effect.phase)
                outcome = self._execute(record, step, effect, span_id, responses)
                if self.checkpoint is not None:
                    self.checkpoint("after-call", step.name, effect.phase)
                if outcome.failure is None and effect.phase is Phase.ACTION:
                    responses[step.name] = outcome.response
                reply = (self.clock(), outcome.failure, outcome.unwell, (outcome, span_id))
            elif type(effect) is AskBreaker:
                assert breakers is not None
                breaker = breakers.get(effect.service)
                now = self.clock()
                if not breaker.allow(now):
                    reply = breaker.retry_after(now)
            elif type(effect) is RecordOutcome:
                assert breakers is not None
                breaker = breakers.get(effect.service)
                if effect.healthy:
                    breaker.record_success(self.clock())
                else:
                    breaker.record_failure(self.clock())
            elif type(effect) is WaitUntil:
                if not wait_for_retries:
                    return RunResult(state.status, wait_until=effect.until)
                pause = max(0.0, effect.until - self.clock())
                if effect.service is not None and self.on_breaker_wait is not None:
                    # an open breaker journals nothing: say why nothing moves
                    self.on_breaker_wait(saga_id, effect.step or "?", effect.service, pause)
                self.sleep(pause)
                reply = self.clock()
            elif type(effect) is Done:
                return RunResult(effect.status)
            # BreakerRefused: nothing to do here (the journal says it for a failed action)

    @staticmethod
    def _entries(
        events: list[Event], details: dict[int, Any] | None, started_span: str | None = None
    ) -> list[JournalEntry]:
        """The journal rows of a commit's `events` (a call's outcome with what it sent and
        got, from `details`: see `driver.Commit`).

        `started_span`: the span id of the attempt whose ATTEMPT_STARTED ends the commit.
        """
        details = details or {}
        last = len(events) - 1
        entries = []
        # JournalEntry's fields by position: (event, seq, request, response, status code,
        # duration, span id); keywords would be gathered into a dict on every call.
        for i, event in enumerate(events):
            detail = details.get(i)
            if detail is None:
                span = started_span if i == last else None
                entries.append(JournalEntry(event, 0, None, None, None, None, span))
                continue
            outcome, span = detail
            entries.append(
                JournalEntry(
                    event,
                    0,
                    outcome.request,
                    outcome.response,
                    outcome.status_code,
                    outcome.duration_ms,
                    span,
                )
            )
        return entries

    def _commit(
        self,
        record: SagaRecord,
        state: SagaState,
        entries: list[JournalEntry],
        seq: int,
        lease: Lease | None,
    ) -> int:
        """Store `entries` after journal sequence `seq`; the new last sequence number."""
        if seq == 0:  # not stored yet (`start`): create it with these first entries
            stored, created = self.store.create_saga(
                saga_id=record.id,
                flow=record.flow,
                payload=record.input,
                trace_id=record.trace_id,
                idempotency_key=record.idempotency_key,
                now=record.created_at,
                initial=entries,
                state=state,
            )
            if not created:
                raise _AlreadyCreated(stored.id)
            seq = 1 + len(entries)
        else:
            seq = self.store.append(
                record.id, entries, expected_seq=seq, state=state, now=self.clock(), lease=lease
            )
        if self.on_event is not None:  # told once they are durable
            for entry in entries:
                self.on_event(record.id, entry.event)
        if self.observer is not None:
            self.observer.committed(record, state, entries)
        return seq

    def _execute(
        self,
        record: SagaRecord,
        step: StepDefinition,
        call: Call,
        span_id: str,
        responses: dict[str, Any],
    ) -> AttemptOutcome:
        """Perform one attempt with the executor; never raises for the saga's own failure."""
        ctx = AttemptContext(  # by position: see `start`
            record.id,  # saga_id
            record.trace_id,
            span_id,
            step,
            call.phase,
            call.attempt,
            call.idempotency_key,
            record.input,
            responses,
        )
        try:
            return self.executor.execute(ctx)
        except SagaError:
            raise  # the runtime's own (a service without a URL, the store): not this saga's
        except Exception as exc:
            # Executors must not raise for a failed call; one that does has a bug or met input
            # it cannot handle. Fail the attempt for good rather than the worker's thread; it
            # may have been sent, so it counts as maybe applied (compensated on rollback).
            error = f"executor error: {type(exc).__name__}: {exc}"
            return AttemptOutcome(failure=Failure(error, False, True))


class _EveryService:
    """Every service has a breaker when the runner has a `BreakerSource`."""

    def __contains__(self, service: object) -> bool:
        return True


_EVERY_SERVICE = _EveryService()


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

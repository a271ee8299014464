"""The queue and the orchestrator replicas: the simulated runtime around the saga core.

Every replica runs `concurrency` workers. A worker takes the oldest saga from the queue, holds
its lease, and loops exactly as the real runtime does:

    command = decide(state, now=env.now, rng=rng)
    RunAttempt -> ask the service's breaker; journal ATTEMPT_STARTED and commit (one DB write,
                  which also carries the previous outcome); call the service; tell the breaker;
                  note the outcome
    Record     -> note the event
    Wait       -> commit what is noted (one DB write), then sleep until `until`
    Halt       -> commit what is noted; the saga is terminal: check its invariants, release it

These are the real runner's commit points, so a crash loses what it would lose there: the
noted events since the last commit (`Saga.lose_unflushed`).

A breaker refusal fails an action before the pivot fast (journaled as a non-retryable failure,
so the flow rolls back) but only delays what has to go through (`SagaState.refusal_waits`: a
compensation, an action past the pivot, a pivot that may stand; nothing is journaled).
A crashed replica's workers stop where they are; each saga it leased is picked up by another
replica once the lease has expired and the reaper has seen it. The resumed worker just
calls `decide`, which closes the open attempt as interrupted and retries it with the same
idempotency key, so idempotent services apply it once.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Generator
from functools import partial
from typing import Any

import simpy

from orchestrator.flow import FlowDefinition
from orchestrator.policies.autoscaling import AutoscalePolicy
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
)
from simulator.errors import ScenarioError
from simulator.metrics import Histogram, TierStats
from simulator.stations import Service

__all__ = ["Orchestrator", "Replica", "Saga"]

BREAKER_OPEN = Failure("circuit breaker open", retryable=False, maybe_applied=False)
_STARTED, _SUCCEEDED, _FAILED = (
    EventType.ATTEMPT_STARTED,
    EventType.ATTEMPT_SUCCEEDED,
    EventType.ATTEMPT_FAILED,
)


class Saga:
    """One saga in the simulation: its state fold plus what the invariants need."""

    __slots__ = (
        "id",
        "state",
        "born",
        "enqueued_at",
        "legit",
        "ledger",
        "inflight",
        "owner",
        "journal",
        "flushed",
        "resumed",
        "run_started",
        "group",
    )

    def __init__(
        self, saga_id: int, flow: FlowDefinition, born: float, legit: bool, group: str = ""
    ) -> None:
        self.id = saga_id
        created = Event(EventType.SAGA_CREATED, born)
        self.state = SagaState(flow)
        self.state.apply(created)
        # Its journal, and how much of it is durable: like the real runner, outcomes and
        # records are committed with the next attempt's start, or before a wait or the end.
        self.journal = [created]
        self.flushed = 1
        self.born = born
        self.enqueued_at = born
        self.legit = legit
        self.ledger: dict[tuple[str, Phase], int] = {}
        self.inflight = 0
        self.owner: Replica | None = None
        self.resumed = 0
        self.run_started = born
        self.group = group

    def lose_unflushed(self) -> None:
        """A crash: what was not committed is gone; the state is what the journal says."""
        if len(self.journal) > self.flushed:
            del self.journal[self.flushed :]
            self.state = SagaState.replay(self.state.flow, self.journal)

    def compensation_order(self) -> list[str]:
        """The compensations that succeeded, in journal order."""
        return [
            e.step
            for e in self.journal
            if e.type is _SUCCEEDED and e.phase is Phase.COMPENSATION and e.step is not None
        ]


class Replica:
    """One orchestrator process: alive after its start-up delay, until it crashes or drains."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.alive = False
        self.draining = False
        self.workers: list[simpy.Process] = []
        # Ordered sets (dicts): a set of objects iterates in address order, which differs
        # from one process to the next, and a seeded run must not.
        self.idle: dict[simpy.Event, None] = {}
        self.leased: dict[Saga, None] = {}


class Orchestrator:
    """The saga queue, the replicas, the reaper and the autoscaler."""

    def __init__(
        self,
        env: simpy.Environment,
        *,
        rng: random.Random,
        flow: FlowDefinition,
        services: dict[str, Service],
        breakers: dict[str, Breaker],
        concurrency: int,
        lease: float,
        reaper_interval: float,
        startup_delay: float,
        db_write: Callable[[], float],
        autoscale: AutoscalePolicy | None,
        autoscale_interval: float,
        finished: Callable[[Saga, float], None],
    ) -> None:
        self.env = env
        self.rng = rng
        self.flow = flow
        self.steps = {s.name: s for s in flow.steps}
        self.services = services
        self.breakers = breakers
        # Per step: its service, that service's breaker (if any) and the call timeout.
        self.routes: dict[str, tuple[Service, Breaker | None, float]] = {}
        for s in flow.steps:
            service = services.get(s.service or "")
            if service is None:  # the scenario model checks this first, with the scenario's path
                raise ScenarioError(
                    f"flow step {s.name!r}",
                    f"service {s.service!r} is not under services: {sorted(services)}",
                )
            self.routes[s.name] = (service, breakers.get(s.service or ""), s.timeout)
        self.concurrency = concurrency
        self.lease = lease
        self.reaper_interval = reaper_interval
        self.startup_delay = startup_delay
        self.db_write = db_write
        self.autoscale = autoscale
        self.autoscale_interval = autoscale_interval
        self.finished = finished
        self.queue: deque[Saga] = deque()
        self.idle: deque[tuple[simpy.Event, Replica]] = deque()
        self.replicas: list[Replica] = []
        self.starting = 0
        self.queue_stats = TierStats("queue")
        self.run_stats = TierStats("orchestrator")
        self.queue_wait = Histogram()
        self.counts: dict[str, int] = {}
        self.orphaned = 0
        self.awaiting_reaper = 0
        self.last_change: float | None = None
        self.decisions: list[dict[str, Any]] = []
        self.scale_events = 0

    def count(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n

    # --- queue ------------------------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Sagas waiting in the queue."""
        return len(self.queue)

    def oldest_age(self) -> float:
        """Seconds the oldest queued saga has waited."""
        return self.env.now - self.queue[0].enqueued_at if self.queue else 0.0

    def enqueue(self, saga: Saga) -> None:
        now = self.env.now
        saga.enqueued_at = now
        self.queue_stats.enter(now)
        idle = self.idle
        while idle:
            event, replica = idle.popleft()
            if replica.alive and not replica.draining and event in replica.idle:
                replica.idle.pop(event, None)
                self.queue_stats.leave(now, 0.0)
                self.queue_wait.record(0.0)
                event.succeed(saga)
                return
        self.queue.append(saga)

    # --- replicas -----------------------------------------------------------------------------

    @property
    def alive(self) -> int:
        """Replicas taking work (not starting, not draining, not dead)."""
        return sum(1 for r in self.replicas if r.alive and not r.draining)

    def start_replica(self, delay: float | None = None) -> None:
        """Start one replica; it takes work after `delay` (the start-up delay by default)."""
        replica = Replica(len(self.replicas))
        self.replicas.append(replica)
        self.starting += 1
        self.env.process(self._boot(replica, self.startup_delay if delay is None else delay))

    def _boot(self, replica: Replica, delay: float) -> Generator[simpy.Event, Any, None]:
        if delay > 0:
            yield self.env.timeout(delay)
        self.starting -= 1
        replica.alive = True
        for _ in range(self.concurrency):
            replica.workers.append(self.env.process(self._worker(replica)))

    def crash(self, count: int) -> None:
        """`count` live replicas die at once; their leased sagas wait for lease expiry."""
        victims = [r for r in self.replicas if r.alive and not r.draining][:count]
        now = self.env.now
        for replica in victims:
            replica.alive = False
            self.count("replica_crashes")
            replica.idle.clear()
            for process in replica.workers:
                if process.is_alive:
                    process.interrupt("crash")
            for saga in list(replica.leased):
                saga.lose_unflushed()
                saga.owner = None
                self.orphaned += 1
                self.awaiting_reaper += 1
                self.run_stats.leave(now, now - saga.run_started)
                expiry = self.lease + self.rng.uniform(0.0, self.reaper_interval)
                timer = self.env.timeout(expiry)
                timer.callbacks.append(partial(self._resume, saga))
            replica.leased.clear()

    def _resume(self, saga: Saga, _expired: simpy.Event) -> None:
        # A lease-expiry timer's callback: the reaper finds the orphaned saga.
        self.awaiting_reaper -= 1
        self.count("sagas_resumed")
        saga.resumed += 1
        self.enqueue(saga)

    def drain_one(self) -> bool:
        """Stop one replica gracefully: it finishes its sagas and takes no new ones."""
        for replica in reversed(self.replicas):
            if replica.alive and not replica.draining:
                replica.draining = True
                for event in list(replica.idle):
                    replica.idle.pop(event, None)
                    event.succeed(None)
                return True
        return False

    def autoscaler(self) -> Generator[simpy.Event, Any, None]:
        """A SimPy process applying the shared autoscaling rule every interval."""
        policy = self.autoscale
        assert policy is not None
        while True:
            yield self.env.timeout(self.autoscale_interval)
            now = self.env.now
            current = self.alive + self.starting
            decision = policy.decide(
                depth=self.depth,
                oldest_age=self.oldest_age(),
                current=current,
                now=now,
                last_change_at=self.last_change,
            )
            if not decision.changed:
                continue
            self.last_change = now
            self.scale_events += 1
            if len(self.decisions) < 200:
                self.decisions.append({"t": round(now, 3), "reason": decision.reason})
            for _ in range(decision.desired - current):
                self.start_replica()
            for _ in range(current - decision.desired):
                self.drain_one()

    # --- workers --------------------------------------------------------------------------------

    def _worker(self, replica: Replica) -> Generator[simpy.Event, Any, None]:
        env = self.env
        try:
            while replica.alive and not replica.draining:
                if self.queue:
                    saga = self.queue.popleft()
                    now = env.now
                    self.queue_stats.leave(now, now - saga.enqueued_at)
                    self.queue_wait.record(now - saga.enqueued_at)
                else:
                    event = env.event()
                    replica.idle[event] = None
                    self.idle.append((event, replica))
                    saga = yield event
                    if saga is None:
                        return
                yield from self._run(saga, replica)
        except simpy.Interrupt:
            return

    def _run(self, saga: Saga, replica: Replica) -> Generator[simpy.Event, Any, None]:
        env = self.env
        timeout = env.timeout
        rng = self.rng
        db = self.db_write
        state = saga.state
        journal = saga.journal
        apply, append = state.apply, journal.append
        routes = self.routes
        saga.owner = replica
        replica.leased[saga] = None
        now = saga.run_started = env.now
        self.run_stats.enter(now)
        while True:
            now = env.now
            command = decide(state, now=now, rng=rng)
            if isinstance(command, RunAttempt):
                name, phase, attempt = command.step, command.phase, command.attempt
                service, breaker, limit = routes[name]
                if breaker is not None and not breaker.allow(now):
                    if state.refusal_waits(name, phase):
                        self.count(
                            "compensations_delayed_by_breaker"
                            if phase is Phase.COMPENSATION
                            else "actions_delayed_by_breaker"
                        )
                        if len(journal) > saga.flushed:
                            yield timeout(db())
                            saga.flushed = len(journal)
                        yield timeout(max(breaker.retry_after(now), MIN_REFUSAL_WAIT))
                        continue
                    self.count("actions_refused_by_breaker")
                    for event in (
                        Event(_STARTED, now, name, phase, attempt),
                        Event(_FAILED, now, name, phase, attempt, BREAKER_OPEN),
                    ):
                        apply(event)
                        append(event)
                    continue
                event = Event(_STARTED, now, name, phase, attempt)
                apply(event)
                append(event)
                yield timeout(db())  # durable before the call, with the previous outcome
                saga.flushed = len(journal)
                call = service.call(saga, name, phase, limit)
                yield call.event
                failure, unwell = call.outcome
                now = env.now
                if breaker is not None:
                    if unwell:
                        breaker.record_failure(now)
                    else:
                        breaker.record_success(now)
                if failure is None:
                    event = Event(_SUCCEEDED, now, name, phase, attempt)
                else:
                    event = Event(_FAILED, now, name, phase, attempt, failure)
                apply(event)
                append(event)
            elif isinstance(command, Record):
                event = command.event
                apply(event)
                append(event)
            elif isinstance(command, Wait):
                if len(journal) > saga.flushed:
                    yield timeout(db())
                    saga.flushed = len(journal)
                delay = command.until - env.now
                if delay > 0:  # the commit may have taken longer than the wait
                    yield timeout(delay)
            else:
                assert isinstance(command, Halt)
                if len(journal) > saga.flushed:
                    yield timeout(db())
                    saga.flushed = len(journal)
                now = env.now
                replica.leased.pop(saga, None)
                saga.owner = None
                self.run_stats.leave(now, now - saga.run_started)
                self.finished(saga, now)
                return

    def unfinished(self) -> int:
        """Sagas not terminal: queued, running on a replica, or waiting for the reaper."""
        running = sum(len(r.leased) for r in self.replicas)
        return len(self.queue) + running + self.awaiting_reaper


def is_final(status: SagaStatus) -> bool:
    """Completed, rolled back or failed (the three ways a saga may end)."""
    return status in (SagaStatus.COMPLETED, SagaStatus.ROLLED_BACK, SagaStatus.FAILED)

"""The queue and the orchestrator replicas: the simulated runtime around the saga core.

Every replica runs `concurrency` workers. A worker takes the oldest saga from the queue, holds
its lease, and loops exactly as the real runtime does:

    the saga driver (`orchestrator.driver.drive`) yields effects; the worker acts on them:
    Commit       -> one DB write (the journal grows by the committed events)
    AskBreaker   -> the service's breaker, at env.now
    Call         -> the simulated service; its classified outcome goes back to the driver
    RecordOutcome-> tell the breaker
    WaitUntil    -> sleep until then
    Done         -> the saga halted: check its invariants, release it

The driver is the real runner's too, so the commit points are the same and a crash loses
what it would lose there: the events noted since the last commit (`Saga.lose_unflushed`).

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

from sagalab.orchestrator.driver import (
    AskBreaker,
    BreakerRefused,
    Call,
    Commit,
    Done,
    Effect,
    RecordOutcome,
    WaitUntil,
    breaker_gates,
    drive,
)
from sagalab.orchestrator.flow import FlowDefinition
from sagalab.orchestrator.policies.autoscaling import AutoscalePolicy
from sagalab.orchestrator.policies.breaker import Breaker
from sagalab.orchestrator.saga import Event, EventType, Phase, SagaState, SagaStatus

from .database import Database
from .errors import ScenarioError
from .metrics import Histogram, TierStats
from .stations import Service
from .timer import Timer
from .transcript import Stamp, Transcript, TranscriptRun, stamped

__all__ = ["Orchestrator", "Replica", "Saga"]

_SUCCEEDED = EventType.ATTEMPT_SUCCEEDED


class Saga:
    """One saga in the simulation: its state fold plus what the invariants need."""

    __slots__ = (
        "id",
        "flow",
        "_state",
        "status",
        "born",
        "enqueued_at",
        "legit",
        "ledger",
        "inflight",
        "owner",
        "_journal",
        "_stamps",
        "flushed",
        "resumed",
        "run_started",
        "group",
        "sent",
    )

    def __init__(
        self, saga_id: int, flow: FlowDefinition, born: float, legit: bool, group: str = ""
    ) -> None:
        self.id = saga_id
        self.flow = flow
        created = Event(EventType.SAGA_CREATED, born)
        # Folded from the journal when first read (`state`): a run served from the driver's
        # transcript (simulator/transcript.py) does not fold it step by step.
        self._state: SagaState | None = None
        # How its last run ended (the driver's `Done`), None before: what `finished` reads
        # first, so that a served saga that completed is never folded at all.
        self.status: SagaStatus | None = None
        # Its committed journal (the driver commits outcomes and records with the next
        # attempt's start, or before a wait or the end) and how much of it is durable. The
        # commits of a run served from the transcript are kept unbuilt (`_stamps`, in order
        # after `_journal`) and built when the journal is read: a saga that completes on a
        # served path never has its events built at all.
        self._journal = [created]
        self._stamps: list[Stamp] | None = None
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
        # The operations (step, phase) that reached their service at least once (noted by
        # `Service.call`): a later call of one is amplification (`simulator.metastability`).
        self.sent: set[tuple[str, Phase]] = set()

    @property
    def journal(self) -> list[Event]:
        """Its journal: every event committed (and, in tests, noted), in order."""
        stamps = self._stamps
        journal = self._journal
        if stamps:
            for specs, at in stamps:
                journal.extend(stamped(specs, at))
            stamps.clear()
        return journal

    def commit(self, events: list[Event]) -> None:
        """`events` are durable: the journal grows by them."""
        journal = self.journal
        journal.extend(events)
        self.flushed = len(journal)

    def commit_served(self, stamp: Stamp) -> None:
        """The events of a commit served from the transcript are durable (kept unbuilt)."""
        stamps = self._stamps
        if stamps is None:
            stamps = self._stamps = []
        stamps.append(stamp)
        self.flushed += len(stamp[0])

    def lose_unflushed(self) -> None:
        """A crash: what was not committed is gone; the state is what the journal says."""
        if len(self.journal) > self.flushed:
            del self.journal[self.flushed :]
        # The driver folds what it notes into `state` before it commits it to `journal`.
        state = self._state
        if state is not None and state.events_applied != len(self.journal):
            self._state = None  # folded again from the journal when read

    @property
    def state(self) -> SagaState:
        """The fold of its journal. While the real driver runs the saga, the driver's own state
        (which holds what it noted and has not committed yet); a run served from the
        transcript notes nothing here, and this folds what it committed."""
        state = self._state
        if state is None:
            state = self._state = SagaState.replay(self.flow, self.journal)
        return state

    def compensation_order(self) -> list[str]:
        """The compensations that succeeded, in journal order."""
        return [
            e.step
            for e in self.journal
            if e.type is _SUCCEEDED and e.phase is Phase.COMPENSATION and e.step is not None
        ]


class Replica:
    """One orchestrator process: alive after its start-up delay, until it crashes or drains."""

    def __init__(self, index: int, remote: bool = False) -> None:
        self.index = index
        # Runs in the second region (simulator/regions.py): its calls and writes cross over.
        self.remote = remote
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
        database: Database | None = None,
    ) -> None:
        self.env = env
        self.rng = rng
        self.flow = flow
        self.steps = {s.name: s for s in flow.steps}
        self.services = services
        self.breakers = breakers
        # Per step: its service, that service's breaker (if any) and the call timeout.
        self.routes: dict[str, tuple[Service, Breaker | None, float]] = {}
        # The steps whose calls the driver gates on a breaker, built once for every saga.
        self.gates = breaker_gates(flow, breakers)
        # What the driver yields for a fresh saga, remembered (simulator/transcript.py).
        self.transcript = Transcript(flow, self.gates, rng)
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
        # The database as a station (claims and commits queue for its writers), or None: a
        # commit is then one `db_write` draw with no queue.
        self.database = database
        self.hop = 0.0  # seconds one way between the regions (simulator/regions.py sets it)
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
        self.queue_waits = Histogram()  # only the sagas that found no idle worker
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
        idle = self.idle
        while idle:
            event, replica = idle.popleft()
            if replica.alive and not replica.draining and event in replica.idle:
                replica.idle.pop(event, None)
                # Through the queue in no time: `enter(now)` and `leave(now, 0.0)`, and a
                # wait of 0.0, each in one step.
                self.queue_stats.pass_through(now)
                self.queue_wait.record_zero()
                event.succeed(saga)
                return
        self.queue_stats.enter(now)
        self.queue.append(saga)

    # --- replicas -----------------------------------------------------------------------------

    @property
    def alive(self) -> int:
        """Replicas taking work (not starting, not draining, not dead)."""
        return sum(1 for r in self.replicas if r.alive and not r.draining)

    def start_replica(self, delay: float | None = None, remote: bool = False) -> None:
        """Start one replica (in the second region if `remote`); it takes work after `delay`
        (the start-up delay by default)."""
        replica = Replica(len(self.replicas), remote)
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

    def crash(self, count: int, remote: bool | None = None) -> None:
        """`count` live replicas (of the second region only if `remote` is true, of the first
        only if false) die at once; their leased sagas wait for lease expiry."""
        victims = [
            r
            for r in self.replicas
            if r.alive and not r.draining and (remote is None or r.remote is remote)
        ][:count]
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
        timer = Timer(env)  # every wait of this worker's runs, one at a time
        try:
            while replica.alive and not replica.draining:
                if self.queue:
                    saga = self.queue.popleft()
                    now = env.now
                    self.queue_stats.leave(now, now - saga.enqueued_at)
                    self.queue_wait.record(now - saga.enqueued_at, (self.queue_waits,))
                else:
                    event = env.event()
                    replica.idle[event] = None
                    self.idle.append((event, replica))
                    saga = yield event
                    if saga is None:
                        return
                yield from self._run(saga, replica, timer)
        except simpy.Interrupt:
            return

    def _run(self, saga: Saga, replica: Replica, timer: Timer) -> Generator[simpy.Event, Any, None]:
        # Interprets the saga driver's effects (`orchestrator.driver`), as the real runner
        # does: the rules (breaker gate, refusal, accounting, commit points) are the driver's.
        env = self.env
        timeout = timer.after  # a Timeout each time, but one object (simulator/timer.py)
        db = self.db_write
        write = self.database.write if self.database is not None else None
        # A replica in the second region reaches the services and the database across regions:
        # each call and each write waits one hop there and one back.
        hop = self.hop if replica.remote else 0.0
        routes = self.routes
        breakers = self.breakers
        saga.owner = replica
        replica.leased[saga] = None
        now = saga.run_started = env.now
        self.run_stats.enter(now)
        if hop:
            yield timeout(2 * hop)  # the claim's round trip to the database
        if write is not None:
            yield write()  # the claim: an atomic UPDATE of the queue row
        now = env.now
        run: TranscriptRun | None = None
        send: Callable[[Any], Effect]
        journal = saga.journal
        if len(journal) == 1:  # just created: served from the driver's transcript
            run = self.transcript.start(journal[0], saga.id, now)
            effect, send = run.first, run.send
        else:
            driver = drive(saga.state, saga_id=saga.id, now=now, rng=self.rng, gates=self.gates)
            send = driver.send
            effect = next(driver)
        while True:
            # One pass serves an attempt: its effects come in this order (the breaker's
            # question, the call, the breaker's report), so each is checked in turn rather
            # than going round the loop once per effect. `now` is env.now: it is read again
            # after every yield to SimPy, and the breaker effects take no simulated time.
            if type(effect) is AskBreaker:
                breaker = breakers[effect.service]
                effect = send(None if breaker.allow(now) else breaker.retry_after(now))
            if type(effect) is Call:
                # The attempt's start is durable before the call.
                yield timeout(db()) if write is None else write()
                if run is not None and run.from_tree:
                    saga.commit_served(run.stamp())
                else:
                    saga.commit(effect.events)
                name = effect.step
                service, _breaker, limit = routes[name]
                if hop:
                    yield timeout(hop)  # to the services' region
                call = service.call(saga, name, effect.phase, limit)
                yield call.event
                if hop:
                    yield timeout(hop)  # and the answer back
                now = env.now
                failure, unwell = call.outcome
                effect = send((now, failure, unwell, None))
                if type(effect) is RecordOutcome:
                    breaker = breakers[effect.service]
                    if effect.healthy:
                        breaker.record_success(now)
                    else:
                        breaker.record_failure(now)
                    effect = send(None)
            elif type(effect) is Commit:
                if hop:
                    yield timeout(2 * hop)  # the write's round trip to the database
                yield timeout(db()) if write is None else write()  # one write for all noted
                if run is not None and run.from_tree:
                    saga.commit_served(run.stamp())
                else:
                    saga.commit(effect.events)
                now = env.now
                effect = send(now)
            elif type(effect) is WaitUntil:
                delay = effect.until - now
                if delay > 0:  # the commit may have taken longer than the wait
                    yield timeout(delay)
                    now = env.now
                effect = send(now)
            elif type(effect) is BreakerRefused:
                if not effect.waits:
                    self.count("actions_refused_by_breaker")
                elif effect.phase is Phase.COMPENSATION:
                    self.count("compensations_delayed_by_breaker")
                else:
                    self.count("actions_delayed_by_breaker")
                effect = send(None)
            elif type(effect) is Done:
                if run is not None:  # the driver's state if it ran, else the journal's fold
                    saga._state = run.state
                saga.status = effect.status
                replica.leased.pop(saga, None)
                saga.owner = None
                self.run_stats.leave(now, now - saga.run_started)
                self.finished(saga, now)
                return
            elif type(effect) is not AskBreaker:  # an AskBreaker goes round again
                raise TypeError(f"unexpected effect from the saga driver: {effect!r}")

    def unfinished(self) -> int:
        """Sagas not terminal: queued, running on a replica, or waiting for the reaper."""
        running = sum(len(r.leased) for r in self.replicas)
        return len(self.queue) + running + self.awaiting_reaper


def is_final(status: SagaStatus) -> bool:
    """Completed, rolled back or failed (the three ways a saga may end)."""
    return status in (SagaStatus.COMPLETED, SagaStatus.ROLLED_BACK, SagaStatus.FAILED)

"""Seeded exploration of crash and delivery orderings through the saga driver.

Theory of operation
-------------------
`simulate run` shows how the system behaves under load; this asks whether a saga can ever end
wrong. For each seed it runs a few sagas of one flow through the *same* driver the runner and
the SimPy model interpret (`orchestrator.driver.drive`), against a small in-memory world
(`simulator.explore_world`):

* a journal store that fences writes as the real one does: a saga is claimed with a new lease
  epoch, and an append lands only under the current epoch after the expected sequence
  (`JournalStore.append`);
* services with the fake services' rules (`fakeservices/state.py`): an idempotency key's
  stored answer is replayed, a request while one under its key is still being processed is
  answered 409 `in_progress`, a compensation of an order leaves a tombstone, and an action
  after it is refused 409 `compensated`; every action or compensation that takes effect goes
  into one ledger (`LedgerRecord`s, as `sagalab verify` reads them);
* faults, chosen by the seed's generator at every commit and every call (`FaultKind`): a
  worker crash before or after the write; a lease that runs out while its holder is stuck in a
  call (another worker takes over; the old holder wakes later and must be fenced); an answer
  lost after the service applied the call; a request delivered twice; a compensation, or an
  action, that the service finishes after the caller gave up.

A crashed or fenced worker's driver is dropped. The next worker claims the saga (a new
epoch), folds the stored journal (`SagaState.replay`) and starts a fresh driver, exactly as a
worker or `orchestrate resume` does; `decide` closes the open attempt as interrupted and
retries it under the same idempotency key. Answers come back classified by
`orchestrator.outcomes`, as the real executor's do. Time is a number this module advances
(commit and call durations, timeouts, retry waits); the invariants are checked afterwards by
`simulator.explore_checks`.

Pure: no I/O, no clock, no randomness of its own (the caller passes the seed's generator).
The same seed gives the same faults, journals, ledger and result in every process.
"""

from __future__ import annotations

from typing import Any

from sagalab.orchestrator.driver import (
    Call,
    Commit,
    Done,
    WaitUntil,
    drive,
)
from sagalab.orchestrator.errors import InvalidTransition
from sagalab.orchestrator.flow import FlowDefinition
from sagalab.orchestrator.outcomes import Transport, classify_status, classify_transport
from sagalab.orchestrator.saga import Event, EventType, Phase, SagaState

from .explore_world import (
    AT_CALL,
    AT_COMMIT,
    Conflict,
    Delivery,
    Fault,
    FaultKind,
    Fenced,
    JournalStore,
    Rng,
    SeedRun,
    ServiceBehaviour,
    ServiceModel,
    Setup,
)

__all__ = [
    "MAX_EFFECTS",
    "MAX_SEEDS",
    "Fault",
    "FaultKind",
    "JournalStore",
    "Rng",
    "SeedRun",
    "ServiceBehaviour",
    "Setup",
    "final_status",
    "run_seed",
]

#: The most seeds one `explore` run takes: about two minutes at the measured ~1,000 seeds/s.
MAX_SEEDS = 100_000
#: Effects one worker may interpret before its saga counts as not halting (a livelock, or a
#: service that never answers well on a step retried forever).
MAX_EFFECTS = 5_000
#: Workers that may claim one saga in one seed (each crash or fence hands it to another).
MAX_CLAIMS = 64


# --- one worker: interprets the driver's effects, meeting the seed's faults ------------------

_CRASHED, _LOST, _STALLED, _DONE, _RUNAWAY = "crashed", "lost", "stalled", "done", "runaway"


class _Worker:
    """One holder of one saga: its epoch, its driver and how far the journal it read goes."""

    def __init__(self, world: _World, saga: str, epoch: int, state: SagaState) -> None:
        self.world = world
        self.saga = saga
        self.epoch = epoch
        self.seq = len(world.run.journals[saga])
        self.driver = drive(state, saga_id=saga, now=world.now, rng=world.rng)
        self.reply: Any = None
        self.stuck: tuple[Delivery, Call] | None = None  # a call in flight while stalled
        self.wake_after = 0

    def write(self, events: list[Event]) -> bool:
        """Append `events` under this worker's lease; False when fenced or conflicting."""
        world = self.world
        try:
            self.seq = world.store.append(self.saga, events, expected=self.seq, epoch=self.epoch)
        except (Fenced, Conflict) as exc:
            world.note(f"{self.saga} worker {self.epoch}: write refused ({type(exc).__name__})")
            return False
        world.note(f"{self.saga} worker {self.epoch}: wrote {_names(events)}")
        world.after_write(self.saga)
        return True

    def run(self) -> str:
        """Interpret effects until the saga halts or this worker stops (crash, fence, stall)."""
        world = self.world
        if self.stuck is not None:  # woken: its call comes back now, answered or timed out
            delivery, call = self.stuck
            self.stuck = None
            self.reply = world.answer_of(call, delivery.answer, gave_up=delivery.answer is None)
        send = self.driver.send
        for _ in range(MAX_EFFECTS):
            effect = send(self.reply)
            self.reply = None
            if isinstance(effect, Call):
                outcome = self.call(effect)
                if isinstance(outcome, str):
                    return outcome
                self.reply = outcome
            elif isinstance(effect, Commit):
                fault = world.fault(self, AT_COMMIT, None)
                if fault is FaultKind.CRASH_BEFORE_COMMIT:
                    return _CRASHED
                if not self.write(effect.events):
                    return _LOST
                if fault is FaultKind.CRASH_AFTER_COMMIT:
                    return _CRASHED
                world.now += world.setup.commit_time
                self.reply = world.now
            elif isinstance(effect, WaitUntil):
                world.now = max(world.now, effect.until)
                world.deliver_due()
                self.reply = world.now
            elif isinstance(effect, Done):
                return _DONE
            # No breakers here (`drive` without gates asks none): every call may go out.
        return _RUNAWAY

    def call(self, effect: Call) -> Any:
        """Commit the attempt's start, then send it (meeting a fault, maybe); the reply, or
        why this worker stopped."""
        world = self.world
        fault = world.fault(self, world.call_faults(effect.phase), effect)
        if fault is FaultKind.CRASH_BEFORE_COMMIT:
            return _CRASHED
        if not self.write(effect.events):
            return _LOST
        world.now += world.setup.commit_time
        world.deliver_due()
        service = world.services[world.setup.service_of(effect.step)]
        key = effect.idempotency_key
        order = world.orders[self.saga]
        if fault is FaultKind.CRASH_AFTER_COMMIT:
            if world.rng.random() < 0.5:  # it was sent before the worker died
                world.send(service, key, effect.phase, order)
            return _CRASHED
        if fault is FaultKind.LEASE_EXPIRY:
            # Stuck in the call past its lease: the request goes out (now, or it reaches the
            # service late), and another worker takes the saga over once the lease is gone.
            late = world.rng.random() < 0.5
            delay = world.setup.lease * world.rng.uniform(0.5, 2.0) if late else 0.0
            delivery = world.dispatch(service, key, effect.phase, order, delay)
            self.stuck = (delivery, effect)
            self.wake_after = int(world.rng.random() * 4)
            world.now += world.setup.lease
            return _STALLED
        timeout = world.setup.flow.step(effect.step).timeout
        if fault in (FaultKind.SLOW_COMPENSATION, FaultKind.LATE_ANSWER):
            # The service finishes after the caller gave up: it is busy with the key meanwhile.
            world.dispatch(service, key, effect.phase, order, timeout * world.rng.uniform(1, 3))
            world.now += timeout
            return world.answer_of(effect, None, gave_up=True)
        answer = world.send(service, key, effect.phase, order)
        if fault is FaultKind.DUPLICATE_DELIVERY:
            second = world.send(service, key, effect.phase, order)
            if world.rng.random() < 0.5:
                answer = second
        low, high = world.setup.call_time
        if fault is FaultKind.LOST_ANSWER:
            world.now += timeout
            return world.answer_of(effect, None, gave_up=True)
        world.now += world.rng.uniform(low, high)
        return world.answer_of(effect, answer, gave_up=False)


def _names(events: list[Event]) -> str:
    return ", ".join(
        f"{e.type.value}({e.step} {e.phase.value} #{e.attempt})"
        if e.step and e.phase
        else e.type.value
        for e in events
    )


class _World:
    """One seed's world: the clock, the store, the services, the pending deliveries."""

    def __init__(self, setup: Setup, rng: Rng, run: SeedRun, *, fence: bool) -> None:
        self.setup = setup
        self.rng = rng
        self.run = run
        self.now = 0.0
        self.store = JournalStore(run, fence=fence)
        self.services: dict[str, ServiceModel] = {}
        for step in setup.flow.steps:
            name = setup.service_of(step.name)
            if name not in self.services:
                behaviour = setup.services.get(name, ServiceBehaviour())
                self.services[name] = ServiceModel(name, behaviour, run.ledger)
        self.orders: dict[str, str] = {}
        self.pending: list[Delivery] = []
        self.stalled: dict[str, list[_Worker]] = {}
        self.faults_left: dict[str, int] = {}

    def note(self, line: str) -> None:
        if self.run.trace is not None:
            self.run.trace.append(f"t={self.now:.3f} {line}")

    # --- faults ---

    def call_faults(self, phase: Phase) -> tuple[FaultKind, ...]:
        slow = FaultKind.SLOW_COMPENSATION if phase is Phase.COMPENSATION else FaultKind.LATE_ANSWER
        return (*AT_CALL, slow)

    def fault(
        self, worker: _Worker, kinds: tuple[FaultKind, ...], call: Call | None
    ) -> FaultKind | None:
        """A fault for this commit or call, or None (one draw when none is left)."""
        if not self.faults_left[worker.saga]:
            return None
        rng = self.rng
        if rng.random() >= self.setup.fault_rate:
            return None
        kind = kinds[min(int(rng.random() * len(kinds)), len(kinds) - 1)]
        self.faults_left[worker.saga] -= 1
        fault = Fault(
            kind,
            worker.saga,
            self.now,
            worker.epoch,
            call.step if call else None,
            call.phase.value if call else None,
            call.attempt if call else 0,
        )
        self.run.faults.append(fault)
        self.note(f"fault: {fault.describe()}")
        return kind

    # --- services ---

    def send(self, service: ServiceModel, key: str, phase: Phase, order: str) -> tuple[int, str]:
        """Deliver a request now; its answer (409 in_progress while its key is busy)."""
        roll = self.rng.random()
        if service.busy.get(key):
            return 409, "in_progress"
        answer = service.perform(key, phase, order, self.now, roll)
        self.note(f"{service.name} {phase.value} {key}: {answer[0]} {answer[1]}")
        return answer

    def dispatch(
        self, service: ServiceModel, key: str, phase: Phase, order: str, delay: float
    ) -> Delivery:
        """A request the service takes `delay` to process (applied at once if 0)."""
        delivery = Delivery(self.now + delay, service, key, phase, order, self.rng.random())
        if delay <= 0:
            delivery.answer = self.send(service, key, phase, order)
            return delivery
        service.busy[key] = service.busy.get(key, 0) + 1
        self.pending.append(delivery)
        self.pending.sort(key=lambda d: d.at)  # stable: ties keep their order of sending
        return delivery

    def deliver_due(self, until: float | None = None) -> None:
        """Let every request whose processing ends by `until` (default: now) take effect."""
        limit = self.now if until is None else until
        while self.pending and self.pending[0].at <= limit:
            d = self.pending.pop(0)
            service = d.service
            service.busy[d.key] -= 1
            d.answer = service.perform(d.key, d.phase, d.order, d.at, d.roll)
            self.note(f"{service.name} late {d.phase.value} {d.key}: {d.answer[0]} {d.answer[1]}")

    def answer_of(self, call: Call, answer: tuple[int, str] | None, *, gave_up: bool) -> Any:
        """The driver's reply for `call`: the classified answer, or a timeout."""
        if gave_up or answer is None:
            failure, unwell = classify_transport(Transport.TIMEOUT, "timed out: no answer")
        else:
            code, text = answer
            retry_after = 1.0 if code == 409 and text == "in_progress" else None
            failure, unwell = classify_status(code, text, retry_after)
        return (self.now, failure, unwell, None)

    # --- lease takeovers ---

    def after_write(self, saga: str) -> None:
        """Another write on `saga` landed: wake the stalled old holders whose time has come."""
        stalled = self.stalled.get(saga)
        if not stalled:
            return
        due = [w for w in stalled if w.wake_after <= 0]
        for w in stalled:
            w.wake_after -= 1
        for w in due:
            stalled.remove(w)
            self.wake(w)

    def wake(self, worker: _Worker) -> None:
        """An old holder's stuck call comes back; it goes on until it stops (fenced)."""
        self.deliver_due()
        self.note(f"{worker.saga} worker {worker.epoch} wakes up")
        if worker.run() == _STALLED:  # only with fencing off: it got stuck again
            self.stalled.setdefault(worker.saga, []).append(worker)

    # --- one saga ---

    def run_saga(self, saga: str) -> None:
        """Claim and run `saga` until a holder sees it halt; hand it over on every stop."""
        self.orders[saga] = f"order-{saga}"
        self.faults_left[saga] = self.setup.max_faults
        created = Event(EventType.SAGA_CREATED, self.now)
        self.run.journals[saga] = [created]
        for _ in range(MAX_CLAIMS):
            epoch = self.store.claim(saga)
            try:
                state = SagaState.replay(self.setup.flow, self.run.journals[saga])
            except InvalidTransition as exc:
                self.note(f"{saga}: the journal does not replay: {exc}")
                break
            worker = _Worker(self, saga, epoch, state)
            self.note(f"{saga} worker {epoch} claims it ({len(self.run.journals[saga])} events)")
            outcome = worker.run()
            if outcome == _DONE:
                break
            if outcome == _RUNAWAY:
                self.run.unhalted.append(saga)
                break
            if outcome == _STALLED:
                self.stalled.setdefault(saga, []).append(worker)
            elif outcome == _CRASHED and self.rng.random() < 0.5:
                self.now += self.setup.lease  # no one saw it die: the lease has to run out
        else:
            self.run.unhalted.append(saga)
        for worker in self.stalled.pop(saga, []):
            self.wake(worker)


def run_seed(
    setup: Setup,
    seed: int,
    rng: Rng,
    *,
    fence: bool = True,
    trace: bool = False,
) -> SeedRun:
    """Run `setup.sagas` sagas one after another in one world, faults drawn from `rng`.

    `rng` must be the seed's own generator (seeded with `seed`, which is only recorded here).
    `trace`: keep a line per write, delivery, fault and claim (for `--replay`).
    """
    run = SeedRun(seed, {}, [], [], [], trace=[] if trace else None)
    world = _World(setup, rng, run, fence=fence)
    for i in range(setup.sagas):
        world.run_saga(f"s{i + 1}")
    world.deliver_due(float("inf"))  # what is still in flight reaches its service in the end
    return run


def final_status(flow: FlowDefinition, events: list[Event]) -> SagaState | None:
    """The saga as its stored journal says, or None when the journal does not replay."""
    try:
        return SagaState.replay(flow, events)
    except InvalidTransition:
        return None

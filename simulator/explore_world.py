"""The world `simulate explore` runs sagas in: its faults, its journal store, its services.

* `Setup`: the flow, how each service fails on its own (`ServiceBehaviour`), sagas per seed
  and how many faults.
* `FaultKind` and `Fault`: what can strike at a commit or a call, and the schedule a seed met.
* `JournalStore`: per saga, its journal and lease epoch; an append lands only under the
  current epoch after the expected length (fencing, as the real stores do). `fence=False`
  models a store that forgot to check the lease.
* `ServiceModel`: one service under the fake services' rules (`fakeservices/state.py`):
  idempotency keys replay their stored answer, a compensation leaves a tombstone and a later
  action is refused, every operation that takes effect is a `LedgerRecord`.

Pure: no I/O, no clock, no randomness (draws come in as arguments).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from sagalab.orchestrator.flow import FlowDefinition
from sagalab.orchestrator.reconcile import LedgerRecord
from sagalab.orchestrator.saga import Event, Phase

__all__ = [
    "AT_CALL",
    "AT_COMMIT",
    "Conflict",
    "Delivery",
    "Fault",
    "FaultKind",
    "Fenced",
    "JournalStore",
    "Rng",
    "SeedRun",
    "ServiceBehaviour",
    "ServiceModel",
    "Setup",
]


class Rng(Protocol):
    """What exploration draws from (`random.Random` fits)."""

    def random(self) -> float: ...

    def uniform(self, a: float, b: float) -> float: ...


class FaultKind(StrEnum):
    """What can go wrong at a commit or a call."""

    CRASH_BEFORE_COMMIT = "crash_before_commit"
    CRASH_AFTER_COMMIT = "crash_after_commit"
    LEASE_EXPIRY = "lease_expiry"
    LOST_ANSWER = "lost_answer"
    DUPLICATE_DELIVERY = "duplicate_delivery"
    SLOW_COMPENSATION = "slow_compensation"
    LATE_ANSWER = "late_answer"


#: The faults that may strike at a commit, and at a call (plus the slow answer of its phase).
AT_COMMIT = (FaultKind.CRASH_BEFORE_COMMIT, FaultKind.CRASH_AFTER_COMMIT)
AT_CALL = (
    FaultKind.CRASH_BEFORE_COMMIT,
    FaultKind.CRASH_AFTER_COMMIT,
    FaultKind.LEASE_EXPIRY,
    FaultKind.LOST_ANSWER,
    FaultKind.DUPLICATE_DELIVERY,
)


@dataclass(frozen=True)
class Fault:
    """One fault injected: what, to which saga, where (step, phase, attempt) and when."""

    kind: FaultKind
    saga: str
    at: float
    worker: int
    step: str | None = None
    phase: str | None = None
    attempt: int = 0

    def describe(self) -> str:
        """One line for the fault schedule."""
        where = f" {self.step} {self.phase} #{self.attempt}" if self.step else " a commit"
        return f"t={self.at:.3f} {self.saga} worker {self.worker}: {self.kind.value} at{where}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "kind": self.kind.value,
            "saga": self.saga,
            "at": round(self.at, 6),
            "worker": self.worker,
            "step": self.step,
            "phase": self.phase,
            "attempt": self.attempt,
        }


@dataclass(frozen=True)
class ServiceBehaviour:
    """How often a service fails on its own, apart from the injected faults.

    `error_rate`: a 503, half of them before applying and half after (the service applied it
    and then failed to answer well). `reject_rate`: an action refused with a 422 that applies
    nothing (a declined card, no stock).
    """

    error_rate: float = 0.05
    reject_rate: float = 0.05


@dataclass(frozen=True)
class Setup:
    """What every seed runs: the flow, its services, how many sagas and how many faults."""

    flow: FlowDefinition
    services: Mapping[str, ServiceBehaviour]
    sagas: int = 2
    #: Chance that a commit or a call meets a fault (while the saga has faults left).
    fault_rate: float = 0.25
    max_faults: int = 4
    lease: float = 10.0
    commit_time: float = 0.001
    call_time: tuple[float, float] = (0.002, 0.05)

    def service_of(self, step: str) -> str:
        """The service a step calls (a Python handler step is a service of its own)."""
        return self.flow.step(step).service or f"handler:{step}"


@dataclass
class SeedRun:
    """Everything one seed did: the stored journals, the ledger, the faults and the writes."""

    seed: int
    journals: dict[str, list[Event]]
    ledger: list[LedgerRecord]
    faults: list[Fault]
    #: (saga, writer's epoch, the saga's epoch then) of every write that landed after its
    #: writer's lease was taken over (none while the store fences).
    stale_writes: list[tuple[str, int, int]]
    fenced: int = 0
    claims: int = 0
    #: Sagas that took MAX_EFFECTS effects or MAX_CLAIMS claims without halting.
    unhalted: list[str] = field(default_factory=list)
    trace: list[str] | None = None


# --- the world: a fencing journal store and idempotent services --------------------------------


class Fenced(Exception):
    """The writer's lease was taken over."""


class Conflict(Exception):
    """Someone appended after the writer's expected sequence."""


class JournalStore:
    """Per saga: its journal and its lease epoch. `fence=False` models a store that forgot to
    check the lease (the explorer's own tests plant it)."""

    def __init__(self, run: SeedRun, *, fence: bool = True) -> None:
        self.run = run
        self.epochs: dict[str, int] = {}
        self.fence = fence

    def claim(self, saga: str) -> int:
        """A new holder for `saga`: the next epoch (what a worker's claim or a takeover does)."""
        epoch = self.epochs.get(saga, 0) + 1
        self.epochs[saga] = epoch
        self.run.claims += 1
        return epoch

    def append(self, saga: str, events: list[Event], *, expected: int, epoch: int) -> int:
        """Land `events` after journal length `expected` under `epoch`; the new length."""
        current = self.epochs[saga]
        journal = self.run.journals[saga]
        if self.fence:
            if epoch != current:
                self.run.fenced += 1
                raise Fenced
            if len(journal) != expected:
                raise Conflict
        elif epoch != current:
            self.run.stale_writes.append((saga, epoch, current))
        journal.extend(events)
        return len(journal)


class ServiceModel:
    """One service under the fake services' rules (module docstring)."""

    def __init__(self, name: str, behaviour: ServiceBehaviour, ledger: list[LedgerRecord]):
        self.name = name
        self.error_rate = behaviour.error_rate
        self.reject_rate = behaviour.reject_rate
        self.ledger = ledger
        self.answers: dict[str, tuple[int, str]] = {}
        self.applied: dict[str, int] = {}
        self.tombstones: dict[str, None] = {}
        self.refusals: dict[str, bool] = {}
        self.busy: dict[str, int] = {}  # key -> requests under it still being processed

    def perform(
        self, key: str, phase: Phase, order: str, now: float, roll: float
    ) -> tuple[int, str]:
        """Apply, replay or refuse one request; the (status, body text) it answers."""
        stored = self.answers.get(key)
        if stored is not None:
            return stored
        half = self.error_rate / 2
        if roll < half:
            return 503, "unavailable"
        if phase is Phase.ACTION:
            if order in self.tombstones:
                return 409, "compensated"
            # A refusal is the service's rule about the request (a declined card), so every
            # copy of one request under one key meets the same decision.
            refused = self.refusals.setdefault(key, half <= roll < half + self.reject_rate)
            if refused:
                return 422, "refused"
            self.applied[order] = self.applied.get(order, 0) + 1
            noop, answer = False, (201, "created")
        else:
            noop = order in self.tombstones or not self.applied.get(order)
            self.tombstones[order] = None
            answer = (200, "undone" if not noop else "noop")
        self.ledger.append(
            LedgerRecord(self.name, phase, key, len(self.ledger) + 1, now, noop, order)
        )
        self.answers[key] = answer
        if roll >= 1.0 - half:
            return 503, "failed after applying"
        return answer


@dataclass
class Delivery:
    """A request the service is still processing; it takes effect at `at`."""

    at: float
    service: ServiceModel
    key: str
    phase: Phase
    order: str
    roll: float
    answer: tuple[int, str] | None = None

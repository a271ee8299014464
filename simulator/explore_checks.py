"""The invariants `simulate explore` checks after every seed, and the exploration loop.

After a seed (`simulator.explore.run_seed`) every saga must stand where a saga may stand, and
the services' ledger must agree with the journals:

* ``not_halted``: every saga completed, rolled back, or is failed *for an operator with a
  stated reason* (`SagaState.reason`); pending, running or compensating at the end (or taking
  `MAX_EFFECTS` effects) is a violation. ``journal_invalid``: the stored journal does not
  replay (`InvalidTransition`).
* the ledger against the journals, by idempotency key, through `orchestrator.reconcile` (the
  rules `sagalab verify` applies to a real stack): ``applied_twice``, ``unjournaled``,
  ``null_compensation``, ``hanging_action``, ``action_standing``, ``incomplete`` and
  ``compensation_order`` (the ledger's).
* ``write_under_lost_lease``: a write landed from a worker whose lease had been taken over.
* the journal's own order: ``compensation_order`` when compensations started other than in
  reverse order of their actions' first attempts, and ``compensation_without_action`` when a
  step's compensation started with no attempt of its action before it.

`explore` runs seeds in increasing order and stops at the first violation, so the seed it
reports is the smallest failing one. Pure: the caller passes a generator per seed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sagalab.orchestrator.flow import FlowDefinition
from sagalab.orchestrator.reconcile import FindingKind, SagaFacts, reconcile
from sagalab.orchestrator.saga import Event, EventType, Phase, SagaStatus

from .explore import Rng, SeedRun, Setup, final_status, run_seed

__all__ = ["Exploration", "Violation", "check_seed", "explore"]


@dataclass(frozen=True)
class Violation:
    """One invariant one saga broke in one seed."""

    invariant: str
    saga: str
    detail: str

    def to_dict(self) -> dict[str, str]:
        """JSON-ready."""
        return {"invariant": self.invariant, "saga": self.saga, "detail": self.detail}


def check_seed(flow: FlowDefinition, run: SeedRun) -> tuple[list[Violation], dict[str, int]]:
    """Every violation of `run`, and how many sagas ended each way (by status)."""
    found: list[Violation] = []
    outcomes: dict[str, int] = {}
    facts = []
    for saga, events in run.journals.items():
        state = final_status(flow, events)
        if state is None:
            found.append(Violation("journal_invalid", saga, "the stored journal does not replay"))
            outcomes["invalid"] = outcomes.get("invalid", 0) + 1
            continue
        status = state.status
        outcomes[status.value] = outcomes.get(status.value, 0) + 1
        if saga in run.unhalted:
            found.append(Violation("not_halted", saga, f"still {status.value} after the limit"))
        elif not status.is_terminal and not (status is SagaStatus.FAILED and state.reason):
            found.append(
                Violation(
                    "not_halted",
                    saga,
                    f"ended {status.value}: not completed, rolled back, or held for an "
                    "operator with a reason",
                )
            )
        found.extend(_journal_order(saga, events))
        facts.append(SagaFacts(saga, status, flow, tuple(events)))
    services = {s.service or f"handler:{s.name}" for s in flow.steps}
    result = reconcile(facts, run.ledger, services=sorted(services))
    for finding in result.findings:
        if finding.kind is FindingKind.NOT_TERMINAL:
            continue  # judged above: a failed saga held for an operator may stand there
        step = f" {finding.step}" if finding.step else ""
        found.append(Violation(finding.kind.value, finding.saga_id, f"{step} {finding.detail}"))
    for saga, epoch, current in run.stale_writes:
        found.append(
            Violation(
                "write_under_lost_lease",
                saga,
                f"worker {epoch} wrote after worker {current} took the saga over",
            )
        )
    return found, outcomes


def _journal_order(saga: str, events: Iterable[Event]) -> list[Violation]:
    """Compensations started in reverse order of their actions, never without one."""
    acted: dict[str, int] = {}
    undone: list[str] = []
    found = []
    for i, e in enumerate(events):
        if e.type is not EventType.ATTEMPT_STARTED or e.step is None:
            continue
        if e.phase is Phase.ACTION:
            acted.setdefault(e.step, i)
        elif e.step not in undone:
            undone.append(e.step)
            if e.step not in acted:
                found.append(
                    Violation(
                        "compensation_without_action",
                        saga,
                        f"{e.step}'s compensation started with no attempt of its action",
                    )
                )
    ordered = [s for s in undone if s in acted]
    for first, second in zip(ordered, ordered[1:], strict=False):
        if acted[first] < acted[second]:
            found.append(
                Violation(
                    "compensation_order",
                    saga,
                    f"{first} was compensated before {second}, whose action came after it",
                )
            )
    return found


@dataclass
class Exploration:
    """What `explore` found: the counts, and the smallest failing seed if any."""

    seeds: int = 0
    sagas: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=dict)
    claims: int = 0
    fenced_writes: int = 0
    failing_seed: int | None = None
    violations: list[Violation] = field(default_factory=list)
    failing_run: SeedRun | None = None

    def add(self, run: SeedRun, outcomes: dict[str, int]) -> None:
        """Count one seed's run."""
        self.seeds += 1
        self.sagas += len(run.journals)
        for fault in run.faults:
            self.faults[fault.kind.value] = self.faults.get(fault.kind.value, 0) + 1
        for status, n in outcomes.items():
            self.outcomes[status] = self.outcomes.get(status, 0) + n
        self.claims += run.claims
        self.fenced_writes += run.fenced

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the failing seed's schedule included)."""
        out: dict[str, Any] = {
            "seeds": self.seeds,
            "sagas": self.sagas,
            "faults": dict(sorted(self.faults.items())),
            "outcomes": dict(sorted(self.outcomes.items())),
            "claims": self.claims,
            "fenced_writes": self.fenced_writes,
            "failing_seed": self.failing_seed,
            "violations": [v.to_dict() for v in self.violations],
        }
        if self.failing_run is not None:
            out["fault_schedule"] = [f.to_dict() for f in self.failing_run.faults]
        return out


def explore(
    setup: Setup,
    seeds: Iterable[int],
    make_rng: Callable[[int], Rng],
    *,
    fence: bool = True,
    trace: bool = False,
    progress: Callable[[int], None] | None = None,
) -> Exploration:
    """Run each seed in order; stop at the first with a violation (the smallest failing).

    `make_rng(seed)` is the seed's generator; `progress(done)` is told every 100 seeds.
    """
    found = Exploration()
    for seed in seeds:
        run = run_seed(setup, seed, make_rng(seed), fence=fence, trace=trace)
        violations, outcomes = check_seed(setup.flow, run)
        found.add(run, outcomes)
        if violations:
            found.failing_seed, found.violations, found.failing_run = seed, violations, run
            break
        if progress is not None and found.seeds % 100 == 0:
            progress(found.seeds)
    return found

"""Reconciliation: do the services' ledgers agree with the sagas' journals?

Theory of operation
-------------------
A saga promises that its flow ends *done* (every action applied once, nothing undone) or
*undone* (every action that applied was compensated, latest first). The journal says what the
orchestrator did; the services' ledgers say what actually took effect. The two meet at the
idempotency key: every attempt of one step's phase carries `idempotency_key(saga, step,
phase)`, and a service records the key with each operation it applies. So for every saga and
every step whose service's ledger was read, `reconcile` collects the entries under the
step's action key and compensation key and checks them against the saga's status and journal.

What it reports, per saga (`FindingKind`):

* ``not_terminal``: the saga is neither completed nor rolled back (pending, running,
  compensating or failed): not done and not undone.
* ``incomplete``: completed, yet a step's action never took effect at its service (and no
  operator skipped it), or one of its compensations did.
* ``applied_twice``: one step's action (or compensation) took effect more than once.
* ``unjournaled``: a service applied an operation under a step's key while the journal has no
  attempt of that step's phase: something other than the orchestrator used the key, or the
  journal lost the attempt.
* ``null_compensation``: a compensation took effect (undid something) with no action applied
  before it. A compensation a service answered as a no-op (nothing to undo: the action never
  took effect) is the normal, safe case and is not reported.
* ``hanging_action``: an action took effect after its compensation had been applied (even a
  no-op one): it stands with nothing left to undo it.
* ``action_standing``: rolled back, yet an action stands (no compensation took effect after
  it). Not reported: a compensatable step that declares no compensation (nothing to undo),
  and the pivot or a later step standing in a saga an operator rolled back with `force`
  (that operator's decision).
* ``compensation_order``: two compensations took effect in flow order instead of reverse
  order. Entries of one service are ordered by its ledger's sequence; entries of different
  services by the time each service recorded (their clocks must agree for this check).

Forks (`orchestrate fork OLD --from-step STEP`): OLD is rolled back *from STEP*, and the steps
before STEP (`SagaFacts.kept`, `SagaState.kept`) stay applied: they are the fork's, whose journal
starts with copies of OLD's attempts of them (`SagaFacts.reused`). So the fork checks those steps,
their actions under OLD's keys (the calls that applied them were OLD's) and any compensation
under its own; OLD leaves them out. Kept steps of a saga that has no fork (one cut short before
it was created) belong to no one and are checked as OLD's: standing, they are reported.

Steps whose service's ledger was not read (Python handler steps, services not given) are not
checked; `Reconciliation.unchecked` counts them. Ledger entries under keys no saga given here
owns (other traffic, sagas outside `--since`) are counted in `unmatched` and otherwise
ignored.

Pure: no I/O, no clock. The shells (orchestrator/ledgers.py, cli/verify.py) read the store
and the ledgers and render the findings.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from sagalab.orchestrator.flow import FlowDefinition, StepDefinition, StepKind
from sagalab.orchestrator.saga import Event, EventType, Phase, SagaStatus, idempotency_key

__all__ = [
    "Finding",
    "FindingKind",
    "LedgerRecord",
    "Reconciliation",
    "SagaFacts",
    "reconcile",
]


class FindingKind(StrEnum):
    """What is wrong with a saga (see the module docstring)."""

    NOT_TERMINAL = "not_terminal"
    INCOMPLETE = "incomplete"
    APPLIED_TWICE = "applied_twice"
    UNJOURNALED = "unjournaled"
    NULL_COMPENSATION = "null_compensation"
    HANGING_ACTION = "hanging_action"
    ACTION_STANDING = "action_standing"
    COMPENSATION_ORDER = "compensation_order"


@dataclass(frozen=True)
class SagaFacts:
    """What the store knows of one saga: its status, its flow and its journal's events.

    A saga a fork was made of: `kept`, the steps its rollback from the fork's step left
    applied, and `fork`, the fork's id (None if it was never created). A fork: `forked_from`
    and `reused`, the steps it took over (whose actions carry `forked_from`'s keys).
    """

    saga_id: str
    status: SagaStatus
    flow: FlowDefinition
    events: tuple[Event, ...]
    kept: frozenset[str] = frozenset()
    fork: str | None = None
    forked_from: str | None = None
    reused: frozenset[str] = frozenset()

    def handed_over(self, step: str) -> bool:
        """Whether `step` is its fork's to check (kept for a fork that exists)."""
        return self.fork is not None and step in self.kept

    def action_key(self, step: str) -> str:
        """The idempotency key the call that applied `step`'s action carried."""
        owner = self.forked_from if self.forked_from and step in self.reused else self.saga_id
        return idempotency_key(owner, step, Phase.ACTION)


@dataclass(frozen=True)
class LedgerRecord:
    """One operation a service applied, as its ledger recorded it.

    `seq` orders the entries of one service's ledger; `at` (epoch seconds, the service's
    clock) orders entries of different services. `noop`: the service took the request but
    there was nothing to do (a compensation of an action that never applied).
    """

    service: str
    operation: Phase
    idempotency_key: str
    seq: int
    at: float
    noop: bool = False
    order_id: str | None = None


@dataclass(frozen=True)
class Finding:
    """One inconsistency of one saga."""

    saga_id: str
    kind: FindingKind
    detail: str
    step: str | None = None
    service: str | None = None
    keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class Reconciliation:
    """Every finding, with what was compared."""

    findings: tuple[Finding, ...]
    sagas: int
    entries: int
    matched: int
    unchecked: int = 0
    #: Services whose ledgers were read.
    services: tuple[str, ...] = field(default=())

    @property
    def consistent(self) -> bool:
        """No finding: every saga checked is done or undone, as its journal says."""
        return not self.findings

    @property
    def unmatched(self) -> int:
        """Ledger entries under keys no saga checked here owns."""
        return self.entries - self.matched


@dataclass(frozen=True)
class _StepEntries:
    """One step's ledger entries, each list in its service's ledger order."""

    actions: tuple[LedgerRecord, ...]
    compensations: tuple[LedgerRecord, ...]

    @property
    def applied(self) -> tuple[LedgerRecord, ...]:
        return tuple(e for e in self.actions if not e.noop)

    @property
    def undone(self) -> tuple[LedgerRecord, ...]:
        return tuple(e for e in self.compensations if not e.noop)


def reconcile(
    sagas: Iterable[SagaFacts], ledger: Iterable[LedgerRecord], *, services: Iterable[str]
) -> Reconciliation:
    """Compare every saga's journal and status with the ledger entries of `services` (the
    services whose ledgers `ledger` holds in full for the sagas given)."""
    read = frozenset(services)
    index: dict[tuple[str, str], list[LedgerRecord]] = {}
    count = 0
    for entry in ledger:
        count += 1
        index.setdefault((entry.service, entry.idempotency_key), []).append(entry)
    for entries in index.values():
        entries.sort(key=lambda e: e.seq)
    findings: list[Finding] = []
    matched = unchecked = n = 0
    given = list(sagas)
    ids = frozenset(s.saga_id for s in given)
    for saga in given:
        n += 1
        found, used, skipped = _check_saga(saga, index, read, ids)
        findings.extend(found)
        matched += used
        unchecked += skipped
    return Reconciliation(
        findings=tuple(findings),
        sagas=n,
        entries=count,
        matched=matched,
        unchecked=unchecked,
        services=tuple(sorted(read)),
    )


def _check_saga(
    saga: SagaFacts,
    index: dict[tuple[str, str], list[LedgerRecord]],
    read: frozenset[str],
    ids: frozenset[str],
) -> tuple[list[Finding], int, int]:
    """(findings, ledger entries matched, steps not checked) for one saga; `ids` are the
    sagas checked in this reconciliation."""
    findings: list[Finding] = []
    if not saga.status.is_terminal:
        findings.append(
            Finding(
                saga.saga_id,
                FindingKind.NOT_TERMINAL,
                f"the saga is {saga.status.value}: neither completed nor rolled back",
            )
        )
    attempted = {(e.step, e.phase) for e in saga.events if e.type is EventType.ATTEMPT_STARTED}
    skipped = {(e.step, e.phase) for e in saga.events if e.type is EventType.STEP_SKIPPED}
    forced = any(e.type is EventType.ROLLBACK_REQUESTED and e.force for e in saga.events)
    matched = unchecked = 0
    compensated: list[tuple[StepDefinition, LedgerRecord]] = []
    for step in saga.flow.steps:
        if saga.handed_over(step.name):
            # The fork's now, checked (and its entries matched) with the fork; unchecked
            # here when the fork is not among the sagas checked.
            unchecked += saga.fork not in ids
            continue
        if step.service is None or step.service not in read:
            unchecked += 1
            continue
        entries = _StepEntries(
            tuple(index.get((step.service, saga.action_key(step.name)), ())),
            tuple(index.get((step.service, _key(saga, step, Phase.COMPENSATION)), ())),
        )
        matched += len(entries.actions) + len(entries.compensations)
        findings.extend(_check_step(saga, step, entries, attempted, skipped, forced))
        if entries.undone and entries.applied:  # a null compensation has no place in order
            compensated.append((step, entries.undone[0]))
    findings.extend(_check_order(saga, compensated))
    return findings, matched, unchecked


def _key(saga: SagaFacts, step: StepDefinition, phase: Phase) -> str:
    return idempotency_key(saga.saga_id, step.name, phase)


def _keys(entries: Sequence[LedgerRecord]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(e.idempotency_key for e in entries))


def _check_step(
    saga: SagaFacts,
    step: StepDefinition,
    entries: _StepEntries,
    attempted: set[tuple[str | None, Phase | None]],
    skipped: set[tuple[str | None, Phase | None]],
    forced: bool,
) -> list[Finding]:
    """Every finding about one step whose service's ledger was read."""

    def finding(kind: FindingKind, detail: str, of: Sequence[LedgerRecord]) -> Finding:
        # No entry to name (an action missing at its service): the key it was expected under.
        keys = _keys(of) or (saga.action_key(step.name),)
        return Finding(saga.saga_id, kind, detail, step.name, step.service, keys)

    found: list[Finding] = []
    applied, undone = entries.applied, entries.undone
    for phase, of in ((Phase.ACTION, applied), (Phase.COMPENSATION, undone)):
        if len(of) > 1:
            seqs = ", ".join(str(e.seq) for e in of)
            found.append(
                finding(
                    FindingKind.APPLIED_TWICE,
                    f"{step.service} applied the {phase.value} {len(of)} times (ledger seq {seqs})",
                    of,
                )
            )
    for phase, of in ((Phase.ACTION, entries.actions), (Phase.COMPENSATION, entries.compensations)):
        if of and (step.name, phase) not in attempted:
            found.append(
                finding(
                    FindingKind.UNJOURNALED,
                    f"{step.service} applied the {phase.value} under its key, "
                    f"but the journal has no attempt of it",
                    of,
                )
            )
    for comp in undone:
        if not any(a.seq < comp.seq for a in applied):
            found.append(
                finding(
                    FindingKind.NULL_COMPENSATION,
                    f"{step.service} undid something (ledger seq {comp.seq}) "
                    "with no action applied before it",
                    (comp,),
                )
            )
    if entries.compensations:
        first = entries.compensations[0]
        late = [a for a in applied if a.seq > first.seq]
        if late:
            found.append(
                finding(
                    FindingKind.HANGING_ACTION,
                    f"{step.service} applied the action (ledger seq {late[0].seq}) after its "
                    f"compensation (seq {first.seq}): nothing will undo it",
                    late,
                )
            )
    standing = bool(applied) and not any(c.seq > applied[-1].seq for c in undone)
    if saga.status is SagaStatus.COMPLETED:
        if not applied and (step.name, Phase.ACTION) not in skipped:
            found.append(
                finding(
                    FindingKind.INCOMPLETE,
                    f"the saga completed, but {step.service} has no applied action of this step",
                    (),
                )
            )
        if undone:
            found.append(
                finding(
                    FindingKind.INCOMPLETE,
                    f"the saga completed, but {step.service} applied this step's compensation",
                    undone,
                )
            )
    # A compensatable step without a compensation declares nothing to undo; the pivot or a
    # step after it left standing by a forced rollback is the operator's call.
    elif (
        saga.status is SagaStatus.ROLLED_BACK
        and standing
        and (step.has_compensation or (step.kind is not StepKind.COMPENSATABLE and not forced))
    ):
        why = (
            " (an operator skipped its compensation)"
            if (step.name, Phase.COMPENSATION) in skipped
            else ""
        )
        found.append(
            finding(
                FindingKind.ACTION_STANDING,
                f"the saga rolled back, but {step.service} still has this step's action "
                f"applied (ledger seq {applied[-1].seq}) and nothing undid it{why}",
                applied,
            )
        )
    return found


def _check_order(
    saga: SagaFacts, compensated: list[tuple[StepDefinition, LedgerRecord]]
) -> list[Finding]:
    """Compensations must take effect latest step first: flag each adjacent pair that did
    not (`compensated` is in flow order)."""
    found = []
    for (earlier, first), (later, second) in zip(compensated, compensated[1:], strict=False):
        if _before(first, second):
            found.append(
                Finding(
                    saga.saga_id,
                    FindingKind.COMPENSATION_ORDER,
                    f"{earlier.name} was undone before {later.name}, which comes after it in "
                    "the flow: compensations must run in reverse order",
                    later.name,
                    later.service,
                    (first.idempotency_key, second.idempotency_key),
                )
            )
    return found


def _before(a: LedgerRecord, b: LedgerRecord) -> bool:
    """Whether `a` took effect strictly before `b` (one ledger's order when they share it)."""
    if a.service == b.service:
        return a.seq < b.seq
    return a.at < b.at

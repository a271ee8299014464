"""The reconciliation core (orchestrator/reconcile.py): journals against ledgers, no I/O.

A clean run is built here the way the engine runs a saga (actions in flow order; on a failure
before the pivot, compensations latest first over what applied or may have applied) and the
way a service records it (one ledger entry per operation that took effect, a no-op for a
compensation with nothing to undo). Properties: any set of clean runs reconciles with no
finding; planting one anomaly in one saga yields that finding kind, for that saga only; the
order in which ledger entries arrive does not matter. Then one example per finding kind.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sagalab.orchestrator.flow import FlowDefinition, HttpCall, StepDefinition, StepKind
from sagalab.orchestrator.reconcile import (
    FindingKind,
    LedgerRecord,
    SagaFacts,
    reconcile,
)
from sagalab.orchestrator.saga import Event, EventType, Failure, Phase, SagaStatus, idempotency_key

SERVICES = ("inventory", "payments", "shipping", "notifications")


@dataclass
class Run:
    """One saga's facts and its ledger entries, as a clean run leaves them."""

    saga: SagaFacts
    ledger: list[LedgerRecord]


class Ledger:
    """Sequence numbers per service and one clock, as several services' ledgers have."""

    def __init__(self) -> None:
        self.seq: dict[str, int] = {}
        self.now = 1000.0

    def record(self, saga_id: str, step: StepDefinition, phase: Phase, noop: bool) -> LedgerRecord:
        assert step.service is not None
        self.seq[step.service] = self.seq.get(step.service, 0) + 1
        self.now += 0.01
        return LedgerRecord(
            step.service,
            phase,
            idempotency_key(saga_id, step.name, phase),
            self.seq[step.service],
            self.now,
            noop,
        )


def make_flow(shape: list[tuple[str, bool]], pivot: int | None) -> FlowDefinition:
    """Steps of `shape` ((service, has compensation)); the pivot and later steps have none."""
    steps = []
    for i, (service, undo) in enumerate(shape):
        kind = StepKind.COMPENSATABLE
        if pivot is not None and i >= pivot:
            kind = StepKind.PIVOT if i == pivot else StepKind.RETRIABLE
        steps.append(
            StepDefinition(
                name=f"s{i}",
                kind=kind,
                service=service,
                action=HttpCall("POST", "/do"),
                compensation=HttpCall("POST", "/undo")
                if undo and kind is StepKind.COMPENSATABLE
                else None,
            )
        )
    return FlowDefinition("f", 1, tuple(steps))


def clean_run(
    saga_id: str,
    flow: FlowDefinition,
    ledger: Ledger,
    *,
    fail_at: int | None,
    maybe_applied: bool = False,
    really_applied: bool = False,
    retries: int = 0,
) -> Run:
    """Completed (`fail_at` None), or rolled back after step `fail_at` failed for good."""
    t = 0.0
    events = [Event(EventType.SAGA_CREATED, t)]
    entries: list[LedgerRecord] = []
    steps = flow.steps
    last = len(steps) if fail_at is None else fail_at
    for step in steps[:last]:
        for attempt in range(1, retries + 2):
            events.append(Event(EventType.ATTEMPT_STARTED, t, step.name, Phase.ACTION, attempt))
            if attempt <= retries:  # a failure before applying: retried
                events.append(
                    Event(EventType.ATTEMPT_FAILED, t, step.name, Phase.ACTION, attempt,
                          Failure("503", True, False))
                )  # fmt: skip
        entries.append(ledger.record(saga_id, step, Phase.ACTION, noop=False))
        events.append(Event(EventType.ATTEMPT_SUCCEEDED, t, step.name, Phase.ACTION, retries + 1))
    if fail_at is None:
        events.append(Event(EventType.SAGA_COMPLETED, t))
        return Run(SagaFacts(saga_id, SagaStatus.COMPLETED, flow, tuple(events)), entries)
    failing = steps[fail_at]
    events.append(Event(EventType.ATTEMPT_STARTED, t, failing.name, Phase.ACTION, 1))
    applied = [*steps[:fail_at]]
    if maybe_applied and really_applied:
        entries.append(ledger.record(saga_id, failing, Phase.ACTION, noop=False))
    events.append(
        Event(EventType.ATTEMPT_FAILED, t, failing.name, Phase.ACTION, 1,
              Failure("lost", False, maybe_applied))
    )  # fmt: skip
    events.append(Event(EventType.STEP_FAILED, t, failing.name, Phase.ACTION))
    if maybe_applied:
        applied.append(failing)
    for step in reversed(applied):
        if not step.has_compensation:
            continue
        events.append(Event(EventType.ATTEMPT_STARTED, t, step.name, Phase.COMPENSATION, 1))
        noop = step is failing and not really_applied
        entries.append(ledger.record(saga_id, step, Phase.COMPENSATION, noop=noop))
        events.append(Event(EventType.ATTEMPT_SUCCEEDED, t, step.name, Phase.COMPENSATION, 1))
    events.append(Event(EventType.SAGA_ROLLED_BACK, t))
    return Run(SagaFacts(saga_id, SagaStatus.ROLLED_BACK, flow, tuple(events)), entries)


@st.composite
def flows(draw: st.DrawFn) -> FlowDefinition:
    n = draw(st.integers(1, 5))
    shape = [(draw(st.sampled_from(SERVICES)), draw(st.booleans())) for _ in range(n)]
    pivot = draw(st.one_of(st.none(), st.integers(0, n - 1)))
    return make_flow(shape, pivot)


@st.composite
def runs(draw: st.DrawFn) -> list[Run]:
    """1 to 4 clean sagas, sharing the services' ledgers."""
    ledger = Ledger()
    result = []
    for n in range(draw(st.integers(1, 4))):
        flow = draw(flows())
        pivot = flow.pivot_index
        # A saga rolls back only when a step fails before the pivot succeeded (at the pivot
        # at the latest); a maybe-applied pivot failure leaves it FAILED, so not here.
        last = len(flow.steps) - 1 if pivot is None else pivot
        fail_at = draw(st.one_of(st.none(), st.integers(0, last)))
        maybe = fail_at is not None and flow.steps[fail_at].has_compensation and draw(st.booleans())
        really = maybe and draw(st.booleans())
        retries = draw(st.integers(0, 2))
        result.append(
            clean_run(f"saga-{n}", flow, ledger, fail_at=fail_at, maybe_applied=maybe,
                      really_applied=really, retries=retries)
        )  # fmt: skip
    return result


def check(runs: list[Run], order: random.Random | None = None) -> list[tuple[str, FindingKind]]:
    ledger = [e for r in runs for e in r.ledger]
    if order is not None:
        order.shuffle(ledger)
    result = reconcile([r.saga for r in runs], ledger, services=SERVICES)
    assert result.matched == len(ledger)  # every entry belongs to a saga given
    return [(f.saga_id, f.kind) for f in result.findings]


@settings(max_examples=200, deadline=None)
@given(runs(), st.randoms(use_true_random=False))
def test_clean_runs_reconcile_with_no_finding(runs: list[Run], order: random.Random) -> None:
    assert check(runs) == []
    assert check(runs, order) == []


def compensated(run: Run) -> list[LedgerRecord]:
    return [e for e in run.ledger if e.operation is Phase.COMPENSATION and not e.noop]


def action_of(run: Run, comp: LedgerRecord) -> LedgerRecord:
    key = comp.idempotency_key.replace(":compensation", ":action")
    return next(e for e in run.ledger if e.idempotency_key == key)


def later(run: Run, entry: LedgerRecord, **changes: object) -> LedgerRecord:
    """A copy of `entry` after everything in its service's ledger."""
    top = max((e.seq for e in run.ledger if e.service == entry.service), default=0)
    return replace(entry, seq=top + 100, at=entry.at + 100, **changes)  # type: ignore[arg-type]


def plant(kind: FindingKind, run: Run, rng: random.Random) -> Run | None:
    """`run` with one anomaly of `kind` planted (None if this run cannot carry one)."""
    saga, ledger = run.saga, list(run.ledger)
    status = saga.status
    applied = [e for e in ledger if e.operation is Phase.ACTION]
    comps = compensated(run)
    if kind is FindingKind.NOT_TERMINAL:
        new = rng.choice([s for s in SagaStatus if not s.is_terminal])
        return Run(replace(saga, status=new), ledger)
    if kind is FindingKind.APPLIED_TWICE and applied:
        return Run(saga, [*ledger, later(run, rng.choice(applied))])
    if kind is FindingKind.UNJOURNALED and ledger:
        entry = rng.choice(ledger)
        step = entry.idempotency_key.split(":")[1]
        started = (EventType.ATTEMPT_STARTED, step, entry.operation)
        events = tuple(e for e in saga.events if (e.type, e.step, e.phase) != started)
        return Run(replace(saga, events=events), ledger)
    if kind is FindingKind.NULL_COMPENSATION and comps:
        action = action_of(run, rng.choice(comps))
        return Run(saga, [e for e in ledger if e != action])
    if kind is FindingKind.HANGING_ACTION and comps:
        action = action_of(run, rng.choice(comps))
        return Run(saga, [*ledger, later(run, action)])
    if kind is FindingKind.ACTION_STANDING and comps:
        comp = rng.choice(comps)
        return Run(saga, [e for e in ledger if e != comp])
    if kind is FindingKind.COMPENSATION_ORDER and len(comps) >= 2:
        a, b = rng.sample(comps, 2)
        swapped = {a: replace(a, at=b.at), b: replace(b, at=a.at)}
        if a.service == b.service:
            swapped = {a: replace(a, seq=b.seq, at=b.at), b: replace(b, seq=a.seq, at=a.at)}
        return Run(saga, [swapped.get(e, e) for e in ledger])
    if kind is FindingKind.INCOMPLETE and status is SagaStatus.COMPLETED and applied:
        gone = rng.choice(applied)
        return Run(saga, [e for e in ledger if e != gone])
    return None


@settings(max_examples=300, deadline=None)
@given(runs(), st.sampled_from(list(FindingKind)), st.randoms(use_true_random=False))
def test_a_planted_anomaly_is_found_in_its_saga_only(
    runs: list[Run], kind: FindingKind, rng: random.Random
) -> None:
    target = rng.randrange(len(runs))
    planted = plant(kind, runs[target], rng)
    if planted is None:
        return  # this saga cannot carry that anomaly (e.g. nothing was compensated)
    runs = [planted if i == target else r for i, r in enumerate(runs)]
    found = check(runs)
    assert (runs[target].saga.saga_id, kind) in found
    assert {saga for saga, _ in found} == {runs[target].saga.saga_id}


# -- one example per kind ------------------------------------------------------------------

CHECKOUT = make_flow(
    [("inventory", True), ("payments", True), ("shipping", False), ("notifications", False)],
    pivot=2,
)


def example(kind: FindingKind) -> Run:
    """A checkout rolled back after the payment was charged (completed, for INCOMPLETE and
    APPLIED_TWICE), with one anomaly of `kind`."""
    ledger = Ledger()
    if kind in (FindingKind.INCOMPLETE, FindingKind.APPLIED_TWICE):
        run = clean_run("s1", CHECKOUT, ledger, fail_at=None)
        if kind is FindingKind.APPLIED_TWICE:  # the card charged twice
            charge = next(e for e in run.ledger if e.service == "payments")
            return Run(run.saga, [*run.ledger, replace(charge, seq=50)])
        return Run(run.saga, [e for e in run.ledger if e.service != "payments"])
    run = clean_run("s1", CHECKOUT, ledger, fail_at=2)  # shipping refused: both undone
    charge, refund = (
        next(e for e in run.ledger if e.service == "payments" and e.operation is op)
        for op in (Phase.ACTION, Phase.COMPENSATION)
    )
    release = next(
        e for e in run.ledger if e.service == "inventory" and e.operation is Phase.COMPENSATION
    )
    if kind is FindingKind.NOT_TERMINAL:
        return Run(replace(run.saga, status=SagaStatus.FAILED), run.ledger)
    if kind is FindingKind.UNJOURNALED:  # the journal has no attempt of the refund
        started = (EventType.ATTEMPT_STARTED, "s1", Phase.COMPENSATION)
        events = tuple(e for e in run.saga.events if (e.type, e.step, e.phase) != started)
        return Run(replace(run.saga, events=events), run.ledger)
    if kind is FindingKind.NULL_COMPENSATION:
        return Run(run.saga, [e for e in run.ledger if e != charge])
    if kind is FindingKind.HANGING_ACTION:  # the charge's answer was lost; the refund found
        # nothing to undo (a no-op), and then the delayed charge arrived
        run = clean_run("s1", CHECKOUT, Ledger(), fail_at=1, maybe_applied=True)
        refund = next(e for e in run.ledger if e.service == "payments")
        late = replace(refund, operation=Phase.ACTION, seq=refund.seq + 1, noop=False)
        late = replace(late, idempotency_key=idempotency_key("s1", "s1", Phase.ACTION))
        return Run(run.saga, [*run.ledger, late])
    if kind is FindingKind.ACTION_STANDING:
        return Run(run.saga, [e for e in run.ledger if e != refund])
    assert kind is FindingKind.COMPENSATION_ORDER
    early = replace(release, at=refund.at - 1)
    return Run(run.saga, [early if e == release else e for e in run.ledger])


@pytest.mark.parametrize("kind", list(FindingKind), ids=[k.value for k in FindingKind])
def test_each_kind_by_example(kind: FindingKind) -> None:
    run = example(kind)
    result = reconcile([run.saga], run.ledger, services=SERVICES)
    # A charge after its refund hangs, and so stands in a rolled-back saga as well.
    also = {FindingKind.HANGING_ACTION: [FindingKind.ACTION_STANDING]}.get(kind, [])
    assert [f.kind for f in result.findings] == [kind, *also], result.findings
    finding = result.findings[0]
    assert finding.saga_id == "s1" and finding.detail
    if kind is not FindingKind.NOT_TERMINAL:
        assert finding.keys and all(k.startswith("s1:") for k in finding.keys)


def test_a_noop_compensation_of_an_action_that_never_applied_is_fine() -> None:
    run = clean_run("s1", CHECKOUT, Ledger(), fail_at=1, maybe_applied=True, really_applied=False)
    assert any(e.noop for e in run.ledger)
    assert reconcile([run.saga], run.ledger, services=SERVICES).consistent


def test_a_forced_rollback_leaves_the_pivot_standing_without_a_finding() -> None:
    ledger = Ledger()
    run = clean_run("s1", CHECKOUT, ledger, fail_at=None)
    forced = (Event(EventType.ROLLBACK_REQUESTED, 0.0, force=True),)
    undone = [
        ledger.record("s1", CHECKOUT.steps[i], Phase.COMPENSATION, noop=False) for i in (1, 0)
    ]
    saga = replace(run.saga, status=SagaStatus.ROLLED_BACK, events=run.saga.events + forced)
    saga = replace(
        saga,
        events=saga.events
        + tuple(
            Event(EventType.ATTEMPT_STARTED, 0.0, f"s{i}", Phase.COMPENSATION, 1) for i in (1, 0)
        ),
    )
    assert reconcile([saga], [*run.ledger, *undone], services=SERVICES).consistent
    unforced = replace(saga, events=tuple(e for e in saga.events if not e.force))
    kinds = {
        f.kind for f in reconcile([unforced], [*run.ledger, *undone], services=SERVICES).findings
    }
    assert kinds == {FindingKind.ACTION_STANDING}


def test_steps_of_services_not_read_are_counted_not_checked() -> None:
    run = clean_run("s1", CHECKOUT, Ledger(), fail_at=None)
    result = reconcile([run.saga], run.ledger, services=("inventory",))
    assert result.consistent
    assert result.unchecked == 3
    assert result.matched == 1 and result.unmatched == 3

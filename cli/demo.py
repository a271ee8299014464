"""`sagalab demo`: the whole story in under 30 seconds, on a fresh embedded database.

It starts the fake services in this process, then runs three checkouts: one that completes,
one whose card is declined and is rolled back, and one whose orchestrator is killed (a real
SIGKILL, in a child process) right after payments applied the charge but before the result
was journaled; that saga is resumed and finishes. The services' ledgers then show that
nothing was applied twice, and `sagalab verify` (run in process at the end) that every saga
is done or undone.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from sagalab.cli import render
from sagalab.cli.errors import handled
from sagalab.cli.options import DbPath, JsonOption
from sagalab.cli.signals import sigterm_raises
from sagalab.fakeservices import FaultSpec, RunningServices, applied_twice, run_in_thread
from sagalab.orchestrator.breaker_board import BreakerBoard, BreakerConfig, breaker_events
from sagalab.orchestrator.executors import HttpExecutor
from sagalab.orchestrator.flowfile import load_flow
from sagalab.orchestrator.ledgers import verify_store
from sagalab.orchestrator.runner import SagaRunner, start_saga
from sagalab.orchestrator.saga import SagaStatus
from sagalab.orchestrator.store import Store
from sagalab.orchestrator.stores import open_store, shown, typed
from sagalab.stack import children

DEMO_BREAKER = BreakerConfig(fail_max=3, reset_timeout=1.5, success_threshold=1)


@dataclass
class Act:
    """One part of the demo: what was expected and what happened."""

    title: str
    saga_id: str
    order_id: str
    expected: SagaStatus
    status: SagaStatus
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status is self.expected


def _order(n: int, amount: int) -> dict[str, Any]:
    return {
        "order_id": f"demo-{n}",
        "customer_id": f"cust-{n}",
        "sku": "SKU-42",
        "quantity": 1,
        "amount": amount,
    }


def _say(text: str, as_json: bool) -> None:
    if not as_json:
        render.err.print(text)


def demo(
    db: Annotated[
        Path | None,
        typer.Option(
            "--db",
            parser=DbPath.parse,
            help="Database file to use (default: a fresh temporary one).",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Show completion, rollback, crash-resume and a breaker opening, against local services."""
    started = time.perf_counter()
    # SIGTERM unwinds as Ctrl-C does: the crash act's child is stopped and the temporary
    # directory removed (with the default action both were left behind).
    with sigterm_raises(), tempfile.TemporaryDirectory(prefix="sagalab-demo-") as tmp:
        path = db or Path(tmp) / "demo.db"
        with handled():  # a --db that is not a saga database: one line, exit 5
            store = open_store(path)
        flow = load_flow("checkout")
        acts: list[Act] = []
        with run_in_thread() as lab:
            kept = "" if db else " (temporary: --db FILE keeps it)"
            _say(f"fake services on {lab.base_url}; database {shown(path)}{kept}", as_json)
            executor = HttpExecutor(lab.services)
            board = BreakerBoard(path, {"payments": DEMO_BREAKER}, owner="demo")
            runner = SagaRunner(
                store,
                executor,
                on_event=None if as_json else render.live_event,
                breakers=board,
            )
            try:
                _say("\n[bold]1. A checkout that completes[/]", as_json)
                record, _ = start_saga(store, flow, _order(1, 120), queue=False)
                result = runner.run(record.id)
                acts.append(
                    Act("completes", record.id, "demo-1", SagaStatus.COMPLETED, result.status)
                )

                _say("\n[bold]2. The card is declined: the reservation is undone[/]", as_json)
                record, _ = start_saga(store, flow, _order(2, 25_000), queue=False)
                result = runner.run(record.id)
                acts.append(
                    Act("declined", record.id, "demo-2", SagaStatus.ROLLED_BACK, result.status)
                )

                _say(
                    "\n[bold]3. The orchestrator is killed after payments charged the card, "
                    "before it recorded the charge[/]",
                    as_json,
                )
                acts.append(_crash_and_resume(store, flow, runner, lab.env, path, as_json))

                _say(
                    "\n[bold]4. Payments goes down: its breaker opens "
                    "and checkouts fail fast and roll back; then it half-opens and closes[/]",
                    as_json,
                )
                acts.extend(_payments_outage(store, flow, runner, lab, as_json))
                transitions = [
                    f"{e['old']} -> {e['new']}" for e in breaker_events(path, "payments")
                ]
            finally:
                executor.close()
                board.close()
            ledger = [e.to_dict() for e in lab.lab.ledger()]
            # `sagalab verify`, in process: the fakes serve their ledgers as a LedgerReader.
            verdict = verify_store(store, lab.lab)
        twice = applied_twice(ledger)
        store.close()
    elapsed = time.perf_counter() - started
    breaker_ok = transitions[:3] == ["closed -> open", "open -> half-open", "half-open -> closed"]
    ok = all(a.ok for a in acts) and not twice and breaker_ok and verdict.consistent
    if as_json:
        render.print_json(
            {
                "ok": ok,
                "seconds": round(elapsed, 2),
                "acts": [
                    {
                        "title": a.title,
                        "saga_id": a.saga_id,
                        "order_id": a.order_id,
                        "expected": a.expected.value,
                        "status": a.status.value,
                        "notes": a.notes,
                    }
                    for a in acts
                ],
                "breaker_transitions": transitions,
                "ledger": ledger,
                "applied_twice": [list(t) for t in twice],
                "verify": render.reconciliation_dict(verdict),
            }
        )
    else:
        _summary(acts, ledger, twice, elapsed, transitions)
        render.reconciliation(verdict)
    raise typer.Exit(0 if ok else 1)


def _crash_and_resume(
    store: Store,
    flow: Any,
    runner: SagaRunner,
    env: dict[str, str],
    path: Path,
    as_json: bool,
) -> Act:
    order = _order(3, 80)
    key = "demo-3-checkout"
    # Through `children.run`: a Ctrl-C while the child starts must not leave it running.
    returncode = children.run(
        [
            sys.executable,
            "-m",
            "sagalab.cli.main",
            "orchestrate",
            "run",
            "checkout",
            "--db",
            typed(path),
            "--wait",
            "--json",
            "--idempotency-key",
            key,
            "--input",
            __import__("json").dumps(order),
            "--crash-at",
            "charge_payment:after-call",
        ],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=60,
    )
    notes = [f"child orchestrator exited with {returncode} (SIGKILL is -9)"]
    # The same idempotency key finds the saga the dead process created.
    record, created = start_saga(store, flow, order, idempotency_key=key, queue=False)
    if created:  # the child died before creating it: nothing to resume, run it whole
        notes.append("child died before creating the saga")
    step = store.steps(record.id)[1]
    notes.append(f"after the crash: saga {record.status.value}, {step.name} {step.status}")
    _say(f"  {notes[0]}\n  {notes[1]}\n  resuming from the journal:", as_json)
    result = runner.run(record.id)
    sent = store.steps(record.id)[1].attempts
    notes.append(
        f"charge_payment was sent {sent} times with key {record.id}:charge_payment:action; "
        "payments replayed the first result instead of charging again"
    )
    _say(f"  {notes[-1]}", as_json)
    return Act("crash + resume", record.id, "demo-3", SagaStatus.COMPLETED, result.status, notes)


def _run_until_parked(runner: SagaRunner, saga_id: str) -> SagaStatus:
    """Run forward (sleeping through retry backoffs); stop once a compensation must wait."""
    for _ in range(50):  # bounded: the flow's retry policy allows far fewer waits
        result = runner.run(saga_id, wait_for_retries=False)
        if result.wait_until is None or result.status is SagaStatus.COMPENSATING:
            return result.status
        time.sleep(max(0.0, result.wait_until - time.time()))
    return result.status


def _payments_outage(
    store: Store, flow: Any, runner: SagaRunner, lab: RunningServices, as_json: bool
) -> list[Act]:
    # Every charge answers 503 with no Retry-After, as a provider that is simply down.
    lab.lab.add_fault(FaultSpec(service="payments", error_rate=1.0, status=503))
    parked = []
    for n, note in (
        (4, "charges failed until the breaker opened; the next was refused"),
        (5, "its charge was refused by the open breaker: payments was not called"),
    ):
        record, _ = start_saga(store, flow, _order(n, 60), queue=False)
        started = time.perf_counter()
        status = _run_until_parked(runner, record.id)
        took = f"{note}; {status.value} after {time.perf_counter() - started:.2f}s"
        then = (
            "the refund waits for the breaker instead of hammering payments"
            if status is SagaStatus.COMPENSATING
            else "nothing to refund; the stock reservation was released"
        )
        _say(f"  {took}; {then}", as_json)
        parked.append((n, record.id, took))
    lab.lab.clear_faults("payments")
    _say("  payments is back; the parked refund goes out once the breaker half-opens", as_json)
    acts = []
    for n, saga_id, took in parked:
        result = runner.run(saga_id)  # sleeps until the breaker lets the probe through
        acts.append(
            Act(
                "payments down", saga_id, f"demo-{n}", SagaStatus.ROLLED_BACK, result.status, [took]
            )
        )
    record, _ = start_saga(store, flow, _order(6, 60), queue=False)
    result = runner.run(record.id)
    acts.append(
        Act(
            "payments back",
            record.id,
            "demo-6",
            SagaStatus.COMPLETED,
            result.status,
            ["the breaker is closed again"],
        )
    )
    return acts


def _summary(
    acts: list[Act],
    ledger: list[dict[str, Any]],
    twice: list[tuple[str, str, str]],
    secs: float,
    transitions: list[str],
) -> None:
    out = render.out
    out.print()
    table = Table(title="sagas", show_edge=False)
    for col in ("act", "saga", "expected", "got", ""):
        table.add_column(col)
    for a in acts:
        table.add_row(
            a.title,
            a.saga_id,
            a.expected.value,
            render.styled(a.status.value),
            "[green]ok[/]" if a.ok else "[red]UNEXPECTED[/]",
        )
    out.print(table)
    ledger_table = Table(title="what the services applied (their ledgers)", show_edge=False)
    for col in ("order", "service", "operation", "endpoint", "idempotency key"):
        ledger_table.add_column(col, overflow="fold")
    for e in ledger:
        op = e["operation"] + (" (no-op)" if e["noop"] else "")
        ledger_table.add_row(e["order_id"], e["service"], op, e["endpoint"], e["idempotency_key"])
    out.print(ledger_table)
    if twice:
        out.print(f"[bold red]applied twice:[/] {twice}")
    else:
        out.print("[green]nothing was applied twice[/] (each operation appears once above)")
    out.print(f"payments breaker (shared through the database): {', '.join(transitions)}")
    out.print(f"done in {secs:.1f} s")

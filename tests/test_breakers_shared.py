"""Circuit breakers shared through SQLite: across connections, processes, and in the runner."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sagalab.cli.main import app
from sagalab.fakeservices import FaultSpec, run_in_thread
from sagalab.orchestrator.breaker_board import (
    BreakerBoard,
    BreakerConfig,
    breaker_events,
    breaker_rows,
)
from sagalab.orchestrator.executors import HttpExecutor
from sagalab.orchestrator.flowfile import load_flow
from sagalab.orchestrator.runner import SagaRunner, start_saga
from sagalab.orchestrator.saga import SagaStatus
from sagalab.orchestrator.sqlite_store import SQLiteStore

QUICK = {"payments": BreakerConfig(fail_max=2, reset_timeout=5.0)}


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "b.db"
    SQLiteStore(path).close()
    return path


def test_two_boards_see_one_breaker_and_one_probe(db: Path) -> None:
    a, b = BreakerBoard(db, QUICK, owner="A"), BreakerBoard(db, QUICK, owner="B")
    try:
        pa, pb = a.get("payments"), b.get("payments")
        assert pa.allow(100.0) and pb.allow(100.0)
        pa.record_failure(100.0)
        pb.record_failure(100.1)  # the second failure, seen through the other connection
        assert pa.state == pb.state == "open"
        assert not pb.allow(102.0)
        assert pb.retry_after(102.0) == pytest.approx(3.1)
        # Half-open: exactly one probe across both replicas.
        assert [pa.allow(105.2), pb.allow(105.2), pa.allow(105.3)] == [True, False, False]
        pa.record_success(105.4)
        assert pb.state == "closed" and pb.allow(105.5)
    finally:
        a.close()
        b.close()
    assert [(e["old"], e["new"]) for e in breaker_events(db, "payments")][:3] == [
        ("closed", "open"),
        ("open", "half-open"),
        ("half-open", "closed"),
    ]


def test_another_process_opens_the_breaker(db: Path) -> None:
    script = (
        "import sys, time\n"
        "from sagalab.orchestrator.breaker_board import BreakerBoard, BreakerConfig\n"
        "board = BreakerBoard(sys.argv[1], {'payments': BreakerConfig(fail_max=3, "
        "reset_timeout=60)}, owner='child')\n"
        "b = board.get('payments')\n"
        "for _ in range(3): b.record_failure(time.time())\n"
        "print(b.state)\n"
    )
    child = subprocess.run(
        [sys.executable, "-c", script, str(db)], capture_output=True, text=True, timeout=60
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == "open"
    board = BreakerBoard(db, {"payments": BreakerConfig(fail_max=3, reset_timeout=60)})
    try:
        breaker = board.get("payments")
        assert breaker.state == "open"
        assert not breaker.allow(breaker.storage.opened_time + 1)  # type: ignore[operator]
    finally:
        board.close()
    (row,) = breaker_rows(db)
    assert row["name"] == "payments" and row["state"] == "open" and row["transitions"] == 1


def order(n: str) -> dict[str, object]:
    return {"order_id": n, "customer_id": "c", "sku": "A", "quantity": 1, "amount": 50}


def test_runner_fails_fast_then_parks_the_refund(db: Path) -> None:
    """An action refused by an open breaker rolls back at once; a refund refused waits."""
    store = SQLiteStore(db)
    flow = load_flow("checkout")
    with run_in_thread() as lab:
        board = BreakerBoard(db, QUICK, owner="test")
        executor = HttpExecutor(lab.services)
        runner = SagaRunner(store, executor, breakers=board, sleep=lambda s: None)
        try:
            lab.lab.add_fault(FaultSpec(service="payments", error_rate=1.0, status=503))
            first, _ = start_saga(store, flow, order("b1"), queue=False)
            result = runner.run(first.id, wait_for_retries=False)
            while result.wait_until is not None and result.status is SagaStatus.RUNNING:
                result = runner.run(first.id, wait_for_retries=False)  # backoffs, not slept
            # two 503s opened the breaker; the third attempt was refused; the refund must wait
            assert result.status is SagaStatus.COMPENSATING and result.wait_until is not None
            charges = [e for e in lab.lab.ledger() if e.service == "payments"]
            assert charges == []  # 503 before apply: nothing charged
            second, _ = start_saga(store, flow, order("b2"), queue=False)
            calls_before = len(lab.lab.ledger())
            result = runner.run(second.id, wait_for_retries=False)
            # refused without calling payments: not applied, so only inventory is undone
            assert result.status is SagaStatus.ROLLED_BACK
            failure = [e for e in store.journal(second.id) if e.event.failure is not None][0]
            assert "circuit breaker 'payments' is open" in failure.event.failure.error  # type: ignore[union-attr]
            assert [e.service for e in lab.lab.ledger()[calls_before:]] == [
                "inventory",
                "inventory",
            ]
            lab.lab.clear_faults()
            board.get("payments").reset(0.0)  # an operator closes it instead of waiting
            assert runner.run(first.id).status is SagaStatus.ROLLED_BACK
        finally:
            executor.close()
            board.close()
            store.close()


def test_runner_waits_for_the_breaker_on_a_pivot_that_may_stand(db: Path) -> None:
    """A shipment that may have been booked is not abandoned because its breaker opened."""
    store = SQLiteStore(db)
    flow = load_flow("checkout")
    with run_in_thread() as lab:
        board = BreakerBoard(db, {"shipping": BreakerConfig(fail_max=2, reset_timeout=5.0)})
        executor = HttpExecutor(lab.services)
        runner = SagaRunner(store, executor, breakers=board, sleep=lambda s: None)
        try:
            lab.lab.add_fault(FaultSpec(service="shipping", error_rate=1.0, status=500))
            saga, _ = start_saga(store, flow, order("p1"), queue=False)
            result = runner.run(saga.id, wait_for_retries=False)
            for _ in range(2):  # attempt 2 (a second 500) opens the breaker; 3 is refused
                assert result.wait_until is not None  # a backoff
                time.sleep(max(0.0, result.wait_until - time.time()))
                result = runner.run(saga.id, wait_for_retries=False)
            assert board.get("shipping").state == "open"
            assert result.status is SagaStatus.RUNNING and result.wait_until is not None
            shipment = [
                e.event for e in store.journal(saga.id) if e.event.step == "create_shipment"
            ]
            assert not any(
                "circuit breaker" in (e.failure.error if e.failure else "") for e in shipment
            )
            waits: list[tuple[str, str, str, float]] = []

            def operator_fixes_shipping(_seconds: float) -> None:
                lab.lab.clear_faults()
                board.get("shipping").reset(0.0)

            waiting = SagaRunner(
                store,
                executor,
                breakers=board,
                sleep=operator_fixes_shipping,
                on_breaker_wait=lambda *told: waits.append(told),
            )
            assert waiting.run(saga.id).status is SagaStatus.COMPLETED
            (told,) = waits  # the one pause was on the breaker, and the caller was told
            assert told[:3] == (saga.id, "create_shipment", "shipping") and 0 < told[3] <= 5.0
        finally:
            executor.close()
            board.close()
            store.close()


def test_breakers_cli(db: Path) -> None:
    board = BreakerBoard(db, QUICK)
    for t in (1.0, 2.0):
        board.get("payments").record_failure(t)
    board.close()
    runner = CliRunner()
    listed = runner.invoke(app, ["breakers", "list", "--db", str(db), "--json"])
    assert listed.exit_code == 0
    assert json.loads(listed.stdout)[0]["state"] == "open"
    reset = runner.invoke(app, ["breakers", "reset", "payments", "--db", str(db)])
    assert reset.exit_code == 0
    listed = runner.invoke(app, ["breakers", "list", "--db", str(db), "--json"])
    assert json.loads(listed.stdout)[0]["state"] == "closed"
    missing = runner.invoke(app, ["breakers", "reset", "nope", "--db", str(db)])
    assert missing.exit_code == 3 and "no breaker named" in missing.stderr

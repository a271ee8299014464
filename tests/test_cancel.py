"""`orchestrate cancel`: a rollback that never crosses the pivot, met by a worker mid-run.

The end-to-end case runs a real `sagalab worker` subprocess against the fake services with the
payment call held (it ends when the test releases it, however slow the machine), and cancels
the saga through the CLI (a real subprocess) while that call is in flight: the worker meets the
request at its next commit and compensates, in reverse order. Every wait is a bounded poll on
the database.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from apilab import admin_api
from opslab import (
    RunsHere,
    checkout_saga,
    cli_subprocess,
    completed,
    failed_on_notify,
    footprint,
    pivot_in_flight,
    reset_handlers,
    stored,
)
from workerlab import REPO, Workers, held_step_checkout, order, wait_for

from sagalab.fakeservices import RunningServices, applied_twice
from sagalab.orchestrator import operations
from sagalab.orchestrator.operations import ActionRefused, BadArgument
from sagalab.orchestrator.runner import start_saga
from sagalab.orchestrator.saga import EventType, Phase, SagaState, SagaStatus
from sagalab.orchestrator.sqlite_store import SQLiteStore

# The payment call is held until the test releases it; its timeout only has to outlast the
# CLI's (60 s) and the hold's bounded waits.
CHARGE_TIMEOUT = 180.0
CHARGE = "charge_payment"


@pytest.fixture(autouse=True)
def handlers() -> Iterator[None]:
    reset_handlers()
    yield
    reset_handlers()


def saga_state(db: Path, saga_id: str) -> SagaState:
    store = SQLiteStore(db)
    try:
        return store.state(saga_id)[2]
    finally:
        store.close()


def test_cancel_while_a_worker_holds_the_saga_rolls_it_back_in_reverse_order(
    db: Path, services: RunningServices, workers: Workers
) -> None:
    services.lab.hold("payments", "/charges")  # the refund goes through
    store = SQLiteStore(db)
    try:
        saga_id = start_saga(store, held_step_checkout(CHARGE, CHARGE_TIMEOUT), order(1))[0].id
    finally:
        store.close()
    workers.start("--concurrency", "1", "--exit-when-idle", "2", "--poll", "0.05")

    def charging() -> bool:
        open_attempt = saga_state(db, saga_id).open_attempt
        return open_attempt is not None and open_attempt[:2] == (CHARGE, Phase.ACTION)

    wait_for(charging, 30, "the payment call in flight")
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "sagalab.cli.main",
            "orchestrate",
            "cancel",
            saga_id,
            "--db",
            str(db),
            "--reason",
            "customer called",
        ],  # fmt: skip
        cwd=REPO,
        env=workers.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    assert "cancel recorded" in cli.stderr and "Traceback" not in cli.stderr
    assert charging()  # it landed while the call was still out: the worker holds the saga
    services.lab.release("payments")

    state = wait_for(
        lambda: (s := saga_state(db, saga_id)).status.is_terminal and s, 30, "the saga to end"
    )
    assert state.status is SagaStatus.ROLLED_BACK, state.reason
    assert state.reason == "cancelled: customer called"
    store = SQLiteStore(db)
    try:
        entries = store.journal(saga_id)
    finally:
        store.close()
    undone = [
        e.event.step
        for e in entries
        if e.event.type is EventType.ATTEMPT_STARTED and e.event.phase is Phase.COMPENSATION
    ]
    assert undone == [CHARGE, "reserve_inventory"]  # reverse order of application
    assert not any(e.event.step == "create_shipment" for e in entries)
    # What the services did agrees: charged and refunded, reserved and released, no parcel.
    done = [(e.service, e.operation) for e in services.lab.ledger() if e.order_id == "ord-0001"]
    assert done == [
        ("inventory", "action"),
        ("payments", "action"),
        ("payments", "compensation"),
        ("inventory", "compensation"),
    ]
    assert applied_twice(services.lab.ledger()) == []


def test_cancel_of_a_queued_saga_rolls_it_back_here(store: SQLiteStore) -> None:
    saga_id = stored(store)
    result = operations.cancel(store, saga_id, reason="duplicate order", runner=RunsHere(store))
    assert result.status is SagaStatus.ROLLED_BACK
    assert store.load(saga_id).reason == "cancelled: duplicate order"


@pytest.mark.parametrize(
    "setup, refusal",
    [
        (failed_on_notify, "past its pivot step 'ship'"),
        (pivot_in_flight, "the pivot is in flight"),
        (completed, "completed; there is nothing to cancel"),
    ],
    ids=["past-the-pivot", "pivot-in-flight", "completed"],
)
def test_cancel_is_refused_where_the_saga_only_goes_forward(
    store: SQLiteStore, setup: Callable[[SQLiteStore], str], refusal: str
) -> None:
    saga_id = setup(store)
    before = footprint(store, saga_id)
    with pytest.raises(ActionRefused, match=refusal):
        operations.cancel(store, saga_id, runner=RunsHere(store))
    assert footprint(store, saga_id) == before


def test_cancel_reason_is_bounded(store: SQLiteStore) -> None:
    with pytest.raises(BadArgument, match="at most 500"):
        operations.cancel(store, stored(store), reason="x" * 501)


def test_cli_and_api_cancel_past_the_pivot_is_4_and_409(db: Path) -> None:
    by_cli, by_api = (checkout_saga(db, completed=True) for _ in range(2))
    cli = cli_subprocess(db, "cancel", by_cli)
    assert cli.returncode == 4 and "nothing to cancel" in cli.stderr, cli.stderr
    queued = checkout_saga(db)
    with admin_api(db) as client:
        assert client.post(f"/v1/sagas/{by_api}/cancel").status_code == 409
        answer = client.post(f"/v1/sagas/{queued}/cancel", json={"reason": "test"})
        assert answer.status_code == 202, answer.text
        assert answer.json()["status"] == "compensating"
        assert client.post("/v1/sagas/nope/cancel").status_code == 404
    assert cli_subprocess(db, "cancel", "nope").returncode == 3

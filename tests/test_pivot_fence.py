"""The pivot is a fence, end to end: a rollback fired while the shipment call is in flight.

A real `sagalab worker` subprocess runs a checkout saga against the fake services, with the
shipping service slowed down by fault injection. While the pivot's call is in flight (its
ATTEMPT_STARTED journaled, no outcome yet), an operator fires a rollback through the CLI (a
real subprocess) and through the HTTP API (real uvicorn). Both are refused; the saga then
completes, and what the services did agrees with what the saga says: the shipment exists and
the payment was never refunded. Every wait is a bounded poll on the database.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from apilab import admin_api
from workerlab import REPO, Workers, held_step_checkout, order, wait_for

from sagalab.fakeservices import RunningServices, applied_twice
from sagalab.orchestrator.runner import start_saga
from sagalab.orchestrator.saga import EventType, Phase, SagaState
from sagalab.orchestrator.sqlite_store import SQLiteStore

# The shipment call takes this long: a window wide enough for a CLI process to start in.
# The shipment call is held until the test releases it; its timeout only has to outlast the
# CLI's (60 s) and the API call made while it is held.
SHIPPING_TIMEOUT = 180.0
PIVOT = "create_shipment"


def saga_state(db: Path, saga_id: str) -> SagaState:
    store = SQLiteStore(db)
    try:
        return store.state(saga_id)[2]
    finally:
        store.close()


def shipment_in_flight(db: Path, saga_id: str) -> bool:
    """The pivot's attempt is journaled as started and has no outcome yet."""
    open_attempt = saga_state(db, saga_id).open_attempt
    return open_attempt is not None and open_attempt[:2] == (PIVOT, Phase.ACTION)


def test_rollback_fired_while_the_pivot_is_in_flight_is_refused_and_the_saga_completes(
    db: Path, services: RunningServices, workers: Workers
) -> None:
    services.lab.hold("shipping")
    payload = order(1)
    store = SQLiteStore(db)
    try:
        saga_id = start_saga(store, held_step_checkout(PIVOT, SHIPPING_TIMEOUT), payload)[0].id
    finally:
        store.close()
    workers.start("--concurrency", "1", "--exit-when-idle", "2", "--poll", "0.05")

    wait_for(lambda: shipment_in_flight(db, saga_id), 30, "the shipment call in flight")
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "sagalab.cli.main",
            "orchestrate",
            "rollback",
            saga_id,
            "--db",
            str(db),
        ],
        cwd=REPO,
        env=workers.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    with admin_api(db) as client:
        api_answer = client.post(f"/v1/sagas/{saga_id}/rollback")
    # Both landed while the shipment call was still out (the refusals say so).
    assert shipment_in_flight(db, saga_id)
    services.lab.release()
    assert cli.returncode == 4, cli.stderr
    assert "the pivot is in flight: wait for it or use --force" in cli.stderr
    assert "Traceback" not in cli.stderr
    assert api_answer.status_code == 409
    assert api_answer.headers["content-type"].startswith("application/problem+json")
    assert "the pivot is in flight" in api_answer.json()["detail"]

    state = wait_for(
        lambda: (s := saga_state(db, saga_id)).status.is_terminal and s,
        30,
        "the saga to finish",
    )
    assert state.status.value == "completed", state.reason
    assert state.reason is None
    store = SQLiteStore(db)
    try:
        types = [e.event.type for e in store.journal(saga_id)]
    finally:
        store.close()
    assert EventType.ROLLBACK_REQUESTED not in types
    assert types.count(EventType.ATTEMPT_STARTED) == 4  # one attempt per step, none cut off
    # What the services did agrees with the saga: shipped, charged, never refunded.
    done = [(e.service, e.operation) for e in services.lab.ledger() if e.order_id == "ord-0001"]
    assert done == [
        ("inventory", "action"),
        ("payments", "action"),
        ("shipping", "action"),
        ("notifications", "action"),
    ]
    assert applied_twice(services.lab.ledger()) == []

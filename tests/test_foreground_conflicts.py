"""A foreground run (`run --wait`, `resume`) meets an operator's request landing mid-call.

The run process holds the saga's lease while the payment call is slowed down; another process
(the CLI, or the HTTP API) journals a rollback meanwhile. The run's next append conflicts; it
must read the journal again and carry the rollback out itself (refunding the charge), as a
worker does, and never leave the saga stranded. Real subprocesses, real fake services over
HTTP, a real SQLite file; every wait is a bounded poll.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from apilab import admin_api
from workerlab import REPO, Workers, held_step_checkout, order, wait_for

from sagalab.fakeservices import RunningServices, applied_twice
from sagalab.orchestrator.flow import flow_to_dict
from sagalab.orchestrator.runner import start_saga
from sagalab.orchestrator.saga import Phase, SagaStatus
from sagalab.orchestrator.sqlite_store import SQLiteStore

CHARGE = "charge_payment"
# The payment call is held (`lab.hold`) until the operator's request is journaled, however slow
# the machine; its timeout only has to outlast the CLI's (60 s) and the bounded waits.
CHARGE_TIMEOUT = 180.0


def cli(env: dict[str, str], db: Path, *args: str) -> subprocess.Popen[str]:
    """`sagalab orchestrate ARGS --db DB` started in a process of its own."""
    return subprocess.Popen(
        [sys.executable, "-m", "sagalab.cli.main", "orchestrate", *args, "--db", str(db)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def the_env(services: RunningServices) -> dict[str, str]:
    return {**os.environ, **services.env, "PYTHONPATH": str(REPO)}


def charging(db: Path) -> str | None:
    """The id of the saga whose payment call is in flight, if there is one."""
    if not db.exists():
        return None
    store = SQLiteStore(db)
    try:
        for record in store.list_sagas():
            open_attempt = store.state(record.id)[2].open_attempt
            if open_attempt is not None and open_attempt[:2] == (CHARGE, Phase.ACTION):
                return record.id
        return None
    finally:
        store.close()


def status_of(db: Path, saga_id: str) -> SagaStatus:
    store = SQLiteStore(db)
    try:
        return store.load(saga_id).status
    finally:
        store.close()


def assert_refunded(services: RunningServices, order_id: str = "ord-0001") -> None:
    done = [(e.service, e.operation) for e in services.lab.ledger() if e.order_id == order_id]
    assert done == [
        ("inventory", "action"),
        ("payments", "action"),
        ("payments", "compensation"),
        ("inventory", "compensation"),
    ]
    assert applied_twice(services.lab.ledger()) == []


def test_run_wait_carries_out_a_rollback_journaled_by_another_process_mid_call(
    db: Path, services: RunningServices
) -> None:
    services.lab.hold("payments", "/charges")  # the refund goes through
    flow_file = db.parent / "checkout-slow-payments.yaml"
    flow_file.write_text(yaml.safe_dump(flow_to_dict(held_step_checkout(CHARGE, CHARGE_TIMEOUT))))
    env = the_env(services)
    run = cli(env, db, "run", str(flow_file), "--wait", "--input", json.dumps(order(1)))
    try:
        saga_id = wait_for(lambda: charging(db), 30, "the payment call in flight")
        rollback = cli(env, db, "rollback", saga_id)
        _, rollback_err = rollback.communicate(timeout=60)
        assert rollback.returncode == 0, rollback_err
        assert "rollback recorded" in rollback_err
        assert charging(db) == saga_id  # it landed mid-call: the run still holds the saga
        services.lab.release("payments")
        _, run_err = run.communicate(timeout=60)
    finally:
        services.lab.release()
        run.kill()
        run.communicate()  # reaps it and closes its pipes, whatever failed above
    assert "Traceback" not in run_err and "writer expected" not in run_err, run_err
    assert run.returncode == 1, run_err  # the saga rolled back, here
    assert status_of(db, saga_id) is SagaStatus.ROLLED_BACK
    assert_refunded(services)


def test_resume_carries_out_an_api_rollback_landing_mid_call(
    db: Path, services: RunningServices
) -> None:
    services.lab.hold("payments", "/charges")  # the refund goes through
    store = SQLiteStore(db)
    try:
        saga_id = start_saga(
            store, held_step_checkout(CHARGE, CHARGE_TIMEOUT), order(1), queue=False
        )[0].id
    finally:
        store.close()
    resume = cli(the_env(services), db, "resume", saga_id)
    try:
        wait_for(lambda: charging(db), 30, "the payment call in flight")
        with admin_api(db) as client:
            answer = client.post(f"/v1/sagas/{saga_id}/rollback")
        assert answer.status_code == 202, answer.text
        assert charging(db) == saga_id  # it landed mid-call: the resume still holds the saga
        services.lab.release("payments")
        _, err = resume.communicate(timeout=60)
    finally:
        services.lab.release()
        resume.kill()
        resume.communicate()
    assert "Traceback" not in err and "writer expected" not in err, err
    assert resume.returncode == 0, err  # resume asked for an end; rolled back is one
    assert status_of(db, saga_id) is SagaStatus.ROLLED_BACK
    assert_refunded(services)


def test_a_killed_foreground_run_is_taken_over_by_a_worker_once_its_lease_expires(
    db: Path, services: RunningServices, workers: Workers
) -> None:
    run = cli(
        the_env(services),
        db,
        "run",
        "checkout",
        "--wait",
        "--input",
        json.dumps(order(1)),
        "--crash-at",
        f"{CHARGE}:after-call",
    )
    run.communicate(timeout=60)
    assert run.returncode == -9  # SIGKILLed after the charge, its lease still held
    store = SQLiteStore(db)
    try:
        (record,) = store.list_sagas()
    finally:
        store.close()
    assert record.status is SagaStatus.RUNNING
    workers.start("--concurrency", "1", "--poll", "0.05")
    wait_for(lambda: status_of(db, record.id).is_terminal, 40, "a worker to finish the saga")
    assert status_of(db, record.id) is SagaStatus.COMPLETED
    assert applied_twice(services.lab.ledger()) == []


def test_a_run_that_keeps_meeting_conflicts_says_it_queued_the_saga(
    tmp_path: Path, services: RunningServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After RERUN_TRIES concurrent appends in a row the run gives the saga back to the
    workers' queue, and says so (exit 4), instead of only naming the conflict."""
    from typer.testing import CliRunner

    from sagalab.cli.main import app
    from sagalab.orchestrator.errors import ConcurrentUpdate
    from sagalab.orchestrator.runner import SagaRunner

    calls: list[str] = []

    def always_overtaken(self: SagaRunner, saga_id: str, **_: object) -> None:
        calls.append(saga_id)
        raise ConcurrentUpdate(f"saga {saga_id}: journal is at 5, writer expected 4")

    monkeypatch.setattr(SagaRunner, "run", always_overtaken)
    for key, value in the_env(services).items():
        monkeypatch.setenv(key, value)
    db = tmp_path / "sagas.db"
    answer = CliRunner().invoke(
        app,
        ["orchestrate", "run", "checkout", "--db", str(db), "--wait", "--json",
         "--input", json.dumps(order(1))],
    )  # fmt: skip
    assert answer.exit_code == 4, answer.output
    assert "queued for the workers" in answer.output and len(calls) == 5, answer.output
    store = SQLiteStore(db)
    try:
        (record,) = store.list_sagas()
        assert store.claim(record.id, "a-worker", now=time.time() + 1, lease_seconds=5.0)
    finally:
        store.close()

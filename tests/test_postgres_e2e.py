"""The CLI and real worker processes on PostgreSQL, end to end (issue 10).

Every test gets a fresh database on the session's throwaway cluster (`pg_url`) and runs real
`sagalab` subprocesses against the fake services over HTTP on 127.0.0.1: the CLI running a
checkout to the end, two workers draining a queue, and a worker SIGKILLed mid-call whose saga
another finishes after the lease ran out, nothing applied twice by the services' ledgers.
"""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
from apilab import admin_api
from workerlab import (
    Workers,
    drained,
    enqueue,
    journal,
    order,
    owner_pid,
    sagalab,
    statuses,
    wait_for,
)

from sagalab.fakeservices import FaultSpec, RunningServices, applied_twice
from sagalab.orchestrator.saga import EventType, Phase

FAST = ("--poll", "0.05")


def _one_row(url: str, sql: str) -> tuple:
    with psycopg.connect(url) as conn:
        row = conn.execute(sql).fetchone()
    assert row is not None
    return tuple(row)


def test_orchestrate_run_wait_completes_a_checkout_on_postgres(
    pg_url: str, services: RunningServices
) -> None:
    order_input = json.dumps(order(1))
    args = ("orchestrate", "run", "checkout", "-i", order_input, "--wait", "--json")
    done = sagalab(*args, "--db", pg_url, env=services.env)
    assert done.returncode == 0, done.stderr
    saga = json.loads(done.stdout)
    assert saga["status"] == "completed"
    assert [s["status"] for s in saga["steps"]] == ["succeeded"] * 4
    # The CLI's read commands see it in the same database, by URL.
    shown = sagalab("orchestrate", "status", saga["id"], "--json", "--db", pg_url)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["status"] == "completed"
    listed = sagalab("orchestrate", "list", "--json", env={"SAGALAB_DB": pg_url})
    assert [s["id"] for s in json.loads(listed.stdout)] == [saga["id"]]
    assert len(services.lab.ledger()) == 4 and applied_twice(services.lab.ledger()) == []


def test_the_api_queues_serves_and_reports_ready_on_postgres(
    pg_url: str, services: RunningServices, tmp_path: Path
) -> None:
    with admin_api(pg_url, keys_db=tmp_path / "keys.db") as client:
        assert client.get("/readyz").status_code == 200
        posted = client.post("/v1/sagas", json={"flow": "checkout", "input": order(7)})
        assert posted.status_code == 202, posted.text
        saga_id = posted.json()["id"]
        workers = Workers(pg_url, services.env, tmp_path / "logs")
        try:
            w = workers.start("--exit-when-idle", "1", *FAST)
            assert w.proc.wait(timeout=60) == 0, w.stderr()
        finally:
            workers.stop_all()
        got = client.get(f"/v1/sagas/{saga_id}")
        assert got.status_code == 200 and got.json()["status"] == "completed"
        assert [s["id"] for s in client.get("/v1/sagas").json()["items"]] == [saga_id]


def test_an_unreachable_server_is_one_line_and_exit_5_with_the_password_masked(
    services: RunningServices,
) -> None:
    url = "postgresql://me:s3cret@127.0.0.1:1/sagas"  # nothing listens on port 1
    done = sagalab("orchestrate", "list", "--db", url)
    assert done.returncode == 5
    assert "s3cret" not in done.stderr + done.stdout
    assert "***" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_two_workers_drain_a_queue_on_postgres(
    pg_url: str, services: RunningServices, tmp_path: Path
) -> None:
    n = 20
    # Slow enough that one worker alone would need about 8 s: the second, however late it
    # starts on a loaded machine, finds sagas left to claim.
    services.lab.add_fault(FaultSpec(service="payments", latency_ms=400))
    enqueue(pg_url, [order(i) for i in range(n)])
    workers = Workers(pg_url, services.env, tmp_path / "logs")
    try:
        pair = [
            workers.start("--concurrency", "1", "--exit-when-idle", "1", "--json", *FAST)
            for _ in range(2)
        ]
        for w in pair:
            assert w.proc.wait(timeout=60) == 0, w.stderr()
    finally:
        workers.stop_all()
    assert statuses(pg_url) == {"completed": n}
    summaries = [w.summary() for w in pair]
    assert sum(s["claimed"] for s in summaries) == n
    assert all(s["claimed"] > 0 for s in summaries), "both workers took sagas"
    assert all(s["lost_leases"] == s["errors"] == 0 for s in summaries)
    assert applied_twice(services.lab.ledger()) == []
    assert _one_row(pg_url, "SELECT COUNT(*) FROM sagas WHERE lease_owner IS NOT NULL") == (0,)


def test_a_sigkilled_workers_saga_is_finished_by_another_after_its_lease(
    pg_url: str, services: RunningServices, tmp_path: Path
) -> None:
    lease = 1.5
    services.lab.add_fault(FaultSpec(service="shipping", latency_ms=1200))
    (saga,) = enqueue(pg_url, [order(1)])
    workers = Workers(pg_url, services.env, tmp_path / "logs")
    try:
        a = workers.start("--concurrency", "1", "--lease", str(lease), *FAST)

        def shipping_in_flight() -> bool:
            last = journal(pg_url, saga)[-1].event
            return last.type is EventType.ATTEMPT_STARTED and last.step == "create_shipment"

        wait_for(shipping_in_flight, 30, "the shipping call to start")
        a.kill()
        owner, lease_until = _one_row(pg_url, "SELECT lease_owner, lease_until FROM sagas")
        assert owner_pid(owner) == a.pid
        b = workers.start(
            "--concurrency", "1", "--lease", str(lease), "--exit-when-idle", str(lease + 2.0),
            "--json", *FAST,
        )  # fmt: skip
        b_ready = b.ready()
        assert b.proc.wait(timeout=60) == 0, b.stderr()
    finally:
        workers.stop_all()
    wait_for(drained(pg_url, 1), 5, "the saga to end")
    assert statuses(pg_url) == {"completed": 1}
    shipping = [
        e.event
        for e in journal(pg_url, saga)
        if e.event.step == "create_shipment" and e.event.type is not EventType.RETRY_SCHEDULED
    ]
    assert all(e.phase is Phase.ACTION for e in shipping)
    assert [(e.type, e.attempt) for e in shipping] == [
        (EventType.ATTEMPT_STARTED, 1),
        (EventType.ATTEMPT_FAILED, 1),  # closed as interrupted by the new owner
        (EventType.ATTEMPT_STARTED, 2),
        (EventType.ATTEMPT_SUCCEEDED, 2),
    ]
    # The takeover waited for the lease (on the database's clock, here the same as ours).
    assert shipping[1].at >= lease_until - 0.5
    # ... and took over within a poll of when it could: the later of the lease's end and b's
    # start (a loaded machine takes seconds to start a process). Waiting out a second lease
    # (a renewed or misread one) would fail this.
    assert shipping[1].at - max(lease_until, b_ready) < 2 * lease
    # The call in flight at the kill and its retry carry one key: shipped once.
    assert applied_twice(services.lab.ledger()) == []
    shipped = [e for e in services.lab.ledger() if e.service == "shipping" and not e.noop]
    assert len(shipped) == 1

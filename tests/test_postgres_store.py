"""What only the PostgreSQL store has to show: the database's clock judges leases, a lost
connection is a StoreError the next call recovers from, and a new database is set up once
by racing openers. (Everything else it shares with SQLite: tests/store_conformance/.)"""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path

import psycopg
import pytest
from store_conformance.conformancelab import advance, create, reserve_ok
from workerlab import Workers, drained, enqueue, order, statuses, wait_for

from sagalab.fakeservices import FaultSpec, RunningServices, applied_twice
from sagalab.orchestrator.errors import LeaseLost, StoreError, StoreUnavailable
from sagalab.orchestrator.journal import JournalEntry
from sagalab.orchestrator.pg_cluster import PgCluster
from sagalab.orchestrator.postgres_store import SCHEMA_VERSION, PostgresStore
from sagalab.orchestrator.saga import Event, EventType
from sagalab.orchestrator.stores import open_store
from sagalab.orchestrator.worker import Worker, WorkerConfig


def test_lease_expiry_is_judged_by_the_database_clock_not_a_skewed_worker(pg_url: str) -> None:
    """A worker whose clock runs 30 s behind takes a 5 s lease: a worker with a right clock
    cannot take the saga before the database says the 5 s are up, and can after; the late
    worker's write is then refused, though by its own clock its lease still runs."""
    behind = PostgresStore(pg_url, local_clock=lambda: time.time() - 30.0)
    right = PostgresStore(pg_url)
    try:
        assert (behind.offset, right.offset) == (30.0, 0.0)
        create(right, "s1", run_after=time.time())
        lease = behind.claim_next("late", now=time.time() - 30.0, lease_seconds=5.0)
        assert lease is not None and lease.until == pytest.approx(time.time() - 25.0, abs=1)
        # By the late worker's clock the lease ran out 25 s ago; by the database's, it runs.
        assert right.claim_next("w", now=time.time(), lease_seconds=5.0) is None
        assert right.claim_next("w", now=time.time() + 6.0, lease_seconds=5.0) is not None
        _, _, state = behind.state("s1")
        for event in reserve_ok(time.time() - 29.0):
            state.apply(event)
        with pytest.raises(LeaseLost):  # another took it
            behind.append(
                "s1",
                [JournalEntry(e) for e in reserve_ok(time.time() - 29.0)],
                expected_seq=1,
                state=state,
                now=time.time() - 29.0,
                lease=lease,
            )
    finally:
        behind.close()
        right.close()


def test_a_lost_connection_is_a_store_error_and_the_next_call_reconnects(
    pg_url: str, pg_cluster: PgCluster
) -> None:
    store = open_store(pg_url)
    try:
        create(store, "s1")
        pg_cluster.restart_crash()  # every connection is cut
        with pytest.raises(StoreError, match="s1|server|connection|terminat"):
            store.load("s1")
        assert store.load("s1").id == "s1"  # reconnected
    finally:
        store.close()


def test_openers_racing_on_a_new_database_set_it_up_once(pg_url: str) -> None:
    errors: list[BaseException] = []
    stores: list[PostgresStore] = []

    def open_one() -> None:
        try:
            stores.append(PostgresStore(pg_url))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    try:
        assert errors == []
        assert {s.schema_version() for s in stores} == {SCHEMA_VERSION}
    finally:
        for store in stores:
            store.close()


def test_workers_ride_out_a_database_crash_restart(
    pg_url: str, pg_cluster: PgCluster, services: RunningServices, tmp_path
) -> None:
    """Two workers lose every connection mid-run (`pg_ctl restart -m immediate`): they back
    off, reconnect and finish every saga, applying nothing twice."""
    n = 16
    services.lab.add_fault(FaultSpec(service="payments", latency_ms=100))
    enqueue(pg_url, [order(i) for i in range(n)])
    workers = Workers(pg_url, services.env, tmp_path / "logs")
    try:
        running = [
            workers.start("--concurrency", "2", "--lease", "2", "--poll", "0.05") for _ in range(2)
        ]
        # Both past `sagalab worker`'s start-up check (a server down THEN is exit 5, by
        # design) before the crash: from there on, a refused connection is backed off from.
        wait_for(
            lambda: all("thread(s), lease" in w.stderr() for w in running),
            30,
            "both workers to start",
        )
        wait_for(lambda: statuses(pg_url).get("completed", 0) >= 2, 30, "some sagas to end")
        pg_cluster.restart_crash()
        wait_for(drained(pg_url, n), 60, "every saga to end after the restart")
        assert all(w.alive() for w in running), workers.all_stderr()
    finally:
        workers.stop_all()
    assert statuses(pg_url) == {"completed": n}
    assert applied_twice(services.lab.ledger()) == []


def test_a_server_that_is_not_there_is_unavailable_a_missing_database_is_not(
    pg_cluster: PgCluster,
) -> None:
    """Connection refused (nothing listening) may pass: StoreUnavailable, what a running
    worker backs off on. A server that answers "no such database" will not: StoreError."""
    with pytest.raises(StoreUnavailable):
        open_store(f"postgresql://sagalab@127.0.0.1:{_closed_port()}/sagas")
    with pytest.raises(StoreError) as caught:
        open_store(pg_cluster.url_for("no_such_database_here"), create=False)
    assert not isinstance(caught.value, StoreUnavailable)


def test_a_worker_started_while_the_server_is_down_waits_instead_of_dying(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"postgresql://sagalab:s3cr/et@127.0.0.1:{_closed_port()}/sagas"
    worker = Worker(WorkerConfig(db=Path(url), services={}, poll_interval=0.01))
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(worker.run())
        except BaseException as exc:  # what the test reports
            outcome.append(exc)

    with caplog.at_level(logging.WARNING, logger="sagalab.worker"):
        thread = threading.Thread(target=run)
        thread.start()
        try:
            wait_for(lambda: "backing off" in caplog.text, 10, "the worker to back off")
            assert not outcome, outcome  # still waiting for the server, not dead
        finally:
            worker.stop.set()
            thread.join(10)
    assert len(outcome) == 1 and not isinstance(outcome[0], BaseException), outcome
    assert "s3cr" not in caplog.text  # its logs go through the one masking rule


def _closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on (bound then closed: refused, at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_migrations_after_the_first_run_again_harmlessly(pg_url: str) -> None:
    """A v3 database whose meta says v1 (columns and indexes there already) is migrated
    again without an error, its sagas kept."""
    store = open_store(pg_url)
    try:
        create(store, "s1")
    finally:
        store.close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    store = open_store(pg_url)
    try:
        assert store.schema_version() == SCHEMA_VERSION
        assert store.load("s1").id == "s1"
    finally:
        store.close()


def test_a_nul_character_in_a_reason_is_stored_not_a_write_that_fails_for_ever(
    pg_url: str,
) -> None:
    store = open_store(pg_url)
    try:
        create(store, "s1")
        events = [Event(EventType.ROLLBACK_REQUESTED, 101.0, reason="bad\x00byte")]
        assert advance(store, "s1", events, span_id="span\x00") == 2
        [_, entry] = store.journal("s1")
        assert (entry.event.reason, entry.span_id) == ("bad\ufffdbyte", "span\ufffd")
    finally:
        store.close()


@pytest.mark.parametrize("damage", ["DELETE FROM meta", "UPDATE meta SET value = 'abc'"])
def test_a_saga_database_whose_version_row_is_gone_is_refused_by_name(
    pg_url: str, damage: str
) -> None:
    """Tables there but no readable schema version (a restore that lost `meta`'s row):
    it read as version 0 and every command, `list` too, replayed the v1 migration and
    failed on "relation ... already exists"; nothing said what was wrong."""
    open_store(pg_url).close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(damage)
    for readonly in (True, False):
        with pytest.raises(StoreError, match="schema version is missing or unreadable"):
            open_store(pg_url, readonly=readonly)

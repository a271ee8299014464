"""Health checks and read commands never wait for the database's write lock.

Another connection holds a `BEGIN IMMEDIATE` write transaction for the whole test (a long
write by a worker or an operator); `/readyz` on a real uvicorn API and `orchestrate
list/status` must still answer at once, and correctly. Before, every new API thread and every
CLI open ran a schema migration in a write transaction and waited out the 30 s busy timeout.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from apilab import admin_api

from sagalab.orchestrator.flowfile import load_flow
from sagalab.orchestrator.runner import start_saga
from sagalab.orchestrator.sqlite_store import SQLiteStore

ORDER = {"order_id": "o-1", "customer_id": "c-1", "sku": "sku-1", "quantity": 1, "amount": 10}
# Far below the 30 s busy timeout a blocked open waits out; far above an answer's time.
PROMPT = 10.0


@pytest.fixture
def saga_db(tmp_path: Path) -> tuple[Path, str]:
    db = tmp_path / "sagas.db"
    store = SQLiteStore(db)
    record, _ = start_saga(store, load_flow("checkout"), ORDER, queue=True)
    store.close()
    return db, record.id


@pytest.fixture
def write_lock(saga_db: tuple[Path, str]) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(saga_db[0], isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("UPDATE sagas SET updated_at = updated_at")
    yield conn
    conn.execute("ROLLBACK")
    conn.close()


def test_readyz_and_reads_answer_while_another_connection_holds_the_write_lock(
    saga_db: tuple[Path, str],
) -> None:
    db, saga_id = saga_db
    # The schema is set up once, when the API starts, before the lock is taken.
    with admin_api(db, timeout=PROMPT) as client:
        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Several requests: each may land on a fresh thread of the pool (a new store).
            for _ in range(4):
                ready = client.get("/readyz")
                assert ready.status_code == 200, ready.text
                assert ready.json()["status"] == "ready"
            assert client.get("/healthz").status_code == 200
            listed = client.get("/v1/sagas")
            assert listed.status_code == 200
            assert [s["id"] for s in listed.json()["items"]] == [saga_id]
            assert client.get(f"/v1/sagas/{saga_id}").json()["status"] == "pending"
        finally:
            conn.execute("ROLLBACK")
            conn.close()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run(
        [sys.executable, "-m", "sagalab.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=PROMPT + 10,  # interpreter start-up on a loaded machine, then PROMPT at most
        env=env,
    )


def test_orchestrate_list_and_status_answer_while_the_write_lock_is_held(
    saga_db: tuple[Path, str], write_lock: sqlite3.Connection
) -> None:
    db, saga_id = saga_db
    listed = _cli("orchestrate", "list", "--db", str(db), "--json")
    assert listed.returncode == 0, listed.stderr
    assert [s["id"] for s in json.loads(listed.stdout)] == [saga_id]
    shown = _cli("orchestrate", "status", saga_id, "--db", str(db), "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["status"] == "pending"
    events = _cli("orchestrate", "events", saga_id, "--db", str(db), "--json")
    assert events.returncode == 0, events.stderr
    assert json.loads(events.stdout)[0]["type"] == "saga_created"
    breakers = _cli("breakers", "list", "--db", str(db), "--json")
    assert breakers.returncode == 0, breakers.stderr
    assert json.loads(breakers.stdout) == []


def test_opening_a_current_store_takes_no_write_lock(
    saga_db: tuple[Path, str], write_lock: sqlite3.Connection
) -> None:
    db, saga_id = saga_db
    for read_only in (True, False):
        store = SQLiteStore(db, timeout=0.5, read_only=read_only)
        try:
            assert store.load(saga_id).id == saga_id
        finally:
            store.close()


def _count_in_another_process(db: Path) -> int:
    code = (
        "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
        "print(c.execute('SELECT COUNT(*) FROM sagas').fetchone()[0]); c.close()"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(db)], capture_output=True, text=True, timeout=PROMPT
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


def test_checking_a_file_keeps_the_locks_of_this_process_s_connections(
    saga_db: tuple[Path, str],
) -> None:
    """Opening stores next to a live connection must not drop its locks on the file.

    A process's POSIX locks go with any descriptor it closes on the file; if the check did
    that, another process would see itself as the last user, checkpoint and delete the
    `-wal` this process still writes to, and every later write here would be lost.
    """
    db, _ = saga_db
    holder = SQLiteStore(db)  # a worker thread's connection, kept open
    try:
        holder.conn.execute("PRAGMA wal_autocheckpoint=0")  # what it writes stays in the WAL
        start_saga(holder, load_flow("checkout"), {**ORDER, "order_id": "o-2"}, queue=True)
        for read_only in (False, True, False):  # other threads open and close their stores
            SQLiteStore(db, read_only=read_only).close()
        assert _count_in_another_process(db) == 2
        start_saga(holder, load_flow("checkout"), {**ORDER, "order_id": "o-3"}, queue=True)
        assert _count_in_another_process(db) == 3
    finally:
        holder.close()
    assert _count_in_another_process(db) == 3

"""A database file deleted or replaced while something had it open (issue 8, item 2).

`-wal` and `-shm` files stay behind when `sagas.db` is moved or deleted under a running
process: the next process to create the database at that path must not read them as its
own (SQLite would apply the old journal to the new file: "disk I/O error", "malformed").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from workerlab import REPO, enqueue, order, query, wait_for

from sagalab.fakeservices import FaultSpec, RunningServices, run_in_thread
from sagalab.orchestrator.sqlite_store import SQLiteStore


@pytest.fixture(scope="module")
def services() -> Iterator[RunningServices]:
    with run_in_thread() as running:
        yield running


HOLDER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN")  # a reader: nothing can reset the -wal it reads from
conn.execute("SELECT count(*) FROM sagas").fetchall()
print("ready", flush=True)
sys.stdin.read()
"""


def test_a_new_database_ignores_the_wal_and_shm_a_moved_one_left_behind(tmp_path: Path) -> None:
    db = tmp_path / "sagas.db"
    enqueue(db, [order(1)])
    # Another process still has the old file open (so its -wal and -shm stay).
    with subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as old:
        try:
            assert old.stdout is not None and old.stdout.readline() == "ready\n"
            enqueue(db, [order(n) for n in range(2, 40)])
            assert Path(f"{db}-wal").stat().st_size > 0
            db.rename(tmp_path / "elsewhere.db")  # `mv sagas.db elsewhere` while it runs
            ids = enqueue(db, [order(100)])  # what the next `orchestrate run` does
            ids += enqueue(db, [order(101)])
            store = SQLiteStore(db, read_only=True)
            try:
                assert sorted(r.id for r in store.list_sagas(limit=500)) == sorted(ids)
            finally:
                store.close()
        finally:
            old.kill()


WATCHER = """
import sqlite3, sys, time
from sagalab.orchestrator.watchdog import DatabaseGone, DatabaseWatchdog
watchdog = DatabaseWatchdog(sys.argv[1])
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN")  # a reader: nothing can reset the -wal it reads from
conn.execute("SELECT count(*) FROM sagas").fetchall()
print("ready", flush=True)
while True:
    try:
        watchdog.check()
    except DatabaseGone:
        print("gone", flush=True)
        break
    time.sleep(0.02)
sys.stdin.read()
"""


def test_a_database_replaced_under_a_watched_process_is_read_without_its_old_wal(
    tmp_path: Path,
) -> None:
    """The old file's -wal would be read over the new file (its sagas in place of the new
    ones): the process whose watchdog sees the file replaced removes the -wal and -shm it
    has open, before it stops."""
    db = tmp_path / "sagas.db"
    enqueue(db, [order(1)])
    with subprocess.Popen(
        [sys.executable, "-c", WATCHER, str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    ) as old:
        try:
            assert old.stdout is not None and old.stdout.readline() == "ready\n"
            enqueue(db, [order(n) for n in range(2, 40)])
            assert Path(f"{db}-wal").stat().st_size > 0
            other = tmp_path / "other.db"
            new_ids = enqueue(other, [order(500)])
            other.replace(db)  # `mv other.db sagas.db` while it runs
            assert old.stdout.readline() == "gone\n"
            new_ids += enqueue(db, [order(501)])
            store = SQLiteStore(db, read_only=True)
            try:
                assert sorted(r.id for r in store.list_sagas(limit=500)) == sorted(new_ids)
            finally:
                store.close()
        finally:
            old.kill()


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_run_wait_stops_with_exit_5_when_its_database_file_goes(
    tmp_path: Path, services: RunningServices, how: str
) -> None:
    services.lab.reset()
    services.lab.add_fault(FaultSpec(service="shipping", latency_ms=3000))
    db = tmp_path / "sagas.db"
    with subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sagalab.cli.main",
            "orchestrate",
            "run",
            "checkout",
            "--wait",
            "--input",
            json.dumps(order(1)),
            "--db",
            str(db),
            "--json",
        ],  # fmt: skip
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, **services.env},
    ) as proc:
        try:
            wait_for(
                lambda: (
                    db.exists()
                    and query(
                        db,
                        "SELECT 1 FROM events WHERE step = 'create_shipment' "
                        "AND type = 'attempt_started'",
                    )
                ),
                20,
                "the shipping call to start",
            )
            if how == "deleted":
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{db}{suffix}").unlink(missing_ok=True)
            else:
                other = tmp_path / "other.db"
                SQLiteStore(other).close()
                other.replace(db)
            code = proc.wait(timeout=20)
            assert proc.stderr is not None
            err = proc.stderr.read()
        finally:
            proc.kill()
    assert code == 5, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"database file {db} was" in lines[0], lines
    assert "Traceback" not in err

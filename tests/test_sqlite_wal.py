"""SQLite's `-wal` and `-shm` files: bounded while the database is in use, gone once the
stack that used it is down (session 20: `stack down` left both beside `sagas.db`, and a WAL
grown by one large write never shrank)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from workerlab import sagalab

from sagalab.orchestrator.sqlite_store import WAL_SIZE_LIMIT, SQLiteStore, connect, release_wal


def wal(path: Path) -> Path:
    return Path(f"{path}-wal")


def shm(path: Path) -> Path:
    return Path(f"{path}-shm")


def test_a_wal_grown_by_one_large_write_is_cut_back_to_the_limit(tmp_path: Path) -> None:
    db = tmp_path / "sagas.db"
    SQLiteStore(db).close()
    conn = connect(db)
    try:
        conn.execute("CREATE TABLE scratch (b BLOB)")
        conn.execute("INSERT INTO scratch VALUES (zeroblob(?))", (2 * WAL_SIZE_LIMIT,))
        assert wal(db).stat().st_size > 2 * WAL_SIZE_LIMIT
        conn.execute("DROP TABLE scratch")
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")  # what SQLite's auto-checkpoint does
        conn.execute("CREATE TABLE small (x)")  # the next write starts the WAL over
        assert wal(db).stat().st_size <= WAL_SIZE_LIMIT
    finally:
        conn.close()


def test_release_wal_removes_files_left_by_a_process_that_never_closed(tmp_path: Path) -> None:
    db = tmp_path / "sagas.db"
    SQLiteStore(db).close()
    # A process that wrote and died without closing (its files stay, its writes committed).
    code = (
        "import os, sys; from sagalab.orchestrator.sqlite_store import connect\n"
        "c = connect(sys.argv[1]); c.execute('CREATE TABLE t (x)');"
        "c.execute('INSERT INTO t VALUES (42)'); os._exit(0)"
    )
    done = __import__("subprocess").run(
        [__import__("sys").executable, "-c", code, str(db)], timeout=60, env=os.environ
    )
    assert done.returncode == 0
    assert wal(db).exists() and shm(db).exists()
    assert release_wal(db) is True
    assert not wal(db).exists() and not shm(db).exists()
    conn = connect(db)
    try:
        assert conn.execute("SELECT x FROM t").fetchall() == [(42,)]  # nothing lost
    finally:
        conn.close()


def test_release_wal_leaves_a_database_in_use_alone(tmp_path: Path) -> None:
    db = tmp_path / "sagas.db"
    store = SQLiteStore(db)
    try:
        store.conn.execute("SELECT 1 FROM sagas").fetchall()
        assert release_wal(db) is False  # another connection has it open: kept
        assert wal(db).exists()
        store.conn.execute("SELECT 1 FROM sagas").fetchall()  # and it still works
    finally:
        store.close()


def test_release_wal_touches_no_missing_or_foreign_file(tmp_path: Path) -> None:
    assert release_wal(tmp_path / "none.db") is False
    assert not (tmp_path / "none.db").exists()
    text = tmp_path / "notes.txt"
    text.write_text("not a database")
    Path(f"{text}-wal").write_text("x")
    assert release_wal(text) is False
    assert text.read_text() == "not a database"


@pytest.mark.slow
def test_stack_down_leaves_no_wal_or_shm_beside_the_databases(tmp_path: Path) -> None:
    directory = tmp_path / "stack"
    up = sagalab(
        "stack", "up", "--detach", "--dir", str(directory), "--port", "0", "--workers", "1",
        "--gateways", "1",
    )  # fmt: skip
    try:
        assert up.returncode == 0, up.stderr
        assert wal(directory / "sagas.db").exists()  # in use while the stack runs
    finally:
        down = sagalab("stack", "down", "--dir", str(directory))
    assert down.returncode == 0, down.stderr
    for name in ("sagas.db", "keys.db"):
        left = sorted(p.name for p in directory.iterdir() if p.name.startswith(f"{name}-"))
        assert left == [], left
    store = SQLiteStore(directory / "sagas.db", read_only=True)
    try:
        assert store.conn.execute("SELECT count(*) FROM sagas").fetchone() is not None
    finally:
        store.close()

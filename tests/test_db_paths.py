"""Every command that takes --db refuses anything that is not a sagalab database.

One clear line on stderr, exit 5 (database or service configuration error), no traceback, and
nothing created or changed: for every kind of bad path crossed with every such command.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sagalab.cli.main import app
from sagalab.orchestrator.errors import StoreError
from sagalab.orchestrator.sqlite_store import SCHEMA_VERSION, Access, SQLiteStore, check_database

runner = CliRunner()
ORDER = json.dumps({"order_id": "o", "customer_id": "c", "sku": "A", "quantity": 1, "amount": 1})
SAGA = "0" * 26


def _sagalab_db(path: Path) -> None:
    SQLiteStore(path).close()


def _directory(tmp: Path) -> Path:
    (tmp / "a-directory").mkdir()
    return tmp / "a-directory"


def _one_byte(tmp: Path) -> Path:
    """SQLite opens a one-byte file as an empty database and writes over it."""
    path = tmp / "x.db"
    path.write_text("x")
    return path


def _not_sqlite(tmp: Path) -> Path:
    path = tmp / "notes.txt"
    path.write_text("these are my notes, not a database\n" * 50)
    return path


def _garbage_after_header(tmp: Path) -> Path:
    path = tmp / "corrupt.db"
    path.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 16)
    return path


def _scrambled_schema_page(tmp: Path) -> Path:
    """A real sagalab file whose first page (the schema) is overwritten past the header."""
    path = tmp / "scrambled.db"
    _sagalab_db(path)
    data = bytearray(path.read_bytes())
    data[100:2048] = bytes([0xA5]) * (2048 - 100)
    path.write_bytes(bytes(data))
    return path


def _parent_is_a_file(tmp: Path) -> Path:
    (tmp / "plain-file").write_text("x")
    return tmp / "plain-file" / "sagas.db"


def _proc_file(_tmp: Path) -> Path:
    return Path("/proc/self/status")


def _proc_missing(_tmp: Path) -> Path:
    return Path("/proc/sagalab-test.db")


def _foreign(tmp: Path) -> Path:
    path = tmp / "other-app.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    conn.execute("INSERT INTO invoices (total) VALUES (9.5)")
    conn.commit()
    conn.close()
    return path


def _foreign_wal(tmp: Path) -> Path:
    """Another application's database in WAL mode, closed (no `-wal` beside it)."""
    path = tmp / "other-app-wal.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    conn.commit()
    conn.close()
    assert not Path(f"{path}-wal").exists()
    return path


def _newer(tmp: Path) -> Path:
    path = tmp / "newer.db"
    _sagalab_db(path)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION + 1,))
    conn.commit()
    conn.close()
    return path


def _missing(tmp: Path) -> Path:
    return tmp / "mistyped.db"


BAD_PATHS: dict[str, tuple[Callable[[Path], Path], str]] = {
    # kind: (make it, a word the message must contain)
    "directory": (_directory, "directory"),
    "not-sqlite": (_not_sqlite, "not a SQLite database"),
    "one-byte": (_one_byte, "not a SQLite database"),
    "corrupt": (_garbage_after_header, "corrupt"),
    "corrupt-schema": (_scrambled_schema_page, "corrupt"),
    "unwritable": (_parent_is_a_file, "sagas.db"),
    "proc-file": (_proc_file, "/proc"),
    "proc-missing": (_proc_missing, "/proc"),
    "foreign": (_foreign, "invoices"),
    "foreign-wal": (_foreign_wal, "invoices"),
    "newer": (_newer, "newer"),
}

# Commands that only read (or act on an existing saga) also refuse a missing file.
EXISTING_ONLY = [
    ["orchestrate", "status", SAGA],
    ["orchestrate", "list"],
    ["orchestrate", "events", SAGA],
    ["orchestrate", "resume", SAGA],
    ["orchestrate", "resume", "--stuck"],
    ["orchestrate", "rollback", SAGA],
    ["orchestrate", "retry-step", SAGA, "charge_payment"],
    ["orchestrate", "skip-step", SAGA, "charge_payment", "--reason", "by hand"],
    ["breakers", "list"],
    ["breakers", "events"],
    ["breakers", "reset", "payments"],
]
CREATING = [
    ["orchestrate", "run", "checkout", "--input", ORDER],
    ["orchestrate", "run", "checkout", "--input", ORDER, "--wait"],
    ["worker", "--exit-when-idle", "0.1", "--max-seconds", "2"],
    ["demo"],
]
COMMANDS = EXISTING_ONLY + CREATING


def _snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file and directory under `root`, with file contents."""
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
    }


@pytest.fixture
def services_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Unreachable but well-formed: `run --wait` gets past its service check to the database.
    for name in ("INVENTORY", "PAYMENTS", "SHIPPING", "NOTIFICATIONS"):
        monkeypatch.setenv(f"SAGALAB_SERVICE_{name}", "http://127.0.0.1:9")
    monkeypatch.delenv("SAGALAB_DB", raising=False)
    monkeypatch.delenv("SAGALAB_SERVICES_FILE", raising=False)


def _assert_refused(args: list[str], db: Path, tmp_path: Path, expect: str) -> None:
    before = _snapshot(tmp_path)
    result = runner.invoke(app, [*args, "--db", str(db)])
    assert result.exit_code == 5, (result.exit_code, result.stdout, result.stderr)
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert expect in lines[0], lines[0]
    assert result.stdout == ""
    assert _snapshot(tmp_path) == before
    assert not Path("/proc/sagalab-test.db").exists()


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a[:3]))
@pytest.mark.parametrize("kind", list(BAD_PATHS))
def test_bad_db_is_refused_with_exit_5_and_nothing_written(
    kind: str, args: list[str], tmp_path: Path, services_env: None
) -> None:
    make, expect = BAD_PATHS[kind]
    db = make(tmp_path)
    _assert_refused(args, db, tmp_path, expect)


@pytest.mark.parametrize("args", EXISTING_ONLY, ids=lambda a: " ".join(a[:3]))
def test_missing_db_is_not_created_by_commands_that_need_one(
    args: list[str], tmp_path: Path, services_env: None
) -> None:
    _assert_refused(args, _missing(tmp_path), tmp_path, "no saga database")


@contextlib.contextmanager
def read_only_directory(where: Path) -> Iterator[Path]:
    """A directory nobody may write to: root writes through file modes, so for root a
    read-only tmpfs (we mount it), for anyone else mode 0555."""
    where.mkdir()
    if os.geteuid() != 0:
        where.chmod(0o555)
        try:
            yield where
        finally:
            where.chmod(0o755)
        return
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


@pytest.mark.parametrize("args", CREATING, ids=lambda a: " ".join(a[:3]))
def test_read_only_directory_is_refused_before_anything_runs(
    args: list[str], tmp_path: Path, services_env: None
) -> None:
    with read_only_directory(tmp_path / "locked") as locked:
        _assert_refused(args, locked / "sagas.db", tmp_path, "not writable")


# -- the validation function itself --------------------------------------------------------


@pytest.mark.parametrize("kind", list(BAD_PATHS))
@pytest.mark.parametrize("access", list(Access), ids=lambda a: a.value)
def test_check_database_classifies_without_writing(
    kind: str, access: Access, tmp_path: Path
) -> None:
    make, expect = BAD_PATHS[kind]
    db = make(tmp_path)
    before = _snapshot(tmp_path)
    with pytest.raises(StoreError) as info:
        check_database(db, access)
    assert expect in str(info.value)
    assert "\n" not in str(info.value)
    assert _snapshot(tmp_path) == before


def test_check_database_accepts_missing_only_when_creating(tmp_path: Path) -> None:
    assert check_database(tmp_path / "new" / "sagas.db", Access.CREATE) == 0
    assert list(tmp_path.iterdir()) == []
    for access in (Access.READ, Access.WRITE):
        with pytest.raises(StoreError, match="no saga database"):
            check_database(tmp_path / "sagas.db", access)


def test_check_database_reports_a_current_file(tmp_path: Path) -> None:
    db = tmp_path / "sagas.db"
    _sagalab_db(db)
    for access in Access:
        assert check_database(db, access) == SCHEMA_VERSION


def test_read_only_store_reads_a_read_only_file_and_creates_nothing(tmp_path: Path) -> None:
    db = tmp_path / "sagas.db"
    _sagalab_db(db)
    before = _snapshot(tmp_path)
    store = SQLiteStore(db, read_only=True)
    try:
        assert store.list_sagas() == []
        with pytest.raises(StoreError):
            store.requeue(SAGA, 0.0)
    finally:
        store.close()
    assert {k: v for k, v in _snapshot(tmp_path).items() if not k.endswith(("-wal", "-shm"))} == {
        k: v for k, v in before.items() if not k.endswith(("-wal", "-shm"))
    }


def test_api_refuses_a_foreign_database(tmp_path: Path) -> None:
    from sagalab.orchestrator.api import create_app

    db = _foreign(tmp_path)
    before = _snapshot(tmp_path)
    with pytest.raises(StoreError, match="invoices"):
        create_app(db)
    assert _snapshot(tmp_path) == before


def test_corruption_found_past_the_schema_is_one_line_and_exit_5(tmp_path: Path) -> None:
    """Damage in data pages passes the open-time check; reading it still gives exit 5."""
    from sagalab.orchestrator.flowfile import load_flow
    from sagalab.orchestrator.runner import start_saga

    db = tmp_path / "sagas.db"
    store = SQLiteStore(db)
    flow = load_flow("checkout")
    order = json.loads(ORDER)
    for i in range(200):
        start_saga(store, flow, {**order, "order_id": f"o{i}"}, queue=True)
    store.close()
    data = bytearray(db.read_bytes())
    data[len(data) // 2 :] = bytes([0xA5]) * (len(data) - len(data) // 2)
    db.write_bytes(bytes(data))
    for args in (["orchestrate", "list"], ["orchestrate", "resume", "--stuck"]):
        result = runner.invoke(app, [*args, "--db", str(db)])
        assert result.exit_code == 5, (args, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "malformed" in result.stderr


def _older(tmp: Path) -> Path:
    """A file as the previous sagalab left it (schema version SCHEMA_VERSION - 1)."""
    from sagalab.orchestrator.sqlite_store import MIGRATIONS

    path = tmp / "older.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    for script in MIGRATIONS[:-1]:
        if callable(script):  # a migration written in Python
            conn.execute("BEGIN")
            script(conn)
            conn.execute("COMMIT")
        else:
            conn.executescript(script)
    conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION - 1),))
    conn.close()
    return path


def test_read_commands_upgrade_an_older_sagalab_file_once(tmp_path: Path) -> None:
    db = _older(tmp_path)
    with pytest.raises(StoreError, match="older"):
        SQLiteStore(db, read_only=True)
    result = runner.invoke(app, ["orchestrate", "list", "--json", "--db", str(db)])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == []
    assert check_database(db) == SCHEMA_VERSION


def test_check_sqlite_file_serves_other_databases_by_name(tmp_path: Path) -> None:
    """The key store's check: its own wording, and the tables found for it to judge."""
    from sagalab.orchestrator.sqlite_store import check_sqlite_file

    keys = tmp_path / "keys.db"
    with pytest.raises(StoreError, match=r"no key database at .* --keys-db"):
        check_sqlite_file(keys, Access.READ, what="key database", option="--keys-db")
    assert not keys.exists()
    with pytest.raises(StoreError, match=r"is a directory, not a key database: .* --keys-db"):
        check_sqlite_file(tmp_path, Access.WRITE, what="key database", option="--keys-db")
    found = check_sqlite_file(_foreign(tmp_path), Access.READ, what="key database")
    assert found is not None and found.tables == {"invoices"} and found.schema_version is None


def test_api_process_refuses_a_bad_db_with_one_line_and_exit_5(tmp_path: Path) -> None:
    """`python -m sagalab.edge.apps api` (what `stack up` starts) on another application's file."""
    import subprocess
    import sys

    db = _foreign(tmp_path)
    before = _snapshot(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(
        [sys.executable, "-m", "sagalab.edge.apps", "api", "--db", str(db), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 5, done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert "invoices" in done.stderr and "Traceback" not in done.stderr
    assert _snapshot(tmp_path) == before

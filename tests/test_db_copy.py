"""`sagalab db copy`: a lab's database from SQLite to PostgreSQL and back (issue 10, item 3).

A SQLite database with completed, rolled-back, failed, forked, keyed and leased sagas, an open
breaker and a scaling decision goes to a fresh PostgreSQL database and back to a new SQLite
file; every saga reads the same at the end (`orchestrate status`, `list`, the journals). The
saga a live worker of the source held is free at the destinations and `orchestrate resume`
finishes it there. Refusals: a destination that is not empty (4, nothing written), one
database twice (2), and databases that cannot be opened (5, one line, the source untouched).
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import opslab
import psycopg
import pytest
from typer.testing import CliRunner
from workerlab import sagalab, wait_for

from sagalab.cli.main import app
from sagalab.fakeservices import RunningServices
from sagalab.orchestrator.dbcopy import TableCount, copy_database
from sagalab.orchestrator.errors import StoreError
from sagalab.orchestrator.leases import new_owner
from sagalab.orchestrator.sqlite_store import SQLiteStore
from sagalab.orchestrator.store import COPY_COLUMNS, COPY_TABLES
from sagalab.orchestrator.stores import open_breaker_store, open_store


def _cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args), env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


def _lab(db: Path) -> dict[str, str]:
    """A source database as a lab leaves it; its sagas' ids by what they show."""
    opslab.reset_handlers()
    store = SQLiteStore(db)
    try:
        ids = {
            "completed": opslab.completed(store),
            "rolled_back": opslab.rolled_back(store),
            "failed": opslab.failed_on_notify(store),
        }
        forked, _ = store.create_saga(
            saga_id="fork-1",
            flow=opslab.ops_flow(),
            payload={},
            trace_id="ef" * 16,
            idempotency_key=None,
            now=10.0,
            forked_from=ids["completed"],
        )
        keyed, _ = store.create_saga(
            saga_id="keyed-1",
            flow=opslab.ops_flow(),
            payload={"n": 1},
            trace_id="12" * 16,
            idempotency_key="key-1",
            now=11.0,
            tenant="acme",
        )
        ids.update(forked=forked.id, keyed=keyed.id)
        store.record_scaling(at=12.0, before=1, after=2, depth=4, oldest_age=0.5, reason="depth")
    finally:
        store.close()
    # A checkout a live worker of the source holds (this process: alive).
    held = opslab.checkout_saga(db)
    store = SQLiteStore(db)
    try:
        store.claim(held, new_owner("worker"), now=0.0, lease_seconds=1e12)
    finally:
        store.close()
    ids["held"] = held
    breakers = open_breaker_store(db)
    try:
        assert breakers.storage("payments", lambda: 20.0).try_open(20.0)
        breakers.record_transition("payments", 20.0, "open", owner="worker-1")
    finally:
        breakers.close()
    return ids


def _seen(db: str, ids: dict[str, str]) -> dict[str, Any]:
    """What the CLI shows of `db`: every saga's status, the list, the breakers."""
    shown: dict[str, Any] = {}
    for name, saga_id in ids.items():
        code, out, err = _cli("orchestrate", "status", saga_id, "--json", "--db", db)
        assert code == 0, err
        shown[name] = json.loads(out)
    code, out, err = _cli("orchestrate", "list", "--json", "--db", db)
    assert code == 0, err
    shown["list"] = json.loads(out)
    code, out, err = _cli("breakers", "list", "--json", "--db", db)
    assert code == 0, err
    shown["breakers"] = json.loads(out)
    return shown


def _journals(db: str, ids: dict[str, str]) -> dict[str, Any]:
    store = open_store(db, readonly=True)
    try:
        return {saga_id: store.journal(saga_id) for saga_id in ids.values()}
    finally:
        store.close()


def _fingerprint(path: Path) -> tuple[str, float, list[str]]:
    """The source file's bytes, mtime and neighbours: a copy leaves all three as they were."""
    siblings = sorted(p.name for p in path.parent.iterdir() if p.name.startswith(path.name))
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime, siblings


def _copy(source: str, destination: str, *more: str) -> tuple[int, dict[str, Any], str]:
    code, out, err = _cli("db", "copy", source, destination, "--json", *more)
    return code, json.loads(out) if out.strip() else {}, err


def test_sqlite_to_postgres_and_back_keeps_every_saga_and_frees_held_ones(
    tmp_path: Path, pg_url: str, services: RunningServices
) -> None:
    first = tmp_path / "lab.db"
    ids = _lab(first)
    before = _fingerprint(first)
    code, to_pg, err = _copy(str(first), pg_url)
    assert code == 0, err
    assert to_pg["ok"] and to_pg["leases_dropped"] == 1
    counts = {t["table"]: t["destination"] for t in to_pg["tables"]}
    assert counts["sagas"] == 6 and counts["breakers"] == 1 and counts["scaling_events"] == 1
    assert all(t["source"] == t["destination"] for t in to_pg["tables"])
    back = tmp_path / "back" / "lab.db"  # a directory that does not exist yet
    code, to_sqlite, err = _copy(pg_url, f"sqlite://{back}")
    assert code == 0, err
    assert [t["destination"] for t in to_sqlite["tables"]] == [
        t["destination"] for t in to_pg["tables"]
    ]
    assert _fingerprint(first) == before  # the source: only read

    original = _seen(str(first), ids)
    assert _seen(pg_url, ids) == original
    assert _seen(str(back), ids) == original
    assert _journals(pg_url, ids) == _journals(str(first), ids) == _journals(str(back), ids)
    assert original["forked"]["forked_from"] == ids["completed"]
    assert [original[k]["status"] for k in ("completed", "rolled_back", "failed")] == [
        "completed",
        "rolled_back",
        "failed",
    ]

    # The held saga: refused at the source (its worker lives), resumed at both copies (by
    # processes of their own, as an operator runs them).
    code, _, err = _cli("orchestrate", "resume", ids["held"], "--db", str(first), env=services.env)
    assert code == 4, err
    for db in (pg_url, str(back)):
        done = sagalab("orchestrate", "resume", ids["held"], "--json", "--db", db, env=services.env)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["status"] == "completed"


def test_a_destination_that_is_not_empty_is_refused_and_left_as_it_was(
    tmp_path: Path, pg_url: str
) -> None:
    source = tmp_path / "lab.db"
    ids = _lab(source)
    assert _copy(str(source), pg_url)[0] == 0
    store = open_store(pg_url)
    counts = store.table_counts()
    store.close()
    code, _, err = _copy(str(source), pg_url)
    assert code == 4 and "not empty" in err and "--force" in err
    # --force adds, never replaces: the same sagas again collide, and nothing is written.
    code, _, err = _copy(str(source), pg_url, "--force")
    assert code == 4 and ids["completed"] in err
    store = open_store(pg_url)
    assert store.table_counts() == counts
    store.close()


def test_force_adds_the_source_to_a_database_with_other_sagas(tmp_path: Path) -> None:
    source, other = tmp_path / "lab.db", tmp_path / "other.db"
    _lab(source)
    theirs = opslab.checkout_saga(other, completed=True)
    code, report, err = _copy(str(source), str(other), "--force")
    assert code == 0, err
    sagas = next(t for t in report["tables"] if t["table"] == "sagas")
    assert (sagas["destination_before"], sagas["copied"], sagas["destination"]) == (1, 6, 7)
    code, out, _ = _cli("orchestrate", "status", theirs, "--json", "--db", str(other))
    assert code == 0 and json.loads(out)["status"] == "completed"


@pytest.mark.parametrize(
    ("source", "destination", "code", "says"),
    [
        ("{lab}", "sqlite://{lab}", 2, "one database"),
        ("{tmp}/missing.db", "{tmp}/new.db", 5, "no saga database"),
        ("{lab}", "mysql://db.example/x", 5, "no store for mysql"),
        ("{lab}", "postgresql://sagalab:s3cret@127.0.0.1:1/x", 5, "cannot connect"),
        ("{tmp}", "{tmp}/new.db", 5, "directory"),
    ],
    ids=["same-database", "missing-source", "unknown-scheme", "unreachable", "not-a-file"],
)
def test_databases_that_cannot_be_copied_are_one_line_and_write_nothing(
    tmp_path: Path, source: str, destination: str, code: int, says: str
) -> None:
    lab = tmp_path / "lab.db"
    _lab(lab)
    before = _fingerprint(lab)
    fill = {"lab": str(lab), "tmp": str(tmp_path)}
    got, out, err = _cli("db", "copy", source.format(**fill), destination.format(**fill))
    assert got == code, err
    assert says in err and "Traceback" not in err and "s3cret" not in err
    assert out == "" and not (tmp_path / "new.db").exists()
    assert _fingerprint(lab) == before


@pytest.mark.parametrize("empty", [False, True], ids=["with-sagas", "empty"])
@pytest.mark.parametrize("force", [(), ("--force",)], ids=["plain", "force"])
def test_a_hard_link_to_the_source_is_one_database(
    tmp_path: Path, empty: bool, force: tuple[str, ...]
) -> None:
    lab = tmp_path / "lab.db"
    if empty:
        SQLiteStore(lab).close()
    else:
        _lab(lab)
    link = tmp_path / "link.db"
    link.hardlink_to(lab)  # another name, the same file (inode)
    before = _fingerprint(lab)
    got, out, err = _cli("db", "copy", str(lab), str(link), *force)
    assert got == 2, err
    assert err.strip().count("\n") == 0 and "are one database" in err, err
    assert "Traceback" not in err and out == ""
    assert _fingerprint(lab) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["link.db", *before[2]])


class _Interrupted(Exception):
    pass


class _StopAfter:
    """A progress that stops the copy (as Ctrl-C would) once `rows` rows were handed over."""

    def __init__(self, rows: int) -> None:
        self.left = rows

    def started(self, counts: dict[str, int]) -> None:
        pass

    def copied(self, table: str, rows: int) -> None:
        self.left -= rows
        if self.left <= 0:
            raise _Interrupted(table)


@pytest.mark.parametrize("direction", ["sqlite-to-postgres", "postgres-to-sqlite"])
def test_a_copy_stopped_halfway_leaves_the_destination_empty_and_runs_again(
    tmp_path: Path, pg_url: str, direction: str
) -> None:
    lab = tmp_path / "lab.db"
    _lab(lab)
    source, destination = str(lab), pg_url
    if direction == "postgres-to-sqlite":
        assert _copy(str(lab), pg_url)[0] == 0
        source, destination = pg_url, str(tmp_path / "back.db")
    src, dst = open_store(source, readonly=True), open_store(destination)
    try:
        with pytest.raises(_Interrupted):
            copy_database(src, dst, progress=_StopAfter(10), batch_size=1)
        assert set(dst.table_counts().values()) == {0}
        report = copy_database(src, dst, batch_size=1)
        assert report.ok and [t.after for t in report.tables] == [
            src.table_counts()[t] for t in COPY_TABLES
        ]
    finally:
        src.close()
        dst.close()


def _big_source(path: Path, sagas: int, events: int) -> None:
    """A source of `sagas` sagas with `events` journal rows each, written at once through
    the port (the rows are only copied, never read as sagas)."""
    template = {c: None for c in COPY_COLUMNS["sagas"]}
    rows = [
        {
            **template,
            "id": f"big-{n:05d}",
            "flow_name": "big",
            "flow_version": 1,
            "flow_hash": "h" * 32,
            "input": "{}",
            "input_hash": "x",
            "status": "completed",
            "trace_id": "ab" * 16,
            "created_at": float(n),
            "updated_at": float(n),
            "last_seq": events,
            "steps": "[]",
            "lease_epoch": 0,
            "tenant": "default",
        }
        for n in range(sagas)
    ]
    journal = [
        {
            **{c: None for c in COPY_COLUMNS["events"]},
            "saga_id": row["id"],
            "seq": seq,
            "type": "saga_created",
            "attempt": 0,
            "at": 1.0,
            "force": 0,
            "trace_id": "ab" * 16,
        }
        for row in rows
        for seq in range(1, events + 1)
    ]
    store = open_store(path)
    try:
        store.import_rows(
            [
                ("flow_snapshots", [{"hash": "h" * 32, "body": "{}"}]),
                ("sagas", rows),
                ("events", journal),
            ]
        )
    finally:
        store.close()


def test_a_copy_killed_mid_transaction_leaves_postgres_empty_and_runs_again(
    tmp_path: Path, pg_url: str
) -> None:
    source = tmp_path / "big.db"
    _big_source(source, sagas=1000, events=40)
    copying = subprocess.Popen(
        [sys.executable, "-m", "sagalab.cli.main", "db", "copy", str(source), pg_url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        with psycopg.connect(pg_url, autocommit=True) as watch:

            def writing() -> bool:
                row = watch.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_backend_pid() AND xact_start IS NOT NULL "
                    "AND query ILIKE 'INSERT INTO \"events\"%%'"
                ).fetchone()
                return row is not None and row[0] > 0

            wait_for(writing, 30, "the copy writing journal rows")
            copying.send_signal(signal.SIGKILL)
            copying.wait(timeout=10)

            def alone() -> bool:
                row = watch.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_backend_pid()"
                ).fetchone()
                return row is not None and row[0] == 0

            wait_for(alone, 30, "the server to end the killed copy's session")
    finally:
        if copying.poll() is None:
            copying.kill()
            copying.wait(timeout=10)
        assert copying.stderr is not None
        copying.stderr.close()
    store = open_store(pg_url)
    try:
        assert set(store.table_counts().values()) == {0}  # nothing of the killed copy
    finally:
        store.close()
    code, report, err = _copy(str(source), pg_url)
    assert code == 0, err
    assert {t["table"]: t["destination"] for t in report["tables"]}["events"] == 40_000


def test_an_older_sagalabs_source_is_refused_untouched_then_copied_once_upgraded(
    tmp_path: Path, pg_url: str
) -> None:
    from test_store import strip_to_v1

    current, older = tmp_path / "current.db", tmp_path / "older.db"
    opslab.reset_handlers()
    store = SQLiteStore(current)
    try:
        saga_id = opslab.completed(store)
    finally:
        store.close()
    strip_to_v1(current, older)  # each saga's flow snapshot inline, as before v5
    before = _fingerprint(older)
    code, _, err = _copy(str(older), pg_url)
    assert code == 5 and "older sagalab" in err
    assert _fingerprint(older) == before
    SQLiteStore(older).close()  # a command that writes upgrades it
    code, report, err = _copy(str(older), pg_url)
    assert code == 0 and report["ok"], err
    assert _seen(pg_url, {"saga": saga_id}) == _seen(str(older), {"saga": saga_id})
    assert _journals(pg_url, {"saga": saga_id}) == _journals(str(older), {"saga": saga_id})


@pytest.mark.parametrize(
    ("table", "counts", "ok"),
    [
        ("sagas", (6, 6, 0, 6, 6), True),
        ("sagas", (6, 6, 0, 5, 5), False),  # a row did not arrive
        ("sagas", (6, 5, 0, 5, 5), False),  # the export gave fewer rows than its snapshot held
        ("sagas", (6, 6, 2, 6, 9), False),  # something else wrote to the destination meanwhile
        ("flow_snapshots", (2, 2, 1, 1, 2), True),  # a merge kept the destination's own
        ("breakers", (3, 3, 1, 2, 3), True),
        ("breakers", (3, 3, 1, 2, 2), False),
    ],
    ids=["all", "lost-row", "short-export", "foreign-write", "kept-snapshot", "kept", "lost"],
)
def test_the_count_check(table: str, counts: tuple[int, ...], ok: bool) -> None:
    assert TableCount(table, *counts).ok is ok


class _LosesAnEvent(SQLiteStore):
    """A destination that loses the last journal row it is given (what the check catches)."""

    def import_rows(self, batches: Any, *, merge: bool = False) -> dict[str, int]:
        def lossy() -> Any:
            for table, rows in batches:
                yield table, rows[:-1] if table == "events" else rows

        return super().import_rows(lossy(), merge=merge)


def test_a_row_that_does_not_arrive_fails_the_count_check(tmp_path: Path) -> None:
    lab = tmp_path / "lab.db"
    _lab(lab)
    src, dst = open_store(lab, readonly=True), _LosesAnEvent(tmp_path / "copy.db")
    try:
        report = copy_database(src, dst)
    finally:
        src.close()
        dst.close()
    assert not report.ok
    assert [t.table for t in report.tables if not t.ok] == ["events"]


def test_a_copy_onto_a_full_disk_says_so_and_leaves_an_empty_destination(
    tmp_path: Path,
) -> None:
    """SQLite rolls a transaction back itself when the disk is full: the copy's own ROLLBACK
    then found none, and its error ("cannot rollback - no transaction is active") hid the
    one that mattered. The destination holds nothing and takes the same copy once there is
    room."""
    source = open_store(tmp_path / "src.db")
    sys.path.insert(0, str(Path(__file__).parent / "store_conformance"))
    from conformancelab import create

    for i in range(300):
        create(source, f"s{i:04d}", now=100.0 + i, order_id=f"o-{i}", pad="x" * 2000)
    destination = SQLiteStore(tmp_path / "dst.db", group_commit=False)
    # A full disk, as SQLite reports it (SQLITE_FULL), on this one connection.
    pages = destination.conn.execute("PRAGMA page_count").fetchone()[0]
    destination.conn.execute(f"PRAGMA max_page_count = {pages + 20}")
    with pytest.raises(StoreError, match="full"):
        copy_database(source, destination)
    assert not destination.conn.in_transaction
    destination.conn.execute("PRAGMA max_page_count = 1073741823")
    report = copy_database(source, destination)  # the same store, room again
    assert report.ok and destination.table_counts()["sagas"] == 300
    source.close()
    destination.close()

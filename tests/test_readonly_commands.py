"""Read-only commands never create or change a file.

`orchestrate status|list|events`, `breakers list|events`, `keys list` and `verify` open their
database read-only. On a missing path they say so in one line (exit 5: no database there, as the
README's table has it) and create nothing, not even the directory. On an existing database
(closed by its writers, so without `-wal`/`-shm` files) they leave the file's bytes and mtime
as they were and no `-wal`/`-shm` behind: a WAL database needs those files to be read, so the
read-only connection opens the file `mode=rw` with `PRAGMA query_only` and, as the last
connection, removes them again as it closes (`connect_read_only`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sagalab.cli.main import app
from sagalab.edge.keys import open_key_store
from sagalab.orchestrator.breaker_board import BreakerBoard, BreakerConfig
from sagalab.orchestrator.flowfile import load_flow
from sagalab.orchestrator.runner import start_saga
from sagalab.orchestrator.stores import open_store

ORDER = {"order_id": "o-1", "customer_id": "c-1", "sku": "A", "quantity": 1, "amount": 120}
SAGA = "{saga}"  # filled in with the id of the saga the database holds

SAGA_READS = [
    pytest.param(["orchestrate", "status", SAGA, "--json"], id="status"),
    pytest.param(["orchestrate", "list", "--json"], id="list"),
    pytest.param(["orchestrate", "events", SAGA, "--json"], id="events"),
    pytest.param(["breakers", "list", "--json"], id="breakers-list"),
    pytest.param(["breakers", "events", "--json"], id="breakers-events"),
]


def _invoke(args: list[str]) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, args)
    return result.exit_code, result.stdout, result.stderr


def _files(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file in `folder`: its bytes and mtime (ns)."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def saga_db(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A saga database with one queued saga and one breaker row, every writer closed."""
    db = tmp_path_factory.mktemp("readonly") / "sagas.db"
    store = open_store(db)
    record, _ = start_saga(store, load_flow("checkout"), ORDER, queue=True)
    store.close()
    board = BreakerBoard(db, {"payments": BreakerConfig(fail_max=1)})
    board.get("payments").record_failure(100.0)  # opens it: a transition to list
    board.close()
    return db, record.id


#: `verify` reads services too (tests/test_verify.py shows it leaves the database as it was).
MISSING_DB_READS = [*SAGA_READS, pytest.param(["verify", SAGA, "--json"], id="verify")]


@pytest.mark.parametrize("args", MISSING_DB_READS)
def test_a_read_on_a_missing_database_creates_nothing(args: list[str], tmp_path: Path) -> None:
    db = tmp_path / "not" / "there.db"
    code, _, err = _invoke([a.replace(SAGA, "0123") for a in args] + ["--db", str(db)])
    assert code == 5, err
    assert "no saga database" in err and len(err.strip().splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", SAGA_READS)
def test_a_read_leaves_the_database_as_it_was(args: list[str], saga_db: tuple[Path, str]) -> None:
    db, saga_id = saga_db
    before = _files(db.parent)
    assert list(before) == ["sagas.db"]  # closed by its writers: no -wal, no -shm
    code, out, err = _invoke([a.replace(SAGA, saga_id) for a in args] + ["--db", str(db)])
    assert code == 0, err
    assert json.loads(out)  # it did read something
    assert _files(db.parent) == before


def test_keys_list_on_a_missing_key_database_creates_nothing(tmp_path: Path) -> None:
    keys_db = tmp_path / "not" / "keys.db"
    code, _, err = _invoke(["keys", "list", "--keys-db", str(keys_db)])
    assert code == 5, err
    assert "no key database" in err
    assert list(tmp_path.iterdir()) == []


def test_keys_list_leaves_the_key_database_as_it_was(tmp_path: Path) -> None:
    keys_db = tmp_path / "keys.db"
    store = open_key_store(keys_db, create=True)
    store.create("ci")
    store.close()
    before = _files(tmp_path)
    assert list(before) == ["keys.db"]
    code, out, err = _invoke(["keys", "list", "--json", "--keys-db", str(keys_db)])
    assert code == 0, err
    assert [k["name"] for k in json.loads(out)] == ["ci"]
    assert _files(tmp_path) == before


def test_a_read_beside_a_live_writer_leaves_its_files_alone(saga_db: tuple[Path, str]) -> None:
    """With a writer's `-wal`/`-shm` there, the read is SQLite's `mode=ro`: it creates and
    removes nothing, and its reads see what the writer committed."""
    db, saga_id = saga_db
    writer = open_store(db)
    try:
        writer.requeue(saga_id, 1.0)  # the writer's connection keeps -wal and -shm open
        names = sorted(os.listdir(db.parent))
        assert names == ["sagas.db", "sagas.db-shm", "sagas.db-wal"]
        code, out, err = _invoke(["orchestrate", "list", "--json", "--db", str(db)])
        assert code == 0, err
        assert [s["id"] for s in json.loads(out)] == [saga_id]
        assert sorted(os.listdir(db.parent)) == names
    finally:
        writer.close()
    assert sorted(os.listdir(db.parent)) == ["sagas.db"]


def test_a_read_on_files_a_killed_writer_left_changes_nothing_and_sees_its_writes(
    tmp_path: Path,
) -> None:
    """A writer SIGKILLed (here `os._exit`) leaves `-wal`/`-shm` holding committed work. A
    read does not remove them: that takes a checkpoint, a write into the database file, and
    a read never writes (a `db copy` source, a snapshot, another user's file); the next
    writer's last close, or `stack down`, removes them. Pins that decision."""
    db = tmp_path / "sagas.db"
    open_store(db).close()
    code = (
        "import os, sys\n"
        "from sagalab.orchestrator.flowfile import load_flow\n"
        "from sagalab.orchestrator.runner import start_saga\n"
        "from sagalab.orchestrator.stores import open_store\n"
        "record, _ = start_saga(open_store(sys.argv[1]), load_flow('checkout'), "
        f"{ORDER!r}, queue=True)\n"
        "print(record.id, flush=True); os._exit(0)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(db)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    saga_id = done.stdout.strip()
    assert sorted(os.listdir(tmp_path)) == ["sagas.db", "sagas.db-shm", "sagas.db-wal"]
    before = (db.read_bytes(), db.stat().st_mtime_ns, Path(f"{db}-wal").read_bytes())
    got, out, err = _invoke(["orchestrate", "list", "--json", "--db", str(db)])
    assert got == 0, err
    assert [s["id"] for s in json.loads(out)] == [saga_id]  # the committed work is read
    after = (db.read_bytes(), db.stat().st_mtime_ns, Path(f"{db}-wal").read_bytes())
    assert after == before
    assert sorted(os.listdir(tmp_path)) == ["sagas.db", "sagas.db-shm", "sagas.db-wal"]

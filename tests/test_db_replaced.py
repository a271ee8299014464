"""A database file deleted or replaced while something had it open (issue 8, item 2).

`-wal` and `-shm` files stay behind when `sagas.db` is moved or deleted under a running
process: the next process to create the database at that path must not read them as its
own (SQLite would apply the old journal to the new file: "disk I/O error", "malformed").
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from workerlab import enqueue, order

from orchestrator.sqlite_store import SQLiteStore

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

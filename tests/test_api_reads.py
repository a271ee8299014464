"""The API's reads: `GET /v1/sagas/{id}` (one statement, `SagaStore.page`, on the read-only
connection) never waits for the write lock.

A GET whose connection took a write transaction on first use (a migration check, a pragma
that writes) would wait out SQLite's busy timeout behind a writer, and the client's timeout
here would fail the test. (A plain read on a write connection would pass it too: that the
reads go to the read-only connection is api.py's `readers`, not observable from outside.)
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from apilab import admin_api, order_json


def test_get_a_saga_answers_while_a_writer_holds_the_write_lock(tmp_path: Path) -> None:
    db = tmp_path / "sagas.db"
    with admin_api(db, timeout=5.0) as api:
        body = {"flow": "checkout", "input": json.loads(order_json("o-1"))}
        # The 5 s bound is for the GETs under the lock; the first POST (the API's first
        # request) may take longer on a busy machine (it timed out once at load 14).
        created = api.post("/v1/sagas", json=body, timeout=60)
        assert created.status_code == 202, created.text
        saga_id = created.json()["id"]
        writer = sqlite3.connect(db, isolation_level=None, timeout=0)
        try:
            writer.execute("BEGIN IMMEDIATE")  # the write lock, held through the GETs
            # Several GETs: the API's threads each open their read connection on first use.
            answers = [api.get(f"/v1/sagas/{saga_id}") for _ in range(6)]
        finally:
            writer.execute("ROLLBACK")
            writer.close()
    assert {a.status_code for a in answers} == {200}
    shown = answers[0].json()
    assert shown["id"] == saga_id and shown["status"] == "pending" and shown["forks"] == []
    assert len(shown["steps"]) == 4 and {s["status"] for s in shown["steps"]} == {"pending"}

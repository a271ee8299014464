"""One damaged database row (tampered with, or left by other code) breaks nothing else.

Reads show the row marked as damaged and never crash; a breaker row in an unknown state is
treated as closed (and logged once), never a reason to park every saga calling that service.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from apilab import admin_api
from workerlab import enqueue, order, query

from sagalab.fakeservices import run_in_thread
from sagalab.orchestrator.breaker_board import BreakerBoard, breaker_rows


def sagalab(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sagalab.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )


def tamper(db: Path, sql: str, *args: object) -> None:
    conn = sqlite3.connect(db)
    with conn:
        conn.execute(sql, args)
    conn.close()


def test_a_saga_whose_input_is_not_json_is_listed_as_damaged(tmp_path: Path) -> None:
    db = tmp_path / "sagas.db"
    good, bad = enqueue(db, [order(1), order(2)])
    tamper(db, "UPDATE sagas SET input = '{not json' WHERE id = ?", bad)
    listed = sagalab("orchestrate", "list", "--db", str(db), "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {r["id"]: r for r in json.loads(listed.stdout)}
    assert set(rows) == {good, bad}
    assert "not JSON" in rows[bad]["damaged"] and "damaged" not in rows[good]
    table = sagalab("orchestrate", "list", "--db", str(db))
    assert table.returncode == 0 and "Traceback" not in table.stderr, table.stderr
    shown = sagalab("orchestrate", "status", bad, "--db", str(db))
    assert shown.returncode == 5, shown.stderr
    lines = shown.stderr.strip().splitlines()
    assert len(lines) == 1 and "not JSON" in lines[0], lines


def test_a_saga_whose_status_is_not_one_sagalab_writes_is_listed_as_damaged(
    tmp_path: Path,
) -> None:
    db = tmp_path / "sagas.db"
    good, bad = enqueue(db, [order(1), order(2)])
    tamper(db, "UPDATE sagas SET status = 'bogus' WHERE id = ?", bad)
    listed = sagalab("orchestrate", "list", "--db", str(db), "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {r["id"]: r for r in json.loads(listed.stdout)}
    assert set(rows) == {good, bad}
    assert "'bogus' is not a saga status" in rows[bad]["damaged"]
    assert rows[bad]["status"] == "failed" and "damaged" not in rows[good]
    for command in ("status", "rollback"):  # (`events` shows the journal, which is intact)
        shown = sagalab("orchestrate", command, bad, "--db", str(db))
        assert shown.returncode == 5, (command, shown.stderr)
        lines = shown.stderr.strip().splitlines()
        assert len(lines) == 1 and "not a saga status" in lines[0], (command, lines)


@pytest.mark.parametrize(
    ("column", "value"),
    [("state", "bogus"), ("opened_time", 1e308), ("opened_time", -1e308)],
    ids=["unknown-state", "opened-far-future", "opened-far-past"],
)
def test_a_damaged_breaker_row_reads_as_closed_and_lists_as_damaged(
    tmp_path: Path, column: str, value: object
) -> None:
    db = tmp_path / "sagas.db"
    enqueue(db, [order(1)])
    board = BreakerBoard(db)
    try:
        board.get("payments")  # makes its row
        tamper(db, "UPDATE breakers SET state = 'open', opened_time = ? WHERE name = ?",
               time.time(), "payments")  # fmt: skip
        tamper(db, f"UPDATE breakers SET {column} = ? WHERE name = ?", value, "payments")
        breaker = board.get("payments")
        assert breaker.allow(time.time()), "a damaged row never keeps a service's calls out"
        assert breaker.state == "closed"
    finally:
        board.close()
    assert breaker_rows(db)[0]["damaged"]
    listed = sagalab("breakers", "list", "--db", str(db))
    assert listed.returncode == 0 and "Traceback" not in listed.stderr, listed.stderr
    assert "damaged" in listed.stdout
    as_json = sagalab("breakers", "list", "--db", str(db), "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)[0]["damaged"]


def test_a_worker_parks_only_the_damaged_saga_and_ignores_a_damaged_breaker(
    tmp_path: Path,
) -> None:
    db = tmp_path / "sagas.db"
    good, bad = enqueue(db, [order(1), order(2)])
    tamper(db, "UPDATE sagas SET input = '[1, 2' WHERE id = ?", bad)
    board = BreakerBoard(db)
    board.get("payments")
    board.close()
    tamper(db, "UPDATE breakers SET state = 'bogus' WHERE name = 'payments'")
    with run_in_thread() as services:
        worker = sagalab("worker", "--db", str(db), "--exit-when-idle", "0.5", env=services.env)
    assert worker.returncode == 0, worker.stderr
    rows = dict(query(db, "SELECT id, status FROM sagas"))
    assert rows[good] == "completed", worker.stderr
    ((reason, run_after),) = query(db, "SELECT reason, run_after FROM sagas WHERE id = ?", (bad,))
    assert "not JSON" in reason and run_after is None  # parked for an operator, off the queue
    assert worker.stderr.count("breaker payments: damaged row") <= 1


@pytest.mark.parametrize(
    ("column", "value"),
    [("type", "no_such_event"), ("phase", "sideways"), ("failure", "{not json")],
)
def test_a_damaged_journal_row_is_named_not_a_traceback(
    tmp_path: Path, column: str, value: str
) -> None:
    db = tmp_path / "sagas.db"
    (saga,) = enqueue(db, [order(1)])
    tamper(db, f"UPDATE events SET {column} = ? WHERE saga_id = ?", value, saga)
    for command in ("events", "status"):
        shown = sagalab("orchestrate", command, saga, "--db", str(db))
        assert shown.returncode == 5, shown.stderr
        lines = shown.stderr.strip().splitlines()
        assert len(lines) == 1 and "journal entry" in lines[0] and saga in lines[0], lines
    listed = sagalab("orchestrate", "list", "--db", str(db), "--json")
    assert listed.returncode == 0 and "Traceback" not in listed.stderr, listed.stderr


def test_the_api_lists_a_saga_with_a_damaged_status_and_answers_4xx_for_it(
    tmp_path: Path,
) -> None:
    db = tmp_path / "sagas.db"
    good, bad = enqueue(db, [order(1), order(2)])
    tamper(db, "UPDATE sagas SET status = 'bogus' WHERE id = ?", bad)
    with admin_api(db) as client:
        listed = client.get("/v1/sagas")
        assert listed.status_code == 200, listed.text
        items = {i["id"]: i for i in listed.json()["items"]}
        assert set(items) == {good, bad} and "not a saga status" in items[bad]["damaged"]
        assert client.get(f"/v1/sagas/{good}").status_code == 200
        shown = client.get(f"/v1/sagas/{bad}")
        assert shown.status_code == 422 and "not a saga status" in shown.text, shown.text
        refused = client.post(f"/v1/sagas/{bad}/rollback", json={})
        assert refused.status_code == 422 and "not a saga status" in refused.text, refused.text

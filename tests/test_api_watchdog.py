"""The API process watches its database file as the workers do (issue 8, items 2 and 6).

A real `python -m sagalab.edge.apps api` process on a real SQLite file: while the file is the one it
opened, `/readyz` says ready; bytes that are not a saga database make it "not ready"; once
the file is deleted or replaced the process exits 5 with one line, so the stack's
supervisor starts it again on the file that is there now.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from apilab import admin_api
from workerlab import wait_for

from sagalab.edge.server import bind
from sagalab.orchestrator.sqlite_store import SQLiteStore


class Api:
    def __init__(self, db: Path, log: Path) -> None:
        sock = bind("127.0.0.1", 0, inheritable=True)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.log = log
        with log.open("wb") as err:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "sagalab.edge.apps",
                    "api",
                    "--db",
                    str(db),
                    "--fd",
                    str(sock.fileno()),
                ],  # fmt: skip
                stderr=err,
                stdout=subprocess.DEVNULL,
                pass_fds=(sock.fileno(),),
            )
        sock.close()

    def ready(self) -> int:
        try:
            return httpx.get(self.url + "/readyz", timeout=5).status_code
        except httpx.TransportError:
            return 0

    def stderr(self) -> str:
        return self.log.read_text()


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    db = tmp_path / "sagas.db"
    SQLiteStore(db).close()
    running = Api(db, tmp_path / "api.log")
    try:
        wait_for(lambda: running.ready() == 200, 20, "the API to be ready")
        yield running
    finally:
        if running.proc.poll() is None:
            running.proc.kill()
        running.proc.wait(timeout=10)


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_the_api_exits_5_with_one_line_when_its_database_file_goes(
    api: Api, tmp_path: Path, how: str
) -> None:
    db = tmp_path / "sagas.db"
    if how == "deleted":
        db.rename(tmp_path / "elsewhere.db")
    else:
        other = tmp_path / "other.db"
        SQLiteStore(other).close()
        other.replace(db)
    code = api.proc.wait(timeout=15)
    assert code == 5, api.stderr()
    lines = api.stderr().strip().splitlines()
    assert f"database file {db} was {'deleted' if how == 'deleted' else 'replaced'}" in lines[-1]
    assert [line for line in lines if line.startswith("error:")] == [lines[-1]], lines
    assert "Traceback" not in api.stderr()


def test_readyz_is_not_ready_when_the_file_holds_junk(api: Api, tmp_path: Path) -> None:
    db = tmp_path / "sagas.db"
    with db.open("r+b") as f:  # the same file (inode), overwritten in place
        f.write(os.urandom(4096))
    status = wait_for(lambda: api.ready() != 200 and api.ready(), 10, "readyz to say not ready")
    assert status == 503


def test_an_empty_file_is_a_new_database_to_the_api_as_to_the_worker(tmp_path: Path) -> None:
    """What `sqlite3` leaves after a failed create: every command that creates takes it."""
    db = tmp_path / "sagas.db"
    db.touch()
    worker = subprocess.run(
        [
            sys.executable,
            "-m",
            "sagalab.cli.main",
            "worker",
            "--db",
            str(db),
            "--exit-when-idle",
            "0.1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert worker.returncode == 0, worker.stderr
    other = tmp_path / "other.db"
    other.touch()
    running = Api(other, tmp_path / "api.log")
    try:
        assert wait_for(lambda: running.ready(), 20, "the API to answer") == 200
    finally:
        running.proc.kill()
        running.proc.wait(timeout=10)
    empty = tmp_path / "empty.db"
    empty.touch()
    listed = subprocess.run(
        [sys.executable, "-m", "sagalab.cli.main", "orchestrate", "list", "--db", str(empty)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert listed.returncode == 5
    lines = listed.stderr.strip().splitlines()
    assert len(lines) == 1 and "the file is empty" in lines[0], lines
    assert empty.stat().st_size == 0, "a read creates nothing"


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_requests_answer_503_database_gone_once_the_file_goes(tmp_path: Path, how: str) -> None:
    """In process (no exit): what a request sees between the file going and the exit."""
    db = tmp_path / "sagas.db"
    order = {"order_id": "o", "customer_id": "c", "sku": "A", "quantity": 1, "amount": 1}
    with admin_api(db) as api:
        assert api.post("/v1/sagas", json={"flow": "checkout", "input": order}).status_code == 202
        if how == "deleted":
            db.unlink()
        else:
            other = tmp_path / "other.db"
            SQLiteStore(other).close()
            other.replace(db)
        for r in (
            api.post("/v1/sagas", json={"flow": "checkout", "input": order}),
            api.get("/v1/sagas"),
            api.get("/readyz"),
        ):
            assert r.status_code == 503, r.text
            assert f"database file {db} was" in r.json()["detail"], r.json()

"""`sagalab db up|status|down`: the lab's own PostgreSQL server (issue 10, item 4).

Real clusters from the machine's server binaries, each in a directory of its own that the
test removes (with the server stopped) whatever happens.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner
from workerlab import order, sagalab

from sagalab.cli.main import app
from sagalab.fakeservices import RunningServices
from sagalab.orchestrator import pg_cluster
from sagalab.orchestrator.pg_local import local_server


def _db(*args: str) -> tuple[int, Any, str]:
    result = CliRunner().invoke(app, ["db", *args, "--json"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, json.loads(result.stdout) if result.stdout else None, result.stderr


@pytest.fixture
def lab_dir() -> Iterator[Path]:
    """Where `db up` puts its server; stopped and removed after the test."""
    parent = Path(tempfile.mkdtemp(prefix="sagalab-dbup-"))
    parent.chmod(0o711)  # the server's user (as root: `postgres`) may pass through
    directory = parent / "pg"
    try:
        yield directory
    finally:
        found = local_server(directory)
        if found.running:
            pg_cluster.PgCluster(directory, port=found.port).stop()
        shutil.rmtree(parent, ignore_errors=True)


def test_up_status_a_saga_on_it_and_down(lab_dir: Path, services: RunningServices) -> None:
    code, up, err = _db("up", "--dir", str(lab_dir))
    assert code == 0, err
    assert up["running"] and up["started"]
    url = up["url"]
    assert url.startswith("postgresql://") and "@127.0.0.1:" in url
    code, again, _ = _db("up", "--dir", str(lab_dir))  # idempotent: the same server
    assert code == 0 and not again["started"] and again["url"] == url
    code, status, _ = _db("status", "--dir", str(lab_dir))
    assert code == 0 and status["running"] and status["url"] == url

    done = sagalab(
        "orchestrate", "run", "checkout", "-i", json.dumps(order(1)), "--wait", "--json",
        "--db", url, env=services.env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "completed"

    code, down, err = _db("down", "--dir", str(lab_dir))
    assert code == 0, err
    assert down["stopped"] and not down["running"]
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2).close()
    code, status, _ = _db("status", "--dir", str(lab_dir))
    assert code == 0 and not status["running"]
    code, down, _ = _db("down", "--dir", str(lab_dir))
    assert code == 0 and not down["stopped"]

    # Up again: the same port, and the saga is still there.
    code, up, err = _db("up", "--dir", str(lab_dir))
    assert code == 0 and up["url"] == url, err
    listed = sagalab("orchestrate", "list", "--json", "--db", url)
    assert [s["status"] for s in json.loads(listed.stdout)] == ["completed"]


def test_without_server_binaries_up_says_how_to_install_them(
    lab_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pg_cluster.shutil, "which", lambda _name: None)
    monkeypatch.setattr(pg_cluster.glob, "glob", lambda _pattern: [])
    result = CliRunner().invoke(app, ["db", "up", "--dir", str(lab_dir)])
    assert result.exit_code == 5
    assert "apt-get install postgresql" in result.stderr and "Traceback" not in result.stderr
    assert not (lab_dir / "data").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs the server as another user")
def test_as_root_a_directory_the_postgres_user_cannot_reach_is_refused() -> None:
    private = Path(tempfile.mkdtemp(prefix="sagalab-private-"))  # 0700, root's
    try:
        result = CliRunner().invoke(app, ["db", "up", "--dir", str(private / "pg")])
        assert result.exit_code == 5 and "cannot reach" in result.stderr
        assert not (private / "pg" / "data").exists()
    finally:
        shutil.rmtree(private)

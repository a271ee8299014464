"""`sagalab stack up --postgres` on real processes and a real PostgreSQL server (issue 10).

The stack starts its own throwaway cluster in its directory, the API and the workers use it,
a checkout through the edge completes, the CLI finds the sagas by `--db URL` alone (and
`verify` by `--stack`), `status` shows the server, and `down` (or SIGTERM to the supervisor)
leaves no server running. `--postgres` with `--db` is bad input (2); no server binaries is a
configuration error saying how to install them (5). A `--db` password never shows.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from apilab import cli
from pglab import drop_database, new_database
from workerlab import enqueue, order, sagalab, wait_for

from sagalab.edge.keys import open_key_store
from sagalab.orchestrator import pg_cluster
from sagalab.orchestrator.pg_cluster import PgCluster, find_bindir
from sagalab.stack.processes import Component, alive, load_state

pytestmark = pytest.mark.slow

ORDER = {"order_id": "o-pg", "customer_id": "c-1", "sku": "sku-1", "quantity": 1, "amount": 10}


@pytest.fixture
def stack_dir() -> Iterator[Path]:
    """A stack directory the server's user can reach (not under pytest's private tmp);
    whatever a test leaves running in it is stopped, then it is removed."""
    parent = Path(tempfile.mkdtemp(prefix="sagalab-pgstack-"))
    parent.chmod(0o711)
    directory = parent / "stack"
    try:
        yield directory
    finally:
        if (directory / "stack.json").exists():
            sagalab("stack", "down", "--dir", str(directory))
        shutil.rmtree(parent, ignore_errors=True)


def _server_stopped(database: Component, data: Path) -> None:
    """The stack's server is gone: its postmaster, its pid file, and pg_ctl says so."""
    wait_for(lambda: not alive(database), 15, "the postmaster to exit")
    assert not (data / "postmaster.pid").exists()
    code = os.system(  # pg_ctl status: 3 when no server runs on the data directory
        f"runuser -u postgres -- {find_bindir() / 'pg_ctl'} status -D {data} >/dev/null"
        if os.geteuid() == 0
        else f"{find_bindir() / 'pg_ctl'} status -D {data} >/dev/null"
    )
    assert os.waitstatus_to_exitcode(code) == 3


def test_a_stack_on_its_own_postgres_runs_a_checkout_and_down_stops_the_server(
    stack_dir: Path,
) -> None:
    up = sagalab(
        "stack", "up", "--postgres", "--detach", "--dir", str(stack_dir), "--port", "0",
        "--gateways", "1", "--workers", "1", "--json",
    )  # fmt: skip
    assert up.returncode == 0, up.stderr
    url = json.loads(up.stdout)["db"]
    assert url.startswith("postgresql://") and "127.0.0.1" in url
    state = load_state(stack_dir)
    assert state.db == url and state.database is not None and alive(state.database)

    with httpx.Client(
        base_url=state.edge_url, headers={"Authorization": f"Bearer {state.api_key}"}
    ) as client:
        posted = client.post("/v1/sagas", json={"flow": "checkout", "input": ORDER})
        assert posted.status_code == 202, posted.text
        location = posted.headers["location"]
        done = wait_for(
            lambda: client.get(location).json()["status"] in ("completed", "rolled_back"),
            30,
            "the checkout to end",
        )
        assert done and client.get(location).json()["status"] == "completed"
    saga_id = posted.json()["id"]

    # The CLI needs nothing but the URL; verify finds the database through the stack.
    code, out, err = cli("orchestrate", "status", saga_id, "--json", "--db", url)
    assert code == 0 and json.loads(out)["status"] == "completed", err
    code, out, err = cli("verify", "--stack", str(stack_dir))
    assert code == 0, out + err

    code, out, err = cli("stack", "status", "--dir", str(stack_dir), "--json")
    assert code == 0, out + err
    shown = json.loads(out)
    assert shown["db"] == url
    rows = {row["name"]: row for row in shown["components"]}
    assert rows["postgres"]["status"] == "up" and rows["postgres"]["kind"] == "database"
    assert rows["postgres"]["pid"] == state.database.pid
    # The database is not a component to kill or restart on its own (4: refused).
    for verb in ("kill", "restart"):
        code, _, err = cli("stack", verb, "postgres", "--dir", str(stack_dir))
        assert code == 4 and "stack down" in err
    assert alive(state.database)

    code, _, err = cli("stack", "down", "--dir", str(stack_dir))
    assert code == 0 and "postgres" in err, err
    _server_stopped(state.database, stack_dir / "postgres" / "data")
    assert not any(alive(c) for c in state.components)


def test_sigterm_to_the_supervisor_stops_the_server_too(
    stack_dir: Path, pg_cluster: PgCluster
) -> None:
    # --read-db names a database the API reads from: here one on the session's cluster.
    read_url = new_database(pg_cluster)
    try:
        _stack_reading_elsewhere_stops_on_sigterm(stack_dir, read_url)
    finally:
        drop_database(pg_cluster, read_url)  # not the stack's: it is left alone by the stack


def _stack_reading_elsewhere_stops_on_sigterm(stack_dir: Path, plain_url: str) -> None:
    (queued,) = enqueue(plain_url, [order(1)])  # a saga database holding one saga
    # A password (the cluster trusts any): what `up` and `status` print masks it.
    read_url = plain_url.replace("://sagalab@", "://sagalab:s3cret-pw@")
    up = sagalab(
        "stack", "up", "--postgres", "--detach", "--dir", str(stack_dir), "--port", "0",
        "--gateways", "1", "--workers", "0", "--no-services", "--read-db", read_url, "--json",
    )  # fmt: skip
    assert up.returncode == 0, up.stderr
    masked = plain_url.replace("://sagalab@", "://sagalab:***@")
    assert json.loads(up.stdout)["read_db"] == masked
    code, out, err = cli("stack", "status", "--dir", str(stack_dir), "--json")
    assert code == 0 and json.loads(out)["read_db"] == masked, out + err
    code, out, err = cli("stack", "status", "--dir", str(stack_dir))
    assert "s3cret-pw" not in up.stdout + up.stderr + out + err
    state = load_state(stack_dir)
    assert state.read_db == read_url
    api = state.component("api")
    assert api.command[api.command.index("--read-db") + 1] == read_url
    # The API's list comes from the read database: the saga queued there, not on the stack's.
    keys = open_key_store(state.keys_db)
    try:
        _, key = keys.create("reader", admin=True, replace=True)
    finally:
        keys.close()
    with httpx.Client(base_url=state.edge_url, headers={"Authorization": f"Bearer {key}"}) as c:
        listed = wait_for(lambda: c.get("/v1/sagas").json().get("items"), 10, "the list")
    assert [s["id"] for s in listed] == [queued]
    assert state.supervisor is not None and state.database is not None
    os.kill(state.supervisor.pid, signal.SIGTERM)
    wait_for(lambda: not alive(state.supervisor), 20, "the supervisor to stop")
    _server_stopped(state.database, stack_dir / "postgres" / "data")
    assert not (stack_dir / "stack.json").exists()


def test_down_stops_the_server_of_a_stack_whose_supervisor_was_killed(stack_dir: Path) -> None:
    up = sagalab(
        "stack", "up", "--postgres", "--detach", "--dir", str(stack_dir), "--port", "0",
        "--gateways", "1", "--workers", "0", "--no-services",
    )  # fmt: skip
    assert up.returncode == 0, up.stderr
    state = load_state(stack_dir)
    assert state.supervisor is not None and state.database is not None
    os.kill(state.supervisor.pid, signal.SIGKILL)  # nothing left to stop the server
    wait_for(lambda: not alive(state.supervisor), 10, "the supervisor to die")
    assert alive(state.database)
    code, _, err = cli("stack", "down", "--dir", str(stack_dir))
    assert code == 0 and "postgres" in err, err
    _server_stopped(state.database, stack_dir / "postgres" / "data")


def test_status_exits_1_when_the_stacks_server_is_down(stack_dir: Path) -> None:
    up = sagalab(
        "stack", "up", "--postgres", "--detach", "--dir", str(stack_dir), "--port", "0",
        "--gateways", "1", "--workers", "0", "--no-services",
    )  # fmt: skip
    assert up.returncode == 0, up.stderr
    state = load_state(stack_dir)
    assert state.database is not None
    os.kill(state.database.pid, signal.SIGQUIT)  # the server's immediate shutdown: a crash
    wait_for(lambda: not alive(state.database), 10, "the postmaster to exit")
    code, out, err = cli("stack", "status", "--dir", str(stack_dir), "--json")
    assert code == 1, out + err
    rows = {row["name"]: row for row in json.loads(out)["components"]}
    assert rows["postgres"]["status"] == "down" and rows["edge"]["status"] == "up"
    code, _, err = cli("stack", "down", "--dir", str(stack_dir))
    assert code == 0, err
    assert not any(alive(c) for c in state.components)


def test_postgres_with_db_is_bad_input(tmp_path: Path) -> None:
    db, directory = str(tmp_path / "x.db"), str(tmp_path / "s")
    code, _, err = cli("stack", "up", "--postgres", "--db", db, "--dir", directory)
    assert code == 2 and "not both" in err
    assert not (tmp_path / "s").exists() and not (tmp_path / "x.db").exists()


def test_postgres_without_server_binaries_says_how_to_install_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A machine without the server: no pg_config, initdb or /usr/lib/postgresql on it.
    monkeypatch.setattr(pg_cluster.shutil, "which", lambda _name: None)
    monkeypatch.setattr(pg_cluster.glob, "glob", lambda _pattern: [])
    started = time.monotonic()
    code, _, err = cli("stack", "up", "--postgres", "--dir", str(tmp_path / "s"))
    assert code == 5 and "apt-get install postgresql" in err, err
    assert time.monotonic() - started < 10
    assert not (tmp_path / "s" / "stack.json").exists()


def test_a_db_password_never_shows_in_a_refusal(tmp_path: Path) -> None:
    with_password = "postgresql://lab:s3cret-pw@127.0.0.1:1/sagas"
    for args in (["--db", with_password], ["--read-db", with_password]):
        code, out, err = cli("stack", "up", *args, "--dir", str(tmp_path / "s"))
        assert code == 5, err
        assert "s3cret-pw" not in out + err and "***" in err


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs the server as another user")
def test_a_directory_the_server_user_cannot_enter_is_refused_before_anything_starts(
    tmp_path: Path,
) -> None:
    # pytest's tmp dirs are private to root (0700): the postgres user cannot enter them.
    code, _, err = cli("stack", "up", "--postgres", "--dir", str(tmp_path / "s"))
    assert code == 5 and "under /tmp" in err, err
    assert not (tmp_path / "s").exists()

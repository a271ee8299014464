"""`sagalab stack` on real processes: up (detached), status, a payments outage, kill, down.

The stack supervises itself: a component killed with SIGKILL is started again and `status`
shows the restart; `stack restart NAME` restarts one; `down` stops everything, even while a
restart is waiting out its backoff. `up` checks every option before it starts anything.
"""

from __future__ import annotations

import json
import os
import re
import select
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from workerlab import processes_mentioning, sagalab, wait_for

from sagalab.edge.server import bind
from sagalab.orchestrator.limits import MAX_GATEWAYS, MAX_STACK_WORKERS
from sagalab.orchestrator.sqlite_store import SQLiteStore
from sagalab.stack.processes import StackState, alive, load_state

pytestmark = pytest.mark.slow

HAS_WORKER = (Path(__file__).parent.parent / "orchestrator" / "worker.py").exists()
ORDER = {"order_id": "o-1", "customer_id": "c-1", "sku": "sku-1", "quantity": 1, "amount": 10}
ORDER_API = {**ORDER, "order_id": "o-api"}


def rows_of(directory: str) -> dict[str, dict[str, object]]:
    """`stack status --json`, by component name."""
    r = sagalab("stack", "status", "--dir", directory, "--json")
    return {row["name"]: row for row in json.loads(r.stdout)["components"]}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackState]:
    directory = tmp_path_factory.mktemp("stack")
    workers = "1" if HAS_WORKER else "0"
    up = sagalab(
        "stack", "up", "--detach", "--dir", str(directory), "--port", "0", "--workers", workers,
        "--trace-file", str(directory / "spans.jsonl"), "--json",
    )  # fmt: skip
    assert up.returncode == 0, up.stderr
    assert json.loads(up.stdout)["api_key"].startswith("sgl_")
    state = load_state(directory)
    try:
        yield state
    finally:
        down = sagalab("stack", "down", "--dir", str(directory))
        assert down.returncode == 0, down.stderr
        assert not any(alive(c) for c in state.components)
        assert not (directory / "stack.json").exists()
        if state.ui_url:  # the console stopped with the rest: its port refuses connections
            with pytest.raises(httpx.ConnectError):
                httpx.get(state.ui_url, timeout=2)


def follow(c: httpx.Client, location: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    status = "?"
    while time.monotonic() < deadline:
        status = c.get(location).json()["status"]
        if status in ("completed", "rolled_back", "failed"):
            break
        time.sleep(0.1)
    return status


def test_status_from_another_terminal(stack: StackState) -> None:
    r = sagalab("stack", "status", "--dir", stack.directory, "--json")
    assert r.returncode == 0, r.stdout
    rows = json.loads(r.stdout)["components"]
    assert {row["name"] for row in rows} >= {
        "edge",
        "gateway-1",
        "gateway-2",
        "api",
        "services",
        "ui",
    }
    assert all(row["status"] == "up" for row in rows)
    assert json.loads(r.stdout)["supervisor"]["status"] == "up"


def test_keys_cli_creates_a_key_the_edge_accepts_and_revokes_it(stack: StackState) -> None:
    created = sagalab("keys", "create", "cli-test", "--keys-db", stack.keys_db, "--json")
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)["key"]
    r = httpx.get(stack.edge_url + "/v1/sagas", headers={"X-API-Key": key})
    assert r.status_code == 200
    listed = json.loads(sagalab("keys", "list", "--keys-db", stack.keys_db, "--json").stdout)
    assert "cli-test" in {k["name"] for k in listed}
    assert all("digest" not in k and "key" not in k for k in listed)
    revoked = sagalab("keys", "revoke", key.split("_")[1], "--keys-db", stack.keys_db, "--json")
    assert json.loads(revoked.stdout)["active"] is False


def test_the_api_port_needs_a_key_and_the_gateway_secret_stays_off_command_lines(
    stack: StackState,
) -> None:
    secret_file = Path(stack.directory) / "gateway.secret"
    assert secret_file.stat().st_mode & 0o777 == 0o600
    secret = secret_file.read_text().strip()
    assert len(secret) >= 32
    for c in stack.components:  # what `ps` shows
        assert secret not in " ".join(c.command)
        cmdline = Path(f"/proc/{c.pid}/cmdline").read_bytes().decode(errors="replace")
        assert secret not in cmdline
    api_url = stack.component("api").url
    assert api_url
    assert httpx.get(api_url + "/v1/sagas").status_code == 401
    forged = {"x-sagalab-tenant": "stack", "x-sagalab-admin": "true"}
    assert httpx.get(api_url + "/v1/sagas", headers=forged).status_code == 401
    # A stack's API takes no key presented to it directly: every client goes through the
    # edge's firewall and the gateways' rate limits.
    direct = httpx.get(api_url + "/v1/sagas", headers={"X-API-Key": stack.api_key})
    assert direct.status_code == 401
    assert "gateways" in direct.json()["detail"]
    # The gateways vouch for the stack key's tenant.
    r = httpx.get(stack.edge_url + "/v1/sagas", headers={"X-API-Key": stack.api_key})
    assert r.status_code == 200


@pytest.mark.skipif(not HAS_WORKER, reason="needs orchestrator/worker.py (issue 3)")
def test_the_gateway_and_api_ports_close_a_header_drip_as_the_edge_does(
    stack: StackState,
) -> None:
    # One byte every 0.5 s: the header timeout (10 s) closes each, with a 408.
    hops = [c for c in stack.components if c.name in ("gateway-1", "api")]
    socks = {}
    for c in hops:
        host, port = str(c.url).removeprefix("http://").split(":")
        socks[c.name] = socket.create_connection((host, int(port)), timeout=5)
    request = b"GET /healthz HTTP/1.1\r\nhost: hop\r\nx-drip: " + b"a" * 1000
    answers: dict[str, tuple[float, bytes]] = {}
    started = time.monotonic()
    try:
        for byte in request:
            open_ = {n: s for n, s in socks.items() if n not in answers}
            if not open_ or time.monotonic() - started > 20:
                break
            for name, sock in open_.items():
                try:
                    sock.sendall(bytes([byte]))
                except OSError:
                    answers[name] = (time.monotonic() - started, b"<reset>")
            ready, _, _ = select.select(list(open_.values()), [], [], 0.5)
            for name, sock in open_.items():
                if sock in ready and name not in answers:
                    try:
                        data = sock.recv(65536)
                    except OSError:
                        data = b"<reset>"
                    answers[name] = (time.monotonic() - started, data)
    finally:
        for sock in socks.values():
            sock.close()
    assert set(answers) == {"gateway-1", "api"}, answers
    for name, (after, data) in answers.items():
        assert after < 15, (name, after)
        assert data.startswith(b"HTTP/1.1 408 "), (name, data)


def test_a_saga_through_the_edge_completes_then_an_outage_rolls_back(stack: StackState) -> None:
    services_url = stack.services_url
    assert services_url
    with httpx.Client(
        base_url=stack.edge_url, headers={"Authorization": f"Bearer {stack.api_key}"}, timeout=5
    ) as c:
        r = c.post("/v1/sagas", json={"flow": "checkout", "input": ORDER})
        assert r.status_code == 202
        assert follow(c, r.headers["location"]) == "completed"
        fault = sagalab(
            "services", "fault", "payments", "--endpoint", "/charges", "--outage", "60",
            "--url", services_url,
        )  # fmt: skip
        assert fault.returncode == 0, fault.stderr
        try:
            r = c.post(
                "/v1/sagas", json={"flow": "checkout", "input": {**ORDER, "order_id": "o-2"}}
            )
            assert follow(c, r.headers["location"], timeout=60) == "rolled_back"
        finally:
            sagalab("services", "fault", "payments", "--clear", "--url", services_url)


@pytest.mark.skipif(not HAS_WORKER, reason="needs orchestrator/worker.py (issue 3)")
def test_the_console_link_shows_a_saga_submitted_through_the_edge(stack: StackState) -> None:
    """`stack up` serves the console (read-only) as its `ui` component: the link `status`
    prints answers, lists a saga sent through the edge, and comes back when killed."""
    status = json.loads(sagalab("stack", "status", "--dir", stack.directory, "--json").stdout)
    link = status["ui_url"]
    assert link == stack.ui_url and link.startswith("http://127.0.0.1:")
    text = sagalab("stack", "status", "--dir", stack.directory, env={"COLUMNS": "200"}).stdout
    assert f"console {link}" in text
    with httpx.Client(
        base_url=stack.edge_url, headers={"Authorization": f"Bearer {stack.api_key}"}, timeout=5
    ) as c:
        order = {**ORDER, "order_id": "o-console"}
        r = c.post("/v1/sagas", json={"flow": "checkout", "input": order})
        assert r.status_code == 202
        saga_id = r.headers["location"].rsplit("/", 1)[1]
        assert follow(c, r.headers["location"]) == "completed"
    listed = httpx.get(link + "api/sagas", params={"input": "order_id=o-console"}).json()
    assert [i["id"] for i in listed["items"]] == [saga_id]
    assert listed["items"][0]["status"] == "completed"
    page = httpx.get(f"{link}sagas/{saga_id}")
    assert page.status_code == 200 and "read-only" in page.text and "class=action" not in page.text
    before = rows_of(stack.directory)["ui"]
    assert sagalab("stack", "kill", "ui", "--dir", stack.directory).returncode == 0
    wait_for(
        lambda: (
            (row := rows_of(stack.directory)["ui"])["status"] == "up"
            and row["pid"] != before["pid"]
        ),
        30,
        "the console to be restarted",
    )
    assert httpx.get(link + "api/sagas").status_code == 200  # the same link


@pytest.mark.parametrize("flag", ["--ui-actions", "--no-ui"])
def test_up_ui_actions_and_no_ui(tmp_path: Path, flag: str) -> None:
    """`--ui-actions` serves the console with its operator buttons; `--no-ui` leaves it out."""
    directory = str(tmp_path / "stack")
    up = sagalab(
        "stack", "up", "--detach", "--dir", directory, "--port", "0", "--workers", "0",
        "--gateways", "1", "--no-services", flag, "--json",
    )  # fmt: skip
    assert up.returncode == 0, up.stderr
    try:
        link = json.loads(up.stdout)["ui_url"]
        names = set(rows_of(directory))
        if flag == "--no-ui":
            assert link is None and "ui" not in names
        else:
            assert "ui" in names
            page = httpx.get(link, timeout=5)
            assert page.status_code == 200 and "actions allowed" in page.text
    finally:
        down = sagalab("stack", "down", "--dir", directory)
    assert down.returncode == 0, down.stderr
    assert processes_mentioning(directory) == []


def test_a_stack_worker_serves_metrics_showing_its_sagas(stack: StackState) -> None:
    rows = rows_of(stack.directory)
    workers = [r for n, r in rows.items() if n.startswith("worker-")]
    if not HAS_WORKER:
        pytest.skip("no worker in this tree")
    assert workers and all(str(r["url"]).endswith("/metrics") for r in workers)
    text = sagalab("stack", "status", "--dir", stack.directory).stdout
    assert str(workers[0]["url"]) in text
    with httpx.Client(
        base_url=stack.edge_url, headers={"Authorization": f"Bearer {stack.api_key}"}, timeout=5
    ) as c:
        r = c.post("/v1/sagas", json={"flow": "checkout", "input": {**ORDER, "order_id": "o-m"}})
        assert r.status_code == 202
        assert follow(c, r.headers["location"]) == "completed"
    line = 'sagalab_sagas_finished_total{flow="checkout",status="completed"}'
    deadline = time.monotonic() + 10
    body = ""
    while time.monotonic() < deadline:
        body = httpx.get(str(workers[0]["url"]), timeout=5).text
        if line in body:
            break
        time.sleep(0.1)
    assert line in body, body[:2000]
    count = float(next(x for x in body.splitlines() if x.startswith(line)).split()[-1])
    assert count >= 1


def test_a_saga_through_the_edge_is_one_trace_from_the_edge_to_every_attempt(
    stack: StackState,
) -> None:
    if not HAS_WORKER:
        pytest.skip("no worker in this tree")
    with httpx.Client(
        base_url=stack.edge_url, headers={"Authorization": f"Bearer {stack.api_key}"}, timeout=5
    ) as c:
        r = c.post("/v1/sagas", json={"flow": "checkout", "input": {**ORDER, "order_id": "o-t"}})
        assert r.status_code == 202
        saga = r.json()["id"]
        assert follow(c, r.headers["location"]) == "completed"
        trace = c.get(f"/v1/sagas/{saga}").json()["trace_id"]
    path = Path(stack.directory) / "spans.jsonl"

    def whole_trace() -> list[dict[str, object]] | None:
        spans = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
        mine = [s for s in spans if s["trace_id"] == trace]
        names = {str(s["name"]).split(" ")[0] for s in mine}
        return mine if {"edge", "gateway", "POST", "saga"} <= names else None

    spans = wait_for(whole_trace, 10, "the edge, gateway, API and worker spans")
    by_id = {s["span_id"]: s for s in spans}
    edge = next(s for s in spans if str(s["name"]).startswith("edge POST"))
    gateway = next(s for s in spans if str(s["name"]).startswith("gateway POST"))
    submit = next(s for s in spans if s["name"] == "POST /v1/sagas")
    run = next(s for s in spans if s["name"] == "saga checkout")
    assert edge["parent_span_id"] is None  # the client sent no traceparent: the edge began it
    assert gateway["parent_span_id"] == edge["span_id"]
    assert submit["parent_span_id"] == gateway["span_id"]
    assert [link["span_id"] for link in submit["links"]] == [run["span_id"]]  # type: ignore[attr-defined]
    attempts = [s for s in spans if s["parent_span_id"] == run["span_id"]]
    assert [a["attributes"]["saga.step"] for a in attempts] == [  # type: ignore[index]
        "reserve_inventory",
        "charge_payment",
        "create_shipment",
        "send_confirmation",
    ]
    services = {s["resource"]["service.name"] for s in by_id.values()}  # type: ignore[index]
    assert services == {"sagalab-edge", "sagalab-gateway", "sagalab-api", "sagalab-worker"}


def test_the_console_links_a_saga_to_its_trace_from_the_edge_to_every_attempt(
    stack: StackState,
) -> None:
    """`stack up --trace-file` hands its file to the console too: the saga page's trace id
    links to the tree the edge, gateway, API and worker spans make."""
    if not HAS_WORKER or not stack.ui_url:
        pytest.skip("no worker or no console in this tree")
    with httpx.Client(
        base_url=stack.edge_url, headers={"Authorization": f"Bearer {stack.api_key}"}, timeout=5
    ) as c:
        r = c.post("/v1/sagas", json={"flow": "checkout", "input": {**ORDER, "order_id": "o-ct"}})
        assert r.status_code == 202
        saga = r.json()["id"]
        assert follow(c, r.headers["location"]) == "completed"
        trace = c.get(f"/v1/sagas/{saga}").json()["trace_id"]
    page = httpx.get(f"{stack.ui_url}sagas/{saga}", timeout=5).text
    assert f'href="/traces/{trace}"' in page
    expected = [
        (0, "edge"),
        (1, "gateway"),
        (2, "POST /v1/sagas"),
        (3, "saga checkout"),
        (4, "action reserve_inventory"),
        (4, "action charge_payment"),
        (4, "action create_shipment"),
        (4, "action send_confirmation"),
    ]

    def tree() -> list[tuple[int, str]] | None:
        answer = httpx.get(f"{stack.ui_url}traces/{trace}", timeout=5)
        rows = [
            (int(d), n if n.startswith(("POST", "saga", "action")) else n.split(" ")[0])
            for d, n in re.findall(
                r'class=span data-depth="(\d+)" data-name="([^"]*)"', answer.text
            )
        ]
        return rows if rows == expected else None

    wait_for(tree, 10, "the console to show the whole trace")


def test_killing_a_gateway_keeps_traffic_flowing_and_it_is_restarted(stack: StackState) -> None:
    before = rows_of(stack.directory)["gateway-1"]
    killed = sagalab("stack", "kill", "gateway-1", "--dir", stack.directory)
    assert killed.returncode == 0, killed.stderr
    headers = {"X-API-Key": stack.api_key}
    statuses = [
        httpx.get(stack.edge_url + "/v1/sagas", headers=headers).status_code for _ in range(20)
    ]
    assert statuses == [200] * 20
    back = wait_for(
        lambda: (
            (row := rows_of(stack.directory)["gateway-1"])["status"] == "up"
            and row["pid"] != before["pid"]
            and row
        ),
        30,
        "gateway-1 to be restarted",
    )
    assert back["restarts"] == before["restarts"] + 1  # type: ignore[operator]
    assert back["last_exit"] == "killed by SIGKILL"
    log = Path(stack.directory, "logs", "supervisor.log").read_text()
    assert f"gateway-1 (pid {before['pid']}) stopped: killed by SIGKILL" in log
    shown = sagalab("stack", "status", "--dir", stack.directory, env={"COLUMNS": "200"})
    assert shown.returncode == 0 and "killed by SIGKILL" in shown.stdout


@pytest.mark.skipif(not HAS_WORKER, reason="needs orchestrator/worker.py (issue 3)")
def test_a_killed_api_comes_back_and_a_saga_through_the_edge_completes(stack: StackState) -> None:
    before = rows_of(stack.directory)["api"]
    assert sagalab("stack", "kill", "api", "--dir", stack.directory).returncode == 0
    wait_for(
        lambda: (
            (row := rows_of(stack.directory)["api"])["status"] == "up"
            and row["pid"] != before["pid"]
        ),
        30,
        "the API to be restarted",
    )
    with httpx.Client(
        base_url=stack.edge_url, headers={"Authorization": f"Bearer {stack.api_key}"}, timeout=5
    ) as c:
        # The gateways may still count the API as down for a health-check interval.
        r = wait_for(
            lambda: (
                (r := c.post("/v1/sagas", json={"flow": "checkout", "input": ORDER_API}))
                and r.status_code == 202
                and r
            ),
            20,
            "a saga to be accepted again",
            every=0.2,
        )
        assert follow(c, r.headers["location"]) == "completed"
    row = rows_of(stack.directory)["api"]
    assert row["restarts"] == before["restarts"] + 1  # type: ignore[operator]
    assert row["last_exit"] == "killed by SIGKILL"


def test_stack_restart_restarts_one_component(stack: StackState) -> None:
    before = rows_of(stack.directory)
    r = sagalab("stack", "restart", "gateway-2", "--dir", stack.directory)
    assert r.returncode == 0, r.stderr
    after = rows_of(stack.directory)
    assert after["gateway-2"]["pid"] != before["gateway-2"]["pid"]
    assert after["gateway-2"]["status"] == "up"
    assert after["gateway-2"]["last_exit"] == "restart requested"
    assert after["gateway-2"]["restarts"] == before["gateway-2"]["restarts"] + 1  # type: ignore[operator]
    # Nothing else was touched.
    assert {n: r["pid"] for n, r in after.items() if n != "gateway-2"} == {
        n: r["pid"] for n, r in before.items() if n != "gateway-2"
    }


def test_restart_of_an_unknown_component_is_bad_input(stack: StackState) -> None:
    r = sagalab("stack", "restart", "gateway-9", "--dir", stack.directory)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "gateway-1" in r.stderr


def test_kill_of_an_unknown_component_is_bad_input(stack: StackState) -> None:
    r = sagalab("stack", "kill", "nosuch", "--dir", stack.directory)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "gateway-1" in r.stderr


def test_down_stops_everything_during_a_restart_backoff(tmp_path: Path) -> None:
    directory = str(tmp_path / "stack")
    up = sagalab(
        "stack", "up", "--detach", "--dir", directory, "--port", "0", "--workers", "0",
        "--gateways", "1", "--no-services", "--restart-delay", "30",
    )  # fmt: skip
    assert up.returncode == 0, up.stderr
    state = load_state(Path(directory))
    try:
        assert sagalab("stack", "kill", "gateway-1", "--dir", directory).returncode == 0
        wait_for(
            lambda: str(rows_of(directory)["gateway-1"]["status"]).startswith("restarting in"),
            20,
            "gateway-1 to wait for its restart",
        )
        asked = time.monotonic()
        down = sagalab("stack", "down", "--dir", directory)
        assert down.returncode == 0, down.stderr
        assert time.monotonic() - asked < 15
    finally:
        sagalab("stack", "down", "--dir", directory)
    assert state.supervisor is not None
    assert not alive(state.supervisor)
    assert processes_mentioning(directory) == []
    assert not Path(directory, "stack.json").exists()


@pytest.mark.skipif(not HAS_WORKER, reason="needs orchestrator/worker.py (issue 3)")
@pytest.mark.parametrize("how", ["moved", "replaced"])
def test_a_database_moved_or_replaced_under_the_stack_is_reopened_by_restarted_components(
    tmp_path: Path, how: str
) -> None:
    directory = tmp_path / "stack"
    up = sagalab(
        "stack", "up", "--detach", "--dir", str(directory), "--port", "0", "--workers", "2",
        "--gateways", "1", "--restart-delay", "0.2",
    )  # fmt: skip
    assert up.returncode == 0, up.stderr
    state = load_state(directory)
    db = directory / "sagas.db"
    try:
        before = rows_of(str(directory))["api"]
        if how == "moved":
            db.rename(tmp_path / "elsewhere.db")  # `mv D/sagas.db elsewhere`
        else:
            other = tmp_path / "other.db"
            SQLiteStore(other).close()
            other.replace(db)
        after = wait_for(
            lambda: (
                (row := rows_of(str(directory))["api"])["status"] == "up"
                and row["pid"] != before["pid"]
                and row
            ),
            30,
            "the API to be restarted",
        )
        assert after["restarts"] == before["restarts"] + 1  # type: ignore[operator]
        assert "exit code 5" in str(after["last_exit"]), after
        assert "restart the API" in str(after["last_exit"]), after
        with httpx.Client(
            base_url=state.edge_url, headers={"X-API-Key": state.api_key}, timeout=5
        ) as c:
            r = wait_for(
                lambda: (
                    (r := c.post("/v1/sagas", json={"flow": "checkout", "input": ORDER}))
                    and r.status_code == 202
                    and r
                ),
                30,
                "a saga to be accepted on the new file",
                every=0.2,
            )
            assert follow(c, r.headers["location"]) == "completed"
            saga_id = r.headers["location"].rsplit("/", 1)[1]
        shown = sagalab("orchestrate", "status", saga_id, "--db", str(db))
        assert shown.returncode == 0, shown.stderr
    finally:
        sagalab("stack", "down", "--dir", str(directory))
    assert processes_mentioning(str(directory)) == []


def test_status_without_a_stack_says_how_to_start_one(tmp_path: Path) -> None:
    r = sagalab("stack", "status", "--dir", str(tmp_path))
    assert r.returncode == 1
    assert "sagalab stack up" in r.stderr
    assert os.listdir(tmp_path) == []


@pytest.fixture
def taken_port() -> Iterator[int]:
    sock = bind("127.0.0.1", 0)
    sock.listen()
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["--gateways", "0"], 2, "--gateways 0 is under the minimum of 1"),
        (["--gateways", str(MAX_GATEWAYS + 1)], 2, f"over the limit of {MAX_GATEWAYS}"),
        (["--workers", str(MAX_STACK_WORKERS + 1)], 2, "--workers"),
        (["--workers", "-1"], 2, "--workers -1 is under the minimum of 0"),
        (["--concurrency", "0"], 2, "--concurrency 0"),
        (["--port", "70000"], 2, "--port 70000 is over the limit of 65535"),
        (["--port", "TAKEN"], 5, "cannot listen on 127.0.0.1"),
        (["--strategy", "fastest"], 2, "--strategy 'fastest' is not one of"),
        (["--deny", "10.0.0.300/8"], 2, "--deny '10.0.0.300/8' is not an address"),
        (["--flood-rate", "nan"], 2, "--flood-rate must be 0 (off) or more, got nan"),
        (["--flood-rate", "-5"], 2, "--flood-rate must be 0 (off) or more, got -5"),
        (["--restart-delay", "-1"], 2, "--restart-delay"),
        (["--db", "DIR"], 5, "is a directory"),
        (["--db", "TEXT"], 5, "is not a SQLite database"),
        (["--dir", "/proc/sagalab-stack"], 5, "cannot use /proc/sagalab-stack"),
        (["SERVICES"], 5, "SAGALAB_SERVICES_FILE"),
    ],
    ids=[
        "no-gateway", "too-many-gateways", "too-many-workers", "negative-workers",
        "no-concurrency", "port-out-of-range", "port-taken", "strategy", "deny-cidr",
        "flood-rate-nan", "flood-rate-negative", "restart-delay",
        "db-is-a-directory", "db-is-a-text-file", "unwritable-dir", "services-file",
    ],
)  # fmt: skip
def test_up_checks_every_option_before_starting_anything(
    args: list[str], code: int, fragment: str, tmp_path: Path, taken_port: int
) -> None:
    directory = tmp_path / "stack"
    env = {}
    if args == ["SERVICES"]:
        bad = tmp_path / "services.yaml"
        bad.write_text("services: {payments: 42}\n")
        env["SAGALAB_SERVICES_FILE"] = str(bad)
        args = []
    text = tmp_path / "notes.txt"
    text.write_text("not a database\n")
    paths = {"TAKEN": str(taken_port), "DIR": str(tmp_path), "TEXT": str(text)}
    args = [paths.get(a, a) for a in args]
    before = sorted(p.name for p in tmp_path.iterdir())
    if "--dir" not in args:
        args += ["--dir", str(directory)]
    if "--port" not in args:
        args += ["--port", "0"]
    r = sagalab("stack", "up", "--detach", "--workers", "0", *args, env=env)
    try:
        assert r.returncode == code, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and fragment in lines[0], lines
        assert "Traceback" not in r.stderr
        assert not (directory / "stack.json").exists()
        assert processes_mentioning(str(directory)) == []
        assert not (directory / "logs").exists(), "nothing was started"
        # Nothing written either: no stack directory, no database (README: no state file).
        assert sorted(p.name for p in tmp_path.iterdir()) == before
    finally:
        if (directory / "stack.json").exists():
            sagalab("stack", "down", "--dir", str(directory))


def test_a_stack_in_the_foreground_stops_everything_on_sigterm(tmp_path: Path) -> None:
    directory = str(tmp_path / "stack")
    up = subprocess.Popen(
        [sys.executable, "-m", "sagalab.cli.main", "stack", "up", "--dir", directory, "--port", "0",
         "--workers", "0", "--gateways", "1", "--no-services"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    lines: list[str] = []

    def read() -> None:
        assert up.stderr is not None
        for line in up.stderr:  # as they come, not at exit
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        # The line it prints once it is up and handles SIGTERM; stack.json comes before that.
        wait_for(lambda: any("press Ctrl-C" in line for line in lines), 60, "the stack to start")
        state = load_state(Path(directory))
        assert state.supervisor is not None and alive(state.supervisor)
        up.send_signal(signal.SIGTERM)
        up.wait(timeout=30)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        sagalab("stack", "down", "--dir", directory)
        reader.join(timeout=10)
        if up.stderr is not None:
            up.stderr.close()
    stderr = "".join(lines)
    assert up.returncode == 0, stderr
    assert processes_mentioning(directory) == []
    assert not Path(directory, "stack.json").exists()


def test_a_second_up_in_the_same_directory_says_a_stack_is_running(stack: StackState) -> None:
    port = stack.edge_url.rsplit(":", 1)[1]  # taken by this very stack: not the message to give
    r = sagalab("stack", "up", "--detach", "--dir", stack.directory, "--port", port)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        f"error: a stack is already running from {stack.directory}; `sagalab stack down` stops it"
    ]
    assert json.loads(sagalab("stack", "status", "--dir", stack.directory, "--json").stdout)


def test_a_dead_supervisor_is_shown_and_down_still_stops_everything(tmp_path: Path) -> None:
    directory = str(tmp_path / "stack")
    up = sagalab(
        "stack", "up", "--detach", "--dir", directory, "--port", "0", "--workers", "0",
        "--gateways", "1", "--no-services",
    )  # fmt: skip
    assert up.returncode == 0, up.stderr
    state = load_state(Path(directory))
    try:
        assert state.supervisor is not None
        os.kill(state.supervisor.pid, signal.SIGKILL)
        wait_for(lambda: not alive(state.supervisor), 10, "the supervisor to die")  # type: ignore[arg-type]
        r = sagalab("stack", "status", "--dir", directory, "--json")
        assert r.returncode == 1
        assert json.loads(r.stdout)["supervisor"]["status"] == "down"
        restart = sagalab("stack", "restart", "gateway-1", "--dir", directory)
        assert restart.returncode == 1 and "supervisor is not running" in restart.stderr
    finally:
        down = sagalab("stack", "down", "--dir", directory)
    assert down.returncode == 0, down.stderr
    assert processes_mentioning(directory) == []
    assert not Path(directory, "stack.json").exists()


def _children(pid: int) -> list[int]:
    """The live processes whose parent is `pid`."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def test_two_ups_started_together_run_one_stack_that_down_stops(tmp_path: Path) -> None:
    """The state file that says a stack runs is written once it is ready: a second `up`
    started meanwhile passed the check and ran a second stack, which `down` never stopped.
    The first `up`'s supervisor is frozen mid-start here (SIGSTOP), so the second always
    comes while the first is starting. (In a directory with a space: the commands `up`
    prints to paste are quoted for the shell.)"""
    directory = tmp_path / "la b"
    args = ["stack", "up", "--detach", "--dir", str(directory), "--port", "0", "--no-ui"]
    first = subprocess.Popen(
        [sys.executable, "-m", "sagalab.cli.main", *args, "--workers", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    supervisor = None
    try:
        wait_for(lambda: (directory / "logs" / "supervisor.log").exists(), 30, "the supervisor")
        supervisor = wait_for(lambda: _children(first.pid), 30, "its pid")[0]
        os.kill(supervisor, signal.SIGSTOP)
        second = sagalab(*args, "--workers", "0")
        os.kill(supervisor, signal.SIGCONT)
        out, err = first.communicate(timeout=60)
        assert first.returncode == 0, err
        quoted = shlex.quote(str(directory.resolve()))
        assert f"--db {shlex.quote(str(directory.resolve() / 'sagas.db'))} " in out
        assert f"SAGALAB_STACK_DIR={quoted} sagalab services" in out
        assert f"`sagalab stack down --dir {shlex.quote(str(directory))}` stops it" in err
        assert second.returncode == 1, second.stderr
        assert "a stack is already running from" in second.stderr
    finally:
        if supervisor is not None:
            os.kill(supervisor, signal.SIGCONT)
        first.wait(timeout=60)
        for _ in range(2):  # today's code left a second stack: stop it too
            sagalab("stack", "down", "--dir", str(directory))
    wait_for(lambda: not processes_mentioning(str(directory)), 30, "every component to stop")

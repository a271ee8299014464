"""`sagalab stack` on real processes: up (detached), status, a payments outage, kill, down."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from edge.stack import StackState, alive, load_state

pytestmark = pytest.mark.slow

HAS_WORKER = (Path(__file__).parent.parent / "orchestrator" / "worker.py").exists()
ORDER = {"order_id": "o-1", "customer_id": "c-1", "sku": "sku-1", "quantity": 1, "amount": 10}


def sagalab(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackState]:
    directory = tmp_path_factory.mktemp("stack")
    workers = "1" if HAS_WORKER else "0"
    up = sagalab(
        "stack", "up", "--detach", "--dir", str(directory), "--port", "0", "--workers", workers,
        "--json",
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
    assert {row["name"] for row in rows} >= {"edge", "gateway-1", "gateway-2", "api", "services"}
    assert all(row["status"] == "up" for row in rows)


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
    direct = httpx.get(api_url + "/v1/sagas", headers={"X-API-Key": stack.api_key})
    assert direct.status_code == 200
    # The gateways vouch for the stack key's tenant.
    r = httpx.get(stack.edge_url + "/v1/sagas", headers={"X-API-Key": stack.api_key})
    assert r.status_code == 200


@pytest.mark.skipif(not HAS_WORKER, reason="needs orchestrator/worker.py (issue 3)")
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


def test_killing_a_gateway_keeps_traffic_flowing(stack: StackState) -> None:
    killed = sagalab("stack", "kill", "gateway-1", "--dir", stack.directory)
    assert killed.returncode == 0, killed.stderr
    headers = {"X-API-Key": stack.api_key}
    statuses = [
        httpx.get(stack.edge_url + "/v1/sagas", headers=headers).status_code for _ in range(20)
    ]
    assert statuses == [200] * 20
    r = sagalab("stack", "status", "--dir", stack.directory, "--json")
    assert r.returncode == 1  # one component is down
    rows = {row["name"]: row["status"] for row in json.loads(r.stdout)["components"]}
    assert rows["gateway-1"] == "down" and rows["gateway-2"] == "up"


def test_status_without_a_stack_says_how_to_start_one(tmp_path: Path) -> None:
    r = sagalab("stack", "status", "--dir", str(tmp_path))
    assert r.returncode == 1
    assert "sagalab stack up" in r.stderr
    assert os.listdir(tmp_path) == []

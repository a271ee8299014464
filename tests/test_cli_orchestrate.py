"""The operator CLI end to end: real fake services over HTTP, a real SQLite file."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from apilab import admin_api, cli, order_json
from workerlab import write_services_file

from sagalab.fakeservices import FaultSpec, RunningServices, applied_twice
from sagalab.orchestrator.sqlite_store import SQLiteStore

#: Breakers that let a probe through soon: for tests that trip one but are not about it.
QUICK_BREAKERS = {"fail_max": 5, "reset_timeout": 0.2, "success_threshold": 1}


def ledger(lab: RunningServices) -> list[dict]:
    return [e.to_dict() for e in lab.lab.ledger()]


def test_run_wait_json_reports_steps_and_trace(env: Path, lab: RunningServices) -> None:
    code, out, _ = cli(
        "orchestrate", "run", "checkout", "--input", order_json("o1"), "--wait", "--json"
    )
    assert code == 0
    saga = json.loads(out)
    assert saga["status"] == "completed"
    assert len(saga["trace_id"]) == 32
    assert [(s["name"], s["status"], s["attempts"]) for s in saga["steps"]] == [
        ("reserve_inventory", "succeeded", 1),
        ("charge_payment", "succeeded", 1),
        ("create_shipment", "succeeded", 1),
        ("send_confirmation", "succeeded", 1),
    ]
    entries = ledger(lab)
    assert len(entries) == 4
    # W3C trace context carries the saga's trace id to every service.
    assert all(e["traceparent"].split("-")[1] == saga["trace_id"] for e in entries)
    assert {e["idempotency_key"] for e in entries} == {
        f"{saga['id']}:{s}:action"
        for s in ("reserve_inventory", "charge_payment", "create_shipment", "send_confirmation")
    }


def test_declined_payment_rolls_back_in_reverse(env: Path, lab: RunningServices) -> None:
    code, out, _ = cli(
        "orchestrate", "run", "checkout", "-i", order_json("o2", 99_999), "--wait", "--json"
    )
    assert code == 1
    saga = json.loads(out)
    assert saga["status"] == "rolled_back"
    assert "card_declined" in saga["reason"]
    statuses = {s["name"]: s["status"] for s in saga["steps"]}
    assert statuses == {
        "reserve_inventory": "compensated",
        "charge_payment": "failed",
        "create_shipment": "pending",
        "send_confirmation": "pending",
    }
    ops = [(e["service"], e["operation"]) for e in ledger(lab)]
    assert ops == [("inventory", "action"), ("inventory", "compensation")]


def test_queued_saga_then_resume(env: Path, lab: RunningServices) -> None:
    code, out, err = cli("orchestrate", "run", "checkout", "-i", order_json("o3"))
    assert code == 0
    saga_id = out.strip()
    assert "queued" in err
    code, out, _ = cli("orchestrate", "status", saga_id, "--json")
    assert json.loads(out)["status"] == "pending"
    code, out, _ = cli("orchestrate", "resume", saga_id, "--json")
    assert code == 0
    assert json.loads(out)["status"] == "completed"


def test_idempotency_key_reuse(env: Path) -> None:
    first = cli("orchestrate", "run", "checkout", "-i", order_json("o4"), "-k", "K1", "--json")
    again = cli("orchestrate", "run", "checkout", "-i", order_json("o4"), "-k", "K1", "--json")
    assert first[0] == again[0] == 0
    assert json.loads(first[1])["id"] == json.loads(again[1])["id"]
    assert json.loads(again[1])["created"] is False
    code, _, err = cli("orchestrate", "run", "checkout", "-i", order_json("o5"), "-k", "K1")
    assert code == 2  # bad input: the key already stands for another input
    assert "different flow or input" in err


def test_list_events_and_status_json(env: Path) -> None:
    cli("orchestrate", "run", "checkout", "-i", order_json("o6"), "--wait")
    cli("orchestrate", "run", "checkout", "-i", order_json("o7", 50_000), "--wait")
    code, out, _ = cli("orchestrate", "list", "--json")
    rows = json.loads(out)
    assert code == 0 and len(rows) == 2
    code, out, _ = cli("orchestrate", "list", "--status", "rolled_back", "--json")
    (only,) = json.loads(out)
    code, out, _ = cli("orchestrate", "events", only["id"], "--json")
    types = [e["type"] for e in json.loads(out)]
    assert types[0] == "saga_created" and types[-1] == "saga_rolled_back"
    assert "step_failed" in types
    code, out, _ = cli("orchestrate", "status", only["id"])
    assert code == 0 and "rolled_back" in out and only["trace_id"] in out


def test_rollback_refused_past_pivot_unless_forced(env: Path, lab: RunningServices) -> None:
    _, out, _ = cli("orchestrate", "run", "checkout", "-i", order_json("o8"), "--wait", "--json")
    saga_id = json.loads(out)["id"]
    code, _, err = cli("orchestrate", "rollback", saga_id)
    assert code == 4 and "pivot" in err
    code, out, _ = cli("orchestrate", "rollback", saga_id, "--force", "--json")
    assert code == 0
    assert json.loads(out)["status"] == "rolled_back"
    comps = [e["service"] for e in ledger(lab) if e["operation"] == "compensation"]
    # shipping has no compensation; the rest are undone in reverse order
    assert comps == ["payments", "inventory"]


def test_failed_compensation_then_operator_skip_and_retry(env: Path, lab: RunningServices) -> None:
    lab.lab.add_fault(FaultSpec(service="inventory", endpoint="/reservations/release", status=400))
    _, out, _ = cli(
        "orchestrate", "run", "checkout", "-i", order_json("o9", 80_000), "--wait", "--json"
    )
    saga = json.loads(out)
    assert saga["status"] == "failed"
    assert saga["steps"][0]["status"] == "compensation_failed"
    code, _, err = cli("orchestrate", "skip-step", saga["id"], "charge_payment", "--reason", "x")
    assert code == 4  # that step did not fail its compensation
    lab.lab.clear_faults()
    code, out, _ = cli("orchestrate", "retry-step", saga["id"], "reserve_inventory", "--json")
    assert code == 0 and json.loads(out)["status"] == "rolled_back"
    code, out, _ = cli("orchestrate", "events", saga["id"], "--json")
    assert "step_retry_requested" in [e["type"] for e in json.loads(out)]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["run", "checkout", "-i", "{bad"], 2, "not valid JSON"),
        (["run", "checkout", "-i", '{"order_id": 1}'], 2, "needs input key"),
        (["run", "checkout", "-i", "[1]"], 2, "must be a JSON object"),
        (["run", "no-such-flow"], 2, "no flow file or example flow"),
        (["run", "missing.yaml"], 2, "does not exist"),
        (["status", "deadbeef"], 3, "no saga with id"),
        (["events", "deadbeef"], 3, "no saga with id"),
        (["resume", "deadbeef"], 3, "no saga with id"),
        (["rollback", "deadbeef"], 3, "no saga with id"),
    ],
    ids=[
        "bad-json",
        "missing-key",
        "not-object",
        "unknown-flow",
        "missing-file",
        "status-unknown",
        "events-unknown",
        "resume-unknown",
        "rollback-unknown",
    ],
)
def test_bad_input_one_line_no_traceback(
    env: Path, args: list[str], code: int, message: str
) -> None:
    SQLiteStore(env).close()  # a database exists; the id in it does not
    got, out, err = cli("orchestrate", *args)
    assert got == code
    assert message in err
    assert "Traceback" not in err + out


@pytest.mark.parametrize("command", [["list"], ["status", "x"], ["events", "x"], ["resume", "x"]])
def test_reading_a_database_that_does_not_exist_leaves_no_file(
    tmp_path: Path, command: list[str]
) -> None:
    missing = tmp_path / "typo" / "sagas.db"
    got, out, err = cli("orchestrate", *command, "--db", str(missing))
    assert got == 5 and f"no saga database at {missing}" in err
    assert not missing.parent.exists()


def test_malformed_flow_file_reports_location(env: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsteps: [\n  - {name: a\n")
    code, _, err = cli("orchestrate", "run", str(bad))
    assert code == 2 and "line" in err and "malformed YAML" in err
    ref = tmp_path / "ref.yaml"
    ref.write_text(
        "name: x\nsteps:\n  - name: a\n    service: s\n    action: {path: /a, body: "
        "{v: '${steps.nope.response.id}'}}\n"
    )
    code, _, err = cli("orchestrate", "run", str(ref))
    assert code == 2
    assert "step 'a'.action.body" in err and "unknown step reference" in err


def test_unwritable_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, err = cli("orchestrate", "list", "--db", str(tmp_path))
    assert code == 5 and "directory" in err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = cli(
        "orchestrate",
        "run",
        "checkout",
        "-i",
        order_json("o0"),
        "--db",
        str(blocker / "sub" / "s.db"),
    )
    assert code == 5 and "cannot create saga database" in err
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not sqlite" * 100)
    code, _, err = cli("orchestrate", "list", "--db", str(garbage))
    assert code == 5 and "Traceback" not in err
    assert garbage.read_bytes() == b"this is not sqlite" * 100


def test_service_down_rolls_back_and_keeps_history(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, out, _ = cli("orchestrate", "run", "checkout", "-i", order_json("o10"), "--wait", "--json")
    first = json.loads(out)["id"]
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    monkeypatch.setenv("SAGALAB_SERVICE_PAYMENTS", f"http://127.0.0.1:{dead}/payments")
    code, out, err = cli(
        "orchestrate", "run", "checkout", "-i", order_json("o11"), "--wait", "--json"
    )
    assert code == 1 and "Traceback" not in err
    saga = json.loads(out)
    assert saga["status"] == "rolled_back"
    assert "ConnectError" in saga["reason"]
    assert saga["steps"][1]["attempts"] == 4  # the flow's retry policy for payments
    code, out, _ = cli("orchestrate", "status", first, "--json")
    assert json.loads(out)["status"] == "completed"


def test_missing_service_url_stores_nothing(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SAGALAB_SERVICE_SHIPPING")
    code, _, err = cli("orchestrate", "run", "checkout", "-i", order_json("o12"), "--wait")
    assert code == 5 and "SAGALAB_SERVICE_SHIPPING" in err
    assert not env.exists()  # checked before anything was stored


def test_sigkill_after_call_then_resume_applies_once(env: Path, lab: RunningServices) -> None:
    """A real process is killed after payments applied the charge, before the journal knew."""
    child = subprocess.run(
        [
            sys.executable,
            "-m",
            "sagalab.cli.main",
            "orchestrate",
            "run",
            "checkout",
            "-i",
            order_json("o13"),
            "--wait",
            "-k",
            "crash-1",
            "--crash-at",
            "charge_payment:after-call",
        ],
        env={**os.environ},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert child.returncode == -9
    code, out, _ = cli("orchestrate", "list", "--json")
    (saga,) = json.loads(out)
    assert saga["status"] == "running"
    code, out, _ = cli("orchestrate", "resume", saga["id"], "--json")
    assert code == 0
    resumed = json.loads(out)
    assert resumed["status"] == "completed"
    assert resumed["steps"][1]["attempts"] == 2
    entries = ledger(lab)
    assert applied_twice(entries) == []
    assert [e["service"] for e in entries] == ["inventory", "payments", "shipping", "notifications"]


def test_sigterm_to_the_demo_stops_it_as_ctrl_c_does(tmp_path: Path) -> None:
    """With SIGTERM's default action the demo died where it was: its temporary directory
    stayed behind (and a crash child could outlive it). Now it unwinds as after Ctrl-C."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "sagalab.cli.main", "demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()  # "fake services on ...": the database exists by then
        assert "fake services on" in first, first
        assert list(tmp_path.glob("sagalab-demo-*"))
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == 130, first + err
    assert "Traceback" not in err, err
    assert not list(tmp_path.glob("sagalab-demo-*"))


def test_demo_json(tmp_path: Path) -> None:
    code, out, _ = cli("demo", "--json", "--db", str(tmp_path / "demo.db"))
    assert code == 0
    report = json.loads(out)
    assert report["ok"] is True
    assert [a["status"] for a in report["acts"]] == [
        "completed",  # plain checkout
        "rolled_back",  # card declined
        "completed",  # killed after the charge, resumed
        "rolled_back",  # payments down: failures opened the breaker
        "rolled_back",  # refused by the open breaker
        "completed",  # payments back, breaker closed
    ]
    assert report["applied_twice"] == []
    assert report["breaker_transitions"][:3] == [
        "closed -> open",
        "open -> half-open",
        "half-open -> closed",
    ]
    charges = [e for e in report["ledger"] if e["endpoint"] == "/charges"]
    assert sorted(e["order_id"] for e in charges) == ["demo-1", "demo-3", "demo-6"]
    # `sagalab verify` at the end: all six sagas reconcile with every ledger entry.
    assert report["verify"]["consistent"] is True and report["verify"]["findings"] == []
    assert report["verify"]["sagas"] == 6
    assert report["verify"]["matched"] == len(report["ledger"])


def test_help_explains_commands() -> None:
    code, out, _ = cli("orchestrate", "--help")
    assert code == 0
    for command in ("run", "status", "list", "events", "resume", "rollback", "retry-step"):
        assert command in out
    assert "Exit codes" in out


def test_services_answer_health(lab: RunningServices) -> None:
    assert httpx.get(lab.base_url + "/healthz").status_code == 200


def test_pivot_with_unknown_outcome_stops_for_operator(
    env: Path, lab: RunningServices, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shipping applies the shipment but the answer is lost: nothing may pretend it is undone."""
    # Eight lost answers open the shipping breaker (5 failures); with the default 10 s reset
    # the run and the retry-step would wait 40 s for probes. What is tested is the stop.
    quick = write_services_file(tmp_path / "services.yaml", lab.services, QUICK_BREAKERS)
    monkeypatch.setenv("SAGALAB_SERVICES_FILE", str(quick))
    lab.lab.add_fault(
        FaultSpec(service="shipping", endpoint="/shipments", status=502, after_apply=True)
    )
    _, out, _ = cli("orchestrate", "run", "checkout", "-i", order_json("o14"), "--wait", "--json")
    saga = json.loads(out)
    assert saga["status"] == "failed"
    assert "pivot may have been applied" in saga["reason"]
    assert not [e for e in ledger(lab) if e["operation"] == "compensation"]
    code, _, err = cli("orchestrate", "rollback", saga["id"])
    assert code == 4 and "--force" in err
    lab.lab.clear_faults()
    code, out, _ = cli("orchestrate", "retry-step", saga["id"], "create_shipment", "--json")
    assert code == 0 and json.loads(out)["status"] == "completed"
    shipments = [e for e in ledger(lab) if e["service"] == "shipping"]
    assert len(shipments) == 1  # the retry replayed the first, already applied, shipment
    assert applied_twice(ledger(lab)) == []


NO_SERVICES_HINT = (
    "recorded; queued for the workers (no services known here to run it: "
    "pass --services or set SAGALAB_SERVICE_*)"
)


def forget_services(lab: RunningServices, monkeypatch: pytest.MonkeyPatch) -> None:
    """This shell knows no service: no file and no SAGALAB_SERVICE_* (a stack's workers do)."""
    for key in lab.env:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.delenv("SAGALAB_SERVICES_FILE", raising=False)


def test_operator_requests_without_services_here_are_queued_for_the_workers(
    env: Path, lab: RunningServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    lab.lab.add_fault(FaultSpec(service="inventory", endpoint="/reservations/release", status=400))
    _, out, _ = cli(
        "orchestrate", "run", "checkout", "-i", order_json("o30", 80_000), "--wait", "--json"
    )
    failed = json.loads(out)["id"]  # its compensation failed for good: an operator's turn
    lab.lab.clear_faults()
    queued = cli("orchestrate", "run", "checkout", "-i", order_json("o31"))[1].strip()
    forget_services(lab, monkeypatch)

    code, out, err = cli("orchestrate", "rollback", queued, "--json")
    assert code == 0, err
    assert "rollback " + NO_SERVICES_HINT in err
    assert json.loads(out)["status"] == "compensating"
    code, _, err = cli(
        "orchestrate", "skip-step", failed, "reserve_inventory", "--reason", "by hand"
    )
    assert code == 0, err
    assert "skip " + NO_SERVICES_HINT in err
    store = SQLiteStore(env)
    try:
        for saga_id, event in ((queued, "rollback_requested"), (failed, "step_skipped")):
            assert event in [e.event.type.value for e in store.journal(saga_id)]
            (run_after,) = store.conn.execute(
                "SELECT run_after FROM sagas WHERE id = ?", (saga_id,)
            ).fetchone()
            assert run_after is not None  # on the workers' queue
    finally:
        store.close()


def test_a_malformed_services_file_still_writes_nothing(
    env: Path, lab: RunningServices, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    queued = cli("orchestrate", "run", "checkout", "-i", order_json("o32"))[1].strip()
    forget_services(lab, monkeypatch)
    bad = tmp_path / "services.yaml"
    bad.write_text("services: [nope]\n")
    code, _, err = cli("orchestrate", "rollback", queued, "--services", str(bad))
    assert code == 5 and "services file" in err
    assert "rollback_requested" not in cli("orchestrate", "events", queued)[1]


def test_a_pivot_cut_off_then_force_rolled_back_shows_interrupted_not_retrying(
    env: Path, lab: RunningServices
) -> None:
    """A real process is killed with the shipment call out; an operator forces a rollback."""
    child = subprocess.run(
        [sys.executable, "-m", "sagalab.cli.main", "orchestrate", "run", "checkout",
         "-i", order_json("o40"), "--wait", "--crash-at", "create_shipment:after-call"],
        env={**os.environ},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )  # fmt: skip
    assert child.returncode == -9
    (saga,) = json.loads(cli("orchestrate", "list", "--json")[1])
    code, out, err = cli("orchestrate", "rollback", saga["id"], "--force", "--json")
    assert code == 0, err
    assert json.loads(out)["status"] == "rolled_back"
    for view in (
        json.loads(cli("orchestrate", "status", saga["id"], "--json")[1]),
        admin_api_view(env, saga["id"]),
    ):
        steps = {s["name"]: s["status"] for s in view["steps"]}
        assert steps == {
            "reserve_inventory": "compensated",
            "charge_payment": "compensated",
            "create_shipment": "interrupted",  # sent, never answered, never sent again
            "send_confirmation": "pending",
        }
        shipment = next(s for s in view["steps"] if s["name"] == "create_shipment")
        assert shipment["last_error"].startswith("interrupted")
    # What the services did agrees: the shipment stands, nothing was shipped twice.
    assert [e["service"] for e in ledger(lab) if e["operation"] == "action"] == [
        "inventory",
        "payments",
        "shipping",
    ]


def admin_api_view(db: Path, saga_id: str) -> dict[str, Any]:
    with admin_api(db) as client:
        return client.get(f"/v1/sagas/{saga_id}").json()

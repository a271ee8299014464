"""`sagalab verify` end to end: real checkouts on a real SQLite file against the fake services
on 127.0.0.1, then an anomaly of each finding kind planted by hand, in a service's ledger (by
a real request under a saga's key, or `LabState.plant` for what the services' rules never let
happen) or in the database; verify reports it (exit 1), and nothing on a clean run (exit 0).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from apilab import cli as apicli
from typer.testing import CliRunner

from sagalab.cli.main import app
from sagalab.fakeservices import FaultSpec, RunningServices
from sagalab.orchestrator.errors import LedgerUnavailable
from sagalab.orchestrator.executors import HttpExecutor
from sagalab.orchestrator.flowfile import load_flow
from sagalab.orchestrator.ledgers import records_from, verify_store
from sagalab.orchestrator.reconcile import FindingKind, LedgerRecord, SagaFacts, reconcile
from sagalab.orchestrator.runner import SagaRunner, start_saga
from sagalab.orchestrator.saga import Event, EventType, Phase, SagaStatus, idempotency_key
from sagalab.orchestrator.stores import open_store
from sagalab.stack.processes import STATE_FILE

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Checkouts:
    """Three real sagas: one completed, one declined (nothing charged, the reservation
    released), one rolled back after its charge (shipping refused: refund and release)."""

    db: Path
    completed: str
    declined: str
    refunded: str


def _order(n: int, amount: int) -> dict[str, Any]:
    return {"order_id": f"v-{n}", "customer_id": "c", "sku": "A", "quantity": 1, "amount": amount}


@pytest.fixture
def checkouts(services: RunningServices, db: Path) -> Checkouts:
    flow = load_flow("checkout")
    store = open_store(db)
    executor = HttpExecutor(services.services)
    try:
        runner = SagaRunner(store, executor)
        ids = []
        for n, amount in ((1, 100), (2, 25_000)):
            record, _ = start_saga(store, flow, _order(n, amount), queue=False)
            ids.append((record.id, runner.run(record.id).status))
        services.lab.add_fault(FaultSpec(service="shipping", error_rate=1.0, status=400))
        record, _ = start_saga(store, flow, _order(3, 100), queue=False)
        ids.append((record.id, runner.run(record.id).status))
        services.lab.clear_faults()
    finally:
        executor.close()
        store.close()
    assert [s for _, s in ids] == [
        SagaStatus.COMPLETED,
        SagaStatus.ROLLED_BACK,
        SagaStatus.ROLLED_BACK,
    ]
    return Checkouts(db, *(i for i, _ in ids))


def verify(
    db: Path, services: RunningServices, *args: str
) -> tuple[int, dict[str, Any] | None, str]:
    """`sagalab verify --db DB --services LAB --json ARGS`: exit code, JSON, stderr."""
    result = CliRunner().invoke(
        app, ["verify", "--db", str(db), "--services", services.base_url, "--json", *args]
    )
    data = json.loads(result.stdout) if result.stdout.strip() else None
    return result.exit_code, data, result.stderr


def kinds(data: dict[str, Any] | None, saga_id: str) -> set[str]:
    assert data is not None
    return {f["kind"] for f in data["findings"] if f["saga_id"] == saga_id}


def test_a_clean_run_verifies_with_no_finding(
    checkouts: Checkouts, services: RunningServices
) -> None:
    code, data, _ = verify(checkouts.db, services)
    assert code == 0, data
    assert data is not None and data["consistent"] is True and data["findings"] == []
    assert data["sagas"] == 3
    assert data["services"] == ["inventory", "notifications", "payments", "shipping"]
    # completed: 4 actions; declined: reservation and its release; refunded: 2 actions, 2 undone
    assert data["matched"] == data["ledger_entries"] == 10


def test_a_clean_run_as_a_subprocess_shows_the_verdict(
    checkouts: Checkouts, services: RunningServices
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAGALAB_")}
    env["PYTHONPATH"] = str(REPO)
    env["SAGALAB_SERVICES_URL"] = services.base_url  # found as the orchestrator finds it
    done = subprocess.run(
        [sys.executable, "-m", "sagalab.cli.main", "verify", "--db", str(checkouts.db)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "every saga done or undone" in done.stdout


def _post(services: RunningServices, path: str, key: str, body: dict[str, Any]) -> int:
    return httpx.post(
        services.base_url + path, json=body, headers={"Idempotency-Key": key}, timeout=10
    ).status_code


def _db_write(db: Path, sql: str, *params: Any) -> None:
    conn = sqlite3.connect(db)
    try:
        with conn:
            conn.execute(sql, params)
    finally:
        conn.close()


def plant_applied_twice(c: Checkouts, s: RunningServices) -> str:
    # The card charged a second time under the same key: the services' rules never do that.
    s.lab.plant(
        service="payments",
        operation="action",
        endpoint="/charges",
        order_id="v-1",
        idempotency_key=f"{c.completed}:charge_payment:action",
        noop=False,
    )
    return c.completed


def plant_unjournaled(c: Checkouts, s: RunningServices) -> str:
    # A confirmation sent under the declined saga's key, which never got that far.
    body = {"order_id": "v-2", "customer_id": "c", "template": "order-confirmed"}
    assert _post(s, "/notifications/messages", f"{c.declined}:send_confirmation:action", body) < 300
    return c.declined


def plant_null_compensation(c: Checkouts, s: RunningServices) -> str:
    # A refund that undid something although the declined card was never charged.
    s.lab.plant(
        service="payments",
        operation="compensation",
        endpoint="/refunds",
        order_id="v-2",
        idempotency_key=f"{c.declined}:charge_payment:compensation",
        noop=False,
    )
    return c.declined


def plant_hanging_action(c: Checkouts, s: RunningServices) -> str:
    # The charge's delayed duplicate landing after its refund.
    s.lab.plant(
        service="payments",
        operation="action",
        endpoint="/charges",
        order_id="v-3",
        idempotency_key=f"{c.refunded}:charge_payment:action",
        noop=False,
    )
    return c.refunded


def plant_action_standing(c: Checkouts, s: RunningServices) -> str:
    # The database says the completed saga was rolled back: its actions all stand.
    _db_write(c.db, "UPDATE sagas SET status = 'rolled_back' WHERE id = ?", c.completed)
    return c.completed


def plant_incomplete(c: Checkouts, s: RunningServices) -> str:
    # A release of the completed order's reservation, sent under its saga's key.
    key = f"{c.completed}:reserve_inventory:compensation"
    assert _post(s, "/inventory/reservations/release", key, {"order_id": "v-1"}) < 300
    return c.completed


def plant_not_terminal(c: Checkouts, s: RunningServices) -> str:
    store = open_store(c.db)
    try:
        record, _ = start_saga(store, load_flow("checkout"), _order(4, 10))  # queued, never run
    finally:
        store.close()
    return record.id


def plant_compensation_order(c: Checkouts, s: RunningServices) -> str:
    # The refunded saga's ledger rewritten by hand: the reservation released before the refund
    # (the other sagas' entries are written back as they were).
    others = [e for e in s.lab.ledger() if not e.idempotency_key.startswith(c.refunded)]
    s.lab.reset()
    for e in others:
        fields = e.to_dict()
        del fields["seq"]
        s.lab.plant(**fields)
    for service, op, endpoint, step in (
        ("inventory", "action", "/reservations", "reserve_inventory"),
        ("payments", "action", "/charges", "charge_payment"),
        ("inventory", "compensation", "/reservations/release", "reserve_inventory"),
        ("payments", "compensation", "/refunds", "charge_payment"),
    ):
        s.lab.plant(
            service=service,
            operation=op,
            endpoint=endpoint,
            order_id="v-3",
            idempotency_key=f"{c.refunded}:{step}:{op}",
            noop=False,
        )
    return c.refunded


PLANTS: dict[FindingKind, Callable[[Checkouts, RunningServices], str]] = {
    FindingKind.APPLIED_TWICE: plant_applied_twice,
    FindingKind.UNJOURNALED: plant_unjournaled,
    FindingKind.NULL_COMPENSATION: plant_null_compensation,
    FindingKind.HANGING_ACTION: plant_hanging_action,
    FindingKind.ACTION_STANDING: plant_action_standing,
    FindingKind.INCOMPLETE: plant_incomplete,
    FindingKind.NOT_TERMINAL: plant_not_terminal,
    FindingKind.COMPENSATION_ORDER: plant_compensation_order,
}


def test_every_kind_has_a_plant() -> None:
    assert set(PLANTS) == set(FindingKind)


@pytest.mark.parametrize("kind", list(PLANTS), ids=[k.value for k in PLANTS])
def test_verify_finds_a_planted_anomaly(
    kind: FindingKind, checkouts: Checkouts, services: RunningServices
) -> None:
    saga_id = PLANTS[kind](checkouts, services)
    code, data, _ = verify(checkouts.db, services)
    assert code == 1
    assert data is not None and data["consistent"] is False
    assert kind.value in kinds(data, saga_id), data["findings"]
    # Only the saga planted on: the others still reconcile.
    assert {f["saga_id"] for f in data["findings"]} == {saga_id}
    finding = next(f for f in data["findings"] if f["kind"] == kind.value)
    assert finding["detail"]


def test_findings_render_as_a_table(checkouts: Checkouts, services: RunningServices) -> None:
    saga_id = plant_hanging_action(checkouts, services)
    result = CliRunner().invoke(
        app, ["verify", "--db", str(checkouts.db), "--services", services.base_url]
    )
    assert result.exit_code == 1
    assert saga_id in result.stdout and "hanging_action" in result.stdout
    assert "finding(s) in 1 saga(s)" in result.stdout


def test_since_leaves_out_older_sagas(checkouts: Checkouts, services: RunningServices) -> None:
    plant_hanging_action(checkouts, services)
    cut = time.time()
    code, data, _ = verify(checkouts.db, services, "--since", f"{cut:.6f}")
    assert code == 0 and data is not None and data["sagas"] == 0
    code, data, _ = verify(checkouts.db, services, "--since", "1h")
    assert code == 1


def test_named_sagas_only(checkouts: Checkouts, services: RunningServices) -> None:
    plant_hanging_action(checkouts, services)
    code, data, _ = verify(checkouts.db, services, checkouts.completed)
    assert code == 0 and data is not None and data["sagas"] == 1
    code, _, err = verify(checkouts.db, services, "no-such-saga")
    assert code == 3 and "no-such-saga" in err


def test_an_unreachable_ledger_is_named_exit_5(
    checkouts: Checkouts, services: RunningServices
) -> None:
    dead = "http://127.0.0.1:9"  # discard: nothing listens
    code, data, err = verify(checkouts.db, services, "--services", f"payments={dead}")
    assert code == 5 and data is None
    assert "payments" in err and dead in err


def test_a_service_with_no_ledger_source_is_exit_5(checkouts: Checkouts) -> None:
    result = CliRunner().invoke(
        app,
        ["verify", "--db", str(checkouts.db), "--services", "inventory=http://127.0.0.1:9/x"],
    )
    assert result.exit_code == 5
    assert "cannot read the ledger of" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--since", "yesterday"],
        ["--since", "-5m"],
        ["--since", "2999-01-01T00:00:00"],
        ["--since", "99999999999999999999"],
        ["--services", "not a url or file"],
        ["--services", "payments=ftp://x"],
        ["--services", "http://127.0.0.1:1", "--services", "http://127.0.0.1:2"],
    ],
    ids=[
        "since-word",
        "since-negative",
        "since-future-date",
        "since-future-epoch",
        "services-junk",
        "services-scheme",
        "two-labs",
    ],
)
def test_bad_input_is_exit_2(args: list[str], checkouts: Checkouts) -> None:
    result = CliRunner().invoke(app, ["verify", "--db", str(checkouts.db), *args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output


def test_not_a_saga_database_is_exit_5(tmp_path: Path, services: RunningServices) -> None:
    bogus = tmp_path / "x.db"
    bogus.write_text("not sqlite")
    code, _, err = verify(bogus, services)
    assert code == 5 and "error" in err
    assert bogus.read_text() == "not sqlite"


def test_verify_never_writes_the_database(checkouts: Checkouts, services: RunningServices) -> None:
    def files() -> dict[str, tuple[bytes, int]]:
        folder = checkouts.db.parent
        return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}

    before = files()
    assert list(before) == ["sagas.db"]  # its writers closed it: no -wal, no -shm
    assert verify(checkouts.db, services)[0] == 0
    assert files() == before


def test_the_library_call_matches_the_command(
    checkouts: Checkouts, services: RunningServices
) -> None:
    store = open_store(checkouts.db, readonly=True)
    try:
        result = verify_store(store, services.lab)  # the fakes implement LedgerReader in process
    finally:
        store.close()
    assert result.consistent and result.sagas == 3 and result.matched == 10


def test_a_stack_directory_names_the_database_and_the_services(
    checkouts: Checkouts, services: RunningServices, tmp_path: Path
) -> None:
    stack = tmp_path / "stack"
    stack.mkdir()
    state = {
        "directory": str(stack),
        "db": str(checkouts.db),
        "keys_db": str(stack / "keys.db"),
        "edge_url": "http://127.0.0.1:9",
        "services_url": services.base_url,
        "api_key": "k",
        "components": [],
        "created_at": 0.0,
    }
    (stack / STATE_FILE).write_text(json.dumps(state))
    plant_hanging_action(checkouts, services)
    result = CliRunner().invoke(app, ["verify", "--stack", str(stack), "--json"])
    assert result.exit_code == 1, result.output
    assert {f["kind"] for f in json.loads(result.stdout)["findings"]} >= {"hanging_action"}
    missing = CliRunner().invoke(app, ["verify", "--stack", str(tmp_path / "none")])
    assert missing.exit_code == 5 and "no stack" in missing.stderr


def test_ledgers_are_served_since_a_time(checkouts: Checkouts, services: RunningServices) -> None:
    url = services.base_url + "/payments/ledger"
    every = httpx.get(url, timeout=10).json()["entries"]
    assert len(every) == 3  # two charges, one refund
    assert httpx.get(url, params={"since": "0"}, timeout=10).json()["entries"] == every
    later = time.time() + 60
    assert httpx.get(url, params={"since": str(later)}, timeout=10).json()["entries"] == []
    assert httpx.get(url, params={"since": "soon"}, timeout=10).status_code == 422
    assert services.lab.read_ledger("payments", later) == []


@pytest.mark.parametrize(
    "row",
    [
        "text",
        {"operation": "action", "applied_at": "2026-01-01T00:00:00"},
        {"operation": "refund", "idempotency_key": "k", "applied_at": 1.0},
        {"operation": "action", "idempotency_key": "k", "applied_at": "yesterday"},
        {"operation": "action", "idempotency_key": "k", "applied_at": 1.0, "seq": "1"},
        {"operation": "action", "idempotency_key": "", "applied_at": 1.0},
    ],
    ids=["not-object", "no-key", "bad-operation", "bad-time", "bad-seq", "blank-key"],
)
def test_a_malformed_ledger_entry_is_named(row: Any) -> None:
    with pytest.raises(LedgerUnavailable, match=r"ledger of payments: entry 1 is malformed"):
        records_from("payments", [row])


def test_a_ledger_entry_reads_iso_or_epoch_times() -> None:
    a, b = records_from(
        "payments",
        [
            {"operation": "action", "idempotency_key": "k", "applied_at": "1970-01-01T00:00:10"},
            {"operation": "compensation", "idempotency_key": "k2", "applied_at": 11},
        ],
    )
    assert (a.at, a.seq, a.noop) == (10.0, 1, False)
    assert (b.at, b.seq, b.operation.value) == (11.0, 2, "compensation")


def test_a_damaged_saga_is_a_finding_not_a_traceback(
    checkouts: Checkouts, services: RunningServices
) -> None:
    _db_write(
        checkouts.db,
        "UPDATE events SET type = 'bogus' WHERE saga_id = ? AND seq = 2",
        checkouts.declined,
    )
    code, data, err = verify(checkouts.db, services)
    assert code == 1, err
    assert data is not None
    damaged = [f for f in data["findings"] if f["saga_id"] == checkouts.declined]
    assert [f["kind"] for f in damaged] == ["not_terminal"]
    assert "cannot be read" in damaged[0]["detail"]
    assert {f["saga_id"] for f in data["findings"]} == {checkouts.declined}


# --- forks: the steps a fork took over are the fork's -------------------------------------------


def _forked_checkout(env: Path) -> tuple[str, str]:
    """A checkout run to completion, then forked from its last step (past the pivot: forced);
    the fork runs to completion here. (old id, fork id)"""
    code, out, err = apicli("orchestrate", "run", "checkout", "-i", json.dumps(_order(7, 100)),
                            "--wait", "--json", "--db", str(env))  # fmt: skip
    assert code == 0, err
    old = str(json.loads(out)["id"])
    code, out, err = apicli("orchestrate", "fork", old, "--from-step", "send_confirmation",
                            "--force", "--json", "--db", str(env))  # fmt: skip
    assert code == 0, err
    fork = json.loads(out)["fork"]
    assert fork["status"] == "completed" and fork["forked_from"] == old
    return old, str(fork["id"])


def test_a_saga_whose_kept_steps_were_handed_to_a_fork_verifies_clean(
    env: Path, services: RunningServices
) -> None:
    """Was two false alarms: the old saga rolled back "from send_confirmation" with its first
    three actions standing (`action_standing`), and the fork completed with no applied action
    under its own keys for the steps it reused (`incomplete`)."""
    old, fork = _forked_checkout(env)
    code, data, err = verify(env, services)
    assert code == 0, (data, err)
    assert data is not None and data["sagas"] == 2 and data["findings"] == []
    # Each ledger entry is one saga's: the reused actions are matched once, by the fork.
    assert data["matched"] == data["ledger_entries"] == 5
    # Either saga named alone: no finding either (the old one leaves the reused steps to the
    # fork, which reads them under the old saga's keys).
    for saga_id in (old, fork):
        code, data, err = verify(env, services, saga_id)
        assert code == 0, (saga_id, data, err)


def test_since_a_fork_was_made_its_reused_steps_are_still_found(
    env: Path, services: RunningServices
) -> None:
    """`--since` after the old saga (and its calls) but before the fork: the fork's reused
    actions were applied before then, and are read all the same (else: `incomplete`)."""
    old, fork = _forked_checkout(env)
    code, out, _ = apicli("orchestrate", "status", fork, "--json", "--db", str(env))
    assert code == 0
    since = json.loads(out)["created_at"]
    code, data, err = verify(env, services, "--since", repr(since))
    assert code == 0, (data, err)
    assert data is not None and data["sagas"] == 1 and data["findings"] == []


def test_a_fork_rolled_back_too_undoes_what_it_took_over_once_and_verifies_clean(
    env: Path, services: RunningServices
) -> None:
    old, fork = _forked_checkout(env)
    code, out, err = apicli("orchestrate", "rollback", fork, "--force", "--json",
                            "--db", str(env))  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["status"] == "rolled_back"
    undone = [
        (e.service, e.idempotency_key)
        for e in services.lab.ledger()
        if e.operation == "compensation" and not e.noop
    ]
    # The reservation released and the charge refunded once each, by the fork, under its keys.
    assert sorted(undone) == [
        ("inventory", f"{fork}:reserve_inventory:compensation"),
        ("payments", f"{fork}:charge_payment:compensation"),
    ]
    code, data, err = verify(env, services)
    assert code == 0, (data, err)
    assert data is not None and data["findings"] == [] and data["sagas"] == 2


def test_kept_steps_of_a_saga_whose_fork_was_never_created_still_stand_as_a_finding() -> None:
    """The pure rule: steps kept by a rollback from a step belong to a fork only when there is
    one; with none (a fork cut short before it was created), they stand, unowned."""
    flow = load_flow("checkout")
    saga = "s1"
    events: list[Event] = [Event(EventType.SAGA_CREATED, 1.0)]
    for step in flow.steps[:3]:
        events.append(Event(EventType.ATTEMPT_STARTED, 2.0, step.name, Phase.ACTION, 1))
        events.append(Event(EventType.ATTEMPT_SUCCEEDED, 3.0, step.name, Phase.ACTION, 1))
    events.append(Event(EventType.ROLLBACK_REQUESTED, 4.0, step="send_confirmation", force=True))
    events.append(Event(EventType.SAGA_ROLLED_BACK, 4.0))
    kept = frozenset(s.name for s in flow.steps[:3])
    ledger = [
        LedgerRecord(
            s.service or "", Phase.ACTION, idempotency_key(saga, s.name, Phase.ACTION), i, 2.0
        )
        for i, s in enumerate(flow.steps[:3])
    ]
    services = {s.service for s in flow.steps if s.service}
    orphan = SagaFacts(saga, SagaStatus.ROLLED_BACK, flow, tuple(events), kept=kept)
    found = reconcile([orphan], ledger, services=services)
    assert {(f.kind, f.step) for f in found.findings} == {
        (FindingKind.ACTION_STANDING, "reserve_inventory"),
        (FindingKind.ACTION_STANDING, "charge_payment"),
    }
    handed = SagaFacts(saga, SagaStatus.ROLLED_BACK, flow, tuple(events), kept=kept, fork="f1")
    assert reconcile([handed], ledger, services=services).findings == ()


def test_a_ledger_that_trickles_its_answer_is_unreadable_after_the_deadline() -> None:
    """A ledger server that sends a byte a second never trips a per-read timeout: `verify`
    waited on it without end. The whole answer now has a deadline (and a size cap)."""
    import http.server
    import threading

    from sagalab.orchestrator.ledgers import HttpLedgerReader

    stop = threading.Event()

    class Trickle(http.server.BaseHTTPRequestHandler):
        def log_message(self, *_: object) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            while not stop.is_set():
                self.wfile.write(b" ")
                self.wfile.flush()
                stop.wait(0.1)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    reader = HttpLedgerReader({"payments": url}, timeout=1.0, deadline=1.0)
    started = time.monotonic()
    try:
        with pytest.raises(LedgerUnavailable, match="took over 1s"):
            reader.read_ledger("payments")
        assert time.monotonic() - started < 5
        big = HttpLedgerReader({"payments": url}, timeout=1.0, max_bytes=5)
        with pytest.raises(LedgerUnavailable, match="over 5 bytes"):
            big.read_ledger("payments")
        big.close()
    finally:
        stop.set()
        reader.close()
        server.shutdown()
        server.server_close()

"""Filters on `list` and bulk actions by filter: real SQLite files, the real CLI (in this
process, or a subprocess for the terminal question and a batch killed with SIGKILL)."""

from __future__ import annotations

import csv
import io
import json
import os
import pty
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from apilab import cli
from opslab import (
    FAILING,
    checkout_saga,
    failed_on_notify,
    ops_flow,
    reset_handlers,
    rolled_back,
    stored,
    types,
)
from workerlab import REPO

from sagalab.orchestrator.breaker_board import BreakerConfig
from sagalab.orchestrator.bulk import BreakerGate, next_service, own_sets
from sagalab.orchestrator.saga import EventType, SagaStatus
from sagalab.orchestrator.sqlite_store import SQLiteStore
from sagalab.orchestrator.store import ACTED, SKIPPED
from sagalab.orchestrator.stores import open_breaker_store


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SQLiteStore]:
    """A fresh database the CLI uses (SAGALAB_DB), knowing no service."""
    db = tmp_path / "sagas.db"
    for key in list(os.environ):
        if key.startswith("SAGALAB_SERVICE"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("SAGALAB_DB", str(db))
    reset_handlers()
    handle = SQLiteStore(db)
    yield handle
    handle.close()
    reset_handlers()


def _count(store: SQLiteStore, saga_id: str, kind: EventType) -> int:
    return types(store, saga_id).count(kind)


# --- list -----------------------------------------------------------------------------------


def test_list_filters_compose_and_print_json_csv_ids(store: SQLiteStore) -> None:
    pending = stored(store)
    done = rolled_back(store)
    first = checkout_saga(store.path)
    code, out, _ = cli("orchestrate", "list", "--status", "rolled_back", "--step", "charge")
    assert code == 0 and done in out and pending not in out
    code, out, _ = cli(
        "orchestrate", "list", "-s", "pending", "-s", "rolled_back", "--flow", "ops", "-o", "ids"
    )
    assert (code, out.split()) == (0, [done, pending])
    code, out, _ = cli("orchestrate", "list", "--input", "order_id=o1", "--output", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and [(r["id"], r["flow"], r["status"]) for r in rows] == [
        (first, "checkout", "pending")
    ]
    code, out, _ = cli("orchestrate", "list", "--input", "quantity=1", "--json")
    assert code == 0 and [r["id"] for r in json.loads(out)] == [first]
    code, out, _ = cli("orchestrate", "list", "--error", "CHARGE REFUSED", "-o", "json")
    assert code == 0 and [r["id"] for r in json.loads(out)] == [done]


def test_list_pages_newest_first_with_after(store: SQLiteStore) -> None:
    made = [stored(store) for _ in range(5)]
    pages: list[list[str]] = []
    after: list[str] = []
    while True:
        code, out, _ = cli("orchestrate", "list", "-n", "2", "-o", "ids", *after)
        assert code == 0
        if not out.split():
            break
        pages.append(out.split())
        after = ["--after", pages[-1][-1]]
    assert [len(p) for p in pages] == [2, 2, 1]
    assert sum(pages, []) == sorted(made, key=lambda i: -store.load(i).created_at)


def test_list_matching_nothing_prints_nothing(store: SQLiteStore) -> None:
    stored(store)
    assert cli("orchestrate", "list", "--flow", "nope", "-o", "ids")[:2] == (0, "")
    code, out, _ = cli("orchestrate", "list", "--flow", "nope", "-o", "json")
    assert (code, json.loads(out)) == (0, [])


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["list", "--input", "amount"], 2, "not key=value"),
        (["list", "--since", "yesterday"], 2, "--since 'yesterday' is not a time"),
        (["list", "--until", "2026-13-40"], 2, "--until '2026-13-40' is not a time"),
        (["list", "--since", "2026-11-25T10:00", "--until", "2026-11-25T09:00"], 2, "after"),
        (["list", "--limit", "0"], 2, ""),
        (["list", "--after", "no-such-saga"], 3, "no-such-saga"),
        (["resume", "--status", "pending", "--rps", "0"], 2, "--rps must be above 0"),
        (["rollback", "--status", "pending", "--rps", "5000"], 2, "at most 1000"),
        (["rollback", "some-id", "--status", "failed"], 2, "not both"),
        (["rollback"], 2, "give a saga id, or filters"),
        (["rollback", "--limit", "3"], 2, "give a saga id, or filters"),
        (["resume", "--stuck", "--status", "pending"], 2, "--stuck chooses"),
        (["retry-step", "some-id"], 2, "needs a saga id and a step"),
        (["fork", "--status", "failed", "--from-step", "charge", "--input", "{}"], 2, "--set"),
        (["cancel", "--status", "pending", "--yes"], 3, "no saga matches the filter"),
        (["cancel", "--status", "pending", "--input", "x=1", "--yes"], 3, "no saga matches"),
    ],
    ids=[
        "input-without-equals",
        "bad-since",
        "bad-until",
        "since-after-until",
        "limit-0",
        "unknown-after",
        "rps-0",
        "rps-too-high",
        "id-and-filters",
        "neither",
        "paging-is-no-filter",
        "stuck-and-filters",
        "retry-without-step",
        "bulk-fork-input",
        "matches-nothing",
        "matches-nothing-composed",
    ],
)
def test_bad_input_and_empty_matches_exit_codes(
    store: SQLiteStore, args: list[str], code: int, says: str
) -> None:
    got, out, err = cli("orchestrate", *args)
    assert got == code, err
    assert says in " ".join(err.split())
    assert "Traceback" not in err


# --- bulk actions ---------------------------------------------------------------------------


def test_bulk_cancel_summary_json_and_refusals(store: SQLiteStore) -> None:
    pending = [stored(store), stored(store)]
    done = rolled_back(store)
    code, out, err = cli("orchestrate", "cancel", "--flow", "ops", "--yes", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert set(summary) == {
        "batch", "action", "matched", "acted", "skipped", "failed", "pending", "exit_code", "sagas",
    }  # fmt: skip
    assert all(set(s) == {"id", "outcome", "detail"} for s in summary["sagas"])
    assert {k: summary[k] for k in ("action", "matched", "acted", "skipped", "failed")} == {
        "action": "cancel",
        "matched": 3,
        "acted": 2,
        "skipped": 1,
        "failed": 0,
    }
    outcomes = {s["id"]: (s["outcome"], s["detail"]) for s in summary["sagas"]}
    assert outcomes[done][0] == SKIPPED and "nothing to cancel" in outcomes[done][1]
    for saga_id in pending:
        assert outcomes[saga_id][0] == ACTED
        assert store.load(saga_id).status is SagaStatus.ROLLED_BACK  # run here
        assert _count(store, saga_id, EventType.ROLLBACK_REQUESTED) == 1
    assert "3 saga(s) match" in err and "batch b-" in err
    # Again: every one is refused now, nothing is acted on: exit 4, text summary on stderr.
    code, out, err = cli("orchestrate", "cancel", "--flow", "ops", "--yes")
    assert code == 4 and out == ""
    assert "0 acted, 3 skipped, 0 failed" in err
    assert all(_count(store, s, EventType.ROLLBACK_REQUESTED) == 1 for s in pending)
    code, out, _ = cli("orchestrate", "batch", "list", "--json")
    assert [(b["action"], b["acted"], b["skipped"]) for b in json.loads(out)] == [
        ("cancel", 0, 3),
        ("cancel", 2, 1),
    ]


def test_bulk_retry_step_retries_each_sagas_failed_step(store: SQLiteStore) -> None:
    failed = [failed_on_notify(store), failed_on_notify(store)]
    other = stored(store)
    code, out, err = cli(
        "orchestrate", "retry-step", "--status", "failed", "--step", "notify", "--yes", "--json"
    )
    assert code == 0, err
    assert json.loads(out)["acted"] == 2
    for saga_id in failed:
        assert store.load(saga_id).status is SagaStatus.COMPLETED
        assert _count(store, saga_id, EventType.STEP_RETRY_REQUESTED) == 1
    assert store.load(other).status is SagaStatus.PENDING


def test_bulk_resume_and_fork(store: SQLiteStore) -> None:
    pending = [stored(store) for _ in range(3)]
    code, out, err = cli("orchestrate", "resume", "-s", "pending", "--rps", "100", "-y", "--json")
    assert code == 0 and json.loads(out)["acted"] == 3, err
    assert {store.load(s).status for s in pending} == {SagaStatus.COMPLETED}

    olds = [rolled_back(store), rolled_back(store)]
    code, out, err = cli(
        "orchestrate", "fork", "-s", "rolled_back", "--step", "charge", "--from-step", "reserve",
        "--yes", "--json",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["acted"] == 2
    for old in olds:
        [fork] = store.forks(old)
        assert store.load(fork).status is SagaStatus.COMPLETED
    # Forked already: each is refused the second time, and nothing is forked twice.
    code, _, err = cli(
        "orchestrate", "fork", "-s", "rolled_back", "--step", "charge", "--from-step", "reserve",
        "--yes",
    )  # fmt: skip
    assert code == 4 and "2 skipped" in err
    assert all(len(store.forks(old)) == 1 for old in olds)


def test_a_saga_that_fails_is_exit_1_and_the_others_go_on(store: SQLiteStore) -> None:
    good, damaged = stored(store), stored(store)
    store.conn.execute("UPDATE sagas SET input = 'not json' WHERE id = ?", (damaged,))
    code, out, _ = cli("orchestrate", "cancel", "--flow", "ops", "--yes", "--json")
    assert code == 1
    summary = json.loads(out)
    assert (summary["acted"], summary["failed"], summary["exit_code"]) == (1, 1, 1)
    [failure] = [s for s in summary["sagas"] if s["outcome"] == "failed"]
    assert failure["id"] == damaged and "damaged row" in failure["detail"]
    assert store.load(good).status is SagaStatus.ROLLED_BACK
    # A damaged input matches no --input filter, and never breaks a listing.
    assert cli("orchestrate", "list", "--input", "x=1", "-o", "ids")[:2] == (0, "")
    code, out, _ = cli("orchestrate", "list", "--error", "refused", "--step", "x", "--json")
    assert (code, json.loads(out)) == (0, [])
    code, out, _ = cli("orchestrate", "list", "--flow", "ops", "--json")
    assert "damaged row" in {r["id"]: r.get("damaged", "") for r in json.loads(out)}[damaged]


def test_a_retried_step_that_fails_again_is_still_acted_on(store: SQLiteStore) -> None:
    failed = failed_on_notify(store)
    FAILING.add("notify")  # the retried step fails again: the saga ends failed, acted on
    code, out, _ = cli("orchestrate", "retry-step", "--status", "failed", "--yes", "--json")
    assert code == 0 and json.loads(out)["acted"] == 1
    assert store.load(failed).status is SagaStatus.FAILED
    assert _count(store, failed, EventType.STEP_RETRY_REQUESTED) == 1
    # A services file that is not there: exit 5 before anything is matched or done.
    code, _, err = cli(
        "orchestrate", "retry-step", "--status", "failed", "--yes", "--services", "/nonexistent"
    )
    assert code == 5 and "Traceback" not in err
    assert _count(store, failed, EventType.STEP_RETRY_REQUESTED) == 1


# --- the question -----------------------------------------------------------------------------


def _in_terminal(db: Path, answer: str, *args: str) -> tuple[int, str]:
    """`sagalab orchestrate ARGS` with a terminal on stdin that answers `answer`."""
    leader, follower = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAGALAB_SERVICE")}
    env.update(PYTHONPATH=str(REPO), SAGALAB_DB=str(db))
    os.write(leader, answer.encode() + b"\n")
    proc = subprocess.run(
        [sys.executable, "-m", "sagalab.cli.main", "orchestrate", *args],
        stdin=follower,
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    os.close(follower)
    os.close(leader)
    return proc.returncode, proc.stderr


def test_the_question_is_asked_in_a_terminal(store: SQLiteStore) -> None:
    saga_id = checkout_saga(store.path)
    code, err = _in_terminal(store.path, "n", "cancel", "--status", "pending")
    assert code == 4 and "cancel these 1 saga(s)?" in err and "nothing done" in err
    assert _count(store, saga_id, EventType.ROLLBACK_REQUESTED) == 0
    code, err = _in_terminal(store.path, "y", "cancel", "--status", "pending")
    assert code == 0, err
    assert _count(store, saga_id, EventType.ROLLBACK_REQUESTED) == 1


def test_no_terminal_and_no_yes_is_exit_2(store: SQLiteStore) -> None:
    saga_id = stored(store)
    code, _, err = cli("orchestrate", "rollback", "--status", "pending")
    assert code == 2 and "pass --yes" in err
    assert _count(store, saga_id, EventType.ROLLBACK_REQUESTED) == 0


# --- breakers -------------------------------------------------------------------------------


def _force_open(db: Path, service: str, opened: float) -> None:
    conn = sqlite3.connect(db)
    with conn:
        conn.execute(
            "INSERT INTO breakers (name, state, fail_counter, opened_time, updated_at) "
            "VALUES (?, 'open', 5, ?, ?)",
            (service, opened, opened),
        )
    conn.close()


def test_redrive_into_an_open_breaker_is_skipped(store: SQLiteStore) -> None:
    sagas = [checkout_saga(store.path) for _ in range(2)]
    _force_open(store.path, "inventory", time.time())
    before = [len(store.journal(s)) for s in sagas]
    code, out, _ = cli("orchestrate", "resume", "--flow", "checkout", "--yes", "--json")
    assert code == 4
    summary = json.loads(out)
    assert [s["detail"] for s in summary["sagas"]] == ["breaker open: inventory"] * 2
    code, out, _ = cli(
        "orchestrate", "resume", "--flow", "checkout", "--yes", "--json",
        "--wait-breaker", "--wait-timeout", "0.3",
    )  # fmt: skip
    assert code == 4
    assert "still open after waiting 0.3s" in json.loads(out)["sagas"][0]["detail"]
    assert [len(store.journal(s)) for s in sagas] == before  # nothing was sent or written
    # Once the breaker is closed, they are resumed: queued for the workers (this process
    # knows no service to run them with).
    states = open_breaker_store(store.path)
    states.reset("inventory", now=time.time())
    states.close()
    code, out, _ = cli("orchestrate", "resume", "--flow", "checkout", "--yes", "--json")
    assert code == 0
    assert [s["detail"].split(":")[0] for s in json.loads(out)["sagas"]] == ["queued"] * 2
    # Rollbacks do not redrive: they go on whatever the breaker says.
    _force_open(store.path, "payments", time.time())
    code, out, _ = cli("orchestrate", "rollback", "--flow", "checkout", "--yes", "--json")
    assert code == 0 and json.loads(out)["acted"] == 2


def test_breaker_gate_waits_for_the_breaker_and_sees_its_timeout(store: SQLiteStore) -> None:
    _force_open(store.path, "payments", 1000.0)
    states = open_breaker_store(store.path)
    now = [1001.0]
    configs = {"payments": BreakerConfig(reset_timeout=30.0)}

    def sleep(seconds: float) -> None:
        now[0] += seconds
        if now[0] > 1002.0:
            states.reset("payments", now=now[0])  # an operator closes it meanwhile

    try:
        assert BreakerGate(states, configs, clock=lambda: now[0]).refusal("payments") == (
            "breaker open: payments"
        )
        assert BreakerGate(states, configs, clock=lambda: 1031.0).refusal("payments") is None
        gate = BreakerGate(states, configs, wait=10.0, clock=lambda: now[0], sleep=sleep)
        assert gate.refusal("payments") is None and 1002.0 < now[0] < 1003.0
        assert gate.refusal("inventory") is None  # no breaker of that name: closed
    finally:
        states.close()


def test_next_service_follows_the_action(store: SQLiteStore) -> None:
    saga_id = checkout_saga(store.path)
    _, _, state = store.state(saga_id)
    assert next_service(state, "resume") == "inventory"
    assert next_service(state, "fork", "charge_payment") == "payments"
    assert next_service(state, "retry-step") is None  # not failed: nothing to retry
    assert ops_flow().steps[0].service is None


# --- a batch killed halfway -------------------------------------------------------------------


def _orchestrate(db: str | Path, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAGALAB_SERVICE")}
    env.update(PYTHONPATH=str(REPO), SAGALAB_DB=str(db))
    return subprocess.Popen(
        [sys.executable, "-m", "sagalab.cli.main", "orchestrate", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )


def test_a_batch_killed_halfway_resumes_acting_on_each_saga_once(store: SQLiteStore) -> None:
    sagas = [checkout_saga(store.path) for _ in range(12)]
    proc = _orchestrate(store.path, "cancel", "--flow", "checkout", "--yes", "--rps", "4")
    deadline = time.monotonic() + 30
    done = 0
    while time.monotonic() < deadline:
        batches = store.list_batches()
        done = len([i for i in batches[0].items if i.outcome == ACTED]) if batches else 0
        if done >= 4:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    [batch] = store.list_batches()
    left = batch.pending()
    assert done >= 4 and 0 < len(left) < 12 and batch.finished_at is None

    again = _orchestrate(store.path, "batch", "resume", batch.id, "--rps", "200", "--json")
    out, err = again.communicate(timeout=60)
    assert again.returncode == 0, err
    summary = json.loads(out)
    assert (summary["matched"], summary["pending"], summary["failed"]) == (12, 0, 0)
    for saga_id in sagas:  # one operator event per saga, whatever run acted on it
        assert _count(store, saga_id, EventType.ROLLBACK_REQUESTED) == 1
    finished = store.load_batch(batch.id)
    assert finished.finished_at is not None and not finished.pending()
    # A finished batch resumed again acts on nothing.
    again = _orchestrate(store.path, "batch", "resume", batch.id, "--json")
    out, _ = again.communicate(timeout=60)
    assert json.loads(out)["acted"] == summary["acted"]
    assert all(_count(store, s, EventType.ROLLBACK_REQUESTED) == 1 for s in sagas)


def test_two_runs_of_one_batch_at_once_act_on_each_saga_once(store: SQLiteStore) -> None:
    """`batch resume ID` while the batch's first run goes on: the two share its sagas (a
    claim on each item) instead of both acting on every one, the later run's action then
    refused and recorded over the earlier's ACTED as SKIPPED."""
    sagas = [checkout_saga(store.path) for _ in range(20)]
    first = _orchestrate(store.path, "cancel", "--flow", "checkout", "--yes", "--rps", "5")

    def started() -> str | None:
        batches = store.list_batches()
        return batches[0].id if batches and batches[0].items[0].outcome == ACTED else None

    deadline = time.monotonic() + 30
    while (batch_id := started()) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert batch_id is not None and first.poll() is None  # the first run is acting
    second = _orchestrate(store.path, "batch", "resume", batch_id, "--rps", "5")
    for run in (first, second):
        _, err = run.communicate(timeout=60)
        assert run.returncode == 0, err
    batch = store.load_batch(batch_id)
    outcomes = [(i.outcome, i.detail) for i in batch.items]
    assert all(o == ACTED for o, _ in outcomes), outcomes
    assert batch.finished_at is not None
    assert all(_count(store, s, EventType.ROLLBACK_REQUESTED) == 1 for s in sagas)


def test_a_bulk_fork_set_may_name_each_sagas_own_input() -> None:
    payload = {"order_id": "o-7", "amount": 120}
    sets = ("input.order_id={input.order_id}-r1", 'input.note={"a": 1}', "input.x={input.amount}")
    assert own_sets(sets, payload) == [
        "input.order_id=o-7-r1",
        'input.note={"a": 1}',
        "input.x=120",
    ]
    with pytest.raises(KeyError):
        own_sets(("input.a={input.nope}",), payload)


def test_list_and_a_bulk_batch_on_postgresql(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("SAGALAB_SERVICE"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("SAGALAB_DB", pg_url)
    payload = {"order_id": "o1", "customer_id": "c", "sku": "A", "quantity": 1, "amount": 5}
    proc = _orchestrate(pg_url, "run", "checkout", "--json", "-i", json.dumps(payload))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    saga_id = json.loads(out)["id"]
    code, out, _ = cli("orchestrate", "list", "--input", "amount=5", "-s", "pending", "-o", "ids")
    assert (code, out.split()) == (0, [saga_id])
    code, out, err = cli("orchestrate", "cancel", "--input", "order_id=o1", "--yes", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert (summary["matched"], summary["acted"]) == (1, 1)
    code, out, _ = cli("orchestrate", "batch", "show", summary["batch"], "--json")
    assert code == 0 and json.loads(out)["sagas"][0]["outcome"] == ACTED
    # A damaged input (not JSON) matches no --input filter and breaks no query.
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE sagas SET input = 'not json', steps = 'nor this' WHERE id = %s", (saga_id,)
        )
    for args in (["--input", "amount=5"], ["--step", "charge_payment"], ["--error", "x"]):
        assert cli("orchestrate", "list", *args, "-o", "ids")[:2] == (0, "")
    code, out, _ = cli("orchestrate", "list", "-o", "ids")
    assert (code, out.split()) == (0, [saga_id])

"""Workers never die of one saga, back off while the database fails, and stop when its file
is deleted under them: real `sagalab worker` subprocesses, real fake services over HTTP, real
SQLite files (on a real, small tmpfs for the full disk)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from apilab import admin_api
from typer.testing import CliRunner
from workerlab import Workers, enqueue, journal, order, plant, query, statuses, wait_for

from sagalab.cli.main import app
from sagalab.fakeservices import FaultSpec, RunningServices
from sagalab.orchestrator.executors import AttemptContext, AttemptOutcome, HttpExecutor
from sagalab.orchestrator.flow import flow_from_dict
from sagalab.orchestrator.flowfile import load_flow
from sagalab.orchestrator.jsonsafe import loads_strict
from sagalab.orchestrator.runner import SagaRunner, new_saga_id, new_trace_id, start_saga
from sagalab.orchestrator.saga import EventType, Phase, SagaStatus
from sagalab.orchestrator.sqlite_store import SQLiteStore
from sagalab.orchestrator.worker import Worker, WorkerConfig, WorkerFailed

FAST = ("--poll", "0.05", "--lease", "2")


def test_a_poison_saga_is_rolled_back_with_its_reason_and_the_next_one_completes(
    tmp_path: Path, services: RunningServices
) -> None:
    db = tmp_path / "sagas.db"
    poison = plant(db, {**order(1), "amount": float("nan")})
    (normal,) = enqueue(db, [order(2)])
    workers = Workers(db, services.env, tmp_path / "logs")
    try:
        w = workers.start("--concurrency", "1", "--exit-when-idle", "1.5", "--json", *FAST)
        assert w.proc.wait(timeout=60) == 0, w.stderr()
    finally:
        workers.stop_all()
    rows = dict(query(db, "SELECT id, status FROM sagas"))
    assert rows == {poison: "rolled_back", normal: "completed"}
    (reason,) = query(db, "SELECT reason FROM sagas WHERE id = ?", (poison,))[0]
    assert "charge_payment" in reason and "nan" in reason.lower(), reason
    failed = [
        e.event
        for e in journal(db, poison)
        if e.event.type is EventType.ATTEMPT_FAILED and e.event.step == "charge_payment"
    ]
    assert len(failed) == 1, "refused once, for good: never retried"
    assert failed[0].failure is not None
    assert not failed[0].failure.retryable and not failed[0].failure.maybe_applied
    compensated = [
        e.event.step
        for e in journal(db, poison)
        if e.event.type is EventType.ATTEMPT_SUCCEEDED and e.event.phase == "compensation"
    ]
    assert compensated == ["reserve_inventory"]
    assert w.summary()["finished"] == {"completed": 1, "rolled_back": 1}


# -- a full disk --------------------------------------------------------------------------


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str) -> Iterator[Path]:
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(folder: Path) -> Path:
    """Write a file until the file system is full; return it (delete it to free the space)."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 4096, 512, 1):  # down to the last byte
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_makes_workers_back_off_then_finish_when_space_is_freed(
    tmp_path: Path, services: RunningServices
) -> None:
    with small_tmpfs(tmp_path / "disk", "2m") as disk:
        db = disk / "sagas.db"
        SQLiteStore(db).close()
        workers = Workers(db, services.env, tmp_path / "logs")
        try:
            # Idle workers first (connections open), then the disk fills, then sagas fall due.
            w = workers.start("--concurrency", "2", "--exit-when-idle", "3", "--json", *FAST)
            wait_for(lambda: "worker " in w.stderr(), 20, "the worker to start")
            due = time.time() + 1.0
            store = SQLiteStore(db)
            flow = load_flow("checkout")
            ids = [
                store.create_saga(
                    saga_id=new_saga_id(),
                    flow=flow,
                    payload=order(n),
                    trace_id=new_trace_id(),
                    idempotency_key=None,
                    now=time.time(),
                    run_after=due,
                )[0].id
                for n in range(6)
            ]
            store.close()
            filler = fill(disk)
            # Anything said after the start line is the worker meeting the full disk.
            wait_for(lambda: len(w.stderr().splitlines()) > 1, 30, "the worker to hit the disk")
            time.sleep(0.5)  # the workers go on failing for a while: no stall, no death
            assert w.alive(), w.stderr()
            filler.unlink()
            assert w.proc.wait(timeout=60) == 0, w.stderr()
        finally:
            workers.stop_all()
        counts = statuses(db)
        assert counts.get("completed", 0) == len(ids), (counts, w.stderr())
        err = w.stderr()
        # Logged once per change of state, not per retry; exit 0 also says no thread died.
        changes = err.count("unavailable")
        assert 1 <= changes == err.count("available again"), err
        assert changes < w.summary()["errors"], err


def test_breaker_storage_errors_make_workers_back_off_not_die(
    tmp_path: Path, services: RunningServices
) -> None:
    db = tmp_path / "sagas.db"
    ids = enqueue(db, [order(n) for n in range(4)])
    # The breaker table refuses writes with a raw sqlite3 error, as a full disk would.
    failing = "CREATE TRIGGER full BEFORE INSERT ON breakers BEGIN SELECT RAISE(ABORT, 'full'); END"
    query(db, failing)
    workers = Workers(db, services.env, tmp_path / "logs")
    try:
        w = workers.start("--concurrency", "2", "--exit-when-idle", "2", "--json", *FAST)
        wait_for(lambda: len(w.stderr().splitlines()) > 1, 30, "the worker to hit the breakers")
        assert w.alive(), w.stderr()
        query(db, "DROP TRIGGER full")
        assert w.proc.wait(timeout=60) == 0, w.stderr()
    finally:
        workers.stop_all()
    assert statuses(db) == {"completed": len(ids)}, w.stderr()
    err = w.stderr()
    assert "breaker storage" in err and err.count("unavailable") == 1, err
    assert "Traceback" not in err


# -- the database file deleted under a running worker -------------------------------------


def test_a_deleted_database_file_stops_the_worker_with_the_reason_and_no_more_writes(
    tmp_path: Path, services: RunningServices
) -> None:
    db = tmp_path / "sagas.db"
    services.lab.add_fault(FaultSpec(service="payments", latency_ms=1500))
    ids = enqueue(db, [order(n) for n in range(3)])
    workers = Workers(db, services.env, tmp_path / "logs")
    try:
        w = workers.start("--concurrency", "1", *FAST)

        def charging() -> bool:
            last = journal(db, ids[0])[-1].event
            return last.type is EventType.ATTEMPT_STARTED and last.step == "charge_payment"

        wait_for(charging, 30, "the payment call to start")
        # While the worker waits on the slow call: count, keep the files readable through our
        # own descriptors (as the worker's are), and delete them as `rm sagas.db*` would.
        events_before = count_events(db)
        fds = {suffix: os.open(f"{db}{suffix}", os.O_RDONLY) for suffix in ("", "-wal")}
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink()
        code = w.proc.wait(timeout=20)
    finally:
        workers.stop_all()
    assert code == 5, "a database error (README: exit 5)"
    err = w.stderr()
    assert "was deleted" in err and "restart the worker" in err, err
    assert len([line for line in err.splitlines() if "was deleted" in line]) == 1, err
    assert "Traceback" not in err
    # What the deleted file holds now, read through the descriptors kept open.
    old = tmp_path / "old.db"
    for suffix, fd in fds.items():
        with open(f"/proc/self/fd/{fd}", "rb") as src:
            Path(f"{old}{suffix}").write_bytes(src.read())
        os.close(fd)
    assert count_events(old) == events_before, "nothing more was written into the deleted file"
    assert journal(old, ids[0])[-1].event.type is EventType.ATTEMPT_STARTED
    assert not db.exists(), "and no new file was made at the path"


def count_events(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])
    finally:
        conn.close()


# -- in one process: a saga that cannot be replayed, a thread that dies ------------------


def worker_for(db: Path, services: RunningServices, **overrides: object) -> Worker:
    config = WorkerConfig(
        db=db,
        services=load_services_from(services),
        concurrency=1,
        lease_seconds=2.0,
        poll_interval=0.05,
        exit_when_idle=1.0,
        max_seconds=30,
    )
    return Worker(config, **overrides)  # type: ignore[arg-type]


def load_services_from(services: RunningServices) -> dict[str, str]:
    prefix = "SAGALAB_SERVICE_"
    return {
        k.removeprefix(prefix).lower(): v for k, v in services.env.items() if k.startswith(prefix)
    }


def test_a_saga_whose_journal_cannot_be_replayed_is_parked_with_its_reason(
    tmp_path: Path, services: RunningServices
) -> None:
    db = tmp_path / "sagas.db"
    broken, normal = enqueue(db, [order(1), order(2)])
    # A journal this code cannot fold (an old or damaged database): completed before it ran.
    query(
        db,
        "INSERT INTO events (saga_id, seq, type, attempt, at, trace_id) "
        "SELECT id, 2, 'saga_completed', 0, 0, trace_id FROM sagas WHERE id = ?",
        (broken,),
    )
    query(db, "UPDATE sagas SET last_seq = 2 WHERE id = ?", (broken,))
    stats = worker_for(db, services).run()
    assert stats.finished == {"completed": 1}
    assert stats.errors == 1
    row = query(
        db, "SELECT status, run_after, lease_owner, reason FROM sagas WHERE id = ?", (broken,)
    )
    status, run_after, owner, reason = row[0]
    assert (run_after, owner) == (None, None), "off the queue, for an operator"
    assert "parked" in reason and "InvalidTransition" in reason and broken in reason
    assert status != "completed"
    assert query(db, "SELECT status FROM sagas WHERE id = ?", (normal,)) == [("completed",)]


def test_a_thread_that_dies_stops_the_worker_with_the_reason(
    tmp_path: Path, services: RunningServices
) -> None:
    db = tmp_path / "sagas.db"
    enqueue(db, [order(1)])

    def broken_factory() -> HttpExecutor:
        raise RuntimeError("cannot build a client")

    worker = worker_for(db, services, executor_factory=broken_factory)
    with pytest.raises(
        WorkerFailed, match="worker thread worker-0 died: RuntimeError: cannot build"
    ):
        worker.run()


class RaisingExecutor:
    """An executor with a bug: it raises for the step named `bad` (executors must not)."""

    def execute(self, ctx: AttemptContext) -> AttemptOutcome:
        if ctx.step.name == "bad" and ctx.phase is Phase.ACTION:
            raise ValueError("Out of range float values are not JSON compliant")
        return AttemptOutcome(response={"ok": ctx.step.name})


def test_an_executor_that_raises_fails_the_attempt_for_good_and_the_saga_rolls_back(
    tmp_path: Path,
) -> None:
    flow = flow_from_dict(
        {
            "name": "raising",
            "steps": [
                {"name": "first", "handler": "x", "compensation_handler": "y"},
                {"name": "bad", "handler": "x", "compensation_handler": "y"},
            ],
        }
    )
    store = SQLiteStore(tmp_path / "s.db")
    record, _ = start_saga(store, flow, {})
    result = SagaRunner(store, RaisingExecutor(), sleep=lambda s: None).run(record.id)
    assert result.status is SagaStatus.ROLLED_BACK
    failed = [e.event for e in store.journal(record.id) if e.event.type is EventType.ATTEMPT_FAILED]
    assert len(failed) == 1 and failed[0].failure is not None
    assert failed[0].failure.error.startswith("executor error: ValueError")
    assert not failed[0].failure.retryable and failed[0].failure.maybe_applied
    undone = [
        e.event.step
        for e in store.journal(record.id)
        if e.event.type is EventType.ATTEMPT_SUCCEEDED and e.event.phase is Phase.COMPENSATION
    ]
    assert undone == ["bad", "first"], "maybe applied, so compensated too, in reverse"


def test_a_poison_saga_already_stored_is_shown_not_a_500_or_a_traceback(tmp_path: Path) -> None:
    """An old database may hold NaN in a saga's input: reads show it, they never crash."""
    db = tmp_path / "sagas.db"
    poison = plant(db, {**order(1), "amount": float("nan")})
    with admin_api(db) as client:
        one = client.get(f"/v1/sagas/{poison}")
        listed = client.get("/v1/sagas")
    assert one.status_code == 200, one.text
    assert one.json()["id"] == poison
    assert listed.status_code == 200 and [s["id"] for s in listed.json()["items"]] == [poison]
    for verb in ("status", "list", "events"):
        args = [verb, poison] if verb != "list" else [verb]
        result = CliRunner().invoke(app, ["orchestrate", *args, "--db", str(db), "--json"])
        assert result.exit_code == 0, (verb, result.output)
        assert "Traceback" not in result.output
        loads_strict(result.stdout)  # JSON any reader takes: no bare NaN

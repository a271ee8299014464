"""Real `sagalab worker` processes against the fake services over HTTP on 127.0.0.1.

Each test starts workers as subprocesses sharing one SQLite file, and kills or stops them
with real signals. Waits are bounded polls on the database.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
from workerlab import (
    Workers,
    children_of,
    drained,
    enqueue,
    journal,
    order,
    owner_pid,
    query,
    statuses,
    wait_for,
)

from sagalab.fakeservices import FaultSpec, RunningServices, applied_twice
from sagalab.orchestrator.limits import MAX_REPLICAS
from sagalab.orchestrator.saga import EventType, Phase
from sagalab.orchestrator.supervisor import Supervisor, SupervisorConfig

FAST = ("--poll", "0.05")


def ledger_counts(services: RunningServices) -> dict[tuple[str, str], int]:
    counts: dict[tuple[str, str], int] = {}
    for e in services.lab.ledger():
        counts[(e.service, e.operation)] = counts.get((e.service, e.operation), 0) + 1
    return counts


def test_two_replicas_drain_a_queue(db: Path, services: RunningServices, workers: Workers) -> None:
    n = 24
    services.lab.add_fault(FaultSpec(service="payments", latency_ms=30))
    a = workers.start("--concurrency", "2", "--json", *FAST)
    b = workers.start("--concurrency", "2", "--json", *FAST)
    # Both replicas up before there is work (on a loaded machine the first would otherwise
    # drain the queue while the second starts); they wake on the queue's notifications.
    wait_for(lambda: all("thread(s)" in w.stderr() for w in (a, b)), 60, "both workers to start")
    ids = enqueue(db, [order(i) for i in range(n)])
    wait_for(lambda: statuses(db) == {"completed": n}, 60, "every saga to complete")
    for w in (a, b):
        w.proc.send_signal(signal.SIGTERM)
    for w in (a, b):
        assert w.proc.wait(timeout=60) == 0, w.stderr()
    summaries = [a.summary(), b.summary()]
    assert sum(s["claimed"] for s in summaries) == n
    assert all(s["claimed"] > 0 for s in summaries), "both replicas took sagas"
    assert sum(s["finished"].get("completed", 0) for s in summaries) == n
    assert all(s["lost_leases"] == s["errors"] == 0 for s in summaries)
    assert applied_twice(services.lab.ledger()) == []
    assert ledger_counts(services) == {
        (svc, "action"): n for svc in ("inventory", "payments", "shipping", "notifications")
    }
    # Off the queue and unleased once done.
    assert query(db, "SELECT COUNT(*) FROM sagas WHERE run_after IS NOT NULL")[0][0] == 0
    assert query(db, "SELECT COUNT(*) FROM sagas WHERE lease_owner IS NOT NULL")[0][0] == 0
    assert len(set(ids)) == n


def test_a_killed_workers_saga_is_resumed_by_another_after_its_lease_expires(
    db: Path, services: RunningServices, workers: Workers
) -> None:
    lease = 1.5
    services.lab.add_fault(FaultSpec(service="shipping", latency_ms=1200))
    (saga,) = enqueue(db, [order(1)])
    a = workers.start("--concurrency", "1", "--lease", str(lease), *FAST)

    def shipping_in_flight() -> bool:
        last = journal(db, saga)[-1].event
        return last.type is EventType.ATTEMPT_STARTED and last.step == "create_shipment"

    wait_for(shipping_in_flight, 30, "the shipping call to start")
    a.kill()
    owner, lease_until = query(db, "SELECT lease_owner, lease_until FROM sagas")[0]
    assert owner_pid(owner) == a.pid
    # b waits up to a whole lease for a's to run out with nothing to do: it must not give up
    # (exit when idle) before then, however fast it starts.
    b = workers.start(
        "--concurrency", "1", "--lease", str(lease), "--exit-when-idle", str(lease + 2.0),
        "--json", *FAST,
    )  # fmt: skip
    b_ready = b.ready()
    assert b.proc.wait(timeout=60) == 0, b.stderr()
    assert statuses(db) == {"completed": 1}
    # It claims twice: the resume closes the interrupted attempt and schedules a retry
    # (released until due), then runs the retry.
    assert b.summary()["finished"] == {"completed": 1}
    shipping = [e.event for e in journal(db, saga) if e.event.step == "create_shipment"]
    assert all(e.phase is Phase.ACTION for e in shipping)
    shipping = [e for e in shipping if e.type is not EventType.RETRY_SCHEDULED]
    kinds = [(e.type, e.attempt) for e in shipping]
    assert kinds == [
        (EventType.ATTEMPT_STARTED, 1),
        (EventType.ATTEMPT_FAILED, 1),  # closed as interrupted by the new owner
        (EventType.ATTEMPT_STARTED, 2),
        (EventType.ATTEMPT_SUCCEEDED, 2),
    ]
    assert shipping[1].failure is not None and "interrupted" in shipping[1].failure.error
    # The resume waited for the dead worker's lease to run out, and not much longer.
    assert shipping[1].at >= lease_until
    # ... and took over within a poll of when it could: the later of the lease's end and b's
    # start (a loaded machine takes seconds to start a process). Waiting out a second lease
    # (a renewed or misread one) would fail this.
    assert shipping[1].at - max(lease_until, b_ready) < 2 * lease
    # The call in flight at the kill and its retry carry one key: shipped once.
    assert applied_twice(services.lab.ledger()) == []
    assert ledger_counts(services)[("shipping", "action")] == 1


def test_supervisor_replaces_a_killed_replica(
    db: Path, services: RunningServices, workers: Workers
) -> None:
    sup = workers.start("--replicas", "2", "--concurrency", "2", "--lease", "1.5", *FAST)
    first = wait_for(lambda: len(children_of(sup.pid)) == 2 and children_of(sup.pid), 30, "2")
    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    replaced = wait_for(
        lambda: (c := children_of(sup.pid)) and len(c) == 2 and victim not in c and c,
        30,
        "the supervisor to start a replacement",
    )
    assert len(replaced - first) == 1
    # The replicas (old and new) do work.
    n = 10
    enqueue(db, [order(i) for i in range(n)])
    wait_for(drained(db, n), 60, "the queue to drain")
    assert statuses(db) == {"completed": n}
    sup.proc.send_signal(signal.SIGTERM)
    assert sup.proc.wait(timeout=30) == 0, sup.stderr()
    assert children_of(sup.pid) == set()
    assert "1 replica restart" in sup.stderr()


def test_autoscaling_scales_up_with_a_backlog_and_journals_it(
    db: Path, services: RunningServices, workers: Workers
) -> None:
    services.lab.add_fault(FaultSpec(service="inventory", latency_ms=150))
    n = 40
    enqueue(db, [order(i) for i in range(n)])
    sup = workers.start(
        "--replicas", "auto", "--min", "1", "--max", "3", "--target-depth", "5",
        "--cooldown", "0.5", "--concurrency", "1", "--json", *FAST,
    )  # fmt: skip
    wait_for(lambda: len(children_of(sup.pid)) >= 2, 30, "a second replica")
    wait_for(drained(db, n), 90, "the backlog to drain")
    # With the backlog gone it steps back down to the minimum.
    wait_for(
        lambda: (
            query(db, "SELECT replicas_to FROM scaling_events ORDER BY at DESC LIMIT 1") == [(1,)]
        ),
        30,
        "a scale down to 1",
    )
    sup.proc.send_signal(signal.SIGTERM)
    assert sup.proc.wait(timeout=30) == 0, sup.stderr()
    events = query(db, "SELECT replicas_from, replicas_to, depth, reason FROM scaling_events")
    ups = [e for e in events if e[1] > e[0]]
    downs = [e for e in events if e[1] < e[0]]
    assert ups and downs
    assert ups[0][0] == 1 and ups[0][2] > 5, "the first scale-up came from the backlog"
    assert max(e[1] for e in events) <= 3
    assert all(e[3].startswith(("scale up", "scale down")) for e in events)
    assert "replicas 1 -> " in sup.stderr()
    assert statuses(db) == {"completed": n}
    assert applied_twice(services.lab.ledger()) == []


def test_sigterm_finishes_the_saga_in_hand_and_exits_zero(
    db: Path, services: RunningServices, workers: Workers
) -> None:
    services.lab.add_fault(FaultSpec(service="shipping", latency_ms=800))
    (saga,) = enqueue(db, [order(1)])
    w = workers.start("--concurrency", "1", "--json", *FAST)

    def shipping_in_flight() -> bool:
        last = journal(db, saga)[-1].event
        return last.type is EventType.ATTEMPT_STARTED and last.step == "create_shipment"

    wait_for(shipping_in_flight, 30, "the shipping call to start")
    (later,) = enqueue(db, [order(2)])
    w.proc.send_signal(signal.SIGTERM)
    assert w.proc.wait(timeout=30) == 0, w.stderr()
    summary = w.summary()
    assert summary["finished"] == {"completed": 1}
    assert summary["claimed"] == 1
    rows = dict(
        (r[0], r[1:]) for r in query(db, "SELECT id, status, lease_owner, run_after FROM sagas")
    )
    assert rows[saga] == ("completed", None, None)
    assert rows[later][:2] == ("pending", None), "a stopping worker takes nothing new"
    assert rows[later][2] is not None, "and leaves it queued"


@pytest.mark.parametrize(
    ("args", "bound"),
    [
        (["--replicas", str(MAX_REPLICAS + 1)], f"--replicas {MAX_REPLICAS + 1} is over the limit"),
        (["--replicas", "auto", "--max", str(MAX_REPLICAS + 1)], "--max"),
        (["--replicas", "2", "--concurrency", "65"], "--concurrency 65 is over the limit of 64"),
        (["--replicas", "2", "--concurrency", "0"], "--concurrency 0 is under the minimum of 1"),
        (["--replicas", "2", "--grace", "1e9"], "--grace"),
        (["--replicas", "many"], "--replicas takes a number"),
    ],
    ids=["replicas", "auto-max", "concurrency-high", "concurrency-zero", "grace", "not-a-number"],
)
def test_out_of_bound_options_are_refused_in_one_line_before_anything_starts(
    args: list[str], bound: str, db: Path, workers: Workers
) -> None:
    w = workers.start(*args)
    assert w.proc.wait(timeout=30) == 2
    lines = w.stderr().strip().splitlines()
    assert len(lines) == 1 and bound in lines[0], lines
    assert not db.exists(), "a refused command creates no database"


def test_supervisor_sigterm_kills_replicas_that_ignore_it_after_the_grace(tmp_path: Path) -> None:
    """Three replicas that ignore SIGTERM: the supervisor stops within grace + a margin."""
    ready = tmp_path / "ready"
    ready.mkdir()
    child = [
        sys.executable,
        "-c",
        "import os, signal, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "open(os.path.join(sys.argv[1], str(os.getpid())), 'w').close()\n"
        "time.sleep(120)\n",
        str(ready),
    ]
    grace = 1.0
    sup = Supervisor(
        SupervisorConfig(db=tmp_path / "sagas.db", child_command=child, replicas=3, grace=grace)
    )
    runner = threading.Thread(target=sup.run)
    runner.start()
    try:
        pids = wait_for(
            lambda: len(os.listdir(ready)) == 3 and {int(p) for p in os.listdir(ready)},
            30,
            "three replicas ignoring SIGTERM",
        )
        asked = time.monotonic()
        sup.stop.set()
        runner.join(timeout=grace + 10)
        took = time.monotonic() - asked
        assert not runner.is_alive()
        assert grace <= took < grace + 3.0, took
        assert not any(Path(f"/proc/{p}").exists() for p in pids), "every replica is gone"
    finally:
        sup.stop.set()
        runner.join(timeout=30)


def test_worker_sigterm_stops_a_replica_mid_saga_within_the_grace(
    db: Path, services: RunningServices, workers: Workers
) -> None:
    """`worker --replicas 2 --grace 1`: a replica in a slow call is killed after 1 s."""
    services.lab.add_fault(FaultSpec(service="shipping", latency_ms=20_000))
    (saga,) = enqueue(db, [order(1)])
    sup = workers.start("--replicas", "2", "--concurrency", "1", "--grace", "1", *FAST)

    def shipping_in_flight() -> bool:
        last = journal(db, saga)[-1].event
        return last.type is EventType.ATTEMPT_STARTED and last.step == "create_shipment"

    wait_for(shipping_in_flight, 30, "the shipping call to start")
    replicas = children_of(sup.pid)
    assert len(replicas) == 2
    asked = time.monotonic()
    sup.proc.send_signal(signal.SIGTERM)
    sup.proc.wait(timeout=20)
    assert time.monotonic() - asked < 1.0 + 3.0
    assert not any(Path(f"/proc/{p}").exists() for p in replicas)

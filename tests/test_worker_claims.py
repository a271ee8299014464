"""A worker claims for all of its idle threads in one transaction, never for more threads
than it has, and gives back what it claimed but did not start (issue 14, "more workers are
never slower"). In one process, on real SQLite files, with an executor held at a gate."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from workerlab import query, wait_for

from sagalab.orchestrator.executors import AttemptContext, AttemptOutcome
from sagalab.orchestrator.flow import FlowDefinition, flow_from_dict
from sagalab.orchestrator.handout import Hand
from sagalab.orchestrator.runner import start_saga
from sagalab.orchestrator.sqlite_store import SQLiteStore
from sagalab.orchestrator.store import Lease
from sagalab.orchestrator.worker import Worker, WorkerConfig


def one_step_flow() -> FlowDefinition:
    return flow_from_dict(
        {"name": "gated", "steps": [{"name": "only", "handler": "x", "compensation_handler": "y"}]}
    )


def queue(db: Path, n: int) -> list[str]:
    store = SQLiteStore(db)
    try:
        flow = one_step_flow()
        return [start_saga(store, flow, {"n": i}, now=time.time() - 10 + i)[0].id for i in range(n)]
    finally:
        store.close()


class Gate:
    """An executor whose calls wait until the gate opens; counts the calls waiting."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.entered = 0
        self.lock = threading.Lock()

    def execute(self, ctx: AttemptContext) -> AttemptOutcome:
        with self.lock:
            self.entered += 1
        self.open.wait(30)
        return AttemptOutcome(response={"ok": ctx.step.name})


def worker(db: Path, gate: Gate, *, concurrency: int) -> Worker:
    config = WorkerConfig(
        db=db,
        services={},
        concurrency=concurrency,
        lease_seconds=30.0,
        poll_interval=0.05,
        exit_when_idle=0.5,
        max_seconds=30,
        use_breakers=False,
    )
    return Worker(config, executor_factory=lambda: gate)


def test_idle_threads_get_their_sagas_from_one_claim_and_no_more_are_leased(
    tmp_path: Path,
) -> None:
    db = tmp_path / "sagas.db"
    queue(db, 6)
    gate = Gate()
    w = worker(db, gate, concurrency=4)
    runner = threading.Thread(target=w.run)
    runner.start()
    try:
        wait_for(lambda: gate.entered == 4, 10, "four threads in a call")
        leased = query(
            db,
            "SELECT lease_owner, COUNT(*), COUNT(DISTINCT lease_until) FROM sagas "
            "WHERE lease_owner IS NOT NULL GROUP BY lease_owner",
        )
        # One statement leased all four (one `until`), and no saga waits leased in a hand
        # with no thread free to run it: the other two are still free for other workers.
        assert leased == [(w.owner, 4, 1)]
    finally:
        gate.open.set()
        runner.join(timeout=30)
    assert not runner.is_alive()
    assert w.stats.finished == {"completed": 6} and w.stats.claimed == 6
    assert query(db, "SELECT COUNT(*) FROM sagas WHERE lease_owner IS NOT NULL") == [(0,)]


def test_leases_left_in_the_hand_at_stop_are_given_back_due_now(tmp_path: Path) -> None:
    db = tmp_path / "sagas.db"
    ids = queue(db, 3)
    w = worker(db, Gate(), concurrency=2)
    store = SQLiteStore(db)
    try:
        claimed = store.claim_due(w.owner, now=time.time(), lease_seconds=30.0, limit=2)
    finally:
        store.close()
    assert len(claimed) == 2
    w._hand.put(claimed)  # claimed for threads that never took them: the worker stops first
    w.stop.set()
    before = time.time()
    w.run()
    rows = query(db, "SELECT id, lease_owner, run_after FROM sagas ORDER BY run_after")
    assert sorted(row[0] for row in rows) == sorted(ids)
    assert all(owner is None for _, owner, _ in rows)
    given_back = [run_after for saga, _, run_after in rows if saga in ids[:2]]
    assert all(before <= at <= time.time() for at in given_back), "due now, for other workers"


def test_the_hand_counts_room_and_wakes_a_waiting_thread_per_lease() -> None:
    hand = Hand(3)
    stop = threading.Event()
    assert hand.room() == 3 and hand.idle()
    hand.started()  # a thread runs a saga it claimed itself
    leases = [Lease(f"s{n}", "w", 1, 10.0) for n in range(2)]
    got: list[Lease | None] = []

    def idle_thread() -> None:
        if hand.wait(10, stop):
            got.append(hand.take())

    waiting = [threading.Thread(target=idle_thread) for _ in range(2)]
    for thread in waiting:
        thread.start()
    hand.put(leases)
    for thread in waiting:
        thread.join(timeout=10)
    assert sorted(lease.saga_id for lease in got if lease is not None) == ["s0", "s1"]
    assert hand.room() == 0 and not hand.idle()
    for _ in range(3):
        hand.finished()
    assert hand.room() == 3 and hand.idle()
    assert not hand.wait(0.01, stop)  # nothing handed, no wake-up: the poll interval
    assert hand.pulse() is False  # nobody waits now: kept, and the waker passes it on
    assert hand.wait(10, stop) and not hand.wait(0.01, stop)  # a wake-up is used once
    hand.put([leases[0]])
    assert hand.drain() == [leases[0]] and hand.take() is None


def test_one_idle_thread_polls_and_the_role_passes_on_when_it_gets_work() -> None:
    hand = Hand(2)
    stop = threading.Event()
    assert not hand.wait(0.01, stop)  # this thread is the poller: one interval
    results: list[tuple[bool, float]] = []

    def follower() -> None:
        started = time.monotonic()
        results.append((hand.wait(5.0, stop), time.monotonic() - started))

    other = threading.Thread(target=follower)
    other.start()
    wait_for(lambda: hand.waiting() == 1, 5, "the other thread to wait as a follower")
    hand.got_work()  # the poller runs a saga: the waiting follower becomes the poller
    other.join(timeout=10)
    assert results and results[0][0] is False and results[0][1] < 5.0, "it polls now"
    assert hand._poller is other


def test_a_wake_up_says_whether_a_waiting_thread_takes_it() -> None:
    hand = Hand(2)
    stop = threading.Event()
    woken: list[bool] = []
    waiter = threading.Thread(target=lambda: woken.append(hand.wait(30, stop)))
    waiter.start()
    wait_for(lambda: hand.waiting() == 1, 5, "a thread to wait")
    assert hand.pulse() is True
    waiter.join(timeout=10)
    assert woken == [True]


def statements(store: SQLiteStore) -> list[str]:
    """The statements the store's writes run from now on (its group writer's connection)."""
    seen: list[str] = []
    store.write_connection().set_trace_callback(seen.append)
    return seen


def test_a_claim_that_took_fewer_than_it_asked_for_makes_the_next_one_read_first(
    tmp_path: Path,
) -> None:
    # An empty claim that goes straight to the UPDATE is a write transaction under the lock
    # every other worker process waits for: after a claim that emptied the queue the next
    # one looks first, without the lock (issue 14: 1.6 - 2.4 such claims per saga).
    db = tmp_path / "c.db"
    queue(db, 3)
    store = SQLiteStore(db)
    try:
        now = time.time()
        assert len(store.claim_due("w", now=now, lease_seconds=30, limit=1)) == 1
        writes = statements(store)
        # It took all it asked for: there may be more, so no read first.
        assert len(store.claim_due("w", now=now, lease_seconds=30, limit=4)) == 2
        assert any(sql.startswith("UPDATE sagas SET lease_owner") for sql in writes)
        writes.clear()
        assert store.claim_due("w", now=now, lease_seconds=30, limit=4) == []
        assert writes == []  # the queue was emptied: read, found nothing, no transaction
    finally:
        store.close()

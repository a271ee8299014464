"""Leases and fencing on real SQLite files: the store methods the worker replicas rely on.

Time is an argument of every lease method, so these tests pass explicit clock readings;
only the claim race and the lease keeper use real processes and threads.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from workerlab import wait_for

from sagalab.orchestrator.errors import LeaseHeld, LeaseLost
from sagalab.orchestrator.flowfile import load_flow
from sagalab.orchestrator.journal import JournalEntry
from sagalab.orchestrator.leases import LeaseKeeper, new_owner, owner_is_dead
from sagalab.orchestrator.runner import start_saga
from sagalab.orchestrator.saga import Event, EventType, Phase, SagaStatus
from sagalab.orchestrator.sqlite_store import SQLiteStore
from sagalab.orchestrator.store import Lease

T0 = 1_000.0
LEASE = 5.0
SPAWN = multiprocessing.get_context("spawn")


def enqueue(store: SQLiteStore, n: int = 1, *, at: float = T0, queue: bool = True) -> list[str]:
    """`n` checkout sagas queued at `at` (one clock tick apart, so the queue order is known)."""
    flow = load_flow("checkout")
    ids = []
    for i in range(n):
        payload = {
            "order_id": f"o{i}",
            "customer_id": "c",
            "sku": "A",
            "quantity": 1,
            "amount": 10,
        }
        record, _ = start_saga(store, flow, payload, now=at + i * 0.001, queue=queue)
        ids.append(record.id)
    return ids


def start_attempt(store: SQLiteStore, saga_id: str, lease: Lease | None, *, now: float) -> int:
    """Append the first step's ATTEMPT_STARTED through `lease` (fenced when given)."""
    record, _, state = store.state(saga_id)
    event = Event(EventType.ATTEMPT_STARTED, now, "reserve_inventory", Phase.ACTION, 1)
    state.apply(event)
    return store.append(
        saga_id,
        [JournalEntry(event)],
        expected_seq=record.last_seq,
        state=state,
        now=now,
        lease=lease,
    )


def lease_row(store: SQLiteStore, saga_id: str) -> tuple[Any, ...]:
    return store.conn.execute(
        "SELECT lease_owner, lease_until, lease_epoch, run_after FROM sagas WHERE id = ?",
        (saga_id,),
    ).fetchone()


# -- claim_next ---------------------------------------------------------------------------


def test_claim_next_takes_the_saga_due_longest_ago(store: SQLiteStore) -> None:
    first, second = enqueue(store, 2)
    a = store.claim_next("A", now=T0 + 1, lease_seconds=LEASE)
    b = store.claim_next("B", now=T0 + 1, lease_seconds=LEASE)
    assert a is not None and b is not None
    assert (a.saga_id, a.owner, a.epoch, a.until) == (first, "A", 1, T0 + 1 + LEASE)
    assert (b.saga_id, b.owner, b.epoch) == (second, "B", 1)
    assert store.claim_next("C", now=T0 + 1, lease_seconds=LEASE) is None


def test_claim_next_ignores_sagas_not_yet_due_or_not_queued(store: SQLiteStore) -> None:
    enqueue(store, 1, at=T0 + 10)
    enqueue(store, 1, queue=False)  # `orchestrate run --wait`: run in place, never queued
    assert store.claim_next("A", now=T0 + 9, lease_seconds=LEASE) is None
    assert store.claim_next("A", now=T0 + 10, lease_seconds=LEASE) is not None


def _claim_all(path: str, owner: str, start: Any, out: Any) -> None:
    store = SQLiteStore(path)
    mine = []
    start.wait(timeout=60)  # all processes claim at once, from a warm start
    try:
        while (lease := store.claim_next(owner, now=time.time(), lease_seconds=600)) is not None:
            mine.append(lease.saga_id)
            time.sleep(0.001)  # a worker does something between claims: let the others in
    finally:
        store.close()
    out.put((owner, mine))


def test_claim_next_is_exclusive_across_processes(db_path: Path, store: SQLiteStore) -> None:
    ids = enqueue(store, 300, at=time.time() - 60)
    out = SPAWN.Queue()
    start = SPAWN.Barrier(4)
    procs = [
        SPAWN.Process(target=_claim_all, args=(str(db_path), f"p{i}", start, out)) for i in range(4)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    claimed = [saga for _, mine in results for saga in mine]
    assert sorted(claimed) == sorted(ids), "every saga claimed exactly once"
    assert sum(1 for _, mine in results if mine) >= 2, "the claims did not race"
    owners = dict(
        store.conn.execute("SELECT id, lease_owner FROM sagas WHERE lease_owner IS NOT NULL")
    )
    assert owners == {saga: owner for owner, mine in results for saga in mine}


# -- expiry, takeover and fencing -----------------------------------------------------------


def test_expired_lease_is_taken_over_with_the_next_epoch(store: SQLiteStore) -> None:
    (saga,) = enqueue(store)
    a = store.claim_next("A", now=T0, lease_seconds=LEASE)
    assert a is not None
    assert store.claim_next("B", now=T0 + LEASE, lease_seconds=LEASE) is None  # still held
    b = store.claim_next("B", now=T0 + LEASE + 0.01, lease_seconds=LEASE)
    assert b is not None
    assert (b.saga_id, b.owner, b.epoch) == (saga, "B", a.epoch + 1)
    assert lease_row(store, saga)[:3] == ("B", T0 + LEASE + 0.01 + LEASE, a.epoch + 1)


def test_a_stale_lease_cannot_write_and_writes_nothing(store: SQLiteStore) -> None:
    (saga,) = enqueue(store)
    a = store.claim_next("A", now=T0, lease_seconds=LEASE)
    b = store.claim_next("B", now=T0 + LEASE + 1, lease_seconds=LEASE)
    assert a is not None and b is not None
    before = store.journal(saga)
    with pytest.raises(LeaseLost, match="no longer current"):
        start_attempt(store, saga, a, now=T0 + LEASE + 2)
    assert store.journal(saga) == before
    record = store.load(saga)
    assert (record.last_seq, record.status) == (1, SagaStatus.PENDING)
    assert [s.status for s in store.steps(saga)] == ["pending"] * 4
    # The new holder writes normally.
    assert start_attempt(store, saga, b, now=T0 + LEASE + 2) == 2
    assert store.load(saga).status is SagaStatus.RUNNING


def test_an_expired_lease_cannot_write_even_if_nobody_took_it(store: SQLiteStore) -> None:
    (saga,) = enqueue(store)
    a = store.claim_next("A", now=T0, lease_seconds=LEASE)
    assert a is not None
    with pytest.raises(LeaseLost):
        start_attempt(store, saga, a, now=T0 + LEASE + 0.5)
    assert store.load(saga).last_seq == 1
    assert start_attempt(store, saga, a, now=T0 + LEASE) == 2  # up to `until` it is valid


def test_a_forged_lease_with_the_right_epoch_but_wrong_owner_is_refused(
    store: SQLiteStore,
) -> None:
    (saga,) = enqueue(store)
    a = store.claim_next("A", now=T0, lease_seconds=LEASE)
    assert a is not None
    with pytest.raises(LeaseLost):
        start_attempt(store, saga, Lease(saga, "X", a.epoch, a.until), now=T0 + 1)
    assert store.load(saga).last_seq == 1


# -- renew and release ----------------------------------------------------------------------


def test_renew_extends_a_live_lease_and_keeps_its_epoch(store: SQLiteStore) -> None:
    (saga,) = enqueue(store)
    a = store.claim_next("A", now=T0, lease_seconds=LEASE)
    assert a is not None
    renewed = store.renew(a, now=T0 + 4, lease_seconds=LEASE)
    assert renewed == Lease(saga, "A", a.epoch, T0 + 4 + LEASE)
    # Renewed: no takeover past the original expiry, and the holder can still write.
    assert store.claim_next("B", now=T0 + LEASE + 1, lease_seconds=LEASE) is None
    assert start_attempt(store, saga, a, now=T0 + LEASE + 1) == 2


@pytest.mark.parametrize("how", ["expired", "taken_over", "released"])
def test_renew_fails_once_the_lease_is_gone(store: SQLiteStore, how: str) -> None:
    (saga,) = enqueue(store)
    a = store.claim_next("A", now=T0, lease_seconds=LEASE)
    assert a is not None
    now = T0 + 1
    if how == "expired":
        now = T0 + LEASE + 1
    elif how == "taken_over":
        now = T0 + LEASE + 1
        assert store.claim_next("B", now=now, lease_seconds=LEASE) is not None
    else:
        assert store.release(a, run_after=None)
    assert store.renew(a, now=now, lease_seconds=LEASE) is None
    if how == "taken_over":
        assert lease_row(store, saga)[0] == "B"


def test_release_requeues_at_the_due_time_or_takes_off_the_queue(store: SQLiteStore) -> None:
    first, second = enqueue(store, 2)
    a = store.claim_next("A", now=T0 + 1, lease_seconds=LEASE)
    b = store.claim_next("A", now=T0 + 1, lease_seconds=LEASE)
    assert a is not None and b is not None
    assert store.release(a, run_after=T0 + 3)  # a scheduled retry
    assert store.release(b, run_after=None)  # halted
    assert lease_row(store, first) == (None, None, 1, T0 + 3)
    assert lease_row(store, second) == (None, None, 1, None)
    assert store.claim_next("B", now=T0 + 2.9, lease_seconds=LEASE) is None
    again = store.claim_next("B", now=T0 + 3, lease_seconds=LEASE)
    assert again is not None and (again.saga_id, again.epoch) == (first, 2)
    # `second` is off the queue: nothing else is claimable while `first` is held.
    assert store.claim_next("C", now=T0 + 4, lease_seconds=LEASE) is None


def test_a_stale_release_leaves_the_new_holder_alone(store: SQLiteStore) -> None:
    (saga,) = enqueue(store)
    a = store.claim_next("A", now=T0, lease_seconds=LEASE)
    b = store.claim_next("B", now=T0 + LEASE + 1, lease_seconds=LEASE)
    assert a is not None and b is not None
    assert store.release(a, run_after=None) is False
    assert lease_row(store, saga)[:3] == ("B", b.until, b.epoch)


# -- claim (operator resume) and dead owners ------------------------------------------------


def test_claim_refuses_a_live_lease_unless_its_owner_is_taken_over(store: SQLiteStore) -> None:
    (saga,) = enqueue(store)
    a = store.claim_next("A", now=T0, lease_seconds=LEASE)
    assert a is not None
    with pytest.raises(LeaseHeld):
        store.claim(saga, "op", now=T0 + 1, lease_seconds=LEASE)
    taken = store.claim(saga, "op", now=T0 + 1, lease_seconds=LEASE, take_over=lambda o: o == "A")
    assert (taken.owner, taken.epoch) == ("op", a.epoch + 1)
    with pytest.raises(LeaseLost):
        start_attempt(store, saga, a, now=T0 + 2)


def test_owner_is_dead_only_for_a_gone_process_on_this_host() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=30)
    host = socket.gethostname()
    assert owner_is_dead(f"{host}:{child.pid}:worker-abc")
    assert not owner_is_dead(new_owner())  # this process
    assert not owner_is_dead(f"{host}:1:worker-abc")  # init is alive (and not ours)
    assert not owner_is_dead(f"elsewhere.example:{child.pid}:worker-abc")
    assert not owner_is_dead("garbage")


def test_owner_is_dead_for_an_unreaped_zombie() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    owner = f"{socket.gethostname()}:{child.pid}:worker-abc"
    while not owner_is_dead(owner):  # it exits but stays a zombie until waited for
        assert time.monotonic() < deadline, "the child never showed as dead"
        time.sleep(0.01)
    child.wait(timeout=30)


def test_new_owner_names_host_and_pid() -> None:
    host, pid, nonce = new_owner("worker").split(":")
    assert (host, pid) == (socket.gethostname(), str(os.getpid()))
    assert nonce.startswith("worker-")
    assert new_owner() != new_owner()


# -- stuck() and queue_stats() -------------------------------------------------------------


def test_stuck_lists_active_sagas_nobody_runs(store: SQLiteStore) -> None:
    expired, live, queued = enqueue(store, 3)
    (never_queued,) = enqueue(store, 1, queue=False)
    leases = {
        saga: store.claim(saga, "A", now=T0, lease_seconds=s)
        for saga, s in ((expired, 1.0), (live, 60.0))
    }
    # A finished saga under an expired lease is not stuck: it needs nobody.
    done_id = enqueue(store, 1)[0]
    store.conn.execute("UPDATE sagas SET status = 'completed' WHERE id = ?", (done_id,))
    store.claim(done_id, "A", now=T0, lease_seconds=1.0)
    assert store.stuck(now=T0 + 2) == [expired, never_queued]
    assert leases[live].until == T0 + 60
    assert queued not in store.stuck(now=T0 + 2)  # queued and free: a worker will take it


def test_queue_stats_counts_due_leased_and_the_oldest_age(store: SQLiteStore) -> None:
    assert store.queue_stats(T0) == {"depth": 0.0, "leased": 0.0, "oldest_age": 0.0}
    a, b, c = enqueue(store, 3)
    store.claim_next("A", now=T0 + 10, lease_seconds=LEASE)  # takes `a`
    stats = store.queue_stats(T0 + 10)
    assert stats["depth"] == 2.0
    assert stats["leased"] == 1.0
    assert stats["oldest_age"] == pytest.approx(10 - 0.001)  # `b`, the oldest free one
    # Once the lease expires, `a` counts as queued again, and it is the oldest.
    stats = store.queue_stats(T0 + 10 + LEASE + 1)
    assert (stats["depth"], stats["leased"]) == (3.0, 0.0)
    assert stats["oldest_age"] == pytest.approx(10 + LEASE + 1)
    # Terminal sagas are not queue depth even if still flagged as due.
    store.conn.execute("UPDATE sagas SET status = 'rolled_back' WHERE id IN (?, ?)", (b, c))
    assert store.queue_stats(T0 + 100)["depth"] == 1.0


# -- the lease keeper -----------------------------------------------------------------------


def test_lease_keeper_renews_held_leases_and_notices_a_lost_one(
    db_path: Path, store: SQLiteStore
) -> None:
    kept, stolen = enqueue(store, 2, at=time.time() - 1)
    short = 0.6
    with LeaseKeeper(db_path, lease_seconds=short) as keeper:
        a = store.claim_next("A", now=time.time(), lease_seconds=short)
        b = store.claim_next("A", now=time.time(), lease_seconds=short)
        assert a is not None and b is not None and a.saga_id == kept
        keeper.hold(a)
        # b is not held: it expires and another worker takes it.
        wait_for(lambda: time.time() > b.until, 5, "b to expire")
        taken = store.claim_next("B", now=time.time(), lease_seconds=60)
        assert taken is not None and taken.saga_id == stolen
        keeper.hold(b)
        wait_for(lambda: keeper.lost(stolen), 5, "the keeper to notice the lost lease")
        # a was renewed several times past its first expiry; it is still A's.
        wait_for(lambda: time.time() > a.until + 2 * short, 5, "a few renewal rounds")
        owner, until, epoch, _ = lease_row(store, kept)
        assert (owner, epoch) == ("A", a.epoch)
        assert until > time.time()
        assert start_attempt(store, kept, a, now=time.time()) == 2
        keeper.drop(kept)
        assert not keeper.lost(kept)

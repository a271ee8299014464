"""Conformance: the durable queue and its leases (`QueueStore`), fencing included."""

from __future__ import annotations

import threading

import pytest
from conformancelab import Backend, advance, create, reserve_ok

from sagalab.orchestrator.errors import LeaseHeld, LeaseLost, SagaNotFoundError
from sagalab.orchestrator.saga import Event, EventType, Phase
from sagalab.orchestrator.store import Store
from sagalab.orchestrator.stores import open_store


def test_claim_next_takes_the_saga_due_longest_ago_once(store: Store) -> None:
    create(store, "late", run_after=105.0)
    create(store, "early", run_after=101.0)
    create(store, "unqueued")
    assert store.claim_next("w", now=100.0, lease_seconds=5.0) is None  # nothing due yet
    first = store.claim_next("w1", now=110.0, lease_seconds=5.0)
    second = store.claim_next("w2", now=110.0, lease_seconds=5.0)
    assert first is not None and second is not None
    assert (first.saga_id, first.owner, first.epoch, first.until) == ("early", "w1", 1, 115.0)
    assert second.saga_id == "late"
    assert store.claim_next("w3", now=110.0, lease_seconds=5.0) is None  # both leased
    # An expired lease is claimed again, with the next epoch.
    again = store.claim_next("w3", now=116.0, lease_seconds=5.0)
    assert again is not None and (again.saga_id, again.epoch) == ("early", 2)


def test_append_under_a_stale_lease_is_refused_and_writes_nothing(store: Store) -> None:
    create(store, "s1", run_after=100.0)
    old = store.claim_next("w1", now=100.0, lease_seconds=5.0)
    assert old is not None
    advance(store, "s1", reserve_ok(101.0), lease=old)  # the holder writes
    new = store.claim_next("w2", now=106.0, lease_seconds=5.0)  # w1's lease ran out
    assert new is not None and new.epoch == old.epoch + 1
    late = [Event(EventType.ATTEMPT_STARTED, 107.0, "charge", Phase.ACTION, 1)]
    with pytest.raises(LeaseLost):
        advance(store, "s1", late, lease=old)
    assert store.load("s1").last_seq == 3
    assert advance(store, "s1", late, lease=new) == 4  # the new holder writes


def test_append_under_an_expired_lease_nobody_took_is_refused(store: Store) -> None:
    create(store, "s1", run_after=100.0)
    lease = store.claim_next("w1", now=100.0, lease_seconds=5.0)
    assert lease is not None
    with pytest.raises(LeaseLost):
        advance(store, "s1", reserve_ok(106.0), lease=lease)
    assert store.load("s1").last_seq == 1


def test_claim_refuses_a_live_lease_unless_taken_over(store: Store) -> None:
    create(store, "s1")
    with pytest.raises(SagaNotFoundError):
        store.claim("nope", "w", now=100.0, lease_seconds=5.0)
    lease = store.claim("s1", "w1", now=100.0, lease_seconds=5.0)
    assert lease.epoch == 1
    with pytest.raises(LeaseHeld):
        store.claim("s1", "w2", now=101.0, lease_seconds=5.0)
    with pytest.raises(LeaseHeld):
        store.check_lease_free("s1", now=101.0)
    store.check_lease_free("s1", now=101.0, take_over=lambda owner: owner == "w1")
    taken = store.claim("s1", "w2", now=101.0, lease_seconds=5.0, take_over=lambda o: o == "w1")
    assert (taken.owner, taken.epoch) == ("w2", 2)
    store.check_lease_free("s1", now=107.0)  # expired: free
    with pytest.raises(SagaNotFoundError):
        store.check_lease_free("nope", now=1.0)


def test_renew_extends_a_held_lease_and_reports_a_lost_one(store: Store) -> None:
    create(store, "s1", run_after=100.0)
    lease = store.claim_next("w1", now=100.0, lease_seconds=5.0)
    assert lease is not None
    renewed = store.renew(lease, now=104.0, lease_seconds=5.0)
    assert renewed is not None and renewed.until == 109.0 and renewed.epoch == lease.epoch
    assert store.claim_next("w2", now=106.0, lease_seconds=5.0) is None  # still held
    assert store.claim_next("w2", now=110.0, lease_seconds=5.0) is not None
    assert store.renew(renewed, now=110.0, lease_seconds=5.0) is None  # lost to w2


def test_release_requeues_or_takes_off_and_a_stale_one_changes_nothing(store: Store) -> None:
    create(store, "s1", run_after=100.0)
    lease = store.claim_next("w1", now=100.0, lease_seconds=5.0)
    assert lease is not None
    assert store.release(lease, run_after=120.0)
    assert store.claim_next("w2", now=119.0, lease_seconds=5.0) is None  # not due yet
    again = store.claim_next("w2", now=120.0, lease_seconds=5.0)
    assert again is not None and again.epoch == lease.epoch + 1
    assert not store.release(lease, run_after=None)  # w1's old lease: refused
    assert store.renew(again, now=121.0, lease_seconds=5.0) is not None  # w2 still holds it
    assert store.release(again, run_after=None)  # off the queue
    assert store.claim_next("w3", now=1e9, lease_seconds=5.0) is None


def test_park_takes_a_saga_off_the_queue_with_its_reason(store: Store) -> None:
    create(store, "s1", run_after=100.0)
    lease = store.claim_next("w1", now=100.0, lease_seconds=5.0)
    assert lease is not None
    assert store.park(lease, reason="flow no longer fits")
    assert store.load("s1").reason == "flow no longer fits"
    assert store.claim_next("w2", now=1e9, lease_seconds=5.0) is None
    assert not store.park(lease, reason="again")  # no longer held
    assert store.stuck(now=1e9) == ["s1"]  # waits for an operator
    store.requeue("s1", 200.0)
    assert store.claim_next("w2", now=200.0, lease_seconds=5.0) is not None


def test_stuck_lists_active_sagas_nobody_runs(store: Store) -> None:
    create(store, "never-queued", now=100.0)
    create(store, "queued", now=101.0, run_after=100.0)
    create(store, "expired", now=102.0, run_after=100.0)
    lease = store.claim("expired", "w", now=100.0, lease_seconds=5.0)
    assert store.stuck(now=101.0) == ["never-queued"]
    assert store.stuck(now=lease.until + 1) == ["never-queued", "expired"]


def test_queue_stats_count_due_and_leased_sagas(store: Store) -> None:
    assert store.queue_stats(100.0) == {"depth": 0.0, "leased": 0.0, "oldest_age": 0.0}
    create(store, "a", run_after=90.0)
    create(store, "b", run_after=95.0)
    create(store, "c", run_after=99.0)
    store.claim("a", "w", now=100.0, lease_seconds=5.0)
    assert store.queue_stats(100.0) == {"depth": 2.0, "leased": 1.0, "oldest_age": 5.0}


def test_claimers_on_separate_handles_never_share_a_saga(store_factory: Backend) -> None:
    setup = store_factory.open()
    sagas = 60
    for n in range(sagas):
        create(setup, f"s{n:03}", run_after=100.0 + n)
    claimed: list[list[str]] = [[] for _ in range(3)]
    errors: list[BaseException] = []

    def claim_all(index: int) -> None:
        try:
            handle = open_store(store_factory.url)  # one handle per thread
            try:
                while lease := handle.claim_next(f"w{index}", now=1e6, lease_seconds=60):
                    claimed[index].append(lease.saga_id)
            finally:
                handle.close()
        except BaseException as exc:  # reported below: a thread's failure fails the test
            errors.append(exc)

    threads = [threading.Thread(target=claim_all, args=(i,)) for i in range(len(claimed))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    every = [saga for mine in claimed for saga in mine]
    assert sorted(every) == [f"s{n:03}" for n in range(sagas)]  # each exactly once


def test_scaling_events_come_back_oldest_first(store: Store) -> None:
    assert store.scaling_events() == []
    for n in range(5):
        store.record_scaling(
            at=float(n), before=n, after=n + 1, depth=10 * n, oldest_age=0.5, reason=f"r{n}"
        )
    events = store.scaling_events(limit=3)
    assert [e["reason"] for e in events] == ["r2", "r3", "r4"]
    assert {k: events[0][k] for k in ("replicas_from", "replicas_to", "depth")} == {
        "replicas_from": 2,
        "replicas_to": 3,
        "depth": 20,
    }

"""Conformance: claims of several sagas in one transaction (`claim_due`) and renewals of
several leases in one statement (`renew_many`), fencing included (issue 14)."""

from __future__ import annotations

import threading

import pytest
from conformancelab import Backend, advance, create, reserve_ok

from sagalab.orchestrator.errors import LeaseLost
from sagalab.orchestrator.store import Lease, Store
from sagalab.orchestrator.stores import open_store


def test_claim_due_takes_up_to_limit_sagas_due_longest_ago(store: Store) -> None:
    for n in range(5):
        create(store, f"s{n}", run_after=105.0 - n)  # s4 is due longest ago
    create(store, "later", run_after=200.0)
    create(store, "unqueued")
    assert store.claim_due("w1", now=110.0, lease_seconds=5.0, limit=0) == []
    first = store.claim_due("w1", now=110.0, lease_seconds=5.0, limit=3)
    assert first == [Lease(s, "w1", 1, 115.0) for s in ("s4", "s3", "s2")]
    rest = store.claim_due("w2", now=110.0, lease_seconds=5.0, limit=10)
    assert [lease.saga_id for lease in rest] == ["s1", "s0"]  # never more than are due
    assert store.claim_due("w3", now=110.0, lease_seconds=5.0, limit=10) == []  # all leased
    assert store.claim_next("w3", now=110.0, lease_seconds=5.0) is None


def test_claim_due_takes_over_expired_leases_with_the_next_epoch(store: Store) -> None:
    for n in range(3):
        create(store, f"s{n}", run_after=100.0 + n)
    old = store.claim_due("w1", now=110.0, lease_seconds=5.0, limit=3)
    renewed = store.renew(old[0], now=114.0, lease_seconds=5.0)  # s0 kept alive
    assert renewed is not None
    taken = store.claim_due("w2", now=116.0, lease_seconds=5.0, limit=3)
    assert [(lease.saga_id, lease.epoch) for lease in taken] == [("s1", 2), ("s2", 2)]
    # The earlier holder is fenced off: no append, no release, no renewal.
    with pytest.raises(LeaseLost):
        advance(store, "s1", reserve_ok(116.5), lease=old[1])
    assert not store.release(old[2], run_after=None)
    assert store.renew_many(old, now=116.5, lease_seconds=5.0) == {"s1", "s2"}
    assert advance(store, "s1", reserve_ok(117.0), lease=taken[0]) == 3  # the new holder writes


def test_renew_many_extends_held_leases_and_names_the_lost_ones(store: Store) -> None:
    for n in range(4):
        create(store, f"s{n}", run_after=100.0)
    leases = store.claim_due("w1", now=100.0, lease_seconds=5.0, limit=4)
    assert len(leases) == 4
    assert store.renew_many([], now=101.0, lease_seconds=5.0) == set()
    assert store.release(leases[0], run_after=None)  # given back: no longer held
    stale = Lease("s1", "w1", leases[1].epoch - 1, leases[1].until)  # an older epoch
    other = Lease("s2", "w9", leases[2].epoch, leases[2].until)  # another owner
    lost = store.renew_many([leases[0], stale, other, leases[3]], now=104.0, lease_seconds=5.0)
    assert lost == {"s0", "s1", "s2"}
    # s3 now runs to 109: not claimable at 106, claimable after; s1 and s2 were not renewed.
    assert [
        lease.saga_id for lease in store.claim_due("w2", now=106.0, lease_seconds=5.0, limit=9)
    ] == [
        "s1",
        "s2",
    ]
    assert store.renew_many([leases[3]], now=108.0, lease_seconds=5.0) == set()
    assert store.renew_many([leases[3]], now=114.0, lease_seconds=5.0) == {"s3"}  # expired


def test_concurrent_batch_claimers_never_share_a_saga(store_factory: Backend) -> None:
    setup = store_factory.open()
    sagas = 90
    for n in range(sagas):
        create(setup, f"s{n:03}", run_after=100.0 + n)
    claimed: list[list[Lease]] = [[] for _ in range(3)]
    unheld: list[set[str]] = [set() for _ in range(3)]
    errors: list[BaseException] = []

    def claim_all(index: int) -> None:
        try:
            handle = open_store(store_factory.url)  # one handle per thread
            try:
                while batch := handle.claim_due(f"w{index}", now=1e6, lease_seconds=60, limit=7):
                    assert 1 <= len(batch) <= 7
                    claimed[index].extend(batch)
                # Every lease a claimer got is the saga's current one (no half-applied claim).
                unheld[index] = handle.renew_many(claimed[index], now=1e6, lease_seconds=60)
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
    every = sorted(lease.saga_id for mine in claimed for lease in mine)
    assert every == [f"s{n:03}" for n in range(sagas)]  # each exactly once
    assert unheld == [set(), set(), set()]
    assert all(lease.epoch == 1 for mine in claimed for lease in mine)

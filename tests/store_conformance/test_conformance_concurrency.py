"""Conformance: concurrent writers, in threads and in processes, lose and double nothing."""

from __future__ import annotations

import multiprocessing
import threading
from typing import Any

from conformancelab import Backend, create, order_flow

from sagalab.orchestrator.errors import ConcurrentUpdate, LeaseLost
from sagalab.orchestrator.journal import JournalEntry
from sagalab.orchestrator.saga import Event, EventType, Phase, SagaState
from sagalab.orchestrator.store import Lease, Store
from sagalab.orchestrator.stores import open_store

SPAWN = multiprocessing.get_context("spawn")


def _retry(at: float, attempt: int) -> Event:
    return Event(EventType.RETRY_SCHEDULED, at, "reserve", Phase.ACTION, attempt, not_before=1.0)


def test_two_threads_appending_to_one_saga_lose_and_double_nothing(
    store_factory: Backend,
) -> None:
    create(store_factory.open(), "shared")
    per_thread, errors = 40, []

    def append_all(name: str) -> None:
        try:
            store = open_store(store_factory.url)  # one handle per thread
            try:
                for n in range(per_thread):
                    while True:  # read, append after what was read; lost the race: again
                        record, _, state = store.state("shared")
                        try:
                            store.append(
                                "shared",
                                [JournalEntry(_retry(float(n), n), span_id=f"{name}-{n}")],
                                expected_seq=record.last_seq,
                                state=state,
                                now=float(n),
                            )
                            break
                        except ConcurrentUpdate:
                            continue
            finally:
                store.close()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=append_all, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    entries = store_factory.open().journal("shared")
    assert [e.seq for e in entries] == list(range(1, 2 * per_thread + 2))
    spans = sorted(e.span_id for e in entries[1:] if e.span_id is not None)
    assert spans == sorted(f"{name}-{n}" for name in ("a", "b") for n in range(per_thread))


def test_leases_stolen_back_and_forth_never_let_a_stale_holder_write(
    store_factory: Backend,
) -> None:
    """Two threads keep taking the saga from each other and append under the lease they
    took: the lease check and the write are one step, so no entry under an older epoch ever
    lands after an entry under a newer one (a check-then-write would let one through)."""
    create(store_factory.open(), "shared")
    rounds, per_lease, errors = 60, 3, []

    def append_under(store: Store, lease: Lease, n: int) -> None:
        while True:  # another writer appended first: read again, same lease
            record, _, state = store.state("shared")
            try:
                store.append(
                    "shared",
                    [JournalEntry(_retry(100.0, n), span_id=str(lease.epoch))],
                    expected_seq=record.last_seq,
                    state=state,
                    now=100.0,
                    lease=lease,
                )
                return
            except ConcurrentUpdate:
                continue

    def worker(name: str) -> None:
        try:
            store = open_store(store_factory.url)  # one handle per thread
            try:
                for _ in range(rounds):
                    lease = store.claim(
                        "shared", name, now=100.0, lease_seconds=1e6, take_over=lambda _o: True
                    )
                    try:
                        for n in range(per_lease):
                            append_under(store, lease, n)
                    except LeaseLost:
                        continue  # the other thread took it: take it back
            finally:
                store.close()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    epochs = [int(e.span_id or 0) for e in store_factory.open().journal("shared")[1:]]
    assert epochs, "nothing was written"
    assert epochs == sorted(epochs), "an entry under a stale lease landed after a newer one"


def _own_saga_worker(url: str, worker: int, sagas: int, steps: int) -> None:
    """Create `sagas` sagas and append `steps` events to each, one commit per event."""
    store = open_store(url, timeout=30.0)
    try:
        flow = order_flow()
        for n in range(sagas):
            saga_id = f"w{worker}-{n}"
            store.create_saga(
                saga_id=saga_id,
                flow=flow,
                payload={"order_id": saga_id},
                trace_id="t",
                idempotency_key=f"key-{saga_id}",
                now=float(n),
            )
            seq, state = 1, SagaState(flow)
            for i in range(steps):
                seq = store.append(
                    saga_id,
                    [JournalEntry(_retry(float(i), i), span_id=f"{worker}")],
                    expected_seq=seq,
                    state=state,
                    now=float(i),
                )
    finally:
        store.close()


def _racing_worker(url: str, worker: int, rounds: int, barrier: Any, results: Any) -> None:
    """Each round: everyone reads the same last seq, then everyone tries to append after it."""
    store = open_store(url, timeout=30.0)
    state = SagaState(order_flow())
    try:
        for r in range(rounds):
            barrier.wait()
            seq = store.load("shared").last_seq
            barrier.wait()
            try:
                store.append(
                    "shared",
                    [JournalEntry(_retry(float(r), r), span_id=f"w{worker}")],
                    expected_seq=seq,
                    state=state,
                    now=float(r),
                )
                results.put((r, worker, seq, "won"))
            except ConcurrentUpdate:
                results.put((r, worker, seq, "lost"))
            except Exception as exc:  # anything else, e.g. "database is locked", fails the test
                results.put((r, worker, seq, f"error: {type(exc).__name__}: {exc}"))
    finally:
        store.close()


def _run(processes: list[Any]) -> None:
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout=60)
    for p in processes:
        assert p.exitcode == 0, f"worker {p.name} exited with {p.exitcode}"


def test_writer_processes_on_distinct_sagas(store_factory: Backend) -> None:
    store_factory.open().close()
    workers, sagas, steps = 4, 5, 20
    _run(
        [
            SPAWN.Process(
                target=_own_saga_worker, args=(store_factory.url, w, sagas, steps), name=f"w{w}"
            )
            for w in range(workers)
        ]
    )
    store = store_factory.open()
    records = store.list_sagas(limit=1000)
    assert len(records) == workers * sagas
    for record in records:
        assert [e.seq for e in store.journal(record.id)] == list(range(1, steps + 2)), record.id
        assert record.last_seq == steps + 1


def test_writer_processes_racing_on_one_saga(store_factory: Backend) -> None:
    create(store_factory.open(), "shared")
    workers, rounds = 4, 15
    barrier = SPAWN.Barrier(workers)
    results = SPAWN.Queue()
    processes = [
        SPAWN.Process(
            target=_racing_worker,
            args=(store_factory.url, w, rounds, barrier, results),
            name=f"w{w}",
        )
        for w in range(workers)
    ]
    _run(processes)
    outcomes = [results.get(timeout=10) for _ in range(workers * rounds)]
    results.close()
    assert [o for o in outcomes if o[3].startswith("error")] == []
    for r in range(rounds):
        this_round = [o for o in outcomes if o[0] == r]
        assert len({o[2] for o in this_round}) == 1, "every racer read the same seq"
        assert [o[3] for o in this_round].count("won") == 1, this_round
    store = store_factory.open()
    entries = store.journal("shared")
    assert [e.seq for e in entries] == list(range(1, rounds + 2))
    winners = {(o[0], f"w{o[1]}") for o in outcomes if o[3] == "won"}
    assert {(int(e.event.at), e.span_id) for e in entries[1:]} == winners
    assert store.load("shared").last_seq == rounds + 1

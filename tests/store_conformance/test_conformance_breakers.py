"""Conformance: circuit breaker state shared by every handle on one database (`BreakerStore`)."""

from __future__ import annotations

import multiprocessing
from typing import Any

import pybreaker
from conformancelab import Backend


def test_state_counters_and_opened_time_are_shared_between_handles(
    store_factory: Backend,
) -> None:
    store_factory.open().close()  # the database exists, at the current schema
    a = store_factory.breakers().storage("payments", lambda: 100.0)
    b = store_factory.breakers().storage("payments", lambda: 100.0)
    assert (b.state, b.counter, b.success_counter, b.opened_time) == ("closed", 0, 0, None)
    a.increment_counter()
    a.increment_counter()
    assert b.counter == 2
    b.reset_counter()
    assert a.counter == 0
    a.state = pybreaker.STATE_OPEN
    a.opened_time = 99.5
    assert (b.state, b.opened_time) == ("open", 99.5)
    b.increment_success_counter()
    assert a.success_counter == 1
    a.reset_success_counter()
    assert b.success_counter == 0


def test_the_half_open_probe_goes_to_one_handle_at_a_time(store_factory: Backend) -> None:
    store_factory.open().close()
    a = store_factory.breakers().storage("payments", lambda: 100.0)
    b = store_factory.breakers().storage("payments", lambda: 100.0)
    assert a.try_acquire_probe(100.0, 110.0)
    assert not b.try_acquire_probe(101.0, 111.0)  # a holds it
    assert b.try_acquire_probe(110.0, 120.0)  # a's time ran out
    b.release_probe()
    assert a.try_acquire_probe(111.0, 121.0)


def test_transitions_are_logged_once_whoever_reports_them(store_factory: Backend) -> None:
    store_factory.open().close()
    a, b = store_factory.breakers(), store_factory.breakers()
    assert a.record_transition("payments", 100.0, "open", owner="A") == "closed"
    assert b.record_transition("payments", 100.1, "open", owner="B") is None  # caught up
    assert b.record_transition("payments", 110.0, "half-open", owner="B") == "open"
    events = a.events("payments")
    assert [(e["old"], e["new"], e["owner"]) for e in events] == [
        ("closed", "open", "A"),
        ("open", "half-open", "B"),
    ]
    assert b.events("other") == [] and len(b.events()) == 2


def test_rows_reset_and_a_read_only_handle(store_factory: Backend) -> None:
    store_factory.open().close()
    states = store_factory.breakers()
    storage = states.storage("payments", lambda: 100.0)
    storage.state = pybreaker.STATE_OPEN
    storage.opened_time = 100.0
    storage.increment_counter()
    states.record_transition("payments", 100.0, "open", owner="A")
    reader = store_factory.breakers(readonly=True)
    [row] = reader.rows()
    assert (row["name"], row["state"], row["fail_counter"], row["opened_time"]) == (
        "payments",
        "open",
        1,
        100.0,
    )
    assert (row["transitions"], row["damaged"]) == (1, None)
    assert not states.reset("nobody", now=120.0)
    assert states.reset("payments", now=120.0)
    [row] = reader.rows()
    assert (row["state"], row["fail_counter"], row["opened_time"]) == ("closed", 0, None)
    assert [e["new"] for e in reader.events("payments")] == ["open", "closed"]


def _probe_racer(url: str, barrier: Any, results: Any) -> None:
    """Wait for every racer, then try for the half-open probe once."""
    from orchestrator.stores import open_breaker_store

    states = open_breaker_store(url)
    try:
        storage = states.storage("payments", lambda: 100.0)
        barrier.wait()
        results.put(storage.try_acquire_probe(100.0, 110.0))
    finally:
        states.close()


def test_processes_racing_for_the_half_open_probe_let_exactly_one_through(
    store_factory: Backend,
) -> None:
    store_factory.open().close()
    store_factory.breakers().storage("payments", lambda: 100.0)  # the row exists
    racers = 4
    spawn = multiprocessing.get_context("spawn")
    barrier, results = spawn.Barrier(racers), spawn.Queue()
    processes = [
        spawn.Process(target=_probe_racer, args=(store_factory.url, barrier, results))
        for _ in range(racers)
    ]
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout=60)
    assert [p.exitcode for p in processes] == [0] * racers
    won = [results.get(timeout=10) for _ in range(racers)]
    assert sorted(won) == [False] * (racers - 1) + [True]

"""Conformance: circuit breaker state shared by every handle on one database (`BreakerStore`)."""

from __future__ import annotations

import multiprocessing
import time
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
    assert a.try_acquire_probe(100.0, 110.0) is None  # closed: no probe to take
    assert a.try_open(90.0) and not b.try_open(90.5)  # opened once
    assert b.try_half_open(80.0, 100.0, 110.0) is None  # not open since 80: refused
    held = a.try_half_open(90.0, 100.0, 110.0)
    assert held is not None and a.state == "half-open"
    assert b.try_half_open(90.0, 100.0, 110.0) is None  # a made the move: a is the probe
    assert b.try_acquire_probe(101.0, 111.0) is None  # a holds it
    taken = b.try_acquire_probe(110.0, 120.0)  # a's time ran out
    assert taken is not None
    assert not a.end_probe(held, "open", 112.0)  # a's probe is no longer the probe
    assert b.end_probe(taken, "half-open", 113.0)  # a success short of the threshold
    assert (b.state, a.try_acquire_probe(114.0, 124.0) is not None) == ("half-open", True)


def test_only_the_probe_ends_the_half_open_window(store_factory: Backend) -> None:
    store_factory.open().close()
    a = store_factory.breakers().storage("payments", lambda: 100.0)
    assert a.try_open(90.0)
    token = a.try_half_open(90.0, 100.0, 110.0)
    assert token is not None
    assert a.end_probe(token, "open", 101.0)
    assert (a.state, a.opened_time) == ("open", 101.0)
    assert not a.end_probe(token, "closed", 101.5)  # the window has ended already
    # A caller that read "open since 90" too early cannot half-open it again.
    assert a.try_half_open(90.0, 101.1, 111.1) is None
    token = a.try_half_open(101.0, 102.0, 112.0)
    assert token is not None and a.end_probe(token, "closed", 102.5)
    assert (a.state, a.counter, a.try_acquire_probe(103.0, 113.0)) == ("closed", 0, None)
    a.state, a.opened_time = "open", None  # a row written by hand: open, no opening time
    assert a.try_half_open(None, 104.0, 114.0) is not None


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


def test_a_move_its_caller_made_is_logged_even_when_a_later_one_was_logged_first(
    store_factory: Backend,
) -> None:
    # A opened the breaker at 100 but stalled before logging it; B half-opened it at 110
    # (after the reset timeout) and logged first. Both moves happened: both are logged,
    # read back in time order (the log's last entry is no judge of a move a CAS made).
    store_factory.open().close()
    a, b = store_factory.breakers(), store_factory.breakers()
    assert a.record_transition("payments", 99.0, "half-open", owner="A", old="open") == "open"
    assert b.record_transition("payments", 110.0, "half-open", owner="B", old="open") == "open"
    assert a.record_transition("payments", 100.0, "open", owner="A", old="half-open") == (
        "half-open"
    )
    events = b.events("payments")
    assert [(e["at"], e["old"], e["new"], e["owner"]) for e in events] == [
        (99.0, "open", "half-open", "A"),
        (100.0, "half-open", "open", "A"),
        (110.0, "open", "half-open", "B"),
    ]


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
    from sagalab.orchestrator.stores import open_breaker_store

    states = open_breaker_store(url)
    try:
        storage = states.storage("payments", lambda: 100.0)
        barrier.wait()
        results.put(storage.try_half_open(90.0, 100.0, 110.0) is not None)
    finally:
        states.close()


def test_processes_racing_for_the_half_open_probe_let_exactly_one_through(
    store_factory: Backend,
) -> None:
    store_factory.open().close()
    assert store_factory.breakers().storage("payments", lambda: 100.0).try_open(90.0)
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


def test_threads_and_processes_through_breakers_let_one_probe_per_half_open_window(
    store_factory: Backend,
) -> None:
    # The whole allow -> record path (issue 10), not the storage alone: see breakerlab.py.
    from breakerlab import hammer, hammer_in_process, open_breaker, probe_violations

    store_factory.open().close()
    url = store_factory.url
    open_breaker(url)
    spawn = multiprocessing.get_context("spawn")
    processes, seconds = 2, 2.0
    barrier, results = spawn.Barrier(processes + 1), spawn.Queue()
    racers = [
        spawn.Process(target=hammer_in_process, args=(url, 3, barrier, results, seconds))
        for _ in range(processes)
    ]
    for p in racers:
        p.start()
    barrier.wait(timeout=60)
    probes = hammer(url, threads=3, until=time.time() + seconds)
    for _ in racers:
        probes += results.get(timeout=60)
    for p in racers:
        p.join(timeout=60)
    assert [p.exitcode for p in racers] == [0] * processes
    assert len(probes) >= 3
    assert probe_violations(probes) == []

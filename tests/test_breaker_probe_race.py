"""One half-open probe across threads and processes on one SQLite file (issue 10).

The storage's compare-and-set alone let one caller through (tests/store_conformance), but
`Breaker.allow` made the open -> half-open move with a plain write: a caller that had read
"open" just before another's probe failed put the breaker back to half-open and probed again.
These tests drive the whole allow -> record path, as workers do (breakerlab.py).
"""

from __future__ import annotations

import multiprocessing
import sqlite3
import time
from pathlib import Path

from breakerlab import hammer, hammer_in_process, open_breaker, probe_violations

from sagalab.orchestrator.breaker_board import BreakerBoard, BreakerConfig, breaker_events
from sagalab.orchestrator.policies.breaker import Breaker
from sagalab.orchestrator.sqlite_store import SQLiteStore


def test_threads_in_one_process_share_one_probe_per_half_open_window(tmp_path: Path) -> None:
    db = str(tmp_path / "b.db")
    SQLiteStore(db).close()
    open_breaker(db)
    probes = hammer(db, threads=12, until=time.time() + 1.5)
    assert len(probes) >= 3, "the breaker half-opened a few times"
    assert probe_violations(probes) == []
    # The shared log agrees: one open -> half-open per probe, none made twice.
    halves = [e for e in breaker_events(db, "payments") if e["new"] == "half-open"]
    assert len(halves) == len(probes)


def test_threads_in_several_processes_share_one_probe_per_half_open_window(
    tmp_path: Path,
) -> None:
    db = str(tmp_path / "b.db")
    SQLiteStore(db).close()
    open_breaker(db)
    spawn = multiprocessing.get_context("spawn")
    processes, seconds = 2, 2.0
    barrier, results = spawn.Barrier(processes + 1), spawn.Queue()
    racers = [
        spawn.Process(target=hammer_in_process, args=(db, 3, barrier, results, seconds))
        for _ in range(processes)
    ]
    for p in racers:
        p.start()
    barrier.wait(timeout=60)
    probes = hammer(db, threads=3, until=time.time() + seconds)
    for _ in racers:
        probes += results.get(timeout=60)
    for p in racers:
        p.join(timeout=60)
    assert [p.exitcode for p in racers] == [0] * processes
    assert len(probes) >= 3
    assert probe_violations(probes) == []


def test_a_late_outcome_of_a_call_let_through_while_closed_does_not_free_the_probe() -> None:
    # Two workers' breakers on one (memory) storage: b's call went out while closed.
    a = Breaker("payments", fail_max=1, reset_timeout=1.0)
    b = Breaker("payments", fail_max=1, reset_timeout=1.0, storage=a.storage)
    assert b.allow(0.0) and a.allow(0.0)
    a.record_failure(0.1)  # opens
    assert a.allow(1.2) and a.state == "half-open"  # a is the probe
    b.record_success(1.3)  # b's old call: not the probe's outcome
    assert a.state == "half-open"
    assert not b.allow(1.4), "a's probe is still out"
    a.record_failure(1.5)
    assert a.state == "open" and not b.allow(1.6) and b.allow(2.5)


def test_the_caller_that_half_opens_the_breaker_is_its_probe_whatever_was_left_held(
    tmp_path: Path,
) -> None:
    # A probe never freed (its holder's outcome was recorded after the window had ended)
    # used to leave the breaker half-open with nobody let through until it timed out.
    db = tmp_path / "b.db"
    SQLiteStore(db).close()
    board = BreakerBoard(db, {"payments": BreakerConfig(fail_max=1, reset_timeout=0.5)})
    try:
        breaker = board.get("payments")
        assert breaker.allow(100.0)
        breaker.record_failure(100.0)
        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE breakers SET probe_until = 101.0")  # held until 101
        assert breaker.allow(100.5) and breaker.state == "half-open"
        assert not board.get("payments").allow(100.6)
    finally:
        board.close()

"""A half-open probe race: threads and processes hammer one shared breaker (issue 10).

Every racer is a worker thread with its own `BreakerBoard` (as in orchestrator/worker.py),
calling a service that always fails: the breaker only ever goes open -> half-open -> open,
so every call it lets through is a half-open probe. `probe_violations` checks the rule on
what the callers saw: a call is let through only `reset_timeout` after the previous probe's
failure reopened the breaker, never two at once (one probe per half-open window).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from sagalab.orchestrator.breaker_board import BreakerBoard, BreakerConfig

RESET_TIMEOUT = 0.05
CONFIGS = {"payments": BreakerConfig(fail_max=1, reset_timeout=RESET_TIMEOUT)}

#: One probe: (the `now` its `allow` was asked at, the `now` its failure was recorded at).
Probe = tuple[float, float]


def open_breaker(db: str) -> None:
    """Open the shared breaker now (one failure with fail_max 1)."""
    board = BreakerBoard(db, CONFIGS, owner="setup")
    try:
        breaker = board.get("payments")
        assert breaker.allow(time.time())
        breaker.record_failure(time.time())
        assert breaker.state == "open"
    finally:
        board.close()


def hammer(db: str, threads: int, until: float) -> list[Probe]:
    """`threads` racers on `db` until wall time `until`; every probe they were let through."""
    probes: list[Probe] = []
    lock = threading.Lock()

    def racer(i: int) -> None:
        board = BreakerBoard(db, CONFIGS, owner=f"racer-{i}")
        breaker = board.get("payments")
        try:
            while time.time() < until:
                asked = time.time()
                if not breaker.allow(asked):
                    continue  # ask again at once: the tightest race for the probe
                failed = time.time()  # the call failed at once (a 503)
                breaker.record_failure(failed)
                with lock:
                    probes.append((asked, failed))
        finally:
            board.close()

    workers = [threading.Thread(target=racer, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    return probes


def hammer_in_process(db: str, threads: int, barrier: Any, results: Any, seconds: float) -> None:
    """`hammer` in a spawned process, started together with the others through `barrier`."""
    barrier.wait(timeout=60)
    results.put(hammer(db, threads, time.time() + seconds))


def probe_violations(probes: list[Probe], reset_timeout: float = RESET_TIMEOUT) -> list[str]:
    """Each probe let through too early: while the previous one was out, or before the
    breaker it reopened had been open `reset_timeout` (a second probe in one window)."""
    ordered = sorted(probes)
    bad = []
    for (_, failed), (asked, _) in zip(ordered, ordered[1:], strict=False):
        if asked < failed + reset_timeout - 1e-9:
            bad.append(f"probe asked at {asked:.4f}, {asked - failed:+.4f}s after the last failed")
    return bad

"""`simulator.timer.Timer`: one object rescheduled for each wait, in SimPy's order.

The simulator's workers and arrival processes wait on a `Timer` instead of a new `Timeout`
each time (fewer allocations); the reports stay byte-identical only if a `Timer` takes its
place in SimPy's schedule exactly as a `Timeout` made at the same point would.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest
import simpy

from sagalab.simulator.timer import Timer


def _order(use_timer: bool) -> list[tuple[float, str]]:
    """Three processes waiting on equal and unequal delays, noting who resumed when."""
    env = simpy.Environment()
    seen: list[tuple[float, str]] = []

    def waiter(name: str, delays: list[float]) -> Generator[simpy.Event, Any, None]:
        timer = Timer(env)
        for d in delays:
            yield timer.after(d) if use_timer else env.timeout(d)
            seen.append((env.now, name))

    for name, delays in (("a", [1.0, 0.0, 2.0]), ("b", [1.0, 1.0, 0.0]), ("c", [0.0, 2.0])):
        env.process(waiter(name, delays))
    env.run()
    return seen


def test_a_timer_resumes_its_process_where_a_timeout_would() -> None:
    assert _order(use_timer=True) == _order(use_timer=False)
    assert len(_order(use_timer=True)) == 8


def test_a_timer_refuses_a_negative_delay_and_a_second_schedule_before_it_fired() -> None:
    env = simpy.Environment()
    timer = Timer(env)
    with pytest.raises(ValueError):
        timer.after(-1.0)
    timer.after(1.0)
    with pytest.raises(RuntimeError):
        timer.after(1.0)
    env.run()
    timer.after(0.5)  # fired: it may be scheduled again
    env.run()
    assert env.now == 1.5

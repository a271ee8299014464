"""Parameter sweeps: every combination of `--grid key=v1,v2` values, run on all cores."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import as_completed
from typing import Any

from sagalab.orchestrator.limits import MAX_SWEEP_RUNS

from .config import configure, parse_value
from .errors import ScenarioError
from .model import simulate
from .pools import stoppable_pool

__all__ = ["combinations", "parse_grid", "run_one", "sweep"]


def parse_grid(items: Sequence[str]) -> list[tuple[str, list[str]]]:
    """`["a.b=1,2", "c=x,y"]` -> `[("a.b", ["1", "2"]), ("c", ["x", "y"])]`."""
    out = []
    for item in items:
        key, sep, values = item.partition("=")
        parts = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key.strip() or not parts:
            raise ScenarioError(f"--grid {item}", "expected key.path=v1,v2,...")
        out.append((key.strip(), parts))
    return out


def _sets(sets: Sequence[str], assignment: dict[str, str]) -> list[str]:
    return [*sets, *(f"{k}={v}" for k, v in assignment.items())]


def combinations(grid: Sequence[tuple[str, list[str]]]) -> Iterator[dict[str, str]]:
    """Every assignment of one value per grid key."""
    keys = [k for k, _ in grid]
    for values in itertools.product(*(v for _, v in grid)):
        yield dict(zip(keys, values, strict=True))


def run_one(
    scenario: str,
    assignment: dict[str, str],
    sets: Sequence[str],
    seed: int | None,
    duration: float | None,
) -> dict[str, Any]:
    """One run of the sweep (in a worker process): the assignment plus headline metrics."""
    config = configure(scenario, _sets(sets, assignment), seed=seed, duration=duration)
    report = simulate(config, seed=seed, duration=duration).report
    s = report["sagas"]
    return {
        **{k: parse_value(v) for k, v in assignment.items()},
        "completed": s["completed"],
        "rolled_back": s["rolled_back"],
        "failed": s["failed"],
        "e2e_p95": report["latency"]["end_to_end"]["p95"],
        "invariants_failed": report["invariants_failed"],
        "claims_failed": sum(not c["ok"] for c in report["claims"]),
    }


def sweep(
    scenario: str,
    grid: Sequence[tuple[str, list[str]]],
    *,
    sets: Sequence[str] = (),
    seed: int | None = None,
    duration: float | None = None,
    workers: int | None = None,
    done: Callable[[dict[str, Any]], None] | None = None,
    started: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every combination on `workers` processes (all cores by default), in grid order.

    `started(runs)` is called once every combination is validated, before the first run.
    """
    runs = 1
    for _, values in grid:
        runs *= len(values)
    if runs > MAX_SWEEP_RUNS:
        raise ScenarioError("--grid", f"{runs:,} runs is over the limit of {MAX_SWEEP_RUNS:,}")
    combos = list(combinations(grid))
    # Validate every combination here, the way `simulate run` validates its one: a bad value
    # fails with the same message before any process starts.
    for assignment in combos:
        configure(scenario, _sets(sets, assignment), seed=seed, duration=duration)
    if started is not None:
        started(len(combos))
    workers = workers or os.cpu_count() or 1
    results: list[dict[str, Any] | None] = [None] * len(combos)
    with stoppable_pool(min(workers, len(combos))) as pool:
        futures = {
            pool.submit(run_one, scenario, a, list(sets), seed, duration): i
            for i, a in enumerate(combos)
        }
        for future in as_completed(futures):
            row = future.result()
            results[futures[future]] = row
            if done is not None:
                done(row)
    return [r for r in results if r is not None]

"""Parameter sweeps: every combination of `--grid key=v1,v2` values, run on all cores.

`replicate` runs each combination (or the scenario alone) over K seeds and gives one chosen
report metric's mean and 95 % t-interval (`simulate sweep --metric PATH --seeds K`).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import as_completed
from typing import Any

from sagalab.orchestrator.limits import MAX_SWEEP_RUNS

from .claims import metric as metric_value
from .config import configure, parse_value
from .errors import ClaimError, ScenarioError
from .model import Simulation, simulate
from .paired import t_interval
from .pools import stoppable_pool

__all__ = [
    "DEFAULT_METRIC",
    "MAX_SEEDS",
    "combinations",
    "parse_grid",
    "replicate",
    "run_metric",
    "run_one",
    "sweep",
]

#: The metric `--seeds` replicates unless `--metric` names another.
DEFAULT_METRIC = "latency.end_to_end.p95"
#: Most seeds of one replicated metric (each combination runs once per seed).
MAX_SEEDS = 100


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


def _check_metric(config: dict[str, Any], metric: str, duration: float | None) -> None:
    """ScenarioError (`--metric ...`) unless every run's report or series will have `metric`:
    a dotted report path or `window(START, END).COLUMN[.agg]`, as a claim names its metric."""
    from .claims import check
    from .report import shape_before_run

    report, columns = shape_before_run(Simulation(config, duration=duration))
    try:
        check([f"{metric} >= 0"], report, columns)
    except ScenarioError as exc:
        reason = exc.message.partition(": ")[2] or exc.message
        raise ScenarioError(f"--metric {metric}", reason) from None


def run_metric(
    scenario: str,
    assignment: dict[str, str],
    sets: Sequence[str],
    seed: int,
    duration: float | None,
    metric: str,
) -> float | None:
    """One run of a replicated sweep (in a worker process): the metric's value, or None when
    this run left it unmeasured (a time to recover when the run did not recover)."""
    config = configure(scenario, _sets(sets, assignment), seed=seed, duration=duration)
    result = simulate(config, seed=seed, duration=duration)
    try:
        return metric_value(metric, result.report, result.series)
    except ClaimError:
        return None


def replicate(
    scenario: str,
    grid: Sequence[tuple[str, list[str]]],
    *,
    metric: str = DEFAULT_METRIC,
    seeds: int = 10,
    first_seed: int = 1,
    sets: Sequence[str] = (),
    duration: float | None = None,
    workers: int | None = None,
    done: Callable[[], None] | None = None,
    started: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """Each combination of `grid` (the scenario alone when empty) over seeds `first_seed ..
    first_seed + seeds - 1`: one row with the assignment, the metric's mean, its 95 %
    t-interval (`low`, `high`), the runs that measured it and every per-seed value.

    Everything is validated before any run: the seeds, the number of runs, every
    combination (as `sweep` does) and the metric against the report a run will have.
    """
    if not 2 <= seeds <= MAX_SEEDS:
        raise ScenarioError(
            "--seeds", f"must be 2 to {MAX_SEEDS} (an interval needs two), got {seeds}"
        )
    if not 0 <= first_seed <= 2**32 - 1 - seeds:
        raise ScenarioError("--seed", f"must be 0 to {2**32 - 1 - seeds}, got {first_seed}")
    combos = list(combinations(grid))
    runs = len(combos) * seeds
    if runs > MAX_SWEEP_RUNS:
        raise ScenarioError(
            "--seeds",
            f"{len(combos):,} combinations x {seeds} seeds = {runs:,} runs is over "
            f"the limit of {MAX_SWEEP_RUNS:,}",
        )
    for assignment in combos:
        config = configure(scenario, _sets(sets, assignment), duration=duration)
        _check_metric(config, metric, duration)
    seed_list = list(range(first_seed, first_seed + seeds))
    jobs = [(i, seed) for i in range(len(combos)) for seed in seed_list]
    if started is not None:
        started(len(jobs))
    values: dict[tuple[int, int], float | None] = {}
    workers = min(workers or os.cpu_count() or 1, len(jobs))
    if workers == 1:  # no pool for one process
        for i, seed in jobs:
            values[i, seed] = run_metric(scenario, combos[i], sets, seed, duration, metric)
            if done is not None:
                done()
    else:
        with stoppable_pool(workers) as pool:
            futures = {
                pool.submit(run_metric, scenario, combos[i], list(sets), s, duration, metric): (
                    i,
                    s,
                )
                for i, s in jobs
            }
            for future in as_completed(futures):
                values[futures[future]] = future.result()
                if done is not None:
                    done()
    rows = []
    for i, assignment in enumerate(combos):
        per_seed = [values[i, seed] for seed in seed_list]
        measured = [v for v in per_seed if v is not None]
        row: dict[str, Any] = {k: parse_value(v) for k, v in assignment.items()}
        row.update(metric=metric, seeds=seeds, measured=len(measured))
        if len(measured) >= 2:
            mean, low, high = t_interval(measured)
            row.update(mean=round(mean, 6), low=round(low, 6), high=round(high, 6))
        else:  # too few runs measured it for an interval
            row.update(mean=None, low=None, high=None)
        row["values"] = per_seed
        rows.append(row)
    return rows

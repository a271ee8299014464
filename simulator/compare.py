"""`simulate compare`: a base and a variant scenario over the same seeds, figure by figure.

Both scenarios are validated first (a bad file is refused before anything runs, as `run`
refuses it); then each runs once per seed, on `workers` processes, and every headline figure
(`headline`) gets the mean of the per-seed differences and its paired 95 % t-interval
(`simulator.paired`). The same seeds give the same comparison.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import as_completed
from typing import Any

from sagalab.orchestrator.limits import MAX_SWEEP_RUNS

from .config import configure
from .errors import ScenarioError
from .model import simulate
from .paired import paired_difference
from .pools import stoppable_pool

__all__ = ["MAX_COMPARE_SEEDS", "compare", "headline"]

#: Most seeds of one comparison (each seed runs both scenarios).
MAX_COMPARE_SEEDS = min(100, MAX_SWEEP_RUNS // 2)


def _breaker_open_seconds(series: Sequence[Mapping[str, float]]) -> float:
    """Seconds any breaker was seen open, from the per-interval series (a breaker's column is
    1 while it is open, 0.5 half-open, 0 closed: half-open counts as half)."""
    total, last_t = 0.0, 0.0
    for row in series:
        t = row["t"]
        span = t - last_t
        last_t = t
        total += span * sum(v for k, v in row.items() if k.startswith("breaker_"))
    return round(total, 6)


def headline(report: Mapping[str, Any], series: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The figures a comparison shows, from one run's report and series, by name."""
    sagas = report["sagas"]
    created = sagas["created"] or 1
    e2e = report["latency"]["end_to_end"]
    out: dict[str, float] = {
        "e2e_p50": e2e["p50"],
        "e2e_p95": e2e["p95"],
        "throughput": sagas["completed"] / report["duration"],
        "completed_share": sagas["completed"] / created,
        "rolled_back_share": sagas["rolled_back"] / created,
        "breaker_open_seconds": _breaker_open_seconds(series),
        "peak_queue_depth": report["queue"]["peak_depth"],
    }
    for name, counts in report["services"].items():
        out[f"calls.{name}"] = counts["calls"]
    database = report.get("database")
    if database is not None:
        out.update(database_headline(database))
    return out


def database_headline(database: Mapping[str, Any]) -> dict[str, float]:
    """The database's figures (when the scenario models it): load and latency at the primary."""
    primary = database["primary"]
    cache = database.get("cache")
    out = {
        "db.primary_reads": primary["reads"],
        "db.primary_read_p95": primary["read_latency"]["p95"],
        "db.write_p95": primary["write_latency"]["p95"],
        "db.replica_reads": sum(r["reads"] for r in database["replicas"].values()),
        "db.read_fallbacks": database["fallbacks"],
    }
    if cache is not None:
        out["db.cache_hit_ratio"] = cache["hit_ratio"]
        out["db.cache_stale_hits"] = cache["stale_hits"]
    return out


def run_seed(config: dict[str, Any], seed: int, duration: float | None) -> dict[str, Any]:
    """One run (in a worker process): the headline figures and its invariant failures."""
    result = simulate(config, seed=seed, duration=duration)
    return {
        "figures": headline(result.report, result.series),
        "invariants_failed": result.report["invariants_failed"],
    }


def compare(
    base: str,
    variant: str,
    *,
    seeds: int = 5,
    first_seed: int = 1,
    sets: Sequence[str] = (),
    variant_sets: Sequence[str] = (),
    duration: float | None = None,
    workers: int | None = None,
    started: Callable[[int], None] | None = None,
    done: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Run `base` and `variant` over seeds `first_seed .. first_seed + seeds - 1`.

    `sets` (`key.path=value`) apply to both, `variant_sets` to the variant only (after
    `sets`): `compare("baseline", "baseline", variant_sets=["orchestrator.replicas=4"])`.
    Returns plain data: the scenarios, the seeds, each figure's base and variant means, mean
    difference, 95 % interval, whether it is significant, and the per-seed values. Figures
    only one side has (a service or a database the other lacks) are left out. ScenarioError
    for a bad file or a number of seeds out of range, before anything runs.
    """
    if not 2 <= seeds <= MAX_COMPARE_SEEDS:
        raise ScenarioError(
            "--seeds",
            f"must be 2 to {MAX_COMPARE_SEEDS} (a paired interval needs two), got {seeds}",
        )
    if not 0 <= first_seed <= 2**32 - 1 - seeds:
        raise ScenarioError("--seed", f"must be 0 to {2**32 - 1 - seeds}, got {first_seed}")
    configs = [
        configure(base, sets, duration=duration),
        configure(variant, [*sets, *variant_sets], duration=duration),
    ]
    seed_list = list(range(first_seed, first_seed + seeds))
    jobs = [(side, seed) for seed in seed_list for side in (0, 1)]
    if started is not None:
        started(len(jobs))
    results: dict[tuple[int, int], dict[str, Any]] = {}
    workers = min(workers or os.cpu_count() or 1, len(jobs))
    if workers == 1:
        for side, seed in jobs:
            results[side, seed] = run_seed(configs[side], seed, duration)
            if done is not None:
                done()
    else:
        with stoppable_pool(workers) as pool:
            futures = {
                pool.submit(run_seed, configs[side], seed, duration): (side, seed)
                for side, seed in jobs
            }
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                if done is not None:
                    done()
    runs = [[results[side, seed]["figures"] for seed in seed_list] for side in (0, 1)]
    names = [n for n in runs[0][0] if all(n in r for r in runs[0] + runs[1])]
    figures: dict[str, Any] = {}
    for name in names:
        b = [float(r[name]) for r in runs[0]]
        v = [float(r[name]) for r in runs[1]]
        diff = paired_difference(b, v)
        figures[name] = {
            "base": diff.base,
            "variant": diff.variant,
            "difference": diff.difference,
            "low": diff.low,
            "high": diff.high,
            "significant": diff.significant,
            "base_runs": b,
            "variant_runs": v,
        }
    return {
        "base": {"scenario": base, "name": configs[0].get("name", base)},
        "variant": {"scenario": variant, "name": configs[1].get("name", variant)},
        "seeds": seed_list,
        "sets": list(sets),
        "variant_sets": list(variant_sets),
        "duration": duration,
        "invariants_failed": {
            "base": sum(results[0, s]["invariants_failed"] for s in seed_list),
            "variant": sum(results[1, s]["invariants_failed"] for s in seed_list),
        },
        "figures": figures,
    }

"""Explorer speed: seeds of the checkout flow explored per minute (`simulate explore`).

Run on demand (pytest does not collect it):

    python benchmarks/bench_explore.py [--seeds N] [--runs R] [--json]

Each seed runs two checkout sagas through the saga driver against the in-memory journal store
and services, with faults at about a quarter of the commits and calls, then checks every
invariant (`simulator.explore_checks`). Target (issue 13): thousands of seeds a minute; the
suite (benchmarks/suite.toml) gates on 1000. With --json, one JSON object on stdout and
progress on stderr (benchmarks/run.py reads it); exit 1 if a seed breaks an invariant, 2 on a
count out of range.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable

from sagalab.orchestrator.flowfile import load_flow
from sagalab.simulator.explore import Setup
from sagalab.simulator.explore_checks import explore

MAX_SEEDS = 100_000  # as `simulate explore --seeds`
MAX_RUNS = 20
TARGET = 1000  # seeds a minute


def _bounded(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number in low..high (argparse exits 2 on anything else)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not in {low}..{high}")
        return value

    return parse


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seeds", type=_bounded(1, MAX_SEEDS), default=5000, help="seeds to explore (1..N)"
    )
    parser.add_argument(
        "--runs", type=_bounded(1, MAX_RUNS), default=3, help="timed runs; the best is kept"
    )
    parser.add_argument(
        "--json", action="store_true", help="one JSON object on stdout, progress on stderr"
    )
    args = parser.parse_args()
    setup = Setup(load_flow("checkout"), {})
    rates = []
    for run in range(1, args.runs + 1):
        start = time.perf_counter()
        found = explore(setup, range(1, args.seeds + 1), random.Random)
        wall = time.perf_counter() - start
        if found.failing_seed is not None:
            print(
                f"seed {found.failing_seed} breaks an invariant: {found.to_dict()}", file=sys.stderr
            )
            return 1
        rates.append(found.seeds / wall * 60)
        print(f"run {run}/{args.runs}: {args.seeds} seeds in {wall:.2f} s", file=sys.stderr)
    faults = sum(found.faults.values())
    best = max(rates)
    report = {
        "seeds": args.seeds,
        "runs": args.runs,
        "sagas_per_seed": setup.sagas,
        "faults_per_seed": round(faults / found.seeds, 2),
        "seeds_per_minute": round(best),
        "seeds_per_minute_all": [round(r) for r in rates],
        "target": TARGET,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    per_seed = report["faults_per_seed"]
    print(f"checkout: {args.seeds} seeds, {setup.sagas} sagas and {per_seed} faults a seed")
    verdict = "meets" if best >= TARGET else "misses"
    print(f"{best:,.0f} seeds/minute, best of {args.runs} ({verdict} the >= {TARGET} target)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

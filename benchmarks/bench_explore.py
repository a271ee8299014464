"""Explorer speed: seeds of the checkout flow explored per minute (`simulate explore`).

Run on demand (pytest does not collect it):  python benchmarks/bench_explore.py [--seeds N]

Each seed runs two checkout sagas through the saga driver against the in-memory journal store
and services, with faults at about a quarter of the commits and calls, then checks every
invariant (`simulator.explore_checks`). Target (issue 13): thousands of seeds a minute.
"""

from __future__ import annotations

import argparse
import json
import random
import time

from sagalab.orchestrator.flowfile import load_flow
from sagalab.simulator.explore import Setup
from sagalab.simulator.explore_checks import explore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5000, help="seeds to explore (1..N)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs; the best is kept")
    args = parser.parse_args()
    setup = Setup(load_flow("checkout"), {})
    rates = []
    for _ in range(args.runs):
        start = time.perf_counter()
        found = explore(setup, range(1, args.seeds + 1), random.Random)
        wall = time.perf_counter() - start
        assert found.failing_seed is None, found.to_dict()
        rates.append(found.seeds / wall * 60)
    faults = sum(found.faults.values())
    print(
        json.dumps(
            {
                "seeds": args.seeds,
                "sagas_per_seed": setup.sagas,
                "faults_per_seed": round(faults / found.seeds, 2),
                "seeds_per_minute_best": round(max(rates)),
                "seeds_per_minute_all": [round(r) for r in rates],
            }
        )
    )


if __name__ == "__main__":
    main()

"""Simulator speed: full simulated requests per wall-clock second against a plain SimPy M/M/1.

Run on demand (pytest does not collect it):

    python benchmarks/bench_simulator.py [--duration S] [--json]

A "full request" crosses the firewall, the balancer, a gateway and the queue, then runs the
four-step order saga through the saga core, the breakers and the services, with a journal
write latency per event. Target (issue 4): ratio >= 0.1, i.e. one full request costs no more
wall time than ten M/M/1 customers.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Generator
from typing import Any

import simpy

from sagalab.simulator.config import load_scenario
from sagalab.simulator.model import simulate


def mm1_customers_per_second(customers: int = 200_000, seed: int = 1) -> float:
    """The textbook SimPy M/M/1 loop (Resource, one process per customer), rho = 0.8."""
    rng = random.Random(seed)
    env = simpy.Environment()
    server = simpy.Resource(env, capacity=1)

    def customer() -> Generator[simpy.Event, Any, None]:
        with server.request() as req:
            yield req
            yield env.timeout(rng.expovariate(1.0))

    def source() -> Generator[simpy.Event, Any, None]:
        for _ in range(customers):
            yield env.timeout(rng.expovariate(0.8))
            env.process(customer())

    env.process(source())
    start = time.perf_counter()
    env.run()
    return customers / (time.perf_counter() - start)


def baseline_requests_per_second(duration: float, seed: int = 1) -> tuple[float, int]:
    """Full requests (admitted and run to their end) per wall-clock second, baseline scenario."""
    config = load_scenario("baseline")
    start = time.perf_counter()
    report = simulate(config, seed=seed, duration=duration).report
    wall = time.perf_counter() - start
    requests = report["requests"]["legit"]["offered"]
    return requests / wall, requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=300.0, help="baseline seconds")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args()
    full, n = baseline_requests_per_second(args.duration)
    mm1 = mm1_customers_per_second()
    ratio = full / mm1
    if args.json:
        report = {"requests": n, "full_requests_per_s": full, "mm1_customers_per_s": mm1}
        print(json.dumps({**report, "ratio": ratio, "target": 0.1}, indent=2))
        return
    print(f"baseline scenario: {n} requests, {full:,.0f} simulated full requests/s (wall)")
    print(f"plain SimPy M/M/1: {mm1:,.0f} customers/s (wall)")
    verdict = "meets" if ratio >= 0.1 else "misses"
    print(f"ratio: {ratio:.3f} ({verdict} the >= 0.1 target)")


if __name__ == "__main__":
    main()

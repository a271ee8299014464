"""Closed forms for M/M/c queues, and a plain-queue run of the model's `Station` to check them.

`erlang_c(c, a)` is the probability that an arrival waits (offered load `a = λ/μ` Erlangs);
`mmc_wait(λ, μ, c)` the mean time in queue, `C / (cμ - λ)`. `plain_queue_run` drives one
`Station` (the class every tier of the model uses) with Poisson arrivals and exponential
service and returns batch means of the waiting time, so a test can compare the two within the
run's confidence interval.
"""

from __future__ import annotations

import math
import random
from collections.abc import Generator
from typing import Any

import simpy

from .stations import Job, Station

__all__ = ["erlang_c", "mmc_wait", "plain_queue_run"]


def erlang_c(c: int, a: float) -> float:
    """Probability of waiting in an M/M/c queue with offered load `a` (< c) Erlangs."""
    if not 0 <= a < c:
        raise ValueError("need 0 <= a < c for a stable queue")
    term = 1.0
    total = 1.0  # k = 0
    for k in range(1, c):
        term *= a / k
        total += term
    top = term * a / c * c / (c - a)  # a^c / c! * c / (c - a)
    return top / (total + top)


def mmc_wait(lam: float, mu: float, c: int) -> float:
    """Mean waiting time in queue (before service) of an M/M/c queue."""
    return erlang_c(c, lam / mu) / (c * mu - lam)


def plain_queue_run(
    lam: float, mu: float, c: int, *, customers: int, batches: int = 20, seed: int = 1
) -> dict[str, Any]:
    """Waiting-time batch means from a `Station` run; also L, λ and W for Little's law."""
    rng = random.Random(seed)
    env = simpy.Environment()
    station = Station(env, "plain", c, lambda: rng.expovariate(mu), None)
    warmup = customers // 10
    size = customers // batches
    sums = [0.0] * batches
    seen = 0

    def done(job: Job) -> None:
        nonlocal seen
        index = seen - warmup
        seen += 1
        if 0 <= index < size * batches:
            sums[index // size] += job.started - job.arrived

    def source() -> Generator[simpy.Event, Any, None]:
        for _ in range(warmup + size * batches):
            yield env.timeout(rng.expovariate(lam))
            station.submit(None, done)

    env.process(source())
    env.run()
    means = [s / size for s in sums]
    mean = sum(means) / batches
    var = sum((m - mean) ** 2 for m in means) / (batches - 1)
    return {
        "mean_wait": mean,
        "stderr": math.sqrt(var / batches),
        "batches": batches,
        "little": station.stats.little(env.now),
    }

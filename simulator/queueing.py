"""Closed forms for M/M/c and M/G/1 queues, and a plain-queue run of the model's `Station`.

`erlang_c(c, a)` is the probability that an arrival waits (offered load `a = λ/μ` Erlangs);
`mmc_wait(λ, μ, c)` the mean time in queue, `C / (cμ - λ)`; `pk_wait` the M/G/1 mean wait
(Pollaczek-Khinchine), for Erlang-k and hyperexponential service. `plain_queue_run` drives one
`Station` (the class every tier of the model uses) with Poisson arrivals and exponential
service and returns batch means of the waiting time, so a test can compare the two within the
run's confidence interval. `balanced_run` puts `servers` single-server `Station`s behind the
real `edge.policies.balancer.Balancer` (the rule the simulated and the real edge follow) and
returns batch means of the time in system, for `supermarket_sojourn`, Mitzenmacher's limit for
power of two choices, and `random`'s N independent M/M/1 queues.
"""

from __future__ import annotations

import math
import random
from collections.abc import Generator
from typing import Any

import simpy

from sagalab.edge.policies.balancer import Balancer, Strategy

from .stations import Job, Station, sampler

__all__ = [
    "balanced_run",
    "erlang_c",
    "mmc_wait",
    "pk_wait",
    "plain_queue_run",
    "supermarket_sojourn",
]


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


def pk_wait(lam: float, mean: float, second_moment: float) -> float:
    """Mean waiting time in queue of an M/G/1 queue (Pollaczek-Khinchine):
    λ E[S²] / (2 (1 - ρ)), with ρ = λ E[S]."""
    rho = lam * mean
    if not 0 <= rho < 1:
        raise ValueError("need 0 <= rho < 1 for a stable queue")
    return lam * second_moment / (2 * (1 - rho))


def _batch_means(sums: list[float], size: int) -> tuple[float, float]:
    """The mean of the batch means and its standard error."""
    batches = len(sums)
    means = [s / size for s in sums]
    mean = sum(means) / batches
    var = sum((m - mean) ** 2 for m in means) / (batches - 1)
    return mean, math.sqrt(var / batches)


class _Batches:
    """Customers counted in the order they finish: the first tenth is warm-up, then `count`
    batches of `customers // count` each (what both textbook runs measure over)."""

    def __init__(self, customers: int, count: int) -> None:
        self.warmup = customers // 10
        self.size = customers // count
        self.count = count
        self.seen = 0

    @property
    def arrivals(self) -> int:
        """Customers to send: the warm-up and every batch."""
        return self.warmup + self.size * self.count

    def next(self) -> int | None:
        """The batch the customer finishing now falls in; None during the warm-up or after."""
        index = self.seen - self.warmup
        self.seen += 1
        return index // self.size if 0 <= index < self.size * self.count else None


def plain_queue_run(
    lam: float,
    mu: float,
    c: int,
    *,
    customers: int,
    batches: int = 20,
    seed: int = 1,
    service: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Waiting-time batch means from a `Station` run; also L, λ and W for Little's law.

    Service is exponential of rate `mu`, or drawn from the distribution `service` (any spec
    `stations.sampler` takes: `mu` is then unused). Besides the mean wait, the batch means of
    the share of customers that waited (`p_wait`, Erlang C's probability on M/M/c) and the
    station's own `waiting()` summary, the figures the report gives for every tier.
    """
    rng = random.Random(seed)
    env = simpy.Environment()
    draw = (lambda: rng.expovariate(mu)) if service is None else sampler(service, rng, "service")
    station = Station(env, "plain", c, draw, None)
    counted = _Batches(customers, batches)
    sums = [0.0] * batches
    waited = [0.0] * batches

    def done(job: Job) -> None:
        batch = counted.next()
        if batch is not None:
            wait = job.started - job.arrived
            sums[batch] += wait
            waited[batch] += wait > 0

    def source() -> Generator[simpy.Event, Any, None]:
        for _ in range(counted.arrivals):
            yield env.timeout(rng.expovariate(lam))
            station.submit(None, done)

    env.process(source())
    env.run()
    mean, stderr = _batch_means(sums, counted.size)
    p_wait, p_stderr = _batch_means(waited, counted.size)
    return {
        "mean_wait": mean,
        "stderr": stderr,
        "p_wait": p_wait,
        "p_wait_stderr": p_stderr,
        "batches": batches,
        "little": station.stats.little(env.now),
        "waiting": station.waiting(),
    }


def supermarket_sojourn(rho: float, mu: float = 1.0) -> float:
    """Mean time in system under power of two choices as the number of queues grows without
    bound (Mitzenmacher's supermarket model, d = 2, per-queue load `rho`, service rate `mu`).

    The share of queues holding at least i jobs is rho^(2^i - 1); the mean jobs per queue is
    their sum over i >= 1, and Little's law (arrivals rho * mu per queue) gives the time:
    sum of rho^(2^i - 2) / mu. Against 1 / (mu (1 - rho)) for a uniformly random choice.
    """
    if not 0 <= rho < 1:
        raise ValueError("need 0 <= rho < 1 for a stable queue")
    total, i = 0.0, 1
    while True:
        term = rho ** (2**i - 2)
        total += term
        if term < 1e-12:  # doubly exponential decay: a handful of terms
            return total / mu
        i += 1


class _Queue:
    """One station as the balancer sees it (`Instance`): no limit, never ejected."""

    __slots__ = ("station",)
    available = True

    def __init__(self, station: Station) -> None:
        self.station = station

    @property
    def active(self) -> int:
        station = self.station
        return station.busy + len(station.queue)


def balanced_run(
    rho: float,
    mu: float,
    servers: int,
    strategy: Strategy | str,
    *,
    customers: int,
    batches: int = 20,
    seed: int = 1,
) -> dict[str, Any]:
    """Time-in-system batch means of `servers` single-server `Station`s (exponential service
    of rate `mu`) fed Poisson arrivals at `rho * mu * servers`, each sent where
    `Balancer(strategy).choose` says, so a test can compare `power_of_two` against
    `supermarket_sojourn` and `random` against M/M/1 within the run's confidence interval.
    """
    rng = random.Random(seed)
    env = simpy.Environment()
    queues = [
        _Queue(Station(env, f"s{k}", 1, lambda: rng.expovariate(mu), None)) for k in range(servers)
    ]
    balancer = Balancer(strategy)
    lam = rho * mu * servers
    counted = _Batches(customers, batches)
    sums = [0.0] * batches

    def done(job: Job) -> None:
        batch = counted.next()
        if batch is not None:
            sums[batch] += env.now - job.arrived

    def source() -> Generator[simpy.Event, Any, None]:
        for _ in range(counted.arrivals):
            yield env.timeout(rng.expovariate(lam))
            chosen = balancer.choose(queues, rng)
            assert chosen is not None  # no limits, none ejected: always one
            queues[chosen].station.submit(None, done)

    env.process(source())
    env.run()
    mean, stderr = _batch_means(sums, counted.size)
    return {"mean_sojourn": mean, "stderr": stderr, "batches": batches}

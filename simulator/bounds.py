"""The bound of every number a scenario holds, in one table, checked before anything is built.

The model reads each setting with its type and lower bound (`Node.num`), but only the settings
it uses: a disabled autoscaler's `max` is never read, and a type check alone lets
`clients.0.keys=1e12` build a list of a trillion strings. `check_numbers` walks the whole
scenario instead (except the flow, which the orchestrator's own flow rules check, and the
claims, which are text) and holds every number to its row of `BOUNDS`; a number with no row is
refused as an unknown setting. The limits themselves live in `orchestrator.limits`.

Numbers each within bounds can still multiply into a run of hours (a thousand gateways
health-checked every 10 ms for a day; a long flow at the highest rate): `estimate_events`
gives the simulated events a run will schedule, which `config.check_bounds` holds to
`MAX_SIM_EVENTS`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

from sagalab.orchestrator.limits import (
    MAX_SIM_ADDRESSES,
    MAX_SIM_ATTEMPTS,
    MAX_SIM_BURST,
    MAX_SIM_CONCURRENCY,
    MAX_SIM_DURATION,
    MAX_SIM_EVENTS,
    MAX_SIM_FACTOR,
    MAX_SIM_KEYS,
    MAX_SIM_LATENCY,
    MAX_SIM_MULTIPLIER,
    MAX_SIM_QUEUE,
    MAX_SIM_RATE,
    MAX_SIM_REPLICAS,
    MAX_SIM_SERVERS,
    MAX_SIM_SIGMA,
    MAX_SIM_THRESHOLD,
    MIN_SIM_TICK,
    SIM_EVENTS_PER_SECOND,
)
from sagalab.orchestrator.policies.adaptive_throttle import MAX_THROTTLE_K, MAX_THROTTLE_WINDOW
from sagalab.orchestrator.policies.retry_budget import MAX_BUDGET_RATIO, MAX_BUDGET_WINDOW

from .distributions import MAX_PHASES
from .errors import ScenarioError

__all__ = [
    "BOUNDS",
    "MAX_SIM_USERS",
    "NULL_BY_DEFAULT",
    "Bound",
    "EventEstimate",
    "check_numbers",
    "estimate_events",
]

MAX_SIM_USERS = 100_000
"""Users of one closed client group: each is a timer held for the whole run."""


class Bound(NamedTuple):
    """Inclusive range of one setting, why it is bounded, and whether it counts things."""

    low: float
    high: float
    why: str
    whole: bool = False


_DAY = "simulated seconds: one day"
SECONDS = Bound(0.0, MAX_SIM_DURATION, _DAY)
POSITIVE_SECONDS = Bound(0.001, MAX_SIM_DURATION, _DAY)
TICK = Bound(MIN_SIM_TICK, MAX_SIM_DURATION, "a period: finer ticks only add events")
LATENCY = Bound(0.0, MAX_SIM_LATENCY, "seconds of one call: an hour")
POSITIVE_LATENCY = Bound(1e-6, MAX_SIM_LATENCY, "seconds of one call: an hour")
PROBABILITY = Bound(0.0, 1.0, "a probability")
RATE = Bound(0.0, MAX_SIM_RATE, "arrivals per second")
REPLICAS = Bound(1, MAX_SIM_REPLICAS, "simulated processes", whole=True)
SERVERS = Bound(1, MAX_SIM_SERVERS, "servers of one station", whole=True)
THRESHOLD = Bound(1, MAX_SIM_THRESHOLD, "a count of checks or calls", whole=True)

_LATENCY_KEYS = {
    "mean": POSITIVE_LATENCY,
    "median": POSITIVE_LATENCY,
    "value": LATENCY,
    "low": LATENCY,
    "high": LATENCY,
    "sigma": Bound(0.0, MAX_SIM_SIGMA, "lognormal spread"),
    "quantiles[]": LATENCY,  # an empirical distribution's points
    "k": Bound(1, MAX_PHASES, "phases of an Erlang distribution", whole=True),
    "means[]": POSITIVE_LATENCY,  # a hyperexponential distribution's branches
    "probs[]": PROBABILITY,
}
_RATE_KEYS = {
    "value": RATE,
    "base": RATE,
    "peak": RATE,
    "from": RATE,
    "to": RATE,
    "start": SECONDS,
    "end": SECONDS,
    # [time, rate] pairs: both held to the larger of the two bounds.
    "steps[][]": Bound(0.0, max(MAX_SIM_RATE, MAX_SIM_DURATION), "seconds or arrivals per second"),
}


_BUDGET_KEYS = {
    "ratio": Bound(0.0, MAX_BUDGET_RATIO, "retries per request"),
    "min_per_second": Bound(0.0, MAX_SIM_RATE, "retries per second"),
    "window": Bound(1.0, MAX_BUDGET_WINDOW, "seconds of a retry budget's window"),
}


def _group(prefix: str, rows: Mapping[str, Bound]) -> dict[str, Bound]:
    return {f"{prefix}.{key}": bound for key, bound in rows.items()}


BOUNDS: dict[str, Bound] = {
    "seed": Bound(0, 2**32 - 1, "a 32-bit seed", whole=True),
    "duration": POSITIVE_SECONDS,
    "drain": SECONDS,
    "warmup": SECONDS,
    "measure.start": SECONDS,
    "measure.end": SECONDS,
    "interval": TICK,
    "clients[].address_count": Bound(1, MAX_SIM_ADDRESSES, "addresses held in memory", True),
    "clients[].keys": Bound(0, MAX_SIM_KEYS, "API keys held in memory", whole=True),
    "clients[].timeout": POSITIVE_LATENCY,
    "clients[].retry.max_attempts": Bound(1, MAX_SIM_ATTEMPTS, "attempts of one call", True),
    "clients[].retry.initial_delay": SECONDS,
    "clients[].retry.max_delay": SECONDS,
    "clients[].retry.multiplier": Bound(1.0, MAX_SIM_MULTIPLIER, "backoff growth"),
    "clients[].retry.deadline": POSITIVE_SECONDS,
    **_group("clients[].retry_budget", _BUDGET_KEYS),
    **_group("retry_budget", _BUDGET_KEYS),
    **_group("clients[].rate", _RATE_KEYS),
    "clients[].throttle.k": Bound(1.0, MAX_THROTTLE_K, "requests sent per request accepted"),
    "clients[].throttle.window": Bound(1.0, MAX_THROTTLE_WINDOW, "seconds of a throttle's window"),
    "clients[].population.users": Bound(1, MAX_SIM_USERS, "simulated users", whole=True),
    "clients[].population.think.mean": Bound(0.001, MAX_SIM_DURATION, _DAY),
    "clients[].population.think.value": Bound(0.001, MAX_SIM_DURATION, _DAY),
    # The shape of the gaps between arrivals, rescaled to the rate's mean gap.
    **_group("clients[].interarrival", _LATENCY_KEYS),
    "firewall.flood.rate": Bound(0.001, MAX_SIM_RATE, "requests per second"),
    "firewall.flood.burst": Bound(1.0, MAX_SIM_BURST, "a token bucket's burst"),
    "firewall.flood.block_for": SECONDS,
    "firewall.workers": SERVERS,
    "firewall.service_time": LATENCY,
    **_group("firewall.service_time", _LATENCY_KEYS),  # or a distribution
    "firewall.queue_limit": Bound(0, MAX_SIM_QUEUE, "requests queued", whole=True),
    "firewall.queue_timeout": POSITIVE_LATENCY,
    "balancer.weights[]": Bound(0.0, 1_000.0, "a gateway's share of the requests"),
    "balancer.health.interval": TICK,
    "balancer.health.fail_threshold": THRESHOLD,
    "balancer.health.pass_threshold": THRESHOLD,
    "gateways.count": REPLICAS,
    "gateways.workers": SERVERS,
    "gateways.connection_limit": SERVERS,
    "gateways.speed[]": Bound(0.01, 100.0, "times a gateway's base speed"),
    "gateways.queue_timeout": POSITIVE_LATENCY,
    "gateways.auth_time": LATENCY,
    "gateways.handle_time": LATENCY,
    **_group("gateways.handle_time", _LATENCY_KEYS),  # or a distribution
    "gateways.rate_limit.rate": Bound(0.001, MAX_SIM_RATE, "requests per second per key"),
    "gateways.rate_limit.burst": Bound(1.0, MAX_SIM_BURST, "a token bucket's burst"),
    "gateways.crashes[].instance": Bound(0, MAX_SIM_REPLICAS - 1, "a gateway's index", True),
    "gateways.crashes[].at": SECONDS,
    "gateways.crashes[].restart_after": SECONDS,
    "orchestrator.replicas": REPLICAS,
    "orchestrator.concurrency": Bound(1, MAX_SIM_CONCURRENCY, "saga workers per replica", True),
    "orchestrator.lease": Bound(MIN_SIM_TICK, MAX_SIM_DURATION, _DAY),
    "orchestrator.reaper_interval": TICK,
    "orchestrator.startup_delay": SECONDS,
    **_group("orchestrator.db_write", _LATENCY_KEYS),
    "orchestrator.autoscale.min": Bound(0, MAX_SIM_REPLICAS, "simulated processes", True),
    "orchestrator.autoscale.max": REPLICAS,
    "orchestrator.autoscale.target_depth": Bound(0.001, MAX_SIM_QUEUE, "sagas queued"),
    "orchestrator.autoscale.max_age": POSITIVE_SECONDS,
    "orchestrator.autoscale.cooldown": SECONDS,
    "orchestrator.autoscale.interval": TICK,
    "orchestrator.crashes[].at": SECONDS,
    "orchestrator.crashes[].count": REPLICAS,
    "orchestrator.crashes[].restart_after": SECONDS,
    "database.writers": Bound(1, MAX_SIM_CONCURRENCY, "concurrent writers", whole=True),
    "database.readers": Bound(1, MAX_SIM_CONCURRENCY, "concurrent reads", whole=True),
    **_group("database.write_latency", _LATENCY_KEYS),
    **_group("database.read_latency", _LATENCY_KEYS),
    "database.reads.per_saga": Bound(0, 100, "status reads per saga", whole=True),
    "database.reads.interval": Bound(MIN_SIM_TICK, MAX_SIM_DURATION, _DAY),
    "database.replicas.count": Bound(0, 100, "read replicas", whole=True),
    "database.replicas.lag": SECONDS,
    "database.replicas.readers": Bound(1, MAX_SIM_CONCURRENCY, "concurrent reads", whole=True),
    **_group("database.replicas.read_latency", _LATENCY_KEYS),
    "database.cache.ttl": SECONDS,
    "database.cache.flushes[]": SECONDS,
    "regions.hop": LATENCY,
    "regions.remote_replicas": Bound(0, MAX_SIM_REPLICAS, "simulated processes", True),
    "regions.outages[].start": SECONDS,
    "regions.outages[].end": SECONDS,
    "regions.failover.delay": SECONDS,
    "breakers.fail_max": THRESHOLD,
    "breakers.reset_timeout": SECONDS,
    "breakers.success_threshold": THRESHOLD,
    **_group("services.*.latency", _LATENCY_KEYS),
    "services.*.error_rate": PROBABILITY,
    "services.*.reject_rate": PROBABILITY,
    "services.*.concurrency": SERVERS,
    "services.*.queue_limit": Bound(0, MAX_SIM_QUEUE, "requests queued", whole=True),
    "services.*.queue_timeout": POSITIVE_LATENCY,
    "faults[].start": SECONDS,
    "faults[].end": SECONDS,
    "faults[].factor": Bound(1.0, MAX_SIM_FACTOR, "times slower"),
    "faults[].rate": PROBABILITY,
}
"""Bound of each setting by its path: `[]` for any list index, `*` for any service name."""

_SKIP = {"flow", "claims"}


def _numbers(node: Any, shown: str, pattern: str) -> Iterator[tuple[str, str, Any]]:
    if isinstance(node, Mapping):
        for key, value in node.items():
            if not shown and key in _SKIP:
                continue
            key_pattern = "*" if pattern == "services" else str(key)
            yield from _numbers(
                value,
                f"{shown}.{key}" if shown else str(key),
                f"{pattern}.{key_pattern}" if pattern else key_pattern,
            )
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _numbers(value, f"{shown}[{i}]", f"{pattern}[]")
    elif isinstance(node, int | float) and not isinstance(node, bool):
        yield shown, pattern, node


NULL_BY_DEFAULT = (
    "clients[].retry_budget",
    "retry_budget",
    "clients[].throttle",
    "clients[].population",
    "clients[].population.think",
    "clients[].interarrival",
    "measure",
)
"""Mappings whose default is null: their keys are not checked when the scenario is merged."""


def _no_number_here(pattern: str, value: Any) -> str:
    parent = pattern.rpartition(".")[0]
    # A misspelt key of a mapping whose default is null (a retry budget, a throttle, a
    # population), maybe one level further down (`population.thinks.mean`).
    owners = [p for p in NULL_BY_DEFAULT if parent == p or parent.startswith(p + ".")]
    if owners:
        owner = max(owners, key=len)
        prefix = owner + "."
        known = sorted(
            {key[len(prefix) :].split(".")[0] for key in BOUNDS if key.startswith(prefix)}
        )
        return f"unknown setting; known here: {', '.join(known)}"
    # A number given to a setting of another kind (`jitter: 1`).
    return f"takes no number, got {value!r} (simulator/defaults.py shows its kind)"


def _fmt(x: float) -> str:
    return f"{x:,.10g}"


def check_numbers(config: Mapping[str, Any]) -> None:
    """Raise ScenarioError naming the first number of `config` outside its bound."""
    for where, pattern, value in _numbers(config, "", ""):
        bound = BOUNDS.get(pattern)
        if bound is None:
            raise ScenarioError(where, _no_number_here(pattern, value))
        if not math.isfinite(value):
            raise ScenarioError(where, f"must be a finite number, got {value}")
        if value < bound.low:
            raise ScenarioError(
                where, f"{_fmt(value)} is under the minimum of {_fmt(bound.low)} ({bound.why})"
            )
        if value > bound.high:
            raise ScenarioError(
                where, f"{_fmt(value)} is over the limit of {_fmt(bound.high)} ({bound.why})"
            )
        if bound.whole and value != int(value):
            raise ScenarioError(where, f"must be a whole number, got {value!r}")


# Scheduled events of one full request besides its saga's: its arrival, the firewall's and the
# gateway's service timers, and the saga's last commit. Each attempt of a saga step is two (the
# commit of its start, the service call). Measured on `baseline` (four steps): 13 events per
# request, this gives 12; retries and compensations add some, refused requests have fewer.
_EDGE_HOPS = 4
_HOPS_PER_STEP = 2
# Client timeouts are swept by one timer per client group, at most every 0.1 s
# (`edge_model.TIMEOUT_RESOLUTION`).
_SWEEPS_PER_SECOND = 10.0


class EventEstimate(NamedTuple):
    """What a run will schedule: `requests` x `hops` plus `ticks` of the periodic processes."""

    requests: float
    hops: int
    ticks: float

    @property
    def events(self) -> float:
        """Simulated events in all."""
        return self.requests * self.hops + self.ticks

    @property
    def seconds(self) -> float:
        """About how long the run takes here (CPU seconds, at `SIM_EVENTS_PER_SECOND`)."""
        return self.events / SIM_EVENTS_PER_SECOND

    def refusal(self) -> str | None:
        """Why the run is refused (the estimate and the bound), or None when within it."""
        if self.events <= MAX_SIM_EVENTS:
            return None
        return (
            f"about {_count(self.events)} simulated events ({_count(self.requests)} requests x "
            f"{self.hops} hops + {_count(self.ticks)} periodic ticks), about "
            f"{_duration(self.seconds)} at ~{SIM_EVENTS_PER_SECOND:,} events/s, is over the "
            f"limit of {MAX_SIM_EVENTS:,} per run; lower the rates, the duration, the flow's "
            "steps or the gateways, or tick less often"
        )


def estimate_events(
    *,
    requests: float,
    span: float,
    steps: int,
    client_groups: int,
    interval: float,
    gateways: int,
    health_interval: float,
    autoscale_interval: float | None,
) -> EventEstimate:
    """The events a run of `span` seconds offering `requests` will schedule, about.

    Per request, the edge's hops and two per flow step (`_EDGE_HOPS`, `_HOPS_PER_STEP`); per
    second, the metrics sampler (every `interval`), a health check of every gateway (every
    `health_interval`; a check is not its own event, but costs about one), the autoscaler's
    look (every `autoscale_interval`, None when off) and each client group's timeout sweep.
    """
    per_second = 1.0 / interval + gateways / health_interval
    per_second += client_groups * _SWEEPS_PER_SECOND
    if autoscale_interval is not None:
        per_second += 1.0 / autoscale_interval
    return EventEstimate(requests, _EDGE_HOPS + _HOPS_PER_STEP * steps, per_second * span)


def _count(x: float) -> str:
    return f"{x:,.0f}" if x < 1e9 else f"{x:.2g}"


def _duration(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:,.0f} minutes"
    if seconds < 3 * 86_400:
        return f"{seconds / 3600:,.1f} hours"
    return f"{seconds / 86_400:,.0f} days"

"""Every bound on a count, rate or duration a user can ask for, defined once.

The CLI (`worker`, `stack up`, `loadtest`) and the simulator's scenario validation read the
limits here, so a refusal always names the same bound. Bounds on real processes are derived
from the machine's CPU count: a thousand worker replicas on two cores is not a deployment, it
is an out-of-memory kill and a load average of 700 (issue 8). Bounds on the simulation are on
simulated quantities, so they do not depend on the machine; they keep one run's CPU time and
memory within what a laptop spends in minutes, not days.

`check()` raises `LimitError` (a `ValueError`) with a one-line message such as
"--replicas 1000 is over the limit of 8 (4 per CPU on this 2-CPU machine)".
"""

from __future__ import annotations

import math
import os

from sagalab.orchestrator.flow import MAX_STEP_TIMEOUT

__all__ = [
    "API_DB_TIMEOUT",
    "CPUS",
    "DEFAULT_GRACE",
    "LimitError",
    "MAX_CONCURRENCY",
    "MAX_FLOOD_BURST",
    "MAX_FLOOD_RATE",
    "MAX_GATEWAYS",
    "MAX_GRACE",
    "MAX_LEASE",
    "MAX_LOAD_DURATION",
    "MAX_LOAD_PROCESSES",
    "MAX_LOAD_USERS",
    "MAX_POLL",
    "MAX_REPLICAS",
    "MAX_RUN_SECONDS",
    "MAX_SIM_ADDRESSES",
    "MAX_SIM_ATTEMPTS",
    "MAX_SIM_BURST",
    "MAX_SIM_CONCURRENCY",
    "MAX_SIM_DURATION",
    "MAX_SIM_EVENTS",
    "MAX_SIM_FACTOR",
    "MAX_SIM_KEYS",
    "MAX_SIM_LATENCY",
    "MAX_SIM_MULTIPLIER",
    "MAX_SIM_QUEUE",
    "MAX_SIM_RATE",
    "MAX_SIM_REPLICAS",
    "MAX_SIM_REQUESTS",
    "MAX_SIM_SERVERS",
    "MAX_SIM_SIGMA",
    "MAX_SIM_THRESHOLD",
    "MAX_SIM_WORKERS",
    "MAX_SPAWN_RATE",
    "MAX_STACK_WORKERS",
    "MAX_STEP_TIMEOUT",
    "MAX_SWEEP_RUNS",
    "MIN_LEASE",
    "MIN_POLL",
    "MIN_SIM_TICK",
    "SIM_EVENTS_PER_SECOND",
    "WRITER_LOCK_SLACK",
    "check",
]

#: CPUs of this machine (at least 1).
CPUS = os.cpu_count() or 1
_PER_CPU = f"per CPU on this {CPUS}-CPU machine"

# -- real processes --------------------------------------------------------------------------
#: Seconds an API request waits for the database (SQLite's busy timeout) before its 503
#: "Store unavailable". The gateways and the edge wait a little longer
#: (`edge.apps.hop_timeouts`), so that this answer, not a hop's 504, reaches the client.
API_DB_TIMEOUT = 30.0
#: Extra seconds a caller waits for a process's group writer beyond the busy timeout (another
#: caller may hold it through a whole `BEGIN IMMEDIATE` wait): orchestrator/sqlite_writer.py.
WRITER_LOCK_SLACK = 5.0
#: Worker replicas one supervisor runs (`worker --replicas N`, `--max` with auto).
MAX_REPLICAS = max(4, 4 * CPUS)
REPLICAS_WHY = f"4 {_PER_CPU}, at least 4"
#: Saga threads per worker replica (`--concurrency`): threads mostly wait on HTTP calls, but
#: every one holds a connection and competes for the single SQLite write lock.
MAX_CONCURRENCY = 64
CONCURRENCY_WHY = "threads per replica; they share one SQLite write lock"
#: Gateway processes of a local stack (`stack up --gateways`).
MAX_GATEWAYS = max(4, 4 * CPUS)
GATEWAYS_WHY = REPLICAS_WHY
#: Worker processes of a local stack (`stack up --workers`; 0 is allowed).
MAX_STACK_WORKERS = MAX_REPLICAS
#: Seconds a stopping supervisor gives its replicas to finish the sagas in hand before
#: SIGKILL (`worker --grace`). A killed replica's sagas are resumed by the others once their
#: leases expire, so waiting longer only delays the stop.
DEFAULT_GRACE = 10.0
MAX_GRACE = 300.0
#: An edge's flood guard (`stack up --flood-rate/--flood-burst`, the edge's own options):
#: requests per second one address may send, and its burst. One edge serves a few thousand
#: requests per second in all, so a rate above this guards nothing.
MAX_FLOOD_RATE = 100_000.0
MAX_FLOOD_BURST = 1_000_000.0
#: Load test (`loadtest`): simulated users, users started per second, seconds, Locust processes.
MAX_LOAD_USERS = 2000
MAX_SPAWN_RATE = 200.0
MAX_LOAD_DURATION = 3600.0
MAX_LOAD_PROCESSES = CPUS
LOAD_PROCESSES_WHY = "one Locust process per CPU"

#: A worker's lease (`worker --lease`): renewed at a third of it, so a short lease costs
#: writes; a long one is how long a dead worker's sagas wait before another takes them (an
#: hour at most, not the 115 days of `--lease 1e7`).
MIN_LEASE = 0.5
MAX_LEASE = 3600.0
#: Seconds an idle worker waits between looks at the queue (`worker --poll`).
MIN_POLL = 0.01
MAX_POLL = 60.0
#: `worker --max-seconds` and `--exit-when-idle`: thirty days; leave them out to run for ever.
MAX_RUN_SECONDS = 30 * 86_400.0
# MAX_STEP_TIMEOUT (seconds one step's call may take) lives with the flow rules it bounds, in the
# pure core, and is re-exported here with the other limits.

# -- the simulation ---------------------------------------------------------------------------
#: Simulated seconds of arrivals (one simulated day).
MAX_SIM_DURATION = 86_400.0
#: Arrivals per simulated second of one client group, at its peak.
MAX_SIM_RATE = 100_000.0
#: Orchestrator replicas, gateways or autoscaling maximum in a scenario.
MAX_SIM_REPLICAS = 1000
#: Expected requests of a whole run (peak rates x duration): at ~10,000 simulated requests per
#: CPU second, the most a run may cost is about ten minutes.
MAX_SIM_REQUESTS = 5_000_000
#: Estimated simulated events of a whole run (`simulator.bounds.estimate_events`: requests x
#: hops of one request, plus every periodic tick): a full request of the shipped four-step flow
#: is about 12 events, so this is MAX_SIM_REQUESTS of it, about eight minutes at
#: SIM_EVENTS_PER_SECOND. Caps what the request bound alone does not: a long flow, or a
#: thousand gateways health-checked every 10 ms for a simulated day (8.6e9 checks).
MAX_SIM_EVENTS = 60_000_000
#: Simulated events per CPU second here (baseline scenario, 2026-11-26), for the estimate the
#: refusal prints; only a guide, a faster machine runs more.
SIM_EVENTS_PER_SECOND = 120_000
#: Runs of one `simulate sweep` (all combinations of its grid values).
MAX_SWEEP_RUNS = 1000
#: Saga workers of one simulated replica, and of all replicas together (each is a SimPy
#: process held for the whole run: a billion of them is 750 MB before the first arrival).
MAX_SIM_CONCURRENCY = 1000
MAX_SIM_WORKERS = 100_000
#: API keys and source addresses of one client group (each is a string held for the run).
MAX_SIM_KEYS = 100_000
MAX_SIM_ADDRESSES = 100_000
#: Servers of one simulated station (service concurrency, firewall and gateway workers,
#: connections a gateway holds) and the length of its queue.
MAX_SIM_SERVERS = 100_000
MAX_SIM_QUEUE = MAX_SIM_REQUESTS
#: Shortest period of anything that ticks (metrics, reaper, autoscaler, health checks): a
#: finer tick over a simulated day is millions of events that measure nothing new.
MIN_SIM_TICK = 0.01
#: Longest latency, service time or timeout of one call, in simulated seconds.
MAX_SIM_LATENCY = 3600.0
#: Widest lognormal latency (sigma): exp(sigma * z) overflows a float long before 1e9, and
#: at 5 the slowest of a million calls is already ~10^10 times the median.
MAX_SIM_SIGMA = 5.0
#: Slowdown factor of a fault, retry multiplier, attempts of a client's retry.
MAX_SIM_FACTOR = 1000.0
MAX_SIM_MULTIPLIER = 100.0
MAX_SIM_ATTEMPTS = 100
#: Failure and success counts (breaker, health checks) and a token bucket's burst.
MAX_SIM_THRESHOLD = 10_000
MAX_SIM_BURST = 1_000_000.0


class LimitError(ValueError):
    """A value outside its documented bound; the message names the bound."""

    def __init__(self, what: str, value: float, message: str) -> None:
        self.what = what
        self.value = value
        super().__init__(message)


def _fmt(x: float) -> str:
    # 12 significant digits: 2592001 stays 2592001 (":g" showed it as 2.592e+06, the bound too).
    return f"{x:.12g}" if isinstance(x, float) else str(x)


def check(
    what: str,
    value: float,
    *,
    low: float | None = None,
    high: float | None = None,
    why: str = "",
    low_why: str = "",
) -> float:
    """`value` if `low <= value <= high` (and finite), else LimitError naming the bound.

    `why` explains the maximum (e.g. "4 per CPU"), so it is given with an over-limit refusal
    only: it is not why a count must be at least 1. `low_why` explains the minimum, if it needs
    explaining."""
    note = f" ({why})" if why else ""
    low_note = f" ({low_why})" if low_why else ""
    if isinstance(value, float) and not math.isfinite(value):
        raise LimitError(what, value, f"{what} must be a finite number, got {value}")
    if low is not None and value < low:
        raise LimitError(
            what, value, f"{what} {_fmt(value)} is under the minimum of {_fmt(low)}{low_note}"
        )
    if high is not None and value > high:
        raise LimitError(
            what, value, f"{what} {_fmt(value)} is over the limit of {_fmt(high)}{note}"
        )
    return value

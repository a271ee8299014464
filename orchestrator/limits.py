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

__all__ = [
    "CPUS",
    "DEFAULT_GRACE",
    "LimitError",
    "MAX_CONCURRENCY",
    "MAX_GATEWAYS",
    "MAX_GRACE",
    "MAX_LOAD_DURATION",
    "MAX_LOAD_PROCESSES",
    "MAX_LOAD_USERS",
    "MAX_REPLICAS",
    "MAX_SIM_DURATION",
    "MAX_SIM_RATE",
    "MAX_SIM_REPLICAS",
    "MAX_SIM_REQUESTS",
    "MAX_SPAWN_RATE",
    "MAX_STACK_WORKERS",
    "MAX_SWEEP_RUNS",
    "check",
]

#: CPUs of this machine (at least 1).
CPUS = os.cpu_count() or 1
_PER_CPU = f"per CPU on this {CPUS}-CPU machine"

# -- real processes --------------------------------------------------------------------------
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
#: Load test (`loadtest`): simulated users, users started per second, seconds, Locust processes.
MAX_LOAD_USERS = 2000
MAX_SPAWN_RATE = 200.0
MAX_LOAD_DURATION = 3600.0
MAX_LOAD_PROCESSES = CPUS
LOAD_PROCESSES_WHY = "one Locust process per CPU"

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
#: Runs of one `simulate sweep` (all combinations of its grid values).
MAX_SWEEP_RUNS = 1000


class LimitError(ValueError):
    """A value outside its documented bound; the message names the bound."""

    def __init__(self, what: str, value: float, message: str) -> None:
        self.what = what
        self.value = value
        super().__init__(message)


def _fmt(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def check(
    what: str,
    value: float,
    *,
    low: float | None = None,
    high: float | None = None,
    why: str = "",
) -> float:
    """`value` if `low <= value <= high` (and finite), else LimitError naming the bound."""
    note = f" ({why})" if why else ""
    if isinstance(value, float) and not math.isfinite(value):
        raise LimitError(what, value, f"{what} must be a finite number, got {value}")
    if low is not None and value < low:
        raise LimitError(
            what, value, f"{what} {_fmt(value)} is under the minimum of {_fmt(low)}{note}"
        )
    if high is not None and value > high:
        raise LimitError(
            what, value, f"{what} {_fmt(value)} is over the limit of {_fmt(high)}{note}"
        )
    return value

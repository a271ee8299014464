"""Default values of every scenario setting: a scenario file states only what differs.

The tree below is also the schema: `--set key.path=value` may only name a path that exists
here (or in the scenario), and the value must parse to the same kind (number, bool, string).
"""

from __future__ import annotations

from typing import Any

__all__ = ["DEFAULT_FLOW", "DEFAULTS"]

# The example order flow: reserve stock, charge the card, book shipping (the pivot), notify.
DEFAULT_FLOW: dict[str, Any] = {
    "name": "order",
    "version": 1,
    "steps": [
        {
            "name": "reserve",
            "service": "inventory",
            "action": {"method": "POST", "path": "/reservations"},
            "compensation": {"method": "DELETE", "path": "/reservations/${input.order_id}"},
            "timeout": 2.0,
            "retry": {"max_attempts": 3, "initial_delay": 0.1, "max_delay": 2.0},
        },
        {
            "name": "charge",
            "service": "payments",
            "action": {"method": "POST", "path": "/charges"},
            "compensation": {"method": "POST", "path": "/refunds"},
            "timeout": 2.0,
            "retry": {"max_attempts": 3, "initial_delay": 0.1, "max_delay": 2.0},
            "compensation_retry": {"max_attempts": 20, "initial_delay": 0.5, "max_delay": 10.0},
        },
        {
            "name": "ship",
            "kind": "pivot",
            "service": "shipping",
            "action": {"method": "POST", "path": "/shipments"},
            "timeout": 2.0,
            "retry": {"max_attempts": 3, "initial_delay": 0.1, "max_delay": 2.0},
        },
        {
            "name": "notify",
            "kind": "retriable",
            "service": "notifications",
            "action": {"method": "POST", "path": "/messages"},
            "timeout": 2.0,
        },
    ],
}


def _service(median: float, sigma: float, concurrency: int, reject: float = 0.0) -> dict[str, Any]:
    return {
        "latency": {"dist": "lognormal", "median": median, "sigma": sigma},
        "error_rate": 0.002,
        "reject_rate": reject,
        "concurrency": concurrency,
        "queue_limit": 1000,
        "idempotent": True,
        # Answer a repeat of a key still queued or in service with 409 in_progress at once
        # (as the fake services do), instead of queueing it behind the first.
        "in_progress": True,
        # Seconds a call may wait in the queue; one that waited longer when a worker frees up
        # is dropped unserved and answered 503 (null: never).
        "queue_timeout": None,
    }


DEFAULTS: dict[str, Any] = {
    "name": "unnamed",
    "description": "",
    "shows": "",
    "seed": 1,
    "duration": 60.0,
    "drain": 120.0,
    # Seconds of arrivals left out of the report's latency and throughput figures (the
    # warm-up); or `measure: {start, end}`, the window of arrivals they cover. The report's
    # `window` says which.
    "warmup": 0.0,
    "measure": None,
    "interval": 1.0,
    "clients": [
        {
            "name": "customers",
            "kind": "legit",
            "rate": {"kind": "constant", "value": 40.0},
            # The distribution of the gaps between arrivals, rescaled so that `rate` still
            # sets their mean (`{dist: erlang, k: 4, mean: 1}`); null: Poisson arrivals.
            "interarrival": None,
            "addresses": "10.0.0.0/16",
            "address_count": 2000,
            "keys": 50,
            "timeout": 5.0,
            "idempotent": True,
            # A `RetryPolicy` (orchestrator/policies/retry.py): the wait after the n-th failed
            # attempt is min(max_delay, initial_delay * multiplier ** (n - 1)), drawn under
            # `jitter`; `deadline` (seconds from the first attempt, null: none) ends retrying.
            "retry": {
                "max_attempts": 4,
                "initial_delay": 0.2,
                "max_delay": 5.0,
                "multiplier": 2.0,
                "deadline": None,
                "jitter": "full",
            },
            # Retries at most `ratio` of this group's requests plus `min_per_second`, over the
            # last `window` seconds (orchestrator/policies/retry_budget.py); null: no budget.
            "retry_budget": None,
            # Client-side adaptive throttling ({k, window}; orchestrator/policies/
            # adaptive_throttle.py): refuse locally with probability
            # max(0, (requests - k * accepts) / (requests + 1)); null: off.
            "throttle": None,
            # A closed population instead of `rate` ({users, think: {dist, mean}}; exactly one
            # of the two): each user submits, waits for the answer, thinks, repeats.
            "population": None,
        }
    ],
    # The same over every client group's requests and retries together; null: none.
    "retry_budget": None,
    "firewall": {
        "allow": [],
        "deny": [],
        "flood": {"enabled": True, "rate": 20.0, "burst": 40.0, "block_for": 30.0},
        "workers": 8,
        "service_time": 0.0002,
        "queue_limit": 20000,
        # Seconds a request may wait for a worker; past that it is dropped with a 503 (null:
        # never).
        "queue_timeout": None,
    },
    "balancer": {
        "strategy": "least_connections",
        # One weight per gateway for `weighted_round_robin` (empty: all equal).
        "weights": [],
        "health": {"interval": 1.0, "fail_threshold": 2, "pass_threshold": 2},
    },
    "gateways": {
        "count": 3,
        "workers": 8,
        "connection_limit": 256,
        "auth_time": 0.002,
        "handle_time": 0.001,
        # One speed factor per gateway (2: twice as fast; empty: all 1): heterogeneous servers.
        "speed": [],
        # Seconds a request may wait for a worker; past that it is dropped with a 503 (null:
        # never).
        "queue_timeout": None,
        "rate_limit": {"rate": 5.0, "burst": 10.0},
        "crashes": [],
    },
    "orchestrator": {
        "replicas": 2,
        "concurrency": 32,
        "lease": 5.0,
        "reaper_interval": 1.0,
        "db_write": {"dist": "exponential", "mean": 0.001},
        "startup_delay": 5.0,
        "autoscale": {
            "enabled": False,
            "min": 1,
            "max": 8,
            "target_depth": 20.0,
            "max_age": 2.0,
            "cooldown": 10.0,
            "interval": 1.0,
        },
        "crashes": [],
    },
    # The saga database as a station (simulator/database.py); off: a commit is one
    # `orchestrator.db_write` draw with no queue, as before.
    "database": {
        "enabled": False,
        "engine": "sqlite",  # sqlite: one writer at a time; postgresql: `writers`
        "writers": 1,
        "readers": 16,
        "write_latency": {"dist": "exponential", "mean": 0.001},
        "read_latency": {"dist": "exponential", "mean": 0.0005},
        # Status GETs: each saga is read `per_saga` times, every `interval` s from creation.
        "reads": {"per_saga": 0, "interval": 0.5},
        # Read replicas: reads go to them in turn, but a read of a saga younger than `lag`
        # goes to the primary (the replica may not have it yet).
        "replicas": {
            "count": 0,
            "lag": 0.1,
            "readers": 16,
            "read_latency": {"dist": "exponential", "mean": 0.0005},
        },
        # An in-memory cache in front of the status reads: a saga's status read less than
        # `ttl` s ago is answered from it (maybe stale); it starts empty and empties again at
        # each of `flushes` (seconds: restarts, cold starts).
        "cache": {"enabled": False, "ttl": 1.0, "flushes": []},
    },
    # A second region (simulator/regions.py): the last `remote_replicas` orchestrator
    # replicas run there, `hop` seconds one way from the services and the database; each of
    # `outages` ({start, end}) takes it down, and its replicas fail over to the first region.
    "regions": {
        "enabled": False,
        "hop": 0.03,
        "remote_replicas": 1,
        "outages": [],
        "failover": {"enabled": True, "delay": 5.0},
    },
    "breakers": {"enabled": True, "fail_max": 5, "reset_timeout": 5.0, "success_threshold": 1},
    "flow": DEFAULT_FLOW,
    "services": {
        "inventory": _service(0.010, 0.5, 64),
        "payments": _service(0.040, 0.6, 32, reject=0.02),
        "shipping": _service(0.020, 0.5, 32),
        "notifications": _service(0.005, 0.5, 32),
    },
    "faults": [],
    "claims": [],
}

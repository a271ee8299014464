"""Locust users against the sagalab edge. Run by `sagalab loadtest` (never imported by the CLI).

* `LegitUser` submits checkout sagas through the edge with an API key, then follows each one
  (`GET /v1/sagas/{id}`) until it is completed or rolled back, and reports that as a request
  named `saga: terminal` (its time is submit-to-terminal) so the share of sagas that finish is
  in Locust's own stats, on the master too in distributed mode. Each user sends from its own
  127.0.1.x address, as distinct clients would, so the per-address flood guard judges them
  one by one.
* `FloodUser` hammers from the blocked range 127.66.0.0/16: every answer must be 403.
* `RateLimitedUser` uses a key with a small rate: answers must be 2xx or 429 with Retry-After.

Environment: SAGALAB_LOADTEST_KEY, SAGALAB_LOADTEST_LIMITED_KEY, SAGALAB_LOADTEST_PROFILE,
SAGALAB_LOADTEST_SUMMARY (where the quitting listener writes the measured numbers as JSON).
When Locust quits, the thresholds of the profile (loadtests/thresholds.py) are checked and a
breach sets the exit code to 1; workers of a distributed run skip the check (no stats there).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import time
import uuid
from typing import Any

from locust import HttpUser, between, constant, events, task
from locust.env import Environment
from locust.runners import WorkerRunner
from locust.stats import RequestStats
from requests.adapters import HTTPAdapter

from sagalab.loadtests.thresholds import PROFILES, evaluate

PROFILE = PROFILES[os.environ.get("SAGALAB_LOADTEST_PROFILE", "default")]
KEY = os.environ.get("SAGALAB_LOADTEST_KEY", "")
LIMITED_KEY = os.environ.get("SAGALAB_LOADTEST_LIMITED_KEY", "")
TERMINAL = ("completed", "rolled_back")
_addresses = itertools.count(os.getpid() % 200)


class SourceAddressAdapter(HTTPAdapter):
    """Sends from a chosen local address (any 127.x works on Linux loopback)."""

    def __init__(self, address: str) -> None:
        self.address = address
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["source_address"] = (self.address, 0)
        return super().init_poolmanager(*args, **kwargs)


def _bind(user: HttpUser, address: str) -> None:
    adapter = SourceAddressAdapter(address)
    user.client.mount("http://", adapter)


class LegitUser(HttpUser):
    """A customer: submit, follow to the end, check the outcome."""

    weight = 10
    wait_time = between(0.2, 0.8)

    def on_start(self) -> None:
        n = next(_addresses)
        _bind(self, f"127.0.{1 + (n // 250) % 200}.{1 + n % 250}")
        self.client.headers["Authorization"] = f"Bearer {KEY}"

    @task
    def checkout(self) -> None:
        order = uuid.uuid4().hex[:12]
        body = {
            "flow": "checkout",
            "input": {
                "order_id": order,
                "customer_id": f"c-{random.randrange(1000)}",
                "sku": f"sku-{random.randrange(50)}",
                "quantity": 1,
                "amount": random.randrange(5, 500),
            },
        }
        started = time.perf_counter()
        with self.client.post(
            "/v1/sagas",
            json=body,
            headers={"Idempotency-Key": f"lt-{order}"},
            name="legit: submit",
            catch_response=True,
        ) as r:
            if r.status_code != 202 or "location" not in r.headers:
                r.failure(f"submit answered {r.status_code}: {r.text[:200]}")
                return
            location = r.headers["location"]
        deadline = time.monotonic() + PROFILE.follow_timeout
        status = "?"
        while time.monotonic() < deadline:
            time.sleep(0.25)
            with self.client.get(location, name="legit: follow", catch_response=True) as r:
                if r.status_code != 200:
                    r.failure(f"follow answered {r.status_code}")
                    continue
                status = r.json().get("status", "?")
            if status in TERMINAL or status == "failed":
                break
        elapsed_ms = (time.perf_counter() - started) * 1000
        ok = status in TERMINAL
        events.request.fire(
            request_type="SAGA",
            name="saga: terminal",
            response_time=elapsed_ms,
            response_length=0,
            exception=None if ok else RuntimeError(f"saga ended {status} (not terminal in time)"),
            context={},
        )


class FloodUser(HttpUser):
    """A client in the blocked range: must only ever see 403."""

    fixed_count = 1
    wait_time = constant(0.02)

    def on_start(self) -> None:
        _bind(self, f"127.66.{random.randrange(256)}.{random.randrange(1, 255)}")
        self.client.headers["Authorization"] = f"Bearer {KEY}"

    @task
    def flood(self) -> None:
        with self.client.get("/v1/sagas", name="flood: blocked", catch_response=True) as r:
            if r.status_code == 403:
                r.success()
            else:
                r.failure(f"a blocked address got {r.status_code}")


class RateLimitedUser(HttpUser):
    """A key over its rate: 2xx while tokens last, then 429 with Retry-After."""

    fixed_count = 1
    wait_time = constant(0.05)

    def on_start(self) -> None:
        _bind(self, f"127.0.250.{random.randrange(1, 255)}")
        self.client.headers["Authorization"] = f"Bearer {LIMITED_KEY}"

    @task
    def over_the_rate(self) -> None:
        with self.client.get(
            "/v1/sagas?limit=1", name="ratelimit: allowed", catch_response=True
        ) as r:
            if r.status_code == 429 and r.headers.get("retry-after"):
                r.success()
                r.request_meta["name"] = "ratelimit: 429"
            elif 200 <= r.status_code < 300:
                r.success()
            else:
                r.failure(f"over-the-rate request got {r.status_code}")


def measure(stats: RequestStats) -> dict[str, float]:
    """The numbers the thresholds are about, from Locust's aggregated stats."""
    legit = [e for (name, _), e in stats.entries.items() if name.startswith("legit:")]
    requests = sum(e.num_requests for e in legit)
    failures = sum(e.num_failures for e in legit)
    p95 = max((e.get_response_time_percentile(0.95) or 0 for e in legit), default=0.0)
    terminal = stats.get("saga: terminal", "SAGA")
    flood = [e for (name, _), e in stats.entries.items() if name.startswith("flood:")]
    limited = [e for (name, _), e in stats.entries.items() if name.startswith("ratelimit:")]
    return {
        "legit_requests": float(requests),
        "legit_failure_ratio": failures / requests if requests else 0.0,
        "legit_p95_ms": float(p95),
        "legit_rps": sum(e.total_rps for e in legit),
        "sagas_submitted": float(terminal.num_requests),
        "terminal_share": (
            1 - terminal.num_failures / terminal.num_requests if terminal.num_requests else 0.0
        ),
        "saga_p50_ms": float(terminal.get_response_time_percentile(0.5) or 0),
        "flood_requests": float(sum(e.num_requests for e in flood)),
        "flood_not_blocked": float(sum(e.num_failures for e in flood)),
        "ratelimit_requests": float(sum(e.num_requests for e in limited)),
        "ratelimit_429": float(
            sum(e.num_requests for (n, _), e in stats.entries.items() if n == "ratelimit: 429")
        ),
        "ratelimit_errors": float(sum(e.num_failures for e in limited)),
    }


@events.quitting.add_listener
def check_thresholds(environment: Environment, **_kwargs: Any) -> None:
    if isinstance(environment.runner, WorkerRunner):
        return  # workers hold no aggregated stats
    measured = measure(environment.stats)
    broken = evaluate(PROFILE, measured)
    summary = os.environ.get("SAGALAB_LOADTEST_SUMMARY")
    if summary:
        with open(summary, "w") as f:
            json.dump({"measured": measured, "broken": broken, "thresholds": PROFILE.as_dict()}, f)
    if broken:
        for line in broken:
            print(f"THRESHOLD BROKEN: {line}")
        environment.process_exit_code = 1
    elif environment.process_exit_code in (None, 1):
        # Expected refusals (403/429) are marked as successes, so any remaining error is the
        # legit users' and is judged by the failure-ratio threshold above, not by Locust's
        # default "any failure exits 1".
        environment.process_exit_code = 0

"""Submit-to-terminal latency of a checkout saga through the edge at light load, with wake-ups
(orchestrator/wake.py) and without (workers only polling), in the same run.

    python benchmarks/bench_latency.py [--sagas 200] [--rate 10] [--no-wake | --wake-only] [--json]

Each case starts one stack of real processes (edge, gateway, API, one worker, the fake
services; SQLite), submits `--sagas` checkout sagas through the edge at `--rate` per second
from one client, and takes each saga's latency as its terminal journal time (`updated_at`,
written by the worker) minus the moment the client sent the POST: same host, same clock, and
no status polling adding load or granularity. Target: p50 <= 30 ms with wake-ups.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from sagalab.edge.apps import parse_address
from sagalab.edge.keys import MAX_BURST, MAX_RATE
from sagalab.edge.upstream import Upstream
from sagalab.orchestrator.stores import open_store
from sagalab.stack.processes import StackConfig, start, stop

TERMINAL = {"completed", "rolled_back", "failed"}


async def _submit(url: str, key: str, n: int, rate: float) -> dict[str, float]:
    """POST `n` checkout sagas at `rate`/s; return saga id -> time.time() the POST was sent."""
    host, port = parse_address(url)
    upstream = Upstream(host, port, max_idle=4)
    headers = [(b"content-type", b"application/json"), (b"authorization", f"Bearer {key}".encode())]
    sent: dict[str, float] = {}
    begun = time.time()
    try:
        for i in range(n):
            order = {"order_id": uuid.uuid4().hex, "customer_id": "c", "sku": "s", "quantity": 1}
            body = json.dumps({"flow": "checkout", "input": {**order, "amount": 1}}).encode()
            at = time.time()
            r = await upstream.request("POST", "/v1/sagas", headers, body)
            if r.status >= 300:
                raise SystemExit(f"POST /v1/sagas answered {r.status}: {r.body[:200]!r}")
            sent[json.loads(r.body)["id"]] = at
            await asyncio.sleep(max(0.0, begun + (i + 1) / rate - time.time()))
    finally:
        upstream.close()
    return sent


def _latencies(db: Path, sent: dict[str, float], timeout: float = 120) -> list[float]:
    """Each saga's terminal time minus its submit time (ms), once all are terminal."""
    deadline = time.monotonic() + timeout
    while True:
        store = open_store(db, readonly=True)
        try:
            records = [store.load(saga_id) for saga_id in sent]
        finally:
            store.close()
        if all(r.status.value in TERMINAL for r in records):
            return [(r.updated_at - sent[r.id]) * 1000 for r in records]
        if time.monotonic() > deadline:
            raise SystemExit("sagas did not all finish within the timeout")
        time.sleep(0.2)


def _pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1]


def run_case(wake: bool, args: argparse.Namespace) -> list[float]:
    """One stack, with or without wake-ups; the latencies (ms) of its sagas."""
    directory = Path(tempfile.mkdtemp(prefix="bench-latency-"))
    config = StackConfig(
        directory=directory,
        gateways=1,
        workers=1,
        concurrency=4,
        edge_port=0,
        flood_rate=1e5,
        flood_burst=1e5,
        key_rate=MAX_RATE,
        key_burst=MAX_BURST,
    )  # fmt: skip  (limits out of the way: this measures the path, not the limiter)
    previous = os.environ.get("SAGALAB_NO_WAKE")
    os.environ["SAGALAB_NO_WAKE"] = "" if wake else "1"  # the stack's processes inherit it
    try:
        state = start(config)
    finally:
        if previous is None:
            del os.environ["SAGALAB_NO_WAKE"]
        else:
            os.environ["SAGALAB_NO_WAKE"] = previous
    try:
        warm = asyncio.run(_submit(state.edge_url, state.api_key, 5, args.rate))
        _latencies(directory / "sagas.db", warm)
        sent = asyncio.run(_submit(state.edge_url, state.api_key, args.sagas, args.rate))
        return _latencies(directory / "sagas.db", sent)
    finally:
        stop(directory)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sagas", type=int, default=200)
    parser.add_argument("--rate", type=float, default=10.0, help="submissions per second")
    parser.add_argument("--no-wake", action="store_true", help="only the polling case")
    parser.add_argument("--wake-only", action="store_true", help="only the wake-up case")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args()
    # With --json, the table goes to stderr and stdout carries only the JSON object.
    out = sys.stderr if args.json else sys.stdout
    cases = [c for c in (True, False) if not (c and args.no_wake) and (c or not args.wake_only)]
    print(f"{args.sagas} checkout sagas through the edge at {args.rate:g}/s, one worker", file=out)
    print(f"{'case':<10} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8}", file=out)
    report: dict[str, dict[str, float]] = {}
    for wake in cases:
        lat = run_case(wake, args)
        name = "wake-ups" if wake else "polling"
        report["wake" if wake else "polling"] = {f"p{q}_ms": _pct(lat, q) for q in (50, 95, 99)} | {
            "max_ms": max(lat)
        }
        verdict = "meets" if _pct(lat, 50) <= 30 else "MISSES"
        print(
            f"{name:<10} {_pct(lat, 50):>8.1f} {_pct(lat, 95):>8.1f} {_pct(lat, 99):>8.1f} "
            f"{max(lat):>8.1f}" + (f"  ({verdict} the p50 <= 30 ms target)" if wake else ""),
            file=out,
        )
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", file=out)
    if args.json:
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

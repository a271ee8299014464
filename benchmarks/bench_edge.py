"""Requests/s and p50/p99 through the full edge (firewall + balancer, gateways) against the
orchestrator API hit directly, in the same run, on one stack of real processes.

    python benchmarks/bench_edge.py [--seconds 10] [--concurrency 32] [--gateways 2]
                                    [--no-group-compare] [--json]

Two requests are measured: `GET /v1/sagas/{id}` (read) and `POST /v1/sagas` (a queued saga, one
SQLite write). Then group commit (orchestrator/sqlite_writer.py) off against on: `POST
/v1/sagas` straight to the API of a fresh stack started with `SAGALAB_GROUP_COMMIT=0` (every
API thread writes on its own connection), then of one with it on, rounds alternating
(off, on, off, on); the JSON's `post_group_commit` has each side's best-throughput round, their
p99s, and the ratios (targets: p99 with it on <= 50 ms, throughput on/off >= 1.0).

The load generator is one asyncio process speaking HTTP/1.1 on keep-alive
connections (edge.upstream: an httpx client would be the bottleneck). Target: the edge keeps
at least half the direct throughput. No workers run: only the request path is measured.
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
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from sagalab.edge.apps import parse_address
from sagalab.edge.keys import GATEWAY_HEADER, MAX_BURST, MAX_RATE, TENANT_HEADER, read_secret
from sagalab.edge.upstream import Upstream
from sagalab.orchestrator.limits import MAX_FLOOD_BURST, MAX_FLOOD_RATE
from sagalab.orchestrator.stores import GROUP_COMMIT_ENV
from sagalab.stack.processes import SECRET_FILE, StackConfig, start, stop


def _bearer(key: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {key}".encode())]


def _as_gateway(directory: Path, tenant: str) -> list[tuple[bytes, bytes]]:
    """What a gateway sends the API: a stack's API takes no key presented directly
    (`--no-direct-keys`), so the direct case speaks for the stack key's tenant the same way."""
    secret = read_secret(directory / SECRET_FILE).encode()
    return [(GATEWAY_HEADER.encode(), secret), (TENANT_HEADER.encode(), tenant.encode())]


async def _load(
    url: str,
    method: str,
    target: str,
    body: bytes,
    auth: list[tuple[bytes, bytes]],
    seconds: float,
    conc: int,
) -> tuple[float, list[float], Counter[int]]:
    host, port = parse_address(url)
    upstream = Upstream(host, port, max_idle=conc * 2)
    headers = [(b"content-type", b"application/json"), *auth]
    latencies: list[float] = []
    errors: Counter[int] = Counter()  # status -> count, for answers >= 300
    deadline = time.perf_counter() + seconds

    async def one_client() -> None:
        while time.perf_counter() < deadline:
            payload = body.replace(b"ORDER", uuid.uuid4().hex.encode()) if body else b""
            t = time.perf_counter()
            r = await upstream.request(method, target, headers, payload)
            latencies.append(time.perf_counter() - t)
            if r.status >= 300:
                errors[r.status] += 1

    started = time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(conc)))
    elapsed = time.perf_counter() - started
    upstream.close()
    # Throughput counts successful answers only: a quick 429 is not work done.
    return (len(latencies) - sum(errors.values())) / elapsed, latencies, errors


def _pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] * 1000 if len(values) > 1 else 0.0


def _config(directory: Path, gateways: int) -> StackConfig:
    return StackConfig(
        directory=directory,
        gateways=gateways,
        workers=0,
        services=False,
        edge_port=0,
        flood_rate=MAX_FLOOD_RATE,  # the highest the edge takes (it refuses more)
        flood_burst=MAX_FLOOD_BURST,
        key_rate=MAX_RATE,
        key_burst=MAX_BURST,
    )  # fmt: skip  (limits out of the way: this measures the path, not the limiter)


_ORDER = {"order_id": "ORDER", "customer_id": "c", "sku": "s", "quantity": 1, "amount": 1}
_POST = json.dumps({"flow": "checkout", "input": _ORDER}).encode()


def _post_direct(group_commit: bool, seconds: float, conc: int) -> dict[str, Any]:
    """POST /v1/sagas straight to the API of a fresh stack with group commit on or off."""
    directory = Path(tempfile.mkdtemp(prefix="bench-edge-gc-"))
    before = os.environ.get(GROUP_COMMIT_ENV)
    os.environ[GROUP_COMMIT_ENV] = "1" if group_commit else "0"  # the API process inherits it
    try:
        state = start(_config(directory, 0))
    finally:
        if before is None:
            del os.environ[GROUP_COMMIT_ENV]
        else:
            os.environ[GROUP_COMMIT_ENV] = before
    try:
        api_url = state.component("api").url
        assert api_url
        auth = _as_gateway(directory, "stack")
        asyncio.run(_load(api_url, "POST", "/v1/sagas", _POST, auth, 0.5, conc))  # warm up
        rps, lat, errors = asyncio.run(
            _load(api_url, "POST", "/v1/sagas", _POST, auth, seconds, conc)
        )
    finally:
        stop(directory)
    return {
        "rps": rps,
        "p50_ms": _pct(lat, 50),
        "p99_ms": _pct(lat, 99),
        "errors": sum(errors.values()),
        "load": os.getloadavg()[0],
    }


def group_commit_compare(seconds: float, conc: int, out: Any) -> dict[str, Any]:
    """Group commit off against on, alternating rounds; each side's best round and ratios."""
    rounds: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    print(f"group commit: POST direct, {seconds:g}s per round, {conc} connections", file=out)
    for side in ("off", "on", "off", "on"):
        found = _post_direct(side == "on", seconds, conc)
        rounds[side].append(found)
        print(
            f"  {side:<4} {found['rps']:>8.0f} req/s  p50 {found['p50_ms']:>6.1f} ms  "
            f"p99 {found['p99_ms']:>6.1f} ms  errors {found['errors']}  "
            f"load {found['load']:.2f}",
            file=out,
        )
    off = max(rounds["off"], key=lambda r: r["rps"])
    on = max(rounds["on"], key=lambda r: r["rps"])
    result: dict[str, Any] = {
        "off": off,
        "on": on,
        "rounds": rounds,
        "rps_on_over_off": on["rps"] / off["rps"] if off["rps"] else 0.0,
        "p99_on_over_off": on["p99_ms"] / off["p99_ms"] if off["p99_ms"] else 0.0,
    }
    verdict = "meets" if on["p99_ms"] <= 50 and result["rps_on_over_off"] >= 1.0 else "MISSES"
    print(
        f"  on/off throughput {result['rps_on_over_off']:.2f}, p99 {on['p99_ms']:.1f} ms "
        f"against {off['p99_ms']:.1f} ms ({verdict} the p99 <= 50 ms, >= 1.0x targets)",
        file=out,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--gateways", type=int, default=2)
    parser.add_argument(
        "--no-group-compare",
        action="store_true",
        help="skip the group commit off/on comparison of POST /v1/sagas",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args()
    # With --json, the table goes to stderr and stdout carries only the JSON object.
    out = sys.stderr if args.json else sys.stdout
    report: dict[str, dict[str, Any]] = {}  # "get" / "post" -> direct, edge, edge_over_direct
    directory = Path(tempfile.mkdtemp(prefix="bench-edge-"))
    state = start(_config(directory, args.gateways))
    try:
        api_url = state.component("api").url
        assert api_url
        post = _POST
        direct = _as_gateway(directory, "stack")  # the stack key's tenant
        seed = asyncio.run(_load(api_url, "POST", "/v1/sagas", post, direct, 0.2, 1))
        del seed
        listed = httpx.get(
            api_url + "/v1/sagas?limit=1", headers={k.decode(): v.decode() for k, v in direct}
        )
        saga_id = listed.json()["items"][0]["id"]
        cases = [
            ("GET saga", "GET", f"/v1/sagas/{saga_id}", b""),
            ("POST saga", "POST", "/v1/sagas", post),
        ]
        print(
            f"{args.seconds:g}s per case, {args.concurrency} connections, {args.gateways} gateways",
            file=out,
        )
        print(
            f"{'case':<10} {'path':<7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}",
            file=out,
        )
        for name, method, target, body in cases:
            results = {}
            for path, url, auth in (
                ("direct", api_url, direct),
                ("edge", state.edge_url, _bearer(state.api_key)),
            ):
                rps, lat, errors = asyncio.run(
                    _load(url, method, target, body, auth, args.seconds, args.concurrency)
                )
                results[path] = rps
                report.setdefault(method.lower(), {})[path] = {
                    "rps": rps,
                    "p50_ms": _pct(lat, 50),
                    "p99_ms": _pct(lat, 99),
                    "errors": sum(errors.values()),
                }
                print(
                    f"{name:<10} {path:<7} {rps:>8.0f} {_pct(lat, 50):>8.1f} "
                    f"{_pct(lat, 99):>8.1f} {sum(errors.values()):>7}"
                    + (f"  by status {dict(sorted(errors.items()))}" if errors else ""),
                    file=out,
                )
            ratio = results["edge"] / results["direct"] if results["direct"] else 0.0
            report[method.lower()]["edge_over_direct"] = ratio
            verdict = "meets" if ratio >= 0.5 else "MISSES"
            print(
                f"{name:<10} edge/direct throughput ratio {ratio:.2f} ({verdict} the 0.5 target)",
                file=out,
            )
    finally:
        stop(directory)
    if not args.no_group_compare:
        report["post_group_commit"] = group_commit_compare(args.seconds, args.concurrency, out)
    if args.json:
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

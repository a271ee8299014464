"""`GET /v1/sagas/{id}` on the orchestrator API against a bare FastAPI hello app, in the same run.

    python benchmarks/bench_reads.py [--seconds 5] [--connections 32] [--sagas 500]
                                     [--rounds 2] [--client wrk|python] [--no-pin] [--json]

Each app runs in its own process. The bare FastAPI hello app runs twice: on uvicorn's defaults
(as `uvicorn app:app` serves it: the target's baseline), and on the API's own server code
(edge.server: uvicorn with the guarded h11 protocol and the connection limits the API runs with
in a stack), so that API / that bare is what the API's own work costs: the gateway-secret
check, the read-only store, the query and the view. The API's database holds `--sagas`
queued checkout sagas (posted through it; no workers); the GET is of one of them. `GET
/healthz` on the same API process is measured too: the route with no database at all.

The load generator is wrk (`apt-get install wrk`) with one thread on keep-alive connections,
or, with `--client python` or when wrk is missing, a closed-loop asyncio client of the same
shape (edge.upstream, `--connections` clients each sending its next request when the last is
answered). On a machine with 2 CPUs or more the servers are pinned to CPU 0 and the client
to CPU 1 (`--no-pin`: not). The cases run one after the other, `--rounds` times over,
and each side's rate is the median of its rounds. Target: API / bare >= 0.5 (issue 14).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from sagalab.edge.keys import GATEWAY_HEADER, TENANT_HEADER
from sagalab.edge.upstream import Upstream

TARGET = 0.5
TENANT = "bench"


def log(message: str) -> None:
    """Progress on stderr, so that --json leaves stdout pure."""
    print(message, file=sys.stderr, flush=True)


def serve_bare(fd: int, *, plain: bool) -> None:
    """The bare app: FastAPI answering one JSON object. `plain`: on uvicorn's defaults, as
    `uvicorn app:app` would serve it; else on the API's own server code and limits."""
    import uvicorn
    from fastapi import FastAPI

    from sagalab.edge.apps import HOP_LIMITS
    from sagalab.edge.server import serve_forever, socket_from_fd

    app = FastAPI()

    @app.get("/hello")
    async def hello() -> dict[str, str]:
        return {"hello": "world"}

    sock = socket_from_fd(fd)
    if plain:
        config = uvicorn.Config(app, log_level="warning", access_log=False)
        uvicorn.Server(config).run(sockets=[sock])
        return
    # The API's limits, with the same exemption the benchmark gives the API (--exempt).
    serve_forever(app, sock, limits=dataclasses.replace(HOP_LIMITS, exempt=("127.0.0.1",)))


@contextmanager
def server(args: list[str], cpu: int | None) -> Iterator[str]:
    """A server process on a fresh 127.0.0.1 port (passed as a socket); its URL."""
    from sagalab.edge.server import bind

    sock = bind("127.0.0.1", 0, inheritable=True)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    command = [sys.executable, *args, "--fd", str(sock.fileno())]
    if cpu is not None:
        command = ["taskset", "-c", str(cpu), *command]
    proc = subprocess.Popen(command, pass_fds=(sock.fileno(),), stdin=subprocess.DEVNULL)
    sock.close()
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code < 500:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server {' '.join(args[:4])} did not start")
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_wrk(
    url: str, headers: dict[str, str], seconds: float, conns: int, cpu: int | None
) -> dict[str, float]:
    """wrk, one thread: requests/s, p50 and p99 (ms), and answers that were not 2xx."""
    command = ["wrk", "-t1", f"-c{conns}", f"-d{seconds:g}s", "--latency"]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    if cpu is not None:
        command = ["taskset", "-c", str(cpu), *command]
    out = subprocess.run(
        [*command, url], capture_output=True, text=True, timeout=seconds + 30, check=True
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: .*", out)
    total = float(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non_2xx = float(bad.group(1)) if bad else 0.0
    if errors:
        log(f"  wrk: {errors.group(0)}")

    def pct(q: str) -> float:
        found = re.search(rf"^\s+{q}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not found:
            return 0.0
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[found.group(2)]
        return float(found.group(1)) * scale

    # Only answers that were 2xx count as work done.
    ok_rps = rps * (1 - non_2xx / total) if total else 0.0
    return {"rps": ok_rps, "p50_ms": pct("50"), "p99_ms": pct("99"), "non_2xx": non_2xx}


def run_python(
    url: str, headers: dict[str, str], seconds: float, conns: int, cpu: int | None
) -> dict[str, float]:
    """The closed-loop asyncio client (pinned with sched_setaffinity when asked)."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    try:
        return asyncio.run(_closed_loop(url, headers, seconds, conns))
    finally:
        if cpu is not None:
            os.sched_setaffinity(0, range(os.cpu_count() or 1))


async def _closed_loop(
    url: str, headers: dict[str, str], seconds: float, conns: int
) -> dict[str, float]:
    scheme_host, _, path = url.partition("://")[2].partition("/")
    host, _, port = scheme_host.partition(":")
    upstream = Upstream(host, int(port), max_idle=conns * 2)
    raw = [(k.encode(), v.encode()) for k, v in headers.items()]
    latencies: list[float] = []
    bad = 0
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal bad
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            answer = await upstream.request("GET", "/" + path, raw, b"")
            latencies.append(time.perf_counter() - started)
            bad += answer.status >= 300

    begun = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(conns)))
    elapsed = time.perf_counter() - begun
    upstream.close()
    cuts = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return {
        "rps": (len(latencies) - bad) / elapsed,
        "p50_ms": cuts[49] * 1000,
        "p99_ms": cuts[98] * 1000,
        "non_2xx": float(bad),
    }


def seed(url: str, headers: dict[str, str], count: int) -> str:
    """Post `count` checkout sagas; the id of the one in the middle."""
    ids = []
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        for _ in range(count):
            order = {"order_id": uuid.uuid4().hex, "customer_id": "c", "sku": "s", "quantity": 1}
            answer = client.post(
                "/v1/sagas", json={"flow": "checkout", "input": {**order, "amount": 1}}
            )
            if answer.status_code >= 300:
                raise SystemExit(f"POST /v1/sagas answered {answer.status_code}: {answer.text}")
            ids.append(answer.json()["id"])
        check = client.get(f"/v1/sagas/{ids[len(ids) // 2]}")
        if check.status_code != 200:
            raise SystemExit(f"GET a saga answered {check.status_code}: {check.text}")
    return ids[len(ids) // 2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per case and round")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--sagas", type=int, default=500, help="sagas in the API's database")
    parser.add_argument("--rounds", type=int, default=2, help="alternations of the cases")
    parser.add_argument("--client", choices=["wrk", "python"], help="default: wrk if installed")
    parser.add_argument("--no-pin", action="store_true", help="do not pin server and client")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.add_argument("--serve-bare", choices=["plain", "guarded"], help=argparse.SUPPRESS)
    parser.add_argument("--fd", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        serve_bare(args.fd, plain=args.serve_bare == "plain")
        return 0
    if min(args.connections, args.sagas, args.rounds) < 1 or not args.seconds > 0:
        parser.error("--seconds, --connections, --sagas and --rounds must be positive")
    client = args.client or ("wrk" if shutil.which("wrk") else "python")
    if client == "wrk" and not shutil.which("wrk"):
        parser.error("wrk is not installed (apt-get install wrk), or pass --client python")
    pin = not args.no_pin and (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
    server_cpu, client_cpu = (0, 1) if pin else (None, None)
    measure = run_wrk if client == "wrk" else run_python
    load_start = [round(x, 2) for x in os.getloadavg()]

    with tempfile.TemporaryDirectory(prefix="bench-reads-") as tmp:
        secret_file = Path(tmp) / "gateway.secret"
        secret_file.write_text(secrets.token_hex(24))
        secret_file.chmod(0o600)
        headers = {GATEWAY_HEADER: secret_file.read_text(), TENANT_HEADER: TENANT}
        api_args = ["-m", "sagalab.edge.apps", "api", "--db", str(Path(tmp) / "sagas.db")]
        api_args += ["--secret-file", str(secret_file), "--exempt", "127.0.0.1"]
        bare_args = [str(Path(__file__).resolve()), "--serve-bare"]
        rounds: dict[str, list[dict[str, float]]] = {
            "bare": [],
            "bare_same_server": [],
            "api_get": [],
            "api_healthz": [],
        }
        with (
            server(api_args, server_cpu) as api_url,
            server([*bare_args, "plain"], server_cpu) as bare_url,
            server([*bare_args, "guarded"], server_cpu) as guarded_url,
        ):
            log(f"seeding {args.sagas} sagas ...")
            saga_id = seed(api_url, headers, args.sagas)
            cases = [
                ("bare", bare_url + "/hello", {}),
                ("bare_same_server", guarded_url + "/hello", {}),
                ("api_get", f"{api_url}/v1/sagas/{saga_id}", headers),
                ("api_healthz", api_url + "/healthz", {}),
            ]
            for url_case in cases:  # warm both processes up
                measure(
                    url_case[1], url_case[2], min(1.0, args.seconds), args.connections, client_cpu
                )
            for i in range(args.rounds):
                for name, url, hdrs in cases:
                    result = measure(url, hdrs, args.seconds, args.connections, client_cpu)
                    log(f"round {i + 1}: {name:<12} {result['rps']:8.0f} req/s")
                    rounds[name].append(result)
    report: dict[str, Any] = {
        "client": client,
        "pinned": pin,
        "connections": args.connections,
        "seconds": args.seconds,
        "sagas": args.sagas,
        "load_start": load_start,
        "load_end": [round(x, 2) for x in os.getloadavg()],
    }
    for name, results in rounds.items():
        report[name] = {key: statistics.median(r[key] for r in results) for key in results[0]} | {
            "rounds_rps": [r["rps"] for r in results]
        }
    bare = report["bare"]["rps"]
    report["get_over_bare"] = report["api_get"]["rps"] / bare if bare else 0.0
    report["healthz_over_bare"] = report["api_healthz"]["rps"] / bare if bare else 0.0
    same = report["bare_same_server"]["rps"]
    report["get_over_bare_same_server"] = report["api_get"]["rps"] / same if same else 0.0
    report["target"] = TARGET
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    where = "server on CPU 0, client on CPU 1" if pin else "not pinned"
    print(f"{client}, {args.connections} connections, {args.seconds:g}s x {args.rounds}, {where}")
    print(f"{'case':<24} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for name, label in (
        ("bare", "bare FastAPI /hello"),
        ("bare_same_server", "bare, API's server code"),
        ("api_get", "API GET /v1/sagas/{id}"),
        ("api_healthz", "API GET /healthz"),
    ):
        r = report[name]
        print(f"{label:<24} {r['rps']:>8.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f}")
    verdict = "meets" if report["get_over_bare"] >= TARGET else "MISSES"
    print(f"GET a saga / bare: {report['get_over_bare']:.2f} ({verdict} the >= {TARGET} target)")
    print(f"GET a saga / bare on the API's server code: {report['get_over_bare_same_server']:.2f}")
    print(f"load average {report['load_start']} -> {report['load_end']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

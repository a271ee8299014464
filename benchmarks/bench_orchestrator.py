"""Orchestrator speed: durable sagas/s on sagalab against DBOS Transact, and over real HTTP.

Run on demand (pytest does not collect it; `pip install -e '.[bench]'` brings in dbos):

    python benchmarks/bench_orchestrator.py [--count N] [--warmup N] [--http-count N] [--json]

1. sagalab: a 3-step flow of in-process no-op Python steps (`handler:` steps), SQLiteStore on a
   fresh temp file (WAL, synchronous=NORMAL), `start_saga(..., queue=False)` then `run(id)`,
   one saga after another.
2. DBOS Transact: the same 3-step workflow of no-op `@DBOS.step()`s on SQLite, with WAL set on
   the file before launch and synchronous=NORMAL set on every connection, same count.
3. Both rates and their ratio (target: sagalab >= 10x DBOS). Before timing, each side is checked
   for the guarantee (every step's result is committed before the next step starts) by reading
   the database from a second connection at the start of each step, and its statements and
   commits per saga are counted with sqlite3's trace callback.
4. The shipped `checkout` flow over real HTTP against the fake services, next to a bare httpx
   loop making the same four POSTs with the same headers and bodies; the difference per step is
   the orchestrator's own cost.

Everything listens on 127.0.0.1; temp files are removed; every timed loop stops at --count or
--time-limit seconds, whichever comes first, and reports how many sagas it actually ran.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

TARGET_RATIO = 10.0
#: Issue 14: the best in-process rate (sequential, or threads sharing a group writer) / DBOS.
TARGET_BEST_RATIO = 15.0
STEPS = ("reserve", "charge", "ship")


def log(message: str) -> None:
    """Progress goes to stderr so that --json leaves stdout pure."""
    print(message, file=sys.stderr, flush=True)


def timed_loop(run_one: Callable[[int], None], count: int, limit: float) -> tuple[int, float]:
    """Run `run_one(i)` up to `count` times or `limit` seconds; (sagas run, seconds)."""
    start = time.perf_counter()
    done = 0
    while done < count:
        run_one(done)
        done += 1
        if time.perf_counter() - start > limit:
            break
    return done, time.perf_counter() - start


class SqlCounter:
    """Counts statements and write transactions one thread sends to SQLite while `on`.

    Both sides open every write transaction with BEGIN IMMEDIATE (DBOS through pysqlite's
    isolation_level), so counting those counts write commits; read-only BEGIN..COMMIT pairs,
    which commit nothing, are left out.
    """

    def __init__(self) -> None:
        self.on = False
        self.thread = threading.get_ident()
        self.statements = 0
        self.commits = 0

    def __call__(self, sql: str) -> None:
        if self.on and threading.get_ident() == self.thread:
            self.statements += 1
            if sql.lstrip().upper().startswith("BEGIN IMMEDIATE"):
                self.commits += 1


# -- 1. sagalab, in-process no-op steps --------------------------------------------------------


def guarantee_check(
    reader: Any, violations: list[str], *, mark: str = "?"
) -> Callable[[str, str, Any], None]:
    """A runner checkpoint checking, on `reader` (a second connection; `mark` its driver's
    placeholder), that when step k starts step k-1's attempt_succeeded row is committed (the
    first step: its attempt_started row, and the saga); each miss is added to `violations`."""

    def checkpoint(point: str, step: str, _phase: Any) -> None:
        if point != "before-call":
            return
        latest = reader.execute("SELECT id FROM sagas ORDER BY id DESC LIMIT 1").fetchone()
        saga_id = latest[0] if latest else "?"
        index = STEPS.index(step)
        needed = (
            ("attempt_started", step) if index == 0 else ("attempt_succeeded", STEPS[index - 1])
        )
        found = reader.execute(
            f"SELECT 1 FROM events WHERE saga_id = {mark} AND type = {mark} AND step = {mark}",
            (saga_id, *needed),
        ).fetchone()
        if found is None:
            violations.append(f"{saga_id}: {needed[1]} {needed[0]} not committed before {step}")

    return checkpoint


def _noop_flow() -> Any:
    """The 3-step flow of no-op `handler:` steps (registered once)."""
    from sagalab.orchestrator.flow import flow_from_dict
    from sagalab.orchestrator.registry import step_handler

    for name in STEPS:
        step_handler(f"bench_{name}")(lambda call: None)
    return flow_from_dict(
        {
            "name": "bench_noop3",
            "version": 1,
            "steps": [{"name": n, "handler": f"bench_{n}"} for n in STEPS],
        },
        source="(benchmark)",
    )


def bench_sagalab(
    tmp: Path, count: int, warmup: int, limit: float, check: int, *, group_commit: bool = True
) -> dict[str, Any]:
    """Sequential 3-step sagas of no-op Python steps on a fresh SQLiteStore."""
    from sagalab.orchestrator.executors import PythonExecutor
    from sagalab.orchestrator.runner import SagaRunner
    from sagalab.orchestrator.saga import SagaStatus
    from sagalab.orchestrator.sqlite_store import SQLiteStore

    flow = _noop_flow()
    path = tmp / f"sagalab-group-{'on' if group_commit else 'off'}.db"
    store = SQLiteStore(path, group_commit=group_commit)
    writes = store.write_connection()  # the group writer's, with group commit on
    pragmas = {
        "journal_mode": writes.execute("PRAGMA journal_mode").fetchone()[0],
        "synchronous": writes.execute("PRAGMA synchronous").fetchone()[0],  # 1 = NORMAL
    }
    runner = SagaRunner(store, PythonExecutor())

    def one(_: int) -> None:
        # `start` commits the saga's creation with its first attempt's start.
        saga_id, result = runner.start(flow, {})
        if result.status is not SagaStatus.COMPLETED:
            raise SystemExit(f"sagalab saga {saga_id} did not complete")

    # The guarantee, checked from a second connection: when step k starts, step k-1's
    # ATTEMPT_SUCCEEDED is already committed.
    # The first step's start (and the saga itself) is committed before the first call.
    reader = sqlite3.connect(path)
    violations: list[str] = []

    checked = SagaRunner(store, PythonExecutor(), checkpoint=guarantee_check(reader, violations))
    for _ in range(check):
        checked.start(flow, {})
    reader.close()

    counter = SqlCounter()
    writes.set_trace_callback(counter)
    counter.on = True
    for i in range(check):
        one(i)
    counter.on = False
    writes.set_trace_callback(None)

    for i in range(warmup):
        one(i)
    done, seconds = timed_loop(one, count, limit)
    store.close()
    return {
        "sagas": done,
        "seconds": seconds,
        "sagas_per_second": done / seconds,
        "commits_per_saga": counter.commits / check,
        "statements_per_saga": counter.statements / check,
        "guarantee_checked_sagas": check,
        "guarantee_violations": violations,
        "pragmas": pragmas,
        "group_commit": group_commit,
    }


def bench_sagalab_threads(
    tmp: Path, count: int, limit: float, threads: int, *, group_commit: bool
) -> dict[str, Any]:
    """The same sagas from `threads` threads at once, each with its own store and runner (as a
    worker's threads): with group commit on their writes share the process's writer."""
    from sagalab.orchestrator.executors import PythonExecutor
    from sagalab.orchestrator.runner import SagaRunner
    from sagalab.orchestrator.saga import SagaStatus
    from sagalab.orchestrator.sqlite_store import SQLiteStore

    flow = _noop_flow()
    path = tmp / f"threads-group-{'on' if group_commit else 'off'}.db"
    keeper = SQLiteStore(path, group_commit=group_commit)  # holds the writer; reads its stats
    keeper.write_connection()
    ready = threading.Barrier(threads + 1)
    done = [0] * threads
    failures: list[str] = []

    def work(t: int) -> None:
        store = SQLiteStore(path, group_commit=group_commit)
        runner = SagaRunner(store, PythonExecutor())
        try:
            for _ in range(10):  # warm: flow hash, statement cache
                runner.start(flow, {})
            ready.wait()
            end = time.perf_counter() + limit
            for _ in range(count // threads):
                saga_id, result = runner.start(flow, {})
                if result.status is not SagaStatus.COMPLETED:
                    failures.append(f"{saga_id} ended {result.status.value}")
                done[t] += 1
                if time.perf_counter() > end:
                    break
        except Exception as exc:  # noqa: BLE001 - reported, and fails the run
            failures.append(f"thread {t}: {type(exc).__name__}: {exc}")
            ready.abort()
        finally:
            store.close()

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    before = keeper.group_stats()
    ready.wait()
    started = time.perf_counter()
    for w in workers:
        w.join()
    seconds = time.perf_counter() - started
    after = keeper.group_stats()
    keeper.close()
    if failures:
        raise SystemExit(f"threaded sagalab run failed: {failures[:3]}")
    units = after.get("units", 0) - before.get("units", 0)
    commits = after.get("commits", 0) - before.get("commits", 0)
    return {
        "threads": threads,
        "group_commit": group_commit,
        "sagas": sum(done),
        "seconds": seconds,
        "sagas_per_second": sum(done) / seconds,
        "units_per_commit": units / commits if commits else None,
        "load": os.getloadavg()[0],
    }


def bench_submits(tmp: Path, seconds: float, threads: int, *, group_commit: bool) -> dict[str, Any]:
    """`threads` threads creating queued sagas (what `POST /v1/sagas` writes) for `seconds`,
    each with its own store: the store's write path alone, without HTTP (latency per call)."""
    from sagalab.orchestrator.flowfile import load_flow
    from sagalab.orchestrator.runner import new_saga_id
    from sagalab.orchestrator.sqlite_store import SQLiteStore

    flow = load_flow("checkout")
    path = tmp / f"submits-{new_saga_id()}.db"
    SQLiteStore(path).close()
    latencies: list[float] = []
    ready = threading.Barrier(threads)

    def work() -> None:
        store = SQLiteStore(path, group_commit=group_commit)
        mine: list[float] = []
        try:
            ready.wait()
            end = time.perf_counter() + seconds
            while (began := time.perf_counter()) < end:
                store.create_saga(
                    saga_id=new_saga_id(), flow=flow, payload={"order_id": "o"},
                    trace_id="0" * 32, idempotency_key=None, now=time.time(),
                    run_after=time.time(),
                )  # fmt: skip
                mine.append(time.perf_counter() - began)
        finally:
            store.close()
            latencies.extend(mine)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    cuts = statistics.quantiles(latencies, n=100)
    return {
        "group_commit": group_commit,
        "threads": threads,
        "calls_per_second": len(latencies) / seconds,
        "p50_ms": cuts[49] * 1000,
        "p99_ms": cuts[98] * 1000,
        "max_ms": max(latencies) * 1000,
        "load": os.getloadavg()[0],
    }


# -- 2. DBOS Transact, same flow ---------------------------------------------------------------


def launch_dbos_checkout(
    name: str, system_database_url: str, check_previous: Callable[[int], None]
) -> tuple[Any, Callable[[], None]]:
    """DBOS Transact on `system_database_url`, launched with the benchmark's workflow: three
    no-op `@DBOS.step()`s, each calling `check_previous(its index)` first (the guarantee
    check). (The DBOS instance, the workflow); the caller destroys DBOS when done."""
    from dbos import DBOS

    dbos = DBOS(
        config={"name": name, "system_database_url": system_database_url, "log_level": "WARNING"}
    )

    @DBOS.step()
    def reserve() -> None:
        check_previous(0)

    @DBOS.step()
    def charge() -> None:
        check_previous(1)

    @DBOS.step()
    def ship() -> None:
        check_previous(2)

    @DBOS.workflow()
    def checkout() -> None:
        reserve()
        charge()
        ship()

    DBOS.launch()
    return dbos, checkout


def bench_dbos(tmp: Path, count: int, warmup: int, limit: float, check: int) -> dict[str, Any]:
    """The same 3-step workflow of no-op steps on DBOS Transact, SQLite, WAL + NORMAL."""
    import sqlalchemy as sa
    from dbos import DBOS

    path = tmp / "dbos.sqlite"
    with sqlite3.connect(path) as conn:  # WAL persists in the file; DBOS leaves it alone
        conn.execute("PRAGMA journal_mode=WAL")
    counter = SqlCounter()
    seen_synchronous: set[int] = set()

    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute("PRAGMA synchronous=NORMAL")
        seen_synchronous.add(dbapi_conn.execute("PRAGMA synchronous").fetchone()[0])
        dbapi_conn.set_trace_callback(counter)

    # DBOS creates its engine inside DBOS(); a listener on the Engine class reaches it.
    sa.event.listen(sa.engine.Engine, "connect", on_connect)
    for name in ("dbos", "sqlalchemy"):
        logging.getLogger(name).setLevel(logging.WARNING)

    reader = sqlite3.connect(path, check_same_thread=False)
    violations: list[str] = []
    checking = [False]

    def check_previous(index: int) -> None:
        # operation_outputs holds one row per finished step (function_id counts from 1).
        if not checking[0] or index == 0:
            return
        wf = DBOS.workflow_id
        found = reader.execute(
            "SELECT 1 FROM operation_outputs WHERE workflow_uuid = ? AND function_id = ?",
            (wf, index),
        ).fetchone()
        if found is None:
            violations.append(f"{wf}: step {index} not committed before step {index + 1}")

    dbos = None
    try:
        dbos, checkout = launch_dbos_checkout("sagalab-bench", f"sqlite:///{path}", check_previous)

        def one(_: int) -> None:
            checkout()

        checking[0] = True
        for i in range(check):
            one(i)
        checking[0] = False
        counter.on = True
        for i in range(check):
            one(i)
        counter.on = False
        for i in range(warmup):
            one(i)
        done, seconds = timed_loop(one, count, limit)
        journal = reader.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        reader.close()
        DBOS.destroy(destroy_registry=True)
        sa.event.remove(sa.engine.Engine, "connect", on_connect)
        del dbos
    return {
        "sagas": done,
        "seconds": seconds,
        "sagas_per_second": done / seconds,
        "commits_per_saga": counter.commits / check,
        "statements_per_saga": counter.statements / check,
        "guarantee_checked_sagas": check,
        "guarantee_violations": violations,
        "pragmas": {"journal_mode": journal, "synchronous": sorted(seen_synchronous)},
    }


# -- 4. over HTTP: the checkout flow against the fake services ---------------------------------


def _order(i: int, run: str) -> dict[str, Any]:
    return {
        "order_id": f"bench-{run}-{i}",
        "customer_id": "c1",
        "sku": "A",
        "quantity": 1,
        "amount": 100,
    }


def bench_http(tmp: Path, count: int, warmup: int, limit: float) -> dict[str, Any]:
    """Checkout sagas through HttpExecutor, and a bare httpx loop making the same calls."""
    import httpx

    from sagalab.fakeservices import run_in_thread
    from sagalab.orchestrator.executors import HttpExecutor
    from sagalab.orchestrator.flowfile import load_flow
    from sagalab.orchestrator.runner import (
        SagaRunner,
        new_saga_id,
        new_span_id,
        new_trace_id,
        start_saga,
    )
    from sagalab.orchestrator.saga import SagaStatus
    from sagalab.orchestrator.stores import open_store

    flow = load_flow("checkout")
    with run_in_thread() as running:
        services = running.services
        store = open_store(tmp / "http.db")
        executor = HttpExecutor(services)
        runner = SagaRunner(store, executor)

        def saga(i: int, run: str) -> None:
            record, _created = start_saga(store, flow, _order(i, run), queue=False)
            status = runner.run(record.id).status
            if status is not SagaStatus.COMPLETED:
                raise SystemExit(f"checkout saga {record.id} ended {status.value}")

        client = httpx.Client(headers={"User-Agent": "sagalab"})

        def bare(i: int, run: str) -> None:
            # What the orchestrator sends, without it: same URLs, bodies and headers.
            order = _order(i, run)
            saga_id, trace_id = new_saga_id(), new_trace_id()

            def post(url: str, step: str, body: dict[str, Any], timeout: float) -> Any:
                headers = {
                    "Idempotency-Key": f"{saga_id}:{step}:action",
                    "traceparent": f"00-{trace_id}-{new_span_id()}-01",
                    "X-Saga-Id": saga_id,
                }
                response = client.post(url, json=body, headers=headers, timeout=timeout)
                if response.status_code >= 300:
                    raise SystemExit(f"bare loop: {url} answered {response.status_code}")
                return response.json()

            oid = order["order_id"]
            reservation = post(
                services["inventory"] + "/reservations",
                "reserve_inventory",
                {"order_id": oid, "sku": order["sku"], "quantity": order["quantity"]},
                2.0,
            )
            charge = post(
                services["payments"] + "/charges",
                "charge_payment",
                {"order_id": oid, "amount": order["amount"], "currency": "EUR"},
                3.0,
            )
            post(
                services["shipping"] + "/shipments",
                "create_shipment",
                {
                    "order_id": oid,
                    "address": f"customer {order['customer_id']}",
                    "reservation": reservation["reservation_id"],
                },
                2.0,
            )
            post(
                services["notifications"] + "/messages",
                "send_confirmation",
                {
                    "order_id": oid,
                    "customer_id": order["customer_id"],
                    "template": f"order-confirmed charge={charge['charge_id']}",
                },
                2.0,
            )

        try:
            for i in range(warmup):
                saga(i, "warm-saga")
                bare(i, "warm-bare")
            n_saga, s_saga = timed_loop(lambda i: saga(i, "saga"), count, limit)
            n_bare, s_bare = timed_loop(lambda i: bare(i, "bare"), count, limit)
        finally:
            client.close()
            executor.close()
            store.close()
    steps = len(flow.steps)
    per_saga_ms = s_saga / n_saga * 1000
    per_bare_ms = s_bare / n_bare * 1000
    return {
        "steps": steps,
        "orchestrator": {"sagas": n_saga, "seconds": s_saga, "sagas_per_second": n_saga / s_saga},
        "bare_httpx": {"sagas": n_bare, "seconds": s_bare, "sagas_per_second": n_bare / s_bare},
        "ms_per_saga": {"orchestrator": per_saga_ms, "bare_httpx": per_bare_ms},
        "orchestrator_cost_ms_per_step": (per_saga_ms - per_bare_ms) / steps,
        "ratio": per_bare_ms / per_saga_ms,  # orchestrator sagas/s over bare httpx's
    }


# -- report ------------------------------------------------------------------------------------


def render(result: dict[str, Any]) -> str:
    s, d = result.get("sagalab"), result.get("dbos")
    lines = ["sequential durable sagas, 3 no-op steps, SQLite WAL + synchronous=NORMAL"]
    if s:
        lines.append(
            f"  sagalab : {s['sagas_per_second']:8,.0f} sagas/s  ({s['sagas']} sagas in "
            f"{s['seconds']:.2f}s; {s['commits_per_saga']:.0f} write commits, "
            f"{s['statements_per_saga']:.0f} statements per saga)"
        )
    if d:
        lines.append(
            f"  DBOS    : {d['sagas_per_second']:8,.0f} sagas/s  ({d['sagas']} sagas in "
            f"{d['seconds']:.2f}s; {d['commits_per_saga']:.0f} write commits, "
            f"{d['statements_per_saga']:.0f} statements per saga)"
        )
    if s and d:
        ratio = result["ratio"]
        verdict = "MEETS" if ratio >= TARGET_RATIO else "MISSES"
        lines.append(
            f"  ratio   : sagalab / DBOS = {ratio:.1f}x  "
            f"({verdict} the >= {TARGET_RATIO:g}x target)"
        )
    lines.append("  guarantee (each step's result committed before the next step starts):")
    if s:
        lines.append(
            "    sagalab: one BEGIN IMMEDIATE..COMMIT per step attempt; a step's result is "
            "committed with the next step's ATTEMPT_STARTED, before that step runs; "
            f"checked from a second connection on {s['guarantee_checked_sagas']} sagas: "
            f"{len(s['guarantee_violations'])} violations"
        )
    if d:
        lines.append(
            "    DBOS   : each @DBOS.step's output row (operation_outputs) is committed when "
            "the step returns; checked from a second connection on "
            f"{d['guarantee_checked_sagas']} workflows: {len(d['guarantee_violations'])} "
            f"violations (pragmas seen: {d['pragmas']})"
        )
    off = result.get("sagalab_group_off")
    if off:
        lines.append(
            f"  sagalab, group commit off: {off['sagas_per_second']:8,.0f} sagas/s"
            + (f"  ({result['ratio_group_off']:.1f}x DBOS)" if "ratio_group_off" in result else "")
        )
    t = result.get("threads")
    if t:
        for side in ("off", "on"):
            r = t[side]
            per = r["units_per_commit"]
            lines.append(
                f"  {r['threads']} threads, group commit {side:<3}: {r['sagas_per_second']:8,.0f} "
                f"sagas/s ({r['sagas']} sagas; "
                + (f"{per:.1f} writes per commit; " if per else "")
                + f"load {r['load']:.2f})"
            )
        lines.append(f"  threads: group commit on / off = {t['on_over_off']:.2f}")
    sub = result.get("submits")
    if sub:
        for side in ("off", "on"):
            r = sub[side]
            lines.append(
                f"  {r['threads']} threads creating sagas, group commit {side:<3}: "
                f"{r['calls_per_second']:8,.0f}/s  p50 {r['p50_ms']:.2f} ms  "
                f"p99 {r['p99_ms']:.1f} ms  max {r['max_ms']:.0f} ms  (load {r['load']:.2f})"
            )
        lines.append(f"  creating sagas: group commit on / off = {sub['calls_on_over_off']:.2f}")
    if "best_ratio" in result:
        verdict = "MEETS" if result["best_ratio"] >= TARGET_BEST_RATIO else "MISSES"
        lines.append(
            f"  best in-process / DBOS = {result['best_ratio']:.1f}x "
            f"({verdict} the >= {TARGET_BEST_RATIO:g}x target)"
        )
    h = result.get("http")
    if h:
        o, b = h["orchestrator"], h["bare_httpx"]
        lines += [
            f"over real HTTP (checkout flow, {h['steps']} POSTs per saga, fake services on "
            "127.0.0.1 in this process)",
            f"  orchestrator: {o['sagas_per_second']:8,.0f} sagas/s  "
            f"({h['ms_per_saga']['orchestrator']:.2f} ms/saga, {o['sagas']} sagas)",
            f"  bare httpx  : {b['sagas_per_second']:8,.0f} sagas/s  "
            f"({h['ms_per_saga']['bare_httpx']:.2f} ms/saga, {b['sagas']} sagas)",
            f"  ratio       : orchestrator / bare = "
            f"{o['sagas_per_second'] / b['sagas_per_second']:.2f}",
            f"  orchestrator's own cost: {h['orchestrator_cost_ms_per_step']:.3f} ms per step",
        ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000, help="sagas per in-process side")
    parser.add_argument("--warmup", type=int, default=100, help="untimed sagas before each loop")
    parser.add_argument("--http-count", type=int, default=300, help="sagas per HTTP loop")
    parser.add_argument("--check", type=int, default=20, help="sagas checked and traced")
    parser.add_argument(
        "--time-limit", type=float, default=60.0, help="seconds at most per timed loop"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=4,
        help="threads of the concurrent in-process run, group commit off then on (1..64; "
        "1 skips it)",
    )
    parser.add_argument(
        "--submit-threads",
        type=int,
        default=32,
        help="threads creating queued sagas, group commit off/on, 3 s a round (0..64; 0 skips)",
    )
    parser.add_argument("--skip-dbos", action="store_true", help="leave DBOS out")
    parser.add_argument("--skip-http", action="store_true", help="leave the HTTP part out")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = parser.parse_args()
    if min(args.count, args.http_count, args.check) < 1 or args.warmup < 0:
        parser.error("--count, --http-count and --check must be >= 1; --warmup >= 0")
    if not 1 <= args.threads <= 64 or not 0 <= args.submit_threads <= 64:
        parser.error("--threads must be 1 to 64, --submit-threads 0 to 64")

    result: dict[str, Any] = {"count": args.count, "warmup": args.warmup}
    with tempfile.TemporaryDirectory(prefix="sagalab-bench-") as tmp:
        log("sagalab: in-process no-op steps ...")
        result["sagalab"] = bench_sagalab(
            Path(tmp), args.count, args.warmup, args.time_limit, args.check
        )
        log("sagalab: the same, group commit off ...")
        result["sagalab_group_off"] = bench_sagalab(
            Path(tmp), args.count, args.warmup, args.time_limit, args.check, group_commit=False
        )
        if args.threads > 1:
            result["threads"] = {}
            for side in ("off", "on"):
                log(f"sagalab: {args.threads} threads, group commit {side} ...")
                result["threads"][side] = bench_sagalab_threads(
                    Path(tmp), args.count, args.time_limit, args.threads, group_commit=side == "on"
                )
            on, off = result["threads"]["on"], result["threads"]["off"]
            result["threads"]["on_over_off"] = on["sagas_per_second"] / off["sagas_per_second"]
        if args.submit_threads > 0:
            rounds: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
            for side in ("off", "on", "off", "on"):
                log(f"submits: {args.submit_threads} threads, group commit {side} ...")
                rounds[side].append(
                    bench_submits(Path(tmp), 3.0, args.submit_threads, group_commit=side == "on")
                )
            off = max(rounds["off"], key=lambda r: r["calls_per_second"])
            on = max(rounds["on"], key=lambda r: r["calls_per_second"])
            result["submits"] = {
                "off": off,
                "on": on,
                "rounds": rounds,
                "calls_on_over_off": on["calls_per_second"] / off["calls_per_second"],
            }
        if not args.skip_dbos:
            log("DBOS Transact: same flow ...")
            try:
                result["dbos"] = bench_dbos(
                    Path(tmp), args.count, args.warmup, args.time_limit, args.check
                )
            except ImportError:
                log("dbos is not installed: pip install -e '.[bench]' (skipping DBOS)")
        if "dbos" in result:
            ratio = result["sagalab"]["sagas_per_second"] / result["dbos"]["sagas_per_second"]
            result["ratio"] = ratio
            result["target_ratio"] = TARGET_RATIO
            result["meets_target"] = ratio >= TARGET_RATIO
            result["ratio_group_off"] = (
                result["sagalab_group_off"]["sagas_per_second"] / result["dbos"]["sagas_per_second"]
            )
            best = max(
                result["sagalab"]["sagas_per_second"],
                result.get("threads", {}).get("on", {}).get("sagas_per_second", 0.0),
            )
            result["best_ratio"] = best / result["dbos"]["sagas_per_second"]
            result["target_best_ratio"] = TARGET_BEST_RATIO
        if not args.skip_http:
            log("HTTP: checkout flow against the fake services ...")
            result["http"] = bench_http(
                Path(tmp), args.http_count, min(args.warmup, 50), args.time_limit
            )
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(render(result))
    violations = result["sagalab"]["guarantee_violations"]
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())

"""PostgreSQL: sagalab against DBOS Transact on one server, and worker processes over HTTP.

Run on demand (pytest does not collect it; `pip install -e '.[bench]'` brings in dbos, the
test extra psycopg; the server binaries come from `apt-get install postgresql`):

    python benchmarks/bench_postgres.py [--count N] [--warmup N] [--check N]
                                        [--http-count N] [--workers 1 2 4] [--json]

It starts its own throwaway cluster (orchestrator/pg_cluster.py, 127.0.0.1, in a temp
folder, `fsync=off` as every PgCluster; with pg_stat_statements preloaded when the server
has it), and stops it at the end, on an error or on Ctrl-C.

1. sagalab: sequential durable sagas of a 3-step flow of no-op Python steps
   (`SagaRunner.start`) on a `PostgresStore` in database `bench_sagalab`.
2. DBOS Transact: the same workflow of three no-op `@DBOS.step()`s, its system database
   `bench_dbos` on the same server. Both rates and the ratio (target: sagalab >= 3x DBOS).
   Before timing, each side is checked for the same guarantee from a second connection: at
   each step's start the previous step's result is committed (sagalab: its attempt_succeeded
   event row; DBOS: its operation_outputs row). Statements and round trips per saga are
   counted on the client with libpq's trace (every message each side's connections send and
   receive: a round trip is the client sending and then reading the server's answer), and on
   the server with pg_stat_statements where it loads (BEGIN/COMMIT included).
3. Checkout sagas over real HTTP against the fake services (their own process, +20 ms on
   every call), with 1, 2 and 4 `sagalab worker` processes on a fresh database each time:
   N sagas stored first, the workers started and idle, then all released in one statement;
   rate = N / (last saga_completed - release). Target: 2 workers >= 1.8x one. The
   statements the workers send from the release on (idle polls included) are counted per saga,
   and the CPU time the workers, the fake services and the server used.

The benchmark's own checks and polls connect as another role (`bench_observer`), which the
statement counts leave out. `--fsync` runs the server with fsync on (every commit waits for
the disk) instead of PgCluster's fsync=off.

Progress and load averages go to stderr; --json prints one JSON object on stdout. Every loop
stops at its count or --time-limit seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
import time
import weakref
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import psycopg  # noqa: E402
from bench_orchestrator import (  # noqa: E402
    STEPS,
    guarantee_check,
    launch_dbos_checkout,
    log,
    timed_loop,
)
from bench_workers import Services, Worker, order, wait_for  # noqa: E402
from run import sigterm_as_interrupt  # noqa: E402  (the runner's: SIGTERM and SIGINT unwind)

from sagalab.orchestrator.pg_cluster import PgCluster  # noqa: E402

TARGET_RATIO = 3.0
TARGET_SCALING = 1.8  # 2 workers against 1
LATENCY_MS = 20
SERVICES = ("inventory", "payments", "shipping", "notifications")
#: The role the benchmark's own checks and polls connect as: left out of the counts.
OBSERVER = "bench_observer"


def load() -> list[float]:
    """The 1, 5 and 15 minute load averages (the machine is shared: say how busy it was)."""
    return [round(x, 2) for x in os.getloadavg()]


# -- the cluster -------------------------------------------------------------------------------


def start_cluster(directory: Path, *, fsync: bool = False) -> tuple[PgCluster, bool]:
    """A throwaway cluster; True if pg_stat_statements is loaded in it. Stopped again if
    anything after its start fails (the caller's `finally` only covers what it returns).

    PgCluster runs with `fsync=off` (its data is thrown away); with `fsync` the server is
    restarted with the same options but fsync on, so every commit waits for the disk as a
    production server's does. (PgCluster takes no option for it: its private `_run` starts
    the server here, with the options its `start` uses.)
    """
    cluster = PgCluster(directory)
    cluster.start()
    try:
        with psycopg.connect(cluster.url, autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {OBSERVER} LOGIN SUPERUSER")
    except BaseException:
        cluster.stop()
        raise
    library = cluster.bindir.parent / "lib" / "pg_stat_statements.so"
    preload = library.exists()
    if not preload and not fsync:
        return cluster, False
    try:
        if preload:
            with psycopg.connect(cluster.url, autocommit=True) as conn:
                conn.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
        cluster.stop(mode="fast")
        if fsync:
            options = (
                f"-p {cluster.port} -k {cluster.directory} -c listen_addresses=127.0.0.1 "
                "-c fsync=on -c max_connections=200"
            )
            data, logfile = str(cluster.data), str(cluster.log)
            cluster._run("pg_ctl", "-D", data, "-l", logfile, "-o", options, "-w", "start")
        else:
            cluster.start()  # the data is there: no initdb, the preload takes effect
        with psycopg.connect(cluster.url, autocommit=True) as conn:
            if preload:
                conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            row = conn.execute("SHOW fsync").fetchone()
            assert row is not None and row[0] == ("on" if fsync else "off"), row
    except BaseException:
        cluster.stop()
        raise
    return cluster, preload


def observer(url: str) -> str:
    """`url` (the cluster's superuser's) as the observer role."""
    return url.replace("://sagalab@", f"://{OBSERVER}@", 1)


def create_database(cluster: PgCluster, name: str) -> str:
    """A fresh empty database `name` (dropped first if there); its URL."""
    with psycopg.connect(cluster.url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return cluster.url_for(name)


class ServerStatements:
    """What the server saw between `reset()` and `read()`: pg_stat_statements calls in one
    database (if it is loaded), and WAL writes and syncs of the whole cluster (pg_stat_wal,
    PostgreSQL 14+: about one write per committed write transaction, and with fsync on one
    sync; a background writer's or a poller's share included)."""

    # Backends send their counters to the shared statistics at most once a second, and
    # when idle: a pause before each reading lets the counted window's arrive in full.
    SETTLE_SECONDS = 1.2

    def __init__(self, cluster: PgCluster, enabled: bool) -> None:
        self.cluster = cluster
        self.enabled = enabled
        self.wal_before: tuple[int, int] | None = None

    def _wal(self, conn: psycopg.Connection, settle: bool) -> tuple[int, int] | None:
        if not settle:
            return None
        time.sleep(self.SETTLE_SECONDS)
        try:
            row = conn.execute("SELECT wal_write, wal_sync FROM pg_stat_wal").fetchone()
        except psycopg.Error:  # before PostgreSQL 14
            return None
        return None if row is None else (int(row[0]), int(row[1]))

    def reset(self, *, settle: bool = True) -> None:
        """Start a window; without `settle`, at once and without WAL counts."""
        with psycopg.connect(self.cluster.url, autocommit=True) as conn:
            self.wal_before = self._wal(conn, settle)
            if self.enabled:
                conn.execute("SELECT pg_stat_statements_reset()")

    def read(self, database: str, sagas: int, *, settle: bool = True) -> dict[str, Any]:
        """The window's counts per saga, `database`'s statements by how often each ran."""
        with psycopg.connect(self.cluster.url, autocommit=True) as conn:
            wal = self._wal(conn, settle)
            rows = []
            if self.enabled:
                rows = conn.execute(
                    "SELECT s.calls, s.total_exec_time, s.query FROM pg_stat_statements s "
                    "JOIN pg_database d ON d.oid = s.dbid JOIN pg_roles r ON r.oid = s.userid "
                    "WHERE d.datname = %s AND r.rolname <> %s "
                    "ORDER BY s.calls DESC, s.total_exec_time DESC",
                    (database, OBSERVER),
                ).fetchall()
        result: dict[str, Any] = {}
        if wal is not None and self.wal_before is not None:
            result["wal_writes_per_saga"] = round((wal[0] - self.wal_before[0]) / sagas, 2)
            result["wal_syncs_per_saga"] = round((wal[1] - self.wal_before[1]) / sagas, 2)
        if not self.enabled:
            return result
        total = sum(int(calls) for calls, _, _ in rows)
        exec_ms = sum(float(ms) for _, ms, _ in rows)
        result.update(
            statements_per_saga=round(total / sagas, 2),
            # the server's own time executing them (not parsing, not the network)
            exec_ms_per_saga=round(exec_ms / sagas, 3),
            top=[
                {
                    "per_saga": round(int(calls) / sagas, 2),
                    "exec_ms_per_call": round(float(ms) / int(calls), 4),
                    "query": " ".join(query.split())[:100],
                }
                for calls, ms, query in rows[:12]
            ],
        )
        return result


class Trace:
    """libpq's trace of some connections over a window: statements and round trips.

    Each traced connection writes every protocol message to its own file (F: sent by the
    client, B: by the server). A statement is a Query (simple protocol) or an Execute
    (extended); a round trip is a run of F messages followed by the server's answer.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.files: list[Path] = []
        self.live: list[Any] = []  # pgconns traced now

    def start(self, pgconn: Any) -> None:
        path = self.directory / f"trace-{len(self.files)}-{time.monotonic_ns()}.txt"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        pgconn.trace(fd)
        pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)
        self.files.append(path)
        self.live.append(pgconn)

    def stop(self) -> None:
        for pgconn in self.live:
            with contextlib.suppress(Exception):
                pgconn.untrace()  # flushes the file
        self.live.clear()

    def counts(self) -> dict[str, Any]:
        """Statements and round trips, and the texts of simple-protocol queries (BEGIN,
        COMMIT, a pool's liveness ping ...) with how often each was sent."""
        statements = round_trips = 0
        simple: Counter[str] = Counter()
        for path in self.files:
            previous = ""
            for line in path.read_text(errors="replace").splitlines():
                parts = line.split("\t")
                if len(parts) < 3:
                    continue
                side, kind = parts[0], parts[2].strip()
                if side == "F" and kind in ("Query", "Execute"):
                    statements += 1
                    if kind == "Query":
                        simple[" ".join(parts[3:]).strip()[:60]] += 1
                if side == "B" and previous == "F":
                    round_trips += 1
                previous = side
        return {"statements": statements, "round_trips": round_trips, "simple": simple}


def per_saga(counts: dict[str, Any], sagas: int) -> dict[str, Any]:
    """Trace counts divided by the sagas traced."""
    return {
        "statements_per_saga": round(counts["statements"] / sagas, 2),
        "round_trips_per_saga": round(counts["round_trips"] / sagas, 2),
        "simple_queries_per_saga": {
            text: round(n / sagas, 2) for text, n in counts["simple"].most_common(8)
        },
    }


# -- 1. sagalab ----------------------------------------------------------------------------------


def bench_sagalab(
    cluster: PgCluster, server: ServerStatements, tmp: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """Sequential 3-step no-op sagas on a PostgresStore (database bench_sagalab)."""
    from sagalab.orchestrator.executors import PythonExecutor
    from sagalab.orchestrator.flow import flow_from_dict
    from sagalab.orchestrator.postgres_store import PostgresStore
    from sagalab.orchestrator.registry import step_handler
    from sagalab.orchestrator.runner import SagaRunner
    from sagalab.orchestrator.saga import SagaStatus

    for name in STEPS:
        step_handler(f"pgbench_{name}")(lambda call: None)
    flow = flow_from_dict(
        {
            "name": "pgbench_noop3",
            "version": 1,
            "steps": [{"name": n, "handler": f"pgbench_{n}"} for n in STEPS],
        },
        source="(benchmark)",
    )
    url = create_database(cluster, "bench_sagalab")
    store = PostgresStore(url)
    runner = SagaRunner(store, PythonExecutor())

    def one(_: int) -> None:
        saga_id, result = runner.start(flow, {})
        if result.status is not SagaStatus.COMPLETED:
            raise SystemExit(f"sagalab saga {saga_id} did not complete")

    # The guarantee, from a second connection: when step k starts, step k-1's
    # attempt_succeeded row is committed (the first step: its attempt_started and the saga).
    violations: list[str] = []
    with psycopg.connect(observer(url), autocommit=True) as reader:
        checkpoint = guarantee_check(reader, violations, mark="%s")
        checked = SagaRunner(store, PythonExecutor(), checkpoint=checkpoint)
        for _ in range(args.check):
            checked.start(flow, {})

    trace = Trace(tmp)
    one(0)  # connected, flow snapshot cached
    server.reset()
    assert store._conn is not None  # the store's one connection (see PostgresStore)
    trace.start(store._conn.pgconn)
    for i in range(args.check):
        one(i)
    trace.stop()
    counted = server.read("bench_sagalab", args.check)

    for i in range(args.warmup):
        one(i)
    done, seconds = timed_loop(one, args.count, args.time_limit)
    store.close()
    return {
        "sagas": done,
        "seconds": round(seconds, 3),
        "sagas_per_second": round(done / seconds, 1),
        "client": per_saga(trace.counts(), args.check),
        "server": counted,
        "guarantee_checked_sagas": args.check,
        "guarantee_violations": violations,
    }


# -- 2. DBOS Transact ----------------------------------------------------------------------------


def bench_dbos(
    cluster: PgCluster, server: ServerStatements, tmp: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """The same 3-step workflow on DBOS Transact, system database bench_dbos."""
    import sqlalchemy as sa
    from dbos import DBOS

    url = cluster.url_for("bench_dbos")
    with psycopg.connect(cluster.url, autocommit=True) as conn:
        conn.execute('DROP DATABASE IF EXISTS "bench_dbos" WITH (FORCE)')
    pool: weakref.WeakSet[Any] = weakref.WeakSet()
    trace = Trace(tmp)
    tracing = [False]

    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        pgconn = getattr(dbapi_conn, "pgconn", None)
        if pgconn is not None:
            pool.add(dbapi_conn)
            if tracing[0]:
                trace.start(pgconn)

    # DBOS creates its engine inside DBOS(); a listener on the Engine class reaches it.
    sa.event.listen(sa.engine.Engine, "connect", on_connect)
    for name in ("dbos", "sqlalchemy"):
        logging.getLogger(name).setLevel(logging.WARNING)

    violations: list[str] = []
    checking = [False]
    reader: psycopg.Connection | None = None

    def check_previous(index: int) -> None:
        # operation_outputs holds one row per finished step (function_id counts from 1).
        if not checking[0] or index == 0 or reader is None:
            return
        wf = DBOS.workflow_id
        found = reader.execute(
            "SELECT 1 FROM dbos.operation_outputs WHERE workflow_uuid = %s AND function_id = %s",
            (wf, index),
        ).fetchone()
        if found is None:
            violations.append(f"{wf}: step {index} not committed before step {index + 1}")

    dbos = None
    try:
        dbos, checkout = launch_dbos_checkout("sagalab-pgbench", url, check_previous)
        reader = psycopg.connect(observer(url), autocommit=True)

        def one(_: int) -> None:
            checkout()

        checking[0] = True
        for i in range(args.check):
            one(i)
        checking[0] = False
        server.reset()
        tracing[0] = True
        for conn in list(pool):
            if not conn.closed:
                trace.start(conn.pgconn)
        for i in range(args.check):
            one(i)
        tracing[0] = False
        trace.stop()
        counted = server.read("bench_dbos", args.check)
        for i in range(args.warmup):
            one(i)
        done, seconds = timed_loop(one, args.count, args.time_limit)
    finally:
        if reader is not None:
            reader.close()
        DBOS.destroy(destroy_registry=True)
        sa.event.remove(sa.engine.Engine, "connect", on_connect)
        del dbos
    return {
        "sagas": done,
        "seconds": round(seconds, 3),
        "sagas_per_second": round(done / seconds, 1),
        "client": per_saga(trace.counts(), args.check),
        "server": counted,
        "guarantee_checked_sagas": args.check,
        "guarantee_violations": violations,
    }


# -- 3. worker processes over HTTP ---------------------------------------------------------------


def _cpu_fields(pid: int) -> tuple[int, float, float]:
    """(parent pid, own CPU s, CPU s of its children that exited and were waited for)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0, 0.0, 0.0
    fields = text[text.rindex(")") + 2 :].split()  # after the command name, which may hold spaces
    tick = os.sysconf("SC_CLK_TCK")
    own = (int(fields[11]) + int(fields[12])) / tick
    return int(fields[1]), own, (int(fields[13]) + int(fields[14])) / tick


def cpu_seconds(roots: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds used so far by each group of processes and their descendants (Linux)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            parent = _cpu_fields(int(entry.name))[0]
            children.setdefault(parent, []).append(int(entry.name))
    used = {}
    for group, pids in roots.items():
        total, todo = 0.0, list(pids)
        while todo:
            pid = todo.pop()
            _, own, reaped = _cpu_fields(pid)
            total += own + reaped
            todo.extend(children.get(pid, []))
        used[group] = total
    return used


def postmaster_pid(cluster: PgCluster) -> int:
    """The server's main process (the first line of postmaster.pid)."""
    return int((cluster.data / "postmaster.pid").read_text().split()[0])


def throughput(
    cluster: PgCluster,
    server: ServerStatements,
    services: Services,
    tmp: Path,
    workers: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """`count` checkout sagas through `workers` worker processes on a fresh database."""
    from sagalab.orchestrator.flowfile import load_flow
    from sagalab.orchestrator.runner import start_saga
    from sagalab.orchestrator.stores import open_store

    name = f"bench_workers_{workers}"
    url = create_database(cluster, name)
    flow = load_flow("checkout")
    store = open_store(url)
    try:
        for i in range(args.http_count):
            start_saga(store, flow, order(i), queue=False)
    finally:
        store.close()
    worker_args = ("--concurrency", str(args.concurrency), "--poll", "0.02", "--lease", "10")
    running: list[Worker] = []
    try:
        for _ in range(workers):
            running.append(Worker(url, services.env, tmp, *worker_args))  # type: ignore[arg-type]
        wait_for(lambda: all(w.ready() for w in running), 60, "workers to start")
        # Everything the workers send from the release on, idle polls included: the load a
        # saga puts on the database.
        server.reset(settle=False)
        groups = {
            "workers": [w.proc.pid for w in running],
            "services": [services.proc.pid],
            "postgres": [postmaster_pid(cluster)],
        }
        cpu_before = cpu_seconds(groups)
        with psycopg.connect(observer(url), autocommit=True) as conn:
            row = conn.execute(
                "UPDATE sagas SET run_after = extract(epoch FROM clock_timestamp()) "
                "WHERE run_after IS NULL RETURNING run_after"
            ).fetchone()
            assert row is not None
            released = float(row[0])

            def completed() -> bool:
                found = conn.execute(
                    "SELECT COUNT(*) FROM sagas WHERE status = 'completed'"
                ).fetchone()
                return found is not None and int(found[0]) >= args.http_count

            try:
                wait_for(
                    completed,
                    args.time_limit,
                    f"{args.http_count} sagas with {workers} worker(s)",
                    every=0.05,
                )
            except TimeoutError:
                for w in running:  # what the workers said, for whoever reads the failure
                    log(f"{w.err_path.name}: {w.err_path.read_text(errors='replace')[-800:]}")
                raise
            last = conn.execute(
                "SELECT MAX(at) FROM events WHERE type = 'saga_completed'"
            ).fetchone()
            assert last is not None
        cpu_after = cpu_seconds(groups)
        counted = server.read(name, args.http_count, settle=False)
    finally:
        for w in running:
            w.stop()
        with psycopg.connect(cluster.url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    seconds = float(last[0]) - released
    return {
        "workers": workers,
        "concurrency": args.concurrency,
        "sagas": args.http_count,
        "seconds": round(seconds, 3),
        "sagas_per_second": round(args.http_count / seconds, 1),
        "server": counted,
        # CPU per saga by process group (the benchmark's own polling not included); the
        # machine's budget is os.cpu_count() CPU seconds per second of the run
        "cpu_ms_per_saga": {
            group: round((cpu_after[group] - cpu_before[group]) / args.http_count * 1000, 2)
            for group in groups
        },
        "cpus": os.cpu_count(),
    }


def bench_workers(
    cluster: PgCluster, server: ServerStatements, tmp: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """Throughput with each worker count, the fake services +LATENCY_MS per call."""
    services = Services()
    rows = []
    try:
        with services.admin() as admin:
            admin.reset()
            for name in SERVICES:
                if args.latency_ms:  # a fault with no latency would be some other fault
                    admin.add_fault(name, latency_ms=args.latency_ms)
        for n in args.workers:
            log(f"workers: {n} x {args.concurrency} thread(s), {args.http_count} sagas ...")
            row = throughput(cluster, server, services, tmp, n, args)
            log(f"  {row['sagas_per_second']} sagas/s (load {load()})")
            rows.append(row)
    finally:
        services.stop()
    base = rows[0]["sagas_per_second"] if rows else 0
    for row in rows:
        row["vs_first"] = round(row["sagas_per_second"] / base, 2) if base else None
    result: dict[str, Any] = {"latency_ms": args.latency_ms, "runs": rows}
    by_count = {r["workers"]: r["sagas_per_second"] for r in rows}
    if 1 in by_count and 2 in by_count:
        result["ratio_2_to_1"] = round(by_count[2] / by_count[1], 2)
        result["target_2_to_1"] = TARGET_SCALING
        result["meets_target"] = result["ratio_2_to_1"] >= TARGET_SCALING
    return result


# -- report --------------------------------------------------------------------------------------


def render(result: dict[str, Any]) -> str:
    lines = [
        f"load averages: {result['load_start']} at start, {result['load_end']} at the end",
        "sequential durable sagas, 3 no-op steps, one PostgreSQL server "
        f"(fsync={'on' if result['fsync'] else 'off'})",
    ]
    for key, name in (("sagalab", "sagalab"), ("dbos", "DBOS   ")):
        side = result.get(key)
        if not side:
            continue
        client = side["client"]
        server = side["server"]
        on_server = (
            f" ({server['statements_per_saga']:.1f} on the server, executing for "
            f"{server['exec_ms_per_saga']:.3f} ms)"
            if "statements_per_saga" in server
            else ""
        )
        if "wal_writes_per_saga" in server:
            on_server += (
                f", WAL writes {server['wal_writes_per_saga']:.1f} / syncs "
                f"{server['wal_syncs_per_saga']:.1f}"
            )
        lines.append(
            f"  {name}: {side['sagas_per_second']:8,.0f} sagas/s ({side['sagas']} in "
            f"{side['seconds']:.2f}s); per saga {client['statements_per_saga']:.1f} statements"
            f"{on_server}, {client['round_trips_per_saga']:.1f} round trips; guarantee "
            f"violations {len(side['guarantee_violations'])} of "
            f"{side['guarantee_checked_sagas']} sagas checked"
        )
    if "ratio" in result:
        verdict = "MEETS" if result["meets_target"] else "MISSES"
        lines.append(
            f"  ratio  : sagalab / DBOS = {result['ratio']:.1f}x ({verdict} the >= "
            f"{TARGET_RATIO:g}x target)"
        )
    w = result.get("workers")
    if w:
        lines.append(f"checkout sagas over HTTP, +{w['latency_ms']} ms per call, PostgreSQL")
        for row in w["runs"]:
            lines.append(
                f"  {row['workers']} worker(s) x {row['concurrency']}: "
                f"{row['sagas_per_second']:7.1f} sagas/s ({row['sagas']} in "
                f"{row['seconds']:.2f}s)  x{row['vs_first']}"
                + (
                    f"  {row['server']['statements_per_saga']:.1f} statements per saga"
                    if "statements_per_saga" in row["server"]
                    else ""
                )
                + "; CPU ms per saga "
                + ", ".join(f"{k} {v:.1f}" for k, v in row["cpu_ms_per_saga"].items())
            )
        if "ratio_2_to_1" in w:
            verdict = "MEETS" if w["meets_target"] else "MISSES"
            lines.append(
                f"  1 -> 2 workers: x{w['ratio_2_to_1']} ({verdict} the >= "
                f"{TARGET_SCALING:g}x target)"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000, help="sagas per in-process side")
    parser.add_argument("--warmup", type=int, default=50, help="untimed sagas before each loop")
    parser.add_argument("--check", type=int, default=20, help="sagas checked and traced")
    parser.add_argument("--http-count", type=int, default=300, help="sagas per worker run")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--concurrency", type=int, default=4, help="threads per worker")
    parser.add_argument("--latency-ms", type=int, default=LATENCY_MS, help="added per call")
    parser.add_argument("--time-limit", type=float, default=60.0, help="seconds per loop/run")
    parser.add_argument(
        "--fsync", action="store_true", help="the server with fsync on (default: off)"
    )
    parser.add_argument("--skip-dbos", action="store_true", help="leave DBOS out")
    parser.add_argument("--skip-workers", action="store_true", help="leave the HTTP part out")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = parser.parse_args()
    if min(args.count, args.check, args.http_count, args.concurrency, *args.workers) < 1:
        parser.error("counts, --concurrency and --workers must be >= 1")
    if args.warmup < 0 or args.time_limit <= 0:
        parser.error("--warmup must be >= 0 and --time-limit > 0")

    result: dict[str, Any] = {"load_start": load(), "count": args.count}
    with (
        sigterm_as_interrupt(),
        tempfile.TemporaryDirectory(prefix="sagalab-pgbench-") as tmp,
    ):
        workdir = Path(tmp)
        result["workdir"] = tmp
        os.chmod(workdir, 0o755)  # as root, the server runs as `postgres` and must get in
        log("starting a throwaway PostgreSQL cluster ...")
        cluster, preloaded = start_cluster(workdir / "pg", fsync=args.fsync)
        result["pg_stat_statements"] = preloaded
        result["fsync"] = args.fsync
        try:
            server = ServerStatements(cluster, preloaded)
            log(f"sagalab on PostgreSQL (load {load()}) ...")
            result["sagalab"] = bench_sagalab(cluster, server, workdir, args)
            if not args.skip_dbos:
                log(f"DBOS Transact on PostgreSQL (load {load()}) ...")
                try:
                    result["dbos"] = bench_dbos(cluster, server, workdir, args)
                except ImportError:
                    log("dbos is not installed: pip install -e '.[bench]' (skipping DBOS)")
            if "dbos" in result:
                ratio = result["sagalab"]["sagas_per_second"] / result["dbos"]["sagas_per_second"]
                result["ratio"] = round(ratio, 2)
                result["target_ratio"] = TARGET_RATIO
                result["meets_target"] = ratio >= TARGET_RATIO
            if not args.skip_workers:
                result["workers"] = bench_workers(cluster, server, workdir, args)
        finally:
            cluster.stop()
    result["load_end"] = load()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(render(result))
    bad = result["sagalab"]["guarantee_violations"] or result.get("dbos", {}).get(
        "guarantee_violations"
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

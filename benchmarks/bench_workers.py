"""Worker replicas: sagas/s over real HTTP with 1, 2 and 4 processes; the cost of a crash.

Run on demand (pytest does not collect it):

    python benchmarks/bench_workers.py [--count N] [--workers 1 2 4] [--concurrency C]
                                       [--latency-ms 0 20] [--rounds R] [--warmup W]
                                       [--leases 1 2 5]
                                       [--repeats R] [--json]

The fake services run in their own process (`sagalab services up --port 0`), so they do not
share the benchmark's GIL; every worker is a `sagalab worker` process; all on 127.0.0.1.

1. Throughput: for each worker count, a fresh SQLite file with every saga of the run stored
   first, the workers started, then warmed up (`--warmup` rounds of one saga per worker thread,
   each released and waited for: a worker opens its connections, HTTP clients and breaker
   rows and imports the run's code on its first sagas, which once cost 0.2 - 0.3 s of CPU per
   process inside the measured window, so 4 workers paid it 4 times), then N checkout sagas
   released onto the queue in one statement. Rate = N / (time of the last `saga_completed` -
   release time), both read from the journal, so neither start-up nor warm-up is counted.
   No faults (unless --latency-ms adds a delay to every service call). With
   --rounds R the worker counts take turns R times (1, 2, 4, 1, 2, 4, ...) and the ratios are
   of the medians: on a shared machine the load drifts, and interleaving spreads the drift
   over every worker count. Each row also gives the CPU the workers used per saga and the
   share of a core they got (`cpu_cores`), with the load average at its start: a ratio
   missed with the workers far below the cores they could use was starved by other load.
2. Crash cost: for each lease length, two idle workers; the one that claims the saga is
   SIGKILLed during its shipping call (slowed down to 1.5 s so it can be caught, at a point of
   its lease renewal cycle that varies per repeat), and the other resumes the saga once the
   dead worker's lease expires. Cost = time from the SIGKILL to the survivor's first journal
   write for that saga (closing the interrupted attempt), and to the saga's completion.
   Expected: what was left of the lease (2/3 of it to all of it, as it is renewed every
   lease/3), plus the survivor's poll interval.

Every wait is bounded (--time-limit per run).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sagalab.fakeservices import AdminClient, service_env  # noqa: E402
from sagalab.orchestrator.flowfile import load_flow  # noqa: E402
from sagalab.orchestrator.runner import start_saga  # noqa: E402
from sagalab.orchestrator.stores import open_store  # noqa: E402


def log(message: str) -> None:
    """Progress goes to stderr so that --json leaves stdout pure."""
    print(message, file=sys.stderr, flush=True)


def wait_for(condition: Callable[[], Any], timeout: float, what: str, every: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(every)
    return value


class Services:
    """`sagalab services up --port 0` in a subprocess."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sagalab.cli.main", "services", "up", "--port", "0"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 30
        self.url = ""
        while not self.url:
            line = self.proc.stdout.readline()
            if not line or time.monotonic() > deadline:
                raise RuntimeError("the fake services did not start")
            found = re.search(r"fake services on (http://\S+)", line)
            if found:
                self.url = found.group(1)
        self.env = {**os.environ, **service_env(self.url)}

    def admin(self) -> AdminClient:
        return AdminClient(self.url)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Worker:
    """One `sagalab worker` process."""

    def __init__(self, db: Path, env: dict[str, str], logs: Path, *args: str) -> None:
        self.err_path = logs / f"worker-{time.monotonic_ns()}.err"
        with self.err_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sagalab.cli.main", "worker", "--db", str(db), *args],
                cwd=REPO,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )

    def ready(self) -> bool:
        """It printed its start-up line (imports done, threads about to poll)."""
        return "thread(s), lease" in self.err_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def order(i: int) -> dict[str, Any]:
    return {"order_id": f"b-{i}", "customer_id": "c", "sku": "A", "quantity": 1, "amount": 10}


def create_unqueued(db: Path, n: int, offset: int = 0) -> list[str]:
    """N checkout sagas stored but not on the queue yet (run_after NULL)."""
    flow = load_flow("checkout")
    store = open_store(db)
    try:
        return [start_saga(store, flow, order(offset + i), queue=False)[0].id for i in range(n)]
    finally:
        store.close()


def release_all(db: Path, ids: list[str] | None = None) -> float:
    """Put every stored saga (or those of `ids`) on the queue at once; return the release
    time."""
    conn = sqlite3.connect(db, timeout=30, isolation_level=None)
    try:
        now = time.time()
        if ids is None:
            conn.execute("UPDATE sagas SET run_after = ? WHERE run_after IS NULL", (now,))
        else:
            marks = ", ".join("?" for _ in ids)
            conn.execute(f"UPDATE sagas SET run_after = ? WHERE id IN ({marks})", (now, *ids))
        return now
    finally:
        conn.close()


def all_completed(db: Path, n: int) -> bool:
    """Whether `n` sagas of `db` completed."""
    return bool(read(db, "SELECT COUNT(*) FROM sagas WHERE status = 'completed'")[0][0] == n)


def read(db: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db, timeout=30)
    try:
        return list(conn.execute(sql, params))
    finally:
        conn.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far (0.0 where /proc cannot say)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def throughput(
    services: Services,
    workdir: Path,
    n_workers: int,
    count: int,
    concurrency: int,
    limit: float,
    warmup: int = 2,
) -> dict[str, Any]:
    db = workdir / f"tp-{n_workers}-{time.monotonic_ns()}.db"
    open_store(db).close()
    # Every saga of the run stored up front: each run starts from the same file.
    per_round = n_workers * concurrency
    warm = [create_unqueued(db, per_round, offset=count + r * per_round) for r in range(warmup)]
    measured = create_unqueued(db, count)
    args = ("--concurrency", str(concurrency), "--poll", "0.02", "--lease", "10")
    workers = [Worker(db, services.env, workdir, *args) for _ in range(n_workers)]
    load = os.getloadavg()[0]
    try:
        wait_for(lambda: all(w.ready() for w in workers), 60, "workers to start")
        done = 0
        for ids in warm:  # one saga per worker thread, all due at once, waited for
            release_all(db, ids)
            done += len(ids)
            wait_for(partial(all_completed, db, done), limit, "the warm-up sagas", every=0.02)
        cpu_before = sum(cpu_seconds(w.proc.pid) for w in workers)
        # Only these: a finished warm-up saga is off the queue (run_after NULL) too.
        released = release_all(db, measured)
        wait_for(
            partial(all_completed, db, done + count),
            limit,
            f"{count} sagas to complete with {n_workers} worker(s)",
            every=0.05,
        )
        cpu = sum(cpu_seconds(w.proc.pid) for w in workers) - cpu_before
    finally:
        for w in workers:
            w.stop()
    last = read(db, "SELECT MAX(at) FROM events WHERE type = 'saga_completed'")[0][0]
    seconds = last - released
    locked = sum("database is locked" in w.err_path.read_text() for w in workers)
    return {
        "workers": n_workers,
        "concurrency": concurrency,
        "sagas": count,
        "seconds": round(seconds, 3),
        "sagas_per_s": round(count / seconds, 1),
        "warmup_sagas": done,
        "workers_reporting_locked": locked,
        # Start-up, warm-up, idle polls before the release and the stop after the last saga
        # are left out.
        "worker_cpu_ms_per_saga": round(1000 * cpu / count, 2),
        "cpu_cores": round(cpu / seconds, 2),
        "load": round(load, 2),
    }


def one_crash(
    services: Services, db: Path, lease: float, limit: float, offset: int, delay: float
) -> tuple[float, float, float]:
    """SIGKILL the worker holding a saga mid-call; the other resumes it.

    Returns seconds from the SIGKILL to the resume (the survivor's first write), to the
    saga's completion, and the lease time the dead worker had left when it was killed.
    """
    open_store(db).close()
    args = ("--concurrency", "1", "--poll", "0.05", "--lease", str(lease))
    pair = [Worker(db, services.env, db.parent, *args) for _ in range(2)]
    try:
        wait_for(lambda: all(w.ready() for w in pair), 60, "two workers")
        (saga,) = create_unqueued(db, 1, offset=offset)
        release_all(db)
        owner, until = wait_for(
            lambda: read(
                db,
                "SELECT s.lease_owner, s.lease_until FROM events e JOIN sagas s "
                "ON s.id = e.saga_id AND e.seq = s.last_seq WHERE e.type = 'attempt_started' "
                "AND e.step = 'create_shipment'",
            ),
            limit,
            "the shipping call",
            every=0.01,
        )[0]
        victim = next(w for w in pair if w.proc.pid == int(owner.split(":")[1]))
        time.sleep(delay)  # a later point of the victim's renewal cycle, still in the call
        victim.proc.send_signal(signal.SIGKILL)
        killed = time.time()
        victim.proc.wait()
        until = read(db, "SELECT lease_until FROM sagas")[0][0]  # its last renewal
        wait_for(
            lambda: read(db, "SELECT status FROM sagas")[0][0] == "completed",
            limit + lease,
            "the resumed saga to complete",
            every=0.05,
        )
    finally:
        for w in pair:
            w.stop(signal.SIGKILL)
    resumed = read(
        db,
        "SELECT MIN(at) FROM events WHERE saga_id = ? AND type = 'attempt_failed' "
        "AND failure LIKE '%interrupted%'",
        (saga,),
    )[0][0]
    done = read(db, "SELECT at FROM events WHERE saga_id = ? AND type = 'saga_completed'", (saga,))[
        0
    ][0]
    if resumed is None:
        raise RuntimeError("the saga completed without a resume: the kill missed the call")
    return resumed - killed, done - killed, until - killed


def crash_cost(
    services: Services, workdir: Path, lease: float, repeats: int, limit: float
) -> dict[str, Any]:
    resumes, completions, remaining = [], [], []
    with services.admin() as admin:
        admin.reset()
        admin.add_fault("shipping", latency_ms=1500)
    try:
        for r in range(repeats):
            db = workdir / f"crash-{lease:g}-{r}.db"
            offset = 10_000 * (r + 1) + int(lease * 100)
            delay = r / repeats * min(lease / 3, 1.2)  # the shipping call lasts 1.5 s
            resumed, done, left = one_crash(services, db, lease, limit, offset, delay)
            resumes.append(resumed)
            completions.append(done)
            remaining.append(left)
    finally:
        with services.admin() as admin:
            admin.clear_faults()

    def spread(values: list[float]) -> dict[str, float]:
        return {
            "min": round(min(values), 3),
            "mean": round(statistics.fmean(values), 3),
            "max": round(max(values), 3),
        }

    return {
        "lease_s": lease,
        "repeats": repeats,
        "resume_s": spread(resumes),
        "complete_s": spread(completions),
        "lease_left_at_kill_s": spread(remaining),
        "overhead_s": spread([r - left for r, left in zip(resumes, remaining, strict=True)]),
    }


def scaling(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Throughput of each worker count against the first one, per added latency, of the
    medians over the rounds: {"0ms": {"2": 1.2, "4": 1.1}, "20ms": {...}} (what the
    benchmark runner reads)."""
    out: dict[str, dict[str, float]] = {}
    for latency in dict.fromkeys(row["latency_ms"] for row in rows):
        same = [row for row in rows if row["latency_ms"] == latency]
        medians = {
            n: statistics.median(row["sagas_per_s"] for row in same if row["workers"] == n)
            for n in dict.fromkeys(row["workers"] for row in same)
        }
        first = next(iter(medians.values()))
        out[f"{latency}ms"] = {str(n): (m / first if first else 0.0) for n, m in medians.items()}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300, help="sagas per throughput run")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--concurrency", type=int, default=4, help="threads per worker")
    parser.add_argument(
        "--latency-ms",
        type=int,
        nargs="+",
        default=[0, 20],
        help="runs with this delay on every service call (0: none)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="times the worker counts take turns (ratios of the medians), 1 to 20",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=2,
        help="warm-up rounds before each measured run (one saga per worker thread each), 0 to 5",
    )
    parser.add_argument("--leases", type=float, nargs="+", default=[1.0, 2.0, 5.0])
    parser.add_argument("--repeats", type=int, default=3, help="crashes per lease length")
    parser.add_argument("--skip-crash", action="store_true", help="leave the crash cost out")
    parser.add_argument("--time-limit", type=float, default=120.0, help="bound per run (s)")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    args = parser.parse_args()
    if not 1 <= args.rounds <= 20:
        parser.error("--rounds must be 1 to 20")
    if not 0 <= args.warmup <= 5:
        parser.error("--warmup must be 0 to 5")

    log("starting the fake services in their own process ...")
    services = Services()
    results: dict[str, Any] = {"services": services.url, "throughput": [], "crash_cost": []}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
            workdir = Path(tmp)
            for latency in args.latency_ms:
                with services.admin() as admin:
                    admin.reset()
                    for name in ("inventory", "payments", "shipping", "notifications"):
                        if latency:
                            admin.add_fault(name, latency_ms=latency)
                for round_ in range(args.rounds):
                    for n in args.workers:
                        log(
                            f"throughput: {n} worker(s) x {args.concurrency} thread(s), "
                            f"{args.count} sagas, +{latency} ms per call ..."
                        )
                        row = throughput(
                            services,
                            workdir,
                            n,
                            args.count,
                            args.concurrency,
                            args.time_limit,
                            args.warmup,
                        )
                        row["latency_ms"] = latency
                        row["round"] = round_ + 1
                        log(f"  {row['sagas_per_s']} sagas/s (load {row['load']})")
                        results["throughput"].append(row)
            for lease in [] if args.skip_crash else args.leases:
                log(f"crash cost: lease {lease:g}s x {args.repeats} ...")
                results["crash_cost"].append(
                    crash_cost(services, workdir, lease, args.repeats, args.time_limit)
                )
    finally:
        services.stop()

    results["scaling"] = scaling(results["throughput"])
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"\nCheckout sagas over real HTTP (fake services at {services.url}, own process)")
    print(
        f"{'+ms/call':>8} {'round':>5} {'workers':>8} {'threads':>8} {'sagas':>6} {'seconds':>8} "
        f"{'sagas/s':>8} {'cpu ms/saga':>11} {'cores':>6} {'load':>6}"
    )
    for row in results["throughput"]:
        print(
            f"{row['latency_ms']:>8} {row['round']:>5} {row['workers']:>8} "
            f"{row['concurrency']:>8} {row['sagas']:>6} {row['seconds']:>8.2f} "
            f"{row['sagas_per_s']:>8.1f} {row['worker_cpu_ms_per_saga']:>11.2f} "
            f"{row['cpu_cores']:>6.2f} {row['load']:>6.2f}"
            + ("  (database is locked seen!)" if row["workers_reporting_locked"] else "")
        )
    print("vs the first worker count (medians over the rounds):")
    for latency, ratios in results["scaling"].items():
        print(f"  +{latency}: " + ", ".join(f"{n} workers x{r:.2f}" for n, r in ratios.items()))
    print("\nCost of a crash: SIGKILL of a worker mid-call -> its saga resumed by another worker")
    print(
        f"{'lease s':>8} {'resumed after s':>22} {'lease left at kill s':>22} "
        f"{'overhead s':>12} {'completed after s':>20}"
    )
    print(f"{'':>8} {'min / mean / max':>22} {'mean':>22} {'mean':>12} {'mean':>20}")
    for row in results["crash_cost"]:
        r = row["resume_s"]
        print(
            f"{row['lease_s']:>8g} {r['min']:>8.2f} {r['mean']:>6.2f} {r['max']:>6.2f} "
            f"{row['lease_left_at_kill_s']['mean']:>22.2f} {row['overhead_s']['mean']:>12.2f} "
            f"{row['complete_s']['mean']:>20.2f}"
        )
    print(
        "(the survivor waits out the dead worker's lease - renewed every lease/3, so 2/3 to all"
        " of it is left at a kill - then polls; completion adds the retry backoff and the"
        " 1.5 s shipping call)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

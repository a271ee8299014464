"""The chaos run across hosts (issue 10, item 5): PostgreSQL, workers on three hosts, and
everything that goes wrong between them.

Five test hosts (tests/netns.py): `pg` runs a throwaway PostgreSQL cluster listening on its
own address, `svc` runs the fake services (in this process: the test's thread joins that
host, so their ledgers and faults are at hand) and the test's own connections, and `w1`,
`w2`, `w3` each run a `sagalab worker --db postgresql://...` process. As root they are
network namespaces on a private bridge; otherwise every host is 127.0.0.1, and the output
says so (SAGALAB_NETNS=require, set by .ci/run, makes the namespaces mandatory).

Seeded and bounded, while SAGAS checkout sagas (queued through the library in chunks
whenever fewer than 40 are open) run against services that fail (5xx, lost responses after
applying, latency, declined cards, refused reservations):

- workers are SIGKILLed while they hold an action call, and restarted on their host;
- PostgreSQL is crash-restarted (`pg_ctl restart -m immediate`) twice;
- the host of a worker that holds a saga in its pivot call (create_shipment) is
  partitioned from the database (blackhole routes both ways; on loopback its worker is
  SIGSTOPped) until another host has claimed the saga (a higher lease epoch), then healed:
  the worker's late writes, held by TCP meanwhile, reach the database and are refused by
  the lease fence. They are counted from that worker's own summary (`lost_leases`: each is
  a journal append the store refused because the lease was no longer its own), after a
  SIGTERM lets it finish (up to CUTS cuts, until one shows them: a connection opened
  during a cut fails at once instead of carrying a late write).

Then: every saga queued is in the database (none lost) and ended (completed or rolled
back); `sagalab verify` finds nothing (none applied twice by the services' ledgers, every
rolled-back saga's applied actions compensated in reverse order); the partitioned worker's
fenced writes are at least one; no worker exited on its own (each rode out the restarts
and the cut). The counts are printed (`pytest -s`) and written to
netns-chaos.json in the test's tmp dir. Rerun one with SAGALAB_NETNS_SEED=<seed>.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from netns import Host, HostedCluster, Network, hosts
from pglab import new_database
from workerlab import (
    WorkerProcess,
    Workers,
    enqueue,
    order,
    owner_pid,
    run_seed,
    verify_findings,
    wait_for,
    write_services_file,
)

from sagalab.fakeservices import FaultSpec, RunningServices, applied_twice, run_in_thread

pytestmark = pytest.mark.slow

SAGAS = 300
FIRST_WAVE = 100  # queued at the start; more whenever fewer than 40 are open
WORKER_HOSTS = ("w1", "w2", "w3")
CONCURRENCY = 4
LEASE = 1.5
BREAKERS = {"fail_max": 6, "reset_timeout": 1.5, "success_threshold": 1}
KILLS = 4
BACKLOG = 4  # sagas due before the partitioned one, at most
PIVOT = "create_shipment"  # the step whose call the partition lands in
PARTITION_TRIES = 5  # cuts healed at once because the saga moved on first
CUTS = 3  # cuts that end in a takeover, until one shows fenced writes
STEP_WAIT = 20.0  # bound on any single wait inside the run
RUN_DEADLINE = 180.0  # seconds for the whole run, past which a wait on sagas gives up
STALL = 25.0  # seconds without any saga moving after which a wait gives up
ENDED = ("completed", "rolled_back")


def faults() -> list[FaultSpec]:
    """What goes wrong at the services for the whole run."""
    return [
        FaultSpec(service="inventory", endpoint="/reservations", latency_ms=60),
        FaultSpec(service="inventory", endpoint="/reservations/release", latency_ms=150),
        FaultSpec(service="payments", endpoint="/charges", latency_ms=100),
        FaultSpec(service="payments", endpoint="/refunds", latency_ms=150),
        # The pivot is slow, so that kills and the partition land in a call.
        FaultSpec(service="shipping", endpoint="/shipments", latency_ms=300),
        FaultSpec(service="notifications", latency_ms=30),
        FaultSpec(service="payments", endpoint="/charges", error_rate=0.12, status=503),
        FaultSpec(service="shipping", endpoint="/shipments", error_rate=0.06, status=500),
        FaultSpec(service="notifications", error_rate=0.1, status=503),
        FaultSpec(
            service="payments", endpoint="/charges", error_rate=0.05, after_apply=True, status=502
        ),
        FaultSpec(service="payments", endpoint="/refunds", error_rate=0.2, status=503),
        FaultSpec(service="inventory", endpoint="/reservations/release", error_rate=0.1),
    ]


def payloads(rng: random.Random) -> list[dict[str, Any]]:
    """Orders: most are fine, some cards are declined, a few reservations are refused."""
    out = []
    for i in range(SAGAS):
        draw = rng.random()
        if draw < 0.15:
            out.append(order(i, amount=20_000))
        elif draw < 0.20:
            out.append(order(i, quantity=5_000))
        else:
            out.append(order(i, amount=rng.randint(1, 9_000)))
    return out


class Database:
    """The test's own look at the saga database: a connection per question, retried while
    the server restarts (bounded)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def rows(
        self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()
    ) -> list[tuple[Any, ...]]:
        deadline = time.monotonic() + STEP_WAIT
        while True:
            try:
                with psycopg.connect(self.url, connect_timeout=3) as conn:
                    return [tuple(r) for r in conn.execute(sql, params).fetchall()]
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def statuses(self) -> dict[str, int]:
        return {s: n for s, n in self.rows("SELECT status, COUNT(*) FROM sagas GROUP BY status")}

    def ended(self) -> int:
        counts = self.statuses()
        return sum(counts.get(s, 0) for s in ENDED)

    def action_calls(self, step: str | None = None) -> list[tuple[str, str, int, float]]:
        """(saga, owner, epoch, seconds of lease left) for sagas whose last durable event
        opens an action call (of `step`, if given)."""
        return [
            (r[0], r[1], int(r[2]), float(r[3]))
            for r in self.rows(
                "SELECT s.id, s.lease_owner, s.lease_epoch, "
                "s.lease_until - extract(epoch FROM clock_timestamp()) FROM sagas s JOIN events e "
                "ON e.saga_id = s.id AND e.seq = s.last_seq WHERE s.lease_owner IS NOT NULL "
                "AND e.type = 'attempt_started' AND e.phase = 'action' "
                "AND s.lease_until > extract(epoch FROM clock_timestamp()) "
                "AND (%(step)s::text IS NULL OR e.step = %(step)s)",
                {"step": step},
            )
        ]

    def waiting(self) -> list[tuple[tuple[Any, ...], int]]:
        """What the sagas not ended wait on, most common first."""
        rows = self.rows(
            "SELECT s.status, e.type, e.step, s.lease_owner IS NOT NULL, "
            "s.run_after <= extract(epoch FROM clock_timestamp()) FROM sagas s JOIN events e "
            "ON e.saga_id = s.id AND e.seq = s.last_seq "
            "WHERE s.status NOT IN ('completed', 'rolled_back')"
        )
        return Counter(rows).most_common(8)

    def ahead_of(self, saga_id: str) -> int:
        """Sagas not leased that are due before `saga_id`: what free workers claim before
        it once its lease is lost (claims take the saga due longest ago first)."""
        ((n,),) = self.rows(
            "SELECT COUNT(*) FROM sagas WHERE run_after <= (SELECT run_after FROM sagas "
            "WHERE id = %(id)s) AND id <> %(id)s AND (lease_until IS NULL "
            "OR lease_until < extract(epoch FROM clock_timestamp()))",
            {"id": saga_id},
        )
        return int(n)

    def lease(self, saga_id: str) -> tuple[str | None, int]:
        ((owner, epoch),) = self.rows(
            "SELECT lease_owner, lease_epoch FROM sagas WHERE id = %s", (saga_id,)
        )
        return owner, int(epoch)


class Fleet:
    """One worker process per host, restarted on its host after a kill."""

    def __init__(self, net: Network, workers: Workers, args: list[str]) -> None:
        self.net = net
        self.workers = workers
        self.args = args
        self.on: dict[str, WorkerProcess] = {}

    def start(self, role: str) -> WorkerProcess:
        host = self.net[role]
        w = self.workers.start(*self.args, via=host.command([]))
        host.pids = {w.pid}
        self.on[role] = w
        return w

    def ready(self) -> None:
        """Wait until every worker is past `sagalab worker`'s start-up check (its banner):
        a server down at that moment is exit 5 by design (a supervisor restarts it); from
        there on, a worker backs off from a lost database instead."""
        wait_for(
            lambda: all(
                "thread(s), lease" in w.stderr() or not w.alive() for w in self.on.values()
            ),
            STEP_WAIT * 2,
            "the workers to start",
        )
        dead = {r: w.stderr()[-1000:] for r, w in self.on.items() if not w.alive()}
        assert not dead, f"workers that did not start: {dead}"

    def host_of(self, pid: int | None) -> str | None:
        return next((r for r, w in self.on.items() if w.pid == pid and w.alive()), None)

    def kill(self, role: str) -> int:
        victim = self.on[role]
        victim.kill()
        self.start(role)
        return victim.pid

    def stop(self, role: str) -> dict[str, Any]:
        """SIGTERM the host's worker (it finishes the sagas in hand) and read its summary."""
        w = self.on[role]
        w.proc.send_signal(signal.SIGTERM)
        w.proc.wait(timeout=STEP_WAIT)
        return w.summary()


class Feed:
    """Queues the run's orders in chunks whenever few sagas are left open, so that every
    kill, restart and cut meets sagas in flight however fast the machine runs them."""

    def __init__(self, url: str, orders: list[dict[str, Any]]) -> None:
        self.url = url
        self.left = list(orders)
        self.queued: list[str] = []

    def top_up(self, db: Database, *, low: int = 40, chunk: int = 60) -> None:
        if self.left and len(self.queued) - db.ended() < low:
            self.rest(chunk)

    def rest(self, n: int | None = None) -> None:
        n = len(self.left) if n is None else n
        self.queued += enqueue(self.url, self.left[:n])
        del self.left[:n]


class Run:
    """What happened, for the summary line and the checks."""

    def __init__(self, seed: int, net: Network) -> None:
        self.seed = seed
        self.note = net.note
        self.kills: list[str] = []  # the host of each worker SIGKILLed
        self.restarts: list[float] = []
        self.partitions: list[dict[str, Any]] = []
        self.summaries: dict[str, list[dict[str, Any]]] = {}
        self.started = time.monotonic()


def advance(db: Database, until: int, after: str, run: Run) -> None:
    """Wait until `until` sagas have ended, for as long as the journals keep moving (a
    loaded machine is slow, not stuck): fail after STALL s with none moving, or once the
    run is RUN_DEADLINE s old, with what the sagas left wait on."""
    moved = time.monotonic()
    last = None
    while db.ended() < until:
        ((seqs,),) = db.rows("SELECT COALESCE(SUM(last_seq), 0) FROM sagas")
        now = time.monotonic()
        if seqs != last:
            last, moved = seqs, now
        if now - moved > STALL or now - run.started > RUN_DEADLINE:
            why = f"none moved for {STALL:g}s" if now - moved > STALL else "too slow"
            raise AssertionError(
                f"{until} sagas did not end after {after} ({why}): {db.statuses()}; "
                f"waiting (status, last event, step, leased, due): {db.waiting()}"
            )
        time.sleep(0.1)


def kill_in_call(db: Database, fleet: Fleet, run: Run, rng: random.Random) -> None:
    """SIGKILL a worker that holds an action call (any worker if none shows up soon)."""
    role = None
    deadline = time.monotonic() + 5.0
    while role is None and time.monotonic() < deadline:
        holders = sorted(
            {r for _, owner, *_ in db.action_calls() if (r := fleet.host_of(owner_pid(owner)))}
        )
        role = rng.choice(holders) if holders else None
        if role is None:
            time.sleep(0.05)
    aimed = role is not None
    role = role or rng.choice(WORKER_HOSTS)
    fleet.kill(role)
    run.kills.append(role if aimed else f"{role} (no call in flight)")


def taken_over(
    db: Database, saga_id: str, epoch: int
) -> Callable[[], tuple[str | None, int] | None]:
    """A condition: another host has claimed `saga_id` since `epoch`; then its lease.

    A claim raises the epoch and the cut host cannot claim: a higher epoch is another
    host's takeover (which may have released the saga again by now)."""

    def check() -> tuple[str | None, int] | None:
        lease = db.lease(saga_id)
        return lease if lease[1] > epoch else None

    return check


def partition_and_heal(db: Database, net: Network, fleet: Fleet, feed: Feed, run: Run) -> None:
    """Cut a worker's host off the database until another host took its saga over, up to
    CUTS times until one shows the worker's late writes fenced (a cut can also end without
    any: a connection its worker opens during the cut fails at once rather than stalls)."""
    for _ in range(CUTS):
        run.partitions.append(cut_once(db, net, fleet, feed))
        if run.partitions[-1]["fenced_writes"]:
            return


def cut_once(db: Database, net: Network, fleet: Fleet, feed: Feed) -> dict[str, Any]:
    """Cut a worker's host off the database while it holds a pivot call under a lease it
    just renewed; heal it once another host has taken the saga over; then stop that
    worker for its summary and start a new one on the host. What happened.

    The pivot (300 ms, and a step after it) leaves time for the cut to land while the
    worker still holds the saga; if the saga moved on before it did (a loaded machine),
    the cut is healed at once and tried again on another saga.
    """

    def target() -> tuple[str, str, str, int] | None:
        feed.top_up(db)
        for saga_id, owner, epoch, left in db.action_calls(PIVOT):
            role = fleet.host_of(owner_pid(owner))
            # A lease just renewed (its keeper's connection is up), and few sagas due
            # before this one: its takeover waits behind each of them, and a cut longer
            # than the connection's TCP user timeout (10 s) ends the connection instead
            # of letting the late write through.
            if role is not None and left > LEASE / 2 and db.ahead_of(saga_id) <= BACKLOG:
                return role, saga_id, owner, epoch
        return None

    missed = 0
    while True:
        role, saga_id, owner, epoch = wait_for(
            target, STEP_WAIT * 2, f"a {PIVOT} call with at most {BACKLOG} sagas due before it"
        )
        host, pg = net[role], net["pg"]
        net.partition(host, pg)
        cut = time.monotonic()
        try:
            if db.lease(saga_id) != (owner, epoch):  # released before the cut landed
                missed += 1
                assert missed < PARTITION_TRIES, f"{missed} cuts landed after the saga moved on"
                continue
            taken = wait_for(
                taken_over(db, saga_id, epoch),
                STEP_WAIT,
                f"another host to take saga {saga_id} over from partitioned {role}",
            )
            break
        except AssertionError as exc:
            row = db.rows(
                "SELECT status, lease_owner, lease_epoch, lease_until - "
                "extract(epoch FROM clock_timestamp()), run_after - "
                "extract(epoch FROM clock_timestamp()) FROM sagas WHERE id = %s",
                (saga_id,),
            )
            raise AssertionError(
                f"{exc}: (status, owner, epoch, lease left, due in) {row}"
            ) from None
        finally:
            net.heal(host, pg)
    healed = time.monotonic()
    summary = fleet.stop(role)  # its late writes go out first: they are in flight
    fleet.start(role)
    new_role = fleet.host_of(owner_pid(taken[0])) or "another host (which released it already)"
    return {
        "host": role,
        "saga": saga_id,
        "epoch": [epoch, taken[1]],
        "taken_over_by": new_role,
        "cut_seconds": round(healed - cut, 2),
        "missed_cuts": missed,
        "fenced_writes": summary["lost_leases"],
        "worker": summary,
    }


def pg_directory(stack: contextlib.ExitStack) -> Path:
    """A directory the server's user can reach (not under pytest's private tmp)."""
    directory = Path(tempfile.mkdtemp(prefix="sagalab-pg-"))
    directory.chmod(0o711)
    stack.callback(shutil.rmtree, directory, ignore_errors=True)
    return directory


def test_sagas_survive_kills_a_partition_and_database_restarts_across_hosts(
    tmp_path: Path,
) -> None:
    seed = run_seed("SAGALAB_NETNS_SEED", "hosts chaos")
    rng = random.Random(seed)
    with contextlib.ExitStack() as stack:
        net = stack.enter_context(hosts(["pg", "svc", *WORKER_HOSTS]))
        print(net.note)
        run = Run(seed, net)
        cluster = HostedCluster(pg_directory(stack) / "cluster", net["pg"])
        stack.callback(cluster.stop)  # before start: a half-started server is stopped too
        cluster.start()
        svc: Host = net["svc"]
        stack.enter_context(svc.entered())  # this thread, and the services, on host svc
        services: RunningServices = stack.enter_context(
            run_in_thread(svc.address, rng=random.Random(seed))
        )
        for f in faults():
            services.lab.add_fault(f)
        url = new_database(cluster)
        db = Database(url)
        feed = Feed(url, payloads(rng))
        feed.rest(FIRST_WAVE)

        config = write_services_file(tmp_path / "services.yaml", services.services, BREAKERS)
        args = ["--concurrency", str(CONCURRENCY), "--lease", str(LEASE), "--poll", "0.05"]
        args += ["--services", str(config), "--json"]
        workers = Workers(url, services.env, tmp_path / "logs")
        stack.callback(workers.stop_all)
        fleet = Fleet(net, workers, args)
        for role in WORKER_HOSTS:
            fleet.start(role)

        def restart_database() -> None:
            feed.top_up(db)
            fleet.ready()
            cluster.restart_crash()
            run.restarts.append(time.monotonic() - run.started)
            advance(db, db.ended() + 10, "a database restart", run)

        def kill() -> None:
            feed.top_up(db)
            kill_in_call(db, fleet, run, rng)
            advance(db, db.ended() + 5, "a kill", run)

        try:
            advance(db, 15, "the start", run)
            for _ in range(KILLS // 2):
                kill()
            restart_database()
            partition_and_heal(db, net, fleet, feed, run)
            feed.top_up(db)
            advance(db, db.ended() + 5, "the partition healed", run)
            for _ in range(KILLS - KILLS // 2):
                kill()
            restart_database()
            feed.rest()
            advance(db, SAGAS, "the chaos", run)
        finally:
            exited = [r for r, w in fleet.on.items() if not w.alive()]
            for role in WORKER_HOSTS:
                with contextlib.suppress(Exception):
                    run.summaries.setdefault(role, []).append(fleet.stop(role))
        elapsed = time.monotonic() - run.started

        # -- what the run must end with ---------------------------------------------------
        present = {r[0] for r in db.rows("SELECT id FROM sagas")}
        queued = feed.queued
        lost = [s for s in queued if s not in present]
        counts = db.statuses()
        twice = applied_twice(services.lab.ledger())
        code, findings = verify_findings(url, services)
        tracebacks = workers.all_stderr().count("Traceback")
        fenced = sum(p["fenced_writes"] for p in run.partitions)
        summaries = {r: list(ss) for r, ss in run.summaries.items()}
        for p in run.partitions:  # the partitioned workers', read when they were stopped
            summaries.setdefault(p["host"], []).append(p["worker"])
        report = {
            "seed": seed,
            "hosts": run.note,
            "sagas": len(present),
            "queued": len(queued),
            "statuses": counts,
            "lost": len(lost),
            "applied_twice": len(twice),
            "verify_exit": code,
            "verify_findings": Counter(f["kind"] for f in findings),
            "worker_kills": run.kills,
            "workers_exited_on_their_own": exited,
            "pg_restarts_at": [round(t, 1) for t in run.restarts],
            "partitions": [{k: v for k, v in p.items() if k != "worker"} for p in run.partitions],
            "fenced_writes": fenced,
            "lost_leases_by_host": {
                r: sum(s.get("lost_leases", 0) for s in ss) for r, ss in summaries.items()
            },
            "worker_db_errors": sum(s.get("errors", 0) for ss in summaries.values() for s in ss),
            "ledger_entries": len(services.lab.ledger()),
            "worker_tracebacks": tracebacks,
            "seconds": round(elapsed, 1),
        }
        (tmp_path / "netns-chaos.json").write_text(json.dumps(report, indent=2))
        print(f"hosts chaos: {json.dumps(report)}")

        assert len(queued) == SAGAS and not lost, f"lost sagas: {lost[:10]} ({report})"
        assert sum(counts.get(s, 0) for s in ENDED) == SAGAS, report
        assert not twice, f"applied twice: {twice[:10]} ({report})"
        assert code == 0 and not findings, f"verify: {findings[:10]} ({report})"
        assert len(run.kills) == KILLS and len(run.restarts) == 2, report
        assert fenced >= 1, f"the partitioned worker wrote nothing late ({report})"
        assert not exited, f"workers that exited on their own: {exited} ({report})"
        assert tracebacks == 0, workers.all_stderr()[-3000:]

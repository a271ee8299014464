"""The crash test (issue 3, item 6): many checkout sagas, faulty services, workers SIGKILLed.

Real `sagalab worker` processes share one SQLite file and call the fake services over HTTP on
127.0.0.1. The services fail on purpose (5xx before applying, lost responses after applying,
latency, a shipping outage, declined cards and refused reservations), and the test SIGKILLs
workers at random moments, aiming at calls in flight (actions and compensations) and at times
when sagas sit in a retry backoff, restarting a worker after each kill. Then it checks what a
user cares about: every saga ended (completed or rolled back), none was lost, every service
applied each operation at most once, every action of a rolled-back order was undone, every
journal reads T1..Tn or T1..Tj Cj..C1, retry waits survived the crashes, and no worker ever
met "database is locked".

The randomness (orders, kill timing and targets, service faults) is seeded; the seed is
printed and named in every failure. Rerun one with SAGALAB_CRASH_SEED=<seed>.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from workerlab import WorkerProcess, Workers, enqueue, order, query, statuses, wait_for

from fakeservices import FaultSpec, RunningServices, applied_twice, run_in_thread
from orchestrator.flowfile import load_flow
from orchestrator.journal import JournalEntry
from orchestrator.saga import EventType, Phase
from orchestrator.sqlite_store import SQLiteStore

SAGAS = 200
FIRST_WAVE = 80  # queued at the start; the rest arrive in waves between kills
WORKERS = 3
KILLS = 12
LEASE = 1.5
BREAKERS = {"fail_max": 6, "reset_timeout": 1.5, "success_threshold": 1}
KILL_PHASE_DEADLINE = 45.0  # seconds for all the kills
DRAIN_DEADLINE = 60.0  # seconds after the last kill for every saga to end

FLOW = load_flow("checkout")
STEPS = [s.name for s in FLOW.steps]
COMPENSABLE = {s.name for s in FLOW.steps if s.has_compensation}
SERVICE_OF = {s.name: s.service for s in FLOW.steps}


def faults() -> list[FaultSpec]:
    """What goes wrong at the services for the whole run (the outage comes later)."""
    return [
        # Latency everywhere, so that a kill lands in a call; longer on compensations.
        FaultSpec(service="inventory", endpoint="/reservations", latency_ms=100),
        FaultSpec(service="inventory", endpoint="/reservations/release", latency_ms=400),
        FaultSpec(service="payments", endpoint="/charges", latency_ms=150),
        FaultSpec(service="payments", endpoint="/refunds", latency_ms=400),
        FaultSpec(service="shipping", latency_ms=150),
        FaultSpec(service="notifications", latency_ms=50),
        # 5xx before applying: retried, sometimes for good (then the saga rolls back).
        FaultSpec(service="payments", endpoint="/charges", error_rate=0.15, status=503),
        FaultSpec(service="shipping", endpoint="/shipments", error_rate=0.08, status=500),
        FaultSpec(service="notifications", error_rate=0.1, status=503),
        # Lost responses: applied, but the caller sees a 502; the retry gets the replay.
        FaultSpec(
            service="payments", endpoint="/charges", error_rate=0.05, after_apply=True, status=502
        ),
        # Compensations fail too, and are retried until they succeed.
        FaultSpec(service="payments", endpoint="/refunds", error_rate=0.2, status=503),
        FaultSpec(service="inventory", endpoint="/reservations/release", error_rate=0.1),
    ]


def payloads(rng: random.Random) -> list[dict[str, Any]]:
    """Orders: most are fine, some cards are declined, a few reservations are refused."""
    out = []
    for i in range(SAGAS):
        draw = rng.random()
        if draw < 0.15:
            out.append(order(i, amount=20_000))  # 402 card_declined: undo the reservation
        elif draw < 0.20:
            out.append(order(i, quantity=5_000))  # 409 out_of_stock: nothing to undo
        else:
            out.append(order(i, amount=rng.randint(1, 9_000)))
    return out


@dataclass
class Kill:
    """One SIGKILL: what the victim held, read from the database after it died."""

    n: int
    aim: str
    pid: int
    at: float
    held: list[tuple[str, str, str | None, str | None, int]] = field(default_factory=list)
    in_backoff: list[tuple[str, str, str, int, float]] = field(default_factory=list)

    @property
    def phase(self) -> str:
        """Where the victim was: in an action call, a compensation call, between calls."""
        kinds = {(kind, phase) for _, kind, _, phase, _ in self.held}
        if ("attempt_started", "compensation") in kinds:
            return "compensation call"
        if ("attempt_started", "action") in kinds:
            return "action call"
        return "between calls" if self.held else "idle or starting"


def open_attempts(db: Path, phase: str) -> list[tuple[str, str]]:
    """(saga, owner) for sagas under a live lease whose last durable event opens a call."""
    rows = query(
        db,
        "SELECT s.id, s.lease_owner FROM sagas s JOIN events e "
        "ON e.saga_id = s.id AND e.seq = s.last_seq WHERE s.lease_owner IS NOT NULL "
        "AND s.lease_until > ? AND e.type = 'attempt_started' AND e.phase = ?",
        (time.time(), phase),
    )
    return [(r[0], r[1]) for r in rows]


def in_backoff(db: Path) -> list[tuple[str, str, str, int, float]]:
    """Sagas whose last event is a retry scheduled for later: (saga, step, phase, n, when)."""
    rows = query(
        db,
        "SELECT s.id, e.step, e.phase, e.attempt, e.not_before FROM sagas s JOIN events e "
        "ON e.saga_id = s.id AND e.seq = s.last_seq "
        "WHERE e.type = 'retry_scheduled' AND e.not_before > ?",
        (time.time(),),
    )
    return [(r[0], r[1], r[2], r[3], r[4]) for r in rows]


def held_by(db: Path, pid: int) -> list[tuple[str, str, str | None, str | None, int]]:
    """Sagas still leased to (dead) process `pid`, with their last durable event."""
    prefix = f"{socket.gethostname()}:{pid}:%"
    return [
        (r[0], r[1], r[2], r[3], r[4])
        for r in query(
            db,
            "SELECT s.id, e.type, e.step, e.phase, e.attempt FROM sagas s JOIN events e "
            "ON e.saga_id = s.id AND e.seq = s.last_seq WHERE s.lease_owner LIKE ?",
            (prefix,),
        )
    ]


class Chaos:
    """Keeps WORKERS workers running and kills them, aiming at given phases."""

    def __init__(self, db: Path, workers: Workers, rng: random.Random, args: list[str]) -> None:
        self.db = db
        self.workers = workers
        self.rng = rng
        self.args = args
        self.running: list[WorkerProcess] = [workers.start(*args) for _ in range(WORKERS)]
        self.kills: list[Kill] = []

    def by_pid(self, pid: int | None) -> WorkerProcess | None:
        return next((w for w in self.running if w.pid == pid), None)

    def victim_for(self, aim: str, patience: float) -> WorkerProcess:
        """A worker in the phase `aim`, if one shows up within `patience` s; else any."""
        deadline = time.monotonic() + patience
        while aim != "any" and time.monotonic() < deadline:
            if aim == "backoff":
                found = in_backoff(self.db) and self.rng.choice(self.running)
            else:
                candidates = [
                    w
                    for _, owner in open_attempts(self.db, aim)
                    if (w := self.by_pid(int(owner.split(":")[1]))) is not None
                ]
                found = candidates and self.rng.choice(candidates)
            if found:
                return found
            time.sleep(0.02)
        return self.rng.choice(self.running)

    def kill_one(self, aim: str) -> Kill:
        victim = self.victim_for(aim, patience=4.0)
        backoff = in_backoff(self.db)
        victim.kill()
        kill = Kill(len(self.kills) + 1, aim, victim.pid, time.time(), in_backoff=backoff)
        kill.held = held_by(self.db, victim.pid)
        self.kills.append(kill)
        self.running.remove(victim)
        self.running.append(self.workers.start(*self.args))  # the restart
        return kill


def events_of(store: SQLiteStore, saga_id: str) -> list[JournalEntry]:
    return store.journal(saga_id)


def journal_problems(saga_id: str, status: str, entries: list[JournalEntry]) -> list[str]:
    """Why this journal does not read T1..Tn or T1..Tj Cj..C1, if it does not."""
    events = [e.event for e in entries]
    acts = [
        e.step for e in events if e.type is EventType.ATTEMPT_SUCCEEDED and e.phase is Phase.ACTION
    ]
    comps = [
        e.step
        for e in events
        if e.type is EventType.ATTEMPT_SUCCEEDED and e.phase is Phase.COMPENSATION
    ]
    problems = []
    if acts != STEPS[: len(acts)]:
        problems.append(f"actions out of flow order: {acts}")
    ends = [
        e.type for e in events if e.type in (EventType.SAGA_COMPLETED, EventType.SAGA_ROLLED_BACK)
    ]
    if status == "completed":
        if acts != STEPS or comps or ends != [EventType.SAGA_COMPLETED]:
            problems.append(f"completed but reads {acts} / {comps} / {ends}")
    elif status == "rolled_back":
        j = len(acts)
        if j < len(STEPS):
            failed = [
                e
                for e in events
                if e.type is EventType.ATTEMPT_FAILED
                and e.step == STEPS[j]
                and e.phase is Phase.ACTION
            ]
            if any(e.failure is not None and e.failure.maybe_applied for e in failed):
                j += 1  # Tj's outcome is unknown (lost response, crash): it is undone too
        expected = [s for s in reversed(STEPS[:j]) if s in COMPENSABLE]
        if comps != expected:
            problems.append(f"compensations {comps}, expected {expected} after actions {acts}")
        first_comp = next(
            (i for i, e in enumerate(events) if e.phase is Phase.COMPENSATION), len(events)
        )
        if any(e.phase is Phase.ACTION for e in events[first_comp:]):
            problems.append("an action event after compensation started")
        if ends != [EventType.SAGA_ROLLED_BACK]:
            problems.append(f"rolled back but ends with {ends}")
    else:
        problems.append(f"status {status}")
    # Retry waits and attempt counts survive crashes: the attempt after a RETRY_SCHEDULED
    # is the one it named and starts no earlier than its not_before.
    for i, e in enumerate(events):
        if e.type is not EventType.RETRY_SCHEDULED:
            continue
        nxt = next(
            (
                x
                for x in events[i + 1 :]
                if x.type is EventType.ATTEMPT_STARTED and (x.step, x.phase) == (e.step, e.phase)
            ),
            None,
        )
        assert e.not_before is not None
        if nxt is None or nxt.attempt != e.attempt or nxt.at < e.not_before:
            problems.append(f"retry {e.step} {e.phase} #{e.attempt} not honoured: {nxt}")
    return [f"saga {saga_id}: {p}" for p in problems]


def ledger_problems(services: RunningServices, orders: dict[str, tuple[str, str]]) -> list[str]:
    """Per order: what the services applied must match how its saga ended."""
    by_order: dict[str, list[Any]] = {}
    for e in services.lab.ledger():
        by_order.setdefault(e.order_id, []).append(e)
    problems = []
    for order_id, (saga_id, status) in orders.items():
        entries = by_order.get(order_id, [])
        applied = {(e.service, e.operation): e for e in entries if not e.noop}
        actions = {svc for svc, op in applied if op == "action"}
        undone = {svc for svc, op in applied if op == "compensation"}
        where = f"order {order_id} (saga {saga_id}, {status})"
        if status == "completed":
            if actions != {"inventory", "payments", "shipping", "notifications"} or undone:
                problems.append(f"{where}: applied {sorted(applied)}")
        elif status == "rolled_back":
            for svc in actions:
                if svc in ("shipping", "notifications"):
                    problems.append(f"{where}: {svc} applied (pivot or later) yet rolled back")
                elif svc not in undone:
                    problems.append(f"{where}: {svc} action never undone")
                elif applied[(svc, "compensation")].seq < applied[(svc, "action")].seq:
                    problems.append(f"{where}: {svc} compensated before its action")
    return problems


def worker_args(tmp_path: Path, services: RunningServices) -> list[str]:
    """Worker options, with a services file whose breakers reset quickly."""
    config = tmp_path / "services.yaml"
    config.write_text(
        json.dumps(
            {
                "services": services.services,
                "breakers": {name: BREAKERS for name in ("payments", "shipping")},
            }
        )
    )  # JSON is YAML
    return [
        "--concurrency",
        "3",
        "--lease",
        str(LEASE),
        "--poll",
        "0.05",
        "--services",
        str(config),
    ]


@pytest.fixture
def seed() -> int:
    value = int(os.environ.get("SAGALAB_CRASH_SEED") or random.SystemRandom().randrange(10**9))
    print(f"\ncrash test seed: {value} (rerun with SAGALAB_CRASH_SEED={value})")
    return value


@pytest.fixture
def services(seed: int) -> Iterator[RunningServices]:
    with run_in_thread(rng=random.Random(seed)) as running:
        yield running


@pytest.mark.slow
def test_crash(tmp_path: Path, seed: int, services: RunningServices) -> None:
    started = time.monotonic()
    rng = random.Random(seed)
    db = tmp_path / "sagas.db"
    SQLiteStore(db).close()
    for spec in faults():
        services.lab.add_fault(spec)
    inputs = payloads(rng)
    ids = enqueue(db, inputs[:FIRST_WAVE])
    wave = -(-(SAGAS - FIRST_WAVE) // KILLS)
    workers = Workers(db, services.env, tmp_path / "logs")
    try:
        chaos = Chaos(db, workers, rng, worker_args(tmp_path, services))
        aims = ["action", "compensation", "backoff", "any"] * (KILLS // 4 + 1)
        for n, aim in enumerate(aims[:KILLS]):
            assert time.monotonic() - started < KILL_PHASE_DEADLINE, f"seed={seed}: too slow"
            if n == KILLS // 3:  # a shipping outage: sagas that reach it roll back
                services.lab.add_fault(FaultSpec(service="shipping", outage_seconds=2.0))
            time.sleep(rng.uniform(0.2, 0.8))
            chaos.kill_one(aim)
            ids += enqueue(db, inputs[len(ids) : len(ids) + wave])
        assert len(ids) == SAGAS
        for k in chaos.kills:
            held = ", ".join(f"{h[2]} {h[3]} #{h[4]} ({h[1]})" for h in k.held) or "nothing"
            print(f"kill {k.n:>2} aimed at {k.aim:<12} -> {k.phase:<17} held: {held}")
        try:
            wait_for(
                lambda: statuses(db).keys() <= {"completed", "rolled_back"},
                DRAIN_DEADLINE,
                f"every saga to end (seed={seed})",
                every=0.2,
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{stuck_report(db, chaos, workers)}") from None
        for w in chaos.running:  # the survivors stop cleanly
            w.proc.send_signal(signal.SIGTERM)
        for w in chaos.running:
            assert w.proc.wait(timeout=30) == 0, f"seed={seed}: {w.stderr()}"
    finally:
        workers.stop_all()
    elapsed = time.monotonic() - started

    # -- none lost, all ended --------------------------------------------------------------
    counts = statuses(db)
    rows = query(db, "SELECT id, status, input, lease_owner, run_after FROM sagas")
    assert sorted(r[0] for r in rows) == sorted(ids), f"seed={seed}: sagas lost or added"
    assert sum(counts.values()) == SAGAS
    assert all(r[3] is None and r[4] is None for r in rows), f"seed={seed}: left leased/queued"

    # -- journals ----------------------------------------------------------------------------
    store = SQLiteStore(db)
    try:
        journals = {r[0]: events_of(store, r[0]) for r in rows}
    finally:
        store.close()
    problems = [p for r in rows for p in journal_problems(r[0], r[1], journals[r[0]])]
    assert problems == [], f"seed={seed}: journals:\n" + "\n".join(problems[:20])

    # -- services: at most once, and undone where rolled back ------------------------------
    orders = {json.loads(r[2])["order_id"]: (r[0], r[1]) for r in rows}
    assert applied_twice(services.lab.ledger()) == [], f"seed={seed}"
    problems = ledger_problems(services, orders)
    assert problems == [], f"seed={seed}: ledger:\n" + "\n".join(problems[:20])

    # -- the kills did land where aimed, and every interrupted call was resumed --------------
    kills = chaos.kills
    assert len(kills) >= 10
    phases = Counter(k.phase for k in kills)
    assert phases["action call"] >= 1, f"seed={seed}: {phases}"
    assert phases["compensation call"] >= 1, f"seed={seed}: {phases}"
    assert any(k.in_backoff for k in kills), f"seed={seed}: no kill during a backoff"
    for k in kills:
        for saga, kind, step, phase, attempt in k.held:
            if kind != "attempt_started":
                continue
            closed = [
                e.event
                for e in journals[saga]
                if e.event.type is EventType.ATTEMPT_FAILED
                and (e.event.step, e.event.phase, e.event.attempt) == (step, phase, attempt)
            ]
            succeeded_after = [
                e.event
                for e in journals[saga]
                if e.event.type is EventType.ATTEMPT_SUCCEEDED
                and (e.event.step, e.event.phase, e.event.attempt) == (step, phase, attempt)
            ]
            assert not succeeded_after, f"seed={seed}: a dead worker's attempt succeeded"
            assert closed and closed[0].failure is not None, f"seed={seed}: {saga} {step}"
            assert "interrupted" in closed[0].failure.error

    # -- no "database is locked" anywhere --------------------------------------------------
    stderr = workers.all_stderr()
    assert "database is locked" not in stderr, f"seed={seed}"
    assert "Traceback" not in stderr, f"seed={seed}: {stderr[-3000:]}"
    assert "store error" not in stderr, f"seed={seed}"
    failures = [
        e.event.failure.error
        for entries in journals.values()
        for e in entries
        if e.event.failure is not None
    ]
    assert not any("locked" in f for f in failures), f"seed={seed}"

    reasons = Counter(
        _reason_kind(r[0])
        for r in query(db, "SELECT reason FROM sagas WHERE status = ?", ("rolled_back",))
    )
    interrupted = sum("interrupted" in f for f in failures)
    open_calls = Counter(h[3] for k in kills for h in k.held if h[1] == "attempt_started")
    backoff_sagas = {b[0] for k in kills for b in k.in_backoff}
    print(
        f"crash test: {SAGAS} sagas {dict(counts)} in {elapsed:.1f}s; {len(kills)} SIGKILLs "
        f"({dict(phases)}); aims {dict(Counter(k.aim for k in kills))}; "
        f"calls in flight at the kills {dict(open_calls)}; "
        f"{interrupted} interrupted attempts resumed; {len(backoff_sagas)} sagas were in "
        f"backoff at a kill; {len(workers.started)} worker processes started; "
        f"ledger {len(services.lab.ledger())} entries, none applied twice; "
        f"rollbacks by cause {dict(reasons)}"
    )


def stuck_report(db: Path, chaos: Chaos, workers: Workers) -> str:
    """What the sagas that did not end are waiting on, for a failure message."""
    now = time.time()
    alive = {w.pid for w in chaos.running if w.alive()}
    waiting = Counter(
        (
            r[0],
            r[1],
            r[2],
            r[3],
            "unleased"
            if r[4] is None
            else ("live owner" if int(r[4].split(":")[1]) in alive else "dead owner"),
            "not queued" if r[5] is None else ("due" if r[5] <= now else "queued for later"),
        )
        for r in query(
            db,
            "SELECT s.status, e.type, e.step, e.phase, s.lease_owner, s.run_after FROM sagas s "
            "JOIN events e ON e.saga_id = s.id AND e.seq = s.last_seq "
            "WHERE s.status NOT IN ('completed', 'rolled_back')",
        )
    )
    lines = [f"now {statuses(db)}; {len(alive)}/{len(chaos.running)} workers alive"]
    lines += [f"  {n:>4} x {key}" for key, n in waiting.most_common(12)]
    lines += [f"  breaker {row}" for row in query(db, "SELECT * FROM breakers")]
    lines.append("worker stderr (tail):\n" + workers.all_stderr()[-3000:])
    return "\n".join(lines)


def _reason_kind(reason: str | None) -> str:
    for needle, kind in (
        ("card_declined", "declined"),
        ("out_of_stock", "out of stock"),
        ("circuit breaker", "breaker open"),
        ("retries exhausted", "retries exhausted"),
    ):
        if reason and needle in reason:
            return kind
    return reason or "?"

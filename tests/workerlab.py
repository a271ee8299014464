"""Helpers for tests that run real `sagalab` processes (workers, stacks) against the fake services.

Not a test module (pytest does not collect it); the worker, crash, chaos, stack and load-test
tests import it, and tests/conftest.py builds its `workers` fixture on `Workers`. Every wait
here is a bounded poll.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sagalab.fakeservices import LedgerEntry, RunningServices, run_in_thread
from sagalab.orchestrator.flow import FlowDefinition, flow_from_dict, flow_to_dict
from sagalab.orchestrator.flowfile import load_flow
from sagalab.orchestrator.journal import JournalEntry
from sagalab.orchestrator.runner import new_saga_id, new_trace_id, start_saga
from sagalab.orchestrator.saga import EventType, Phase
from sagalab.orchestrator.sqlite_store import SQLiteStore
from sagalab.orchestrator.stores import open_store

REPO = Path(__file__).resolve().parent.parent


def run_seed(env_var: str, what: str) -> int:
    """A seed for a randomised run: `env_var` if set (to rerun one), else a fresh one, printed."""
    value = int(os.environ.get(env_var) or random.SystemRandom().randrange(10**9))
    print(f"\n{what} seed: {value} (rerun with {env_var}={value})")
    return value


@contextmanager
def seeded_services(seed: int) -> Iterator[RunningServices]:
    """The fake services, their fault draws seeded by `seed`."""
    with run_in_thread(rng=random.Random(seed)) as running:
        yield running


def wait_for(condition: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(every)


def sagalab(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`sagalab ARGS` as a subprocess (this environment plus `env`), its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "sagalab.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
    )


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains `text` (e.g. a stack directory)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if text.encode() in cmdline:
                found.append(int(entry))
    return found


def held_step_checkout(step: str, timeout: float) -> FlowDefinition:
    """The checkout flow, `step`'s timeout raised to `timeout`: above how long a test holds
    that step's call (`lab.hold`), so that the call ends when the test releases it."""
    raw = flow_to_dict(load_flow("checkout"))
    for entry in raw["steps"]:
        if entry["name"] == step:
            entry["timeout"] = timeout
    return flow_from_dict(raw, source=f"checkout (slow {step})")


def order(n: int, *, amount: int = 100, quantity: int = 1) -> dict[str, Any]:
    """A checkout input with a unique order id."""
    return {
        "order_id": f"ord-{n:04d}",
        "customer_id": f"cust-{n}",
        "sku": "SKU-1",
        "quantity": quantity,
        "amount": amount,
    }


def enqueue(db: Path | str, payloads: list[dict[str, Any]]) -> list[str]:
    """Queue one checkout saga per payload (what `sagalab orchestrate run` does); `db` is a
    SQLite path or any URL `open_store` takes."""
    flow = load_flow("checkout")
    store = open_store(db)
    try:
        return [start_saga(store, flow, p)[0].id for p in payloads]
    finally:
        store.close()


@dataclass
class WorkerProcess:
    """One `sagalab worker ...` subprocess with its output captured in files."""

    proc: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path
    started_at: float = field(default_factory=time.time)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, and reap it so it is gone (not a zombie) when this returns."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def ready(self, timeout: float = 60) -> float:
        """Wait for the line a worker prints as it starts its loop ("worker OWNER: N
        thread(s), lease ...") and return when it was seen: what a bound on how soon it acts
        starts from, rather than from a Popen a loaded machine takes seconds to start."""
        banner = " thread(s), lease "
        wait_for(lambda: banner in self.stderr() or not self.alive(), timeout, "the worker")
        seen = time.time()
        assert banner in self.stderr(), self.stderr()  # it exited before starting its loop
        return seen

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def summary(self) -> dict[str, Any]:
        """The `--json` summary it printed on exit."""
        return json.loads(self.stdout())


class Workers:
    """Starts worker processes and makes sure none outlives the test."""

    def __init__(self, db: Path | str, env: dict[str, str], logs: Path) -> None:
        self.db = db
        self.env = {**os.environ, **env}
        self.logs = logs
        self.logs.mkdir(parents=True, exist_ok=True)
        self.started: list[WorkerProcess] = []

    def start(self, *args: str, via: Sequence[str] = ()) -> WorkerProcess:
        """`sagalab worker --db DB ARGS`; `via` is a command that runs it elsewhere (another
        host: `ip netns exec NS`), which must exec it so that its pid is the worker's."""
        n = len(self.started)
        out = self.logs / f"worker-{n}.out"
        err = self.logs / f"worker-{n}.err"
        command = [sys.executable, "-m", "sagalab.cli.main", "worker", "--db", str(self.db)]
        with out.open("wb") as o, err.open("wb") as e:
            proc = subprocess.Popen(
                [*via, *command, *args],
                cwd=REPO,
                env=self.env,
                stdout=o,
                stderr=e,
            )
        worker = WorkerProcess(proc, out, err)
        self.started.append(worker)
        return worker

    def all_stderr(self) -> str:
        return "\n".join(w.stderr() for w in self.started)

    def stop_all(self) -> None:
        """SIGKILL whatever is still running (each process we started, by its own handle)."""
        for w in self.started:
            if w.alive():
                w.kill()
            for child in children_of(w.pid):  # a supervisor's replicas, if it died first
                os.kill(child, signal.SIGKILL)


def children_of(pid: int) -> set[int]:
    """Live (non-zombie) child process ids of `pid`, from /proc."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if fields[0] != "Z" and int(fields[1]) == pid:
            found.add(int(entry))
    return found


def statuses(db: Path | str) -> dict[str, int]:
    store = open_store(db)
    try:
        return store.count_by_status()
    finally:
        store.close()


def journal(db: Path | str, saga_id: str) -> list[JournalEntry]:
    store = open_store(db)
    try:
        return store.journal(saga_id)
    finally:
        store.close()


def query(db: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    store = SQLiteStore(db)
    try:
        return list(store.conn.execute(sql, params))
    finally:
        store.close()


def owner_pid(owner: str | None) -> int | None:
    """The pid in a `host:pid:nonce` lease owner."""
    if not owner:
        return None
    return int(owner.split(":")[1])


def drained(db: Path | str, total: int) -> Callable[[], bool]:
    """A condition: all `total` sagas are completed or rolled back."""

    def check() -> bool:
        counts = statuses(db)
        return counts.get("completed", 0) + counts.get("rolled_back", 0) == total

    return check


def iter_lines(text: str) -> Iterator[str]:
    yield from (line for line in text.splitlines() if line.strip())


# -- chaos: kills aimed at what a worker holds, and what the run must end with ------------------

FLOW = load_flow("checkout")
STEPS = [s.name for s in FLOW.steps]
COMPENSABLE = {s.name for s in FLOW.steps if s.has_compensation}
#: Operator requests that end a scheduled retry without its attempt.
OPERATOR_TURNS = (EventType.ROLLBACK_REQUESTED, EventType.STEP_SKIPPED)


def write_services_file(path: Path, services: dict[str, str], breakers: dict[str, Any]) -> Path:
    """A services file for `worker --services`: URLs and quick-reset breakers (JSON is YAML)."""
    path.write_text(
        json.dumps(
            {"services": services, "breakers": {n: breakers for n in ("payments", "shipping")}}
        )
    )
    return path


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
    """Keeps `count` workers running and kills them, aiming at given phases."""

    def __init__(
        self, db: Path, workers: Workers, rng: random.Random, args: list[str], count: int
    ) -> None:
        self.db = db
        self.workers = workers
        self.rng = rng
        self.args = args
        self.running: list[WorkerProcess] = [workers.start(*args) for _ in range(count)]
        self.kills: list[Kill] = []

    def by_pid(self, pid: int | None) -> WorkerProcess | None:
        return next((w for w in self.running if w.pid == pid), None)

    def victim_for(self, aim: str, patience: float) -> WorkerProcess:
        """A worker in the phase `aim`, if one shows up within `patience` s; else any."""
        deadline = time.monotonic() + patience
        while aim != "any" and time.monotonic() < deadline:
            if aim == "backoff":
                candidates = self.running if in_backoff(self.db) else []
            else:
                candidates = [
                    w
                    for _, owner in open_attempts(self.db, aim)
                    if (w := self.by_pid(int(owner.split(":")[1]))) is not None
                ]
            if candidates:
                return self.rng.choice(candidates)
            time.sleep(0.02)
        return self.rng.choice(self.running)

    def kill_one(self, aim: str, *, patience: float = 4.0) -> Kill:
        victim = self.victim_for(aim, patience=patience)
        backoff = in_backoff(self.db)
        victim.kill()
        kill = Kill(len(self.kills) + 1, aim, victim.pid, time.time(), in_backoff=backoff)
        kill.held = held_by(self.db, victim.pid)
        self.kills.append(kill)
        self.running.remove(victim)
        self.running.append(self.workers.start(*self.args))  # the restart
        return kill

    def replace_exited(self) -> list[WorkerProcess]:
        """Start a worker for each one that exited on its own (as a supervisor would); those."""
        exited = [w for w in self.running if not w.alive()]
        for w in exited:
            self.running.remove(w)
            self.running.append(self.workers.start(*self.args))
        return exited


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
                if (x.type is EventType.ATTEMPT_STARTED and (x.step, x.phase) == (e.step, e.phase))
                or x.type in OPERATOR_TURNS
            ),
            None,
        )
        assert e.not_before is not None
        if nxt is not None and nxt.type in OPERATOR_TURNS:
            continue  # an operator rolled the saga back or skipped the step while it waited
        if nxt is None or nxt.attempt != e.attempt or nxt.at < e.not_before:
            problems.append(f"retry {e.step} {e.phase} #{e.attempt} not honoured: {nxt}")
    return [f"saga {saga_id}: {p}" for p in problems]


def ledger_problems(
    ledger: list[LedgerEntry], orders: dict[str, tuple[str, str]], *, forced: Collection[str] = ()
) -> list[str]:
    """Per order: what the services applied must match how its saga ended.

    `forced`: orders an operator rolled back with --force, where a pivot may stand.
    """
    by_order: dict[str, list[Any]] = {}
    for e in ledger:
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
                if svc in ("shipping", "notifications") and order_id not in forced:
                    problems.append(f"{where}: {svc} applied (pivot or later) yet rolled back")
                elif svc in ("shipping", "notifications"):
                    continue  # forced past the pivot: the shipment stands, by the operator's call
                elif svc not in undone:
                    problems.append(f"{where}: {svc} action never undone")
                elif applied[(svc, "compensation")].seq < applied[(svc, "action")].seq:
                    problems.append(f"{where}: {svc} compensated before its action")
    return problems


def stuck_report(db: Path, alive: set[int], running: int, stderr: str) -> str:
    """What the sagas that did not end are waiting on, for a failure message.

    `alive`: pids of live workers; `running`: how many should be; `stderr`: their output.
    """
    now = time.time()
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
    lines = [f"now {statuses(db)}; {len(alive)}/{running} workers alive"]
    lines += [f"  {n:>4} x {key}" for key, n in waiting.most_common(12)]
    lines += [f"  breaker {row}" for row in query(db, "SELECT * FROM breakers")]
    lines.append("worker stderr (tail):\n" + stderr[-3000:])
    return "\n".join(lines)


def reason_kind(reason: str | None) -> str:
    """A short name for why a saga rolled back, for a summary line."""
    for needle, kind in (
        ("card_declined", "declined"),
        ("out_of_stock", "out of stock"),
        ("circuit breaker", "breaker open"),
        ("retries exhausted", "retries exhausted"),
    ):
        if reason and needle in reason:
            return kind
    return reason or "?"


def verify_findings(db: Path | str, services: RunningServices) -> tuple[int, list[dict[str, Any]]]:
    """`sagalab verify --db DB --services LAB --json`, in process: (exit code, findings);
    `db` is a SQLite path or a URL."""
    from typer.testing import CliRunner  # here: most users of this module never verify

    from sagalab.cli.main import app

    result = CliRunner().invoke(
        app, ["verify", "--db", str(db), "--services", services.base_url, "--json"]
    )
    assert result.stdout.strip(), f"verify exited {result.exit_code}: {result.stderr}"
    findings: list[dict[str, Any]] = json.loads(result.stdout)["findings"]
    return result.exit_code, findings


def plant(db: Path, payload: dict[str, Any], *, delay: float = 0.0) -> str:
    """Store a checkout saga straight in, past every check (as an old database might hold
    it), due `delay` seconds from now (as one waiting for its retry time)."""
    store = SQLiteStore(db)
    try:
        now = time.time()
        record, _ = store.create_saga(
            saga_id=new_saga_id(),
            flow=load_flow("checkout"),
            payload=payload,
            trace_id=new_trace_id(),
            idempotency_key=None,
            now=now,
            run_after=now + delay,
        )
        return record.id
    finally:
        store.close()

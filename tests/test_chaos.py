"""The chaos run (issue 8, "Done when"): the whole path on 127.0.0.1, broken every way at once.

A real `sagalab stack up` (edge with firewall and balancer, two gateways, the API, one worker)
runs with its saga database on a small tmpfs the test mounts; the test adds three worker
processes of its own (killed and restarted like test_crash.py's) and runs the fake services in
this process, so their ledgers and faults are at hand. Then, seeded and bounded:

- checkout sagas arrive through the edge from HTTP clients, most WITHOUT an Idempotency-Key
  (a keyless client does not re-send after an unknown outcome), some with one (re-sent until a
  definite answer);
- the services fail (5xx, lost responses after applying, latency, a shipping outage) and
  decline cards;
- workers are SIGKILLed at calls in flight and during backoffs, the stack's worker too;
- poison input (non-finite numbers, strings JSON cannot carry, deep nesting) is sent to the
  door (must be 422) and planted straight into the database as an old file might hold it
  (must end failed or rolled back with a reason, killing no worker thread);
- a gateway is SIGKILLed while it holds a forwarded POST (the API is held on the database
  write lock so that the kill lands mid-request), once without and once with a client key;
- rollbacks are fired through the API at sagas whose pivot (create_shipment) call is in
  flight (refused, 409, unless forced) and at sagas before the pivot (accepted);
- the database's disk fills, and is freed.

Then it checks what a user cares about: every saga ended (completed, rolled back, or failed
and parked for an operator with its reason); exactly one saga per accepted client POST, none
doubled; nothing applied twice at the services; no rolled-back order with an action standing;
no rollback accepted while its pivot was in flight; every worker process alive with all its
threads (or restarted by the stack); `stack status` exits 0. Every check runs and all failures
are reported together.

The randomness is seeded; the seed is printed and named in every failure. Rerun one with
SAGALAB_CHAOS_SEED=<seed>; SAGALAB_CHAOS_SAGAS=<n> makes a longer run (default 300).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from workerlab import (
    FLOW,
    Chaos,
    WorkerProcess,
    Workers,
    journal_problems,
    ledger_problems,
    order,
    query,
    reason_kind,
    run_seed,
    sagalab,
    seeded_services,
    statuses,
    stuck_report,
    verify_findings,
    wait_for,
    write_services_file,
)

from sagalab.fakeservices import FaultSpec, RunningServices, applied_twice
from sagalab.orchestrator.journal import JournalEntry
from sagalab.orchestrator.runner import start_saga
from sagalab.orchestrator.saga import EventType, Phase
from sagalab.orchestrator.sqlite_store import SQLiteStore
from sagalab.stack.processes import StackState, alive, load_state

pytestmark = pytest.mark.slow

SAGAS = int(os.environ.get("SAGALAB_CHAOS_SAGAS") or 300)
KEYED_SHARE = 0.2  # share of client POSTs that carry an Idempotency-Key
CLIENTS = 6  # HTTP client threads
CLIENT_PATIENCE = 20.0  # seconds a client keeps sending after refusals (429, 503)
WORKERS = 3  # the test's own worker processes (the stack runs one more)
KILLS = 12
LEASE = 1.5
BREAKERS = {"fail_max": 6, "reset_timeout": 1.5, "success_threshold": 1}
PIVOT = "create_shipment"
DISK_SIZE = "48m"  # the tmpfs holding the stack's database
STEP_WAIT = 10.0  # bound on any single wait inside a phase
CHAOS_DEADLINE = 75.0 + SAGAS / 10  # seconds for the whole chaos phase
DRAIN_DEADLINE = 60.0 + SAGAS / 20  # seconds after it for every saga to end
STALL = 20.0  # seconds without any journal moving after which the drain gives up
ENDED = "('completed', 'rolled_back', 'failed')"
NANOSLEEP = {"35", "230"}  # x86-64 nanosleep, clock_nanosleep: SQLite's busy handler sleeping


def faults() -> list[FaultSpec]:
    """What goes wrong at the services for the whole run (the outage comes later)."""
    return [
        FaultSpec(service="inventory", endpoint="/reservations", latency_ms=80),
        FaultSpec(service="inventory", endpoint="/reservations/release", latency_ms=300),
        FaultSpec(service="payments", endpoint="/charges", latency_ms=120),
        FaultSpec(service="payments", endpoint="/refunds", latency_ms=300),
        # The pivot is slow, so that rollbacks can be fired while its call is in flight.
        FaultSpec(service="shipping", endpoint="/shipments", latency_ms=500),
        FaultSpec(service="notifications", latency_ms=40),
        FaultSpec(service="payments", endpoint="/charges", error_rate=0.12, status=503),
        FaultSpec(service="shipping", endpoint="/shipments", error_rate=0.06, status=500),
        FaultSpec(service="notifications", error_rate=0.1, status=503),
        FaultSpec(
            service="payments", endpoint="/charges", error_rate=0.05, after_apply=True, status=502
        ),
        FaultSpec(service="payments", endpoint="/refunds", error_rate=0.2, status=503),
        FaultSpec(service="inventory", endpoint="/reservations/release", error_rate=0.1),
    ]


def client_order(n: int, rng: random.Random) -> dict[str, Any]:
    """A client's checkout: most are fine, some cards are declined, a few run out of stock."""
    draw = rng.random()
    if draw < 0.15:
        return order(n, amount=20_000)
    if draw < 0.19:
        return order(n, quantity=5_000)
    return order(n, amount=rng.randint(1, 9_000))


# -- poison ---------------------------------------------------------------------------------

#: Raw request bodies no saga may be created from (what each holds, body).
DOOR_POISON: list[tuple[str, bytes]] = [
    ("NaN amount", b'"amount": NaN'),
    ("Infinity quantity", b'"amount": 10, "quantity": Infinity'),
    ("-Infinity amount", b'"amount": -Infinity'),
    ("1e999 amount (inf once parsed)", b'"amount": 1e999'),
    ("lone surrogate in customer_id", b'"amount": 10, "customer_id": "\\ud800"'),
    ("5,000-deep nesting", b'"amount": 10, "note": ' + b"[" * 5000 + b"]" * 5000),
]

#: Inputs planted into the database as an old file might hold them: (what, field, JSON text).
PLANTED_POISON: list[tuple[str, str, str]] = [
    ("NaN amount", "amount", "NaN"),
    ("Infinity quantity", "quantity", "Infinity"),
    ("lone surrogate in customer_id (fails at the pivot's body)", "customer_id", '"\\ud800"'),
    ("-Infinity amount", "amount", "-Infinity"),
]


def poison_body(order_id: str, fragment: bytes) -> bytes:
    """A `POST /v1/sagas` body for a checkout with `fragment` among its input's fields."""
    base = (
        b'"order_id": "' + order_id.encode() + b'", "customer_id": "c", "sku": "SKU-1", '
        b'"quantity": 1, '
    )
    # Later keys win in JSON objects as Python reads them, so the fragment overrides.
    return b'{"flow": "checkout", "input": {' + base + fragment + b"}}"


def plant_poison(db: Path) -> dict[str, tuple[str, str]]:
    """Sagas with a poison input, as an old database might hold them: each is created
    unqueued, then given its input and queued in one statement, so that no worker can run
    it on the clean input first. Saga id -> (what, order id)."""
    planted = {}
    store = SQLiteStore(db)
    try:
        for i, (what, name, poison) in enumerate(PLANTED_POISON):
            payload = {**order(i), "order_id": f"planted-{i}"}
            saga_id = start_saga(store, FLOW, payload, queue=False)[0].id
            text = json.dumps({**payload, name: "@"}).replace('"@"', poison)
            json.loads(text)  # what the worker will read back
            query_write(
                db, "UPDATE sagas SET input = ?, run_after = ? WHERE id = ?", (text, 0, saga_id)
            )
            planted[saga_id] = (what, payload["order_id"])
    finally:
        store.close()
    return planted


def query_write(db: Path, sql: str, params: tuple[Any, ...]) -> None:
    """One write statement in its own transaction, as a side connection would run it."""
    store = SQLiteStore(db)
    try:
        store.conn.execute("BEGIN IMMEDIATE")
        store.conn.execute(sql, params)
        store.conn.execute("COMMIT")
    finally:
        store.close()


# -- clients --------------------------------------------------------------------------------


@dataclass
class Post:
    """One client's checkout POST and every answer it got (a status or a transport error)."""

    order_id: str
    key: str | None
    note: str = ""
    answers: list[int | str] = field(default_factory=list)
    saga_id: str | None = None

    @property
    def outcome(self) -> str:
        """accepted (2xx), refused (4xx), or unknown (no definite answer)."""
        last = self.answers[-1] if self.answers else "none"
        if isinstance(last, int) and 200 <= last < 300:
            return "accepted"
        if isinstance(last, int) and 400 <= last < 500 and last != 429:
            return "refused"
        return "unknown"


class Clients:
    """HTTP clients submitting through the edge, one httpx.Client per thread."""

    def __init__(self, stack: StackState) -> None:
        self.stack = stack
        self.pool = ThreadPoolExecutor(CLIENTS, thread_name_prefix="client")
        self.local = threading.local()
        self.lock = threading.Lock()
        self.posts: list[Post] = []
        self.pending: list[Future[None]] = []
        self.clients: list[httpx.Client] = []

    def http(self) -> httpx.Client:
        c: httpx.Client | None = getattr(self.local, "client", None)
        if c is None:
            c = httpx.Client(
                base_url=self.stack.edge_url,
                headers={"Authorization": f"Bearer {self.stack.api_key}"},
                timeout=httpx.Timeout(20.0, connect=5.0),
            )
            self.local.client = c
            with self.lock:
                self.clients.append(c)
        return c

    def submit(self, post: Post, payload: dict[str, Any]) -> Future[None]:
        with self.lock:
            self.posts.append(post)
        future = self.pool.submit(self.send, post, payload)
        self.pending.append(future)
        return future

    def send(self, post: Post, payload: dict[str, Any]) -> None:
        """POST until a definite answer (for up to CLIENT_PATIENCE seconds); a keyless client
        stops at an unknown outcome, which it cannot safely send again."""
        headers = {"Idempotency-Key": post.key} if post.key else {}
        body = {"flow": "checkout", "input": payload}
        deadline = time.monotonic() + CLIENT_PATIENCE
        attempt = 0
        while time.monotonic() < deadline:
            attempt += 1
            try:
                r = self.http().post("/v1/sagas", json=body, headers=headers)
            except httpx.HTTPError as exc:
                post.answers.append(type(exc).__name__)
                if post.key is None:
                    return  # it may have been applied: only a keyed client may send again
            else:
                post.answers.append(r.status_code)
                if r.status_code < 300:
                    post.saga_id = r.json().get("id")
                    return
                if r.status_code < 500 and r.status_code != 429:
                    return
                definite = r.status_code in (429, 503)  # refused before anything was written
                if not definite and post.key is None:
                    return
            time.sleep(min(0.05 * 2**attempt, 1.0))

    def quiesce(self, timeout: float = 45.0) -> None:
        """Wait for every POST in hand to get its last answer."""
        done, not_done = wait_futures(self.pending, timeout=timeout)
        assert not not_done, f"{len(not_done)} client POSTs still in hand after {timeout:g}s"
        for f in done:
            f.result()
        self.pending.clear()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        for c in self.clients:
            c.close()


# -- the stack ------------------------------------------------------------------------------


def stack_status(directory: Path) -> tuple[int, dict[str, dict[str, Any]]]:
    r = sagalab("stack", "status", "--dir", str(directory), "--json", timeout=30)
    try:
        rows = {row["name"]: row for row in json.loads(r.stdout)["components"]}
    except (ValueError, KeyError):
        rows = {}
    return r.returncode, rows


def kill_component(directory: Path, name: str) -> int:
    """SIGKILL one stack component (what `sagalab stack kill NAME` does); its pid."""
    component = load_state(directory).component(name)
    assert alive(component), f"{name} is not running"
    os.killpg(component.pid, signal.SIGKILL)
    return component.pid


def stop_stack(directory: Path, seen: list[StackState]) -> None:
    """`stack down`; then SIGKILL whatever it left, by each pid the state files named."""
    with contextlib.suppress(Exception):
        seen.append(load_state(directory))  # as it is now: with any component restarted
    with contextlib.suppress(subprocess.TimeoutExpired):
        sagalab("stack", "down", "--dir", str(directory), timeout=30)
    for state in seen:
        for c in state.components:
            if alive(c):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(c.pid, signal.SIGKILL)


@contextlib.contextmanager
def small_disk(where: Path) -> Iterator[tuple[Path, str | None]]:
    """A tmpfs of DISK_SIZE at `where` (unmounted at the end); else a plain directory and why."""
    where.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    reason = None if r.returncode == 0 else f"cannot mount a tmpfs: {r.stderr.strip()}"
    try:
        yield where, reason
    finally:
        if reason is None:
            done = subprocess.run(["umount", str(where)], capture_output=True, timeout=10)
            if done.returncode != 0:
                subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=10)


def fill_disk(where: Path) -> Path:
    """Write a file until the disk is full; return it (deleting it frees the space)."""
    filler = where / "filler"
    chunk = b"\0" * (1 << 20)
    with filler.open("wb", buffering=0) as f:
        for size in (1 << 20, 1 << 14, 1 << 9):
            chunk = chunk[:size]
            with contextlib.suppress(OSError):
                while True:
                    f.write(chunk)
    try:
        (where / "probe").write_bytes(b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
        return filler
    raise AssertionError(f"{where} did not fill up")


# -- the database held so that the API stalls mid-request -----------------------------------


@contextlib.contextmanager
def write_lock(db: Path) -> Iterator[None]:
    """Hold the database's write lock from a side connection (every writer waits on it)."""
    conn = sqlite3.connect(str(db), timeout=STEP_WAIT, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield
    finally:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        conn.close()


def sleeping_threads(pid: int) -> int:
    """Threads of `pid` sleeping in nanosleep: in the API, SQLite waiting for the lock."""
    n = 0
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/task/{tid}/syscall").read_text().split()[0] in NANOSLEEP:
                    n += 1
    return n


def gateway_holding(stack: StackState) -> str | None:
    """The gateway the edge has a request in flight to, by component name."""
    try:
        instances = httpx.get(stack.edge_url + "/edge/status", timeout=2).json()["instances"]
    except (httpx.HTTPError, ValueError, KeyError):
        return None
    by_port = {
        c.url.rsplit(":", 1)[1]: c.name for c in stack.components if c.kind == "gateway" and c.url
    }
    busy = [by_port.get(str(i["instance"]).rsplit(":", 1)[1]) for i in instances if i["active"]]
    return busy[0] if len(busy) == 1 else None


@dataclass
class GatewayKill:
    """A gateway SIGKILLed while it held `post`: which one, and whether the API had it."""

    post: Post
    gateway: str | None = None
    reached_api: bool = False
    note: str = ""


def kill_gateway_mid_post(
    stack: StackState, clients: Clients, post: Post, payload: dict[str, Any]
) -> GatewayKill:
    """Send `post` while the API waits on the write lock, SIGKILL the gateway holding it."""
    outcome = GatewayKill(post)
    api_pid = stack.component("api").pid
    clients.quiesce()
    # A few reads first, as any busy edge has had: the POST then travels on a pooled
    # connection, the way a client's request usually does.
    with httpx.Client(
        base_url=stack.edge_url, headers={"X-API-Key": stack.api_key}, timeout=10
    ) as c:
        for _ in range(4):
            with contextlib.suppress(httpx.HTTPError):
                c.get("/v1/sagas", params={"limit": 1})
    with write_lock(Path(stack.db)):
        before = sleeping_threads(api_pid)
        future = clients.submit(post, payload)
        try:
            outcome.gateway = wait_for(
                lambda: sleeping_threads(api_pid) > before and gateway_holding(stack),
                STEP_WAIT,
                "the POST to reach the API through a gateway",
                every=0.01,
            )
        except AssertionError as exc:
            outcome.note = str(exc)
            return outcome
        outcome.reached_api = True
        kill_component(Path(stack.directory), outcome.gateway)
        # Give the edge its chance to answer or to send the request on (bounded; either way
        # the request already sits in the API, so at most one saga may come of it).
        with contextlib.suppress(AssertionError):
            wait_for(
                lambda: future.done() or sleeping_threads(api_pid) > before + 1, 3.0, "the edge"
            )
    clients.quiesce()
    return outcome


# -- rollbacks at the pivot -----------------------------------------------------------------


@dataclass
class RollbackShot:
    """One rollback fired through the edge, and its answer."""

    saga_id: str
    aim: str  # "pivot in flight", "pivot in flight (forced)", "before the pivot"
    status: int | str
    detail: str


def sagas_at(db: Path, where: str, params: tuple[Any, ...]) -> list[str]:
    """Running client sagas (not the poison ones) whose last event matches `where`."""
    return [
        r[0]
        for r in query(
            db,
            "SELECT s.id FROM sagas s JOIN events e ON e.saga_id = s.id AND e.seq = s.last_seq "
            f"WHERE s.status = 'running' AND s.input LIKE '%\"order_id\": \"ord-%' AND {where}",
            params,
        )
    ]


def fire_rollbacks(
    stack: StackState, db: Path, rng: random.Random, aim: str, shots: int, exclude: set[str]
) -> list[RollbackShot]:
    """Roll back up to `shots` sagas in the state `aim`, found within STEP_WAIT seconds."""
    params: tuple[Any, ...]
    if aim.startswith("pivot"):
        where, params = "e.type = 'attempt_started' AND e.step = ? AND e.phase = 'action'", (PIVOT,)
    else:
        where = "e.step IN ('reserve_inventory', 'charge_payment') AND e.phase = 'action'"
        params = ()
    fired: list[RollbackShot] = []
    deadline = time.monotonic() + STEP_WAIT
    with httpx.Client(
        base_url=stack.edge_url,
        headers={"Authorization": f"Bearer {stack.api_key}"},
        timeout=10,
    ) as c:
        while len(fired) < shots and time.monotonic() < deadline:
            found = [s for s in sagas_at(db, where, params) if s not in exclude]
            if not found:
                time.sleep(0.02)
                continue
            saga_id = rng.choice(found)
            exclude.add(saga_id)
            body = {"reason": f"chaos: {aim}", "force": aim.endswith("(forced)")}
            try:
                r = c.post(f"/v1/sagas/{saga_id}/rollback", json=body)
                status: int | str = r.status_code
                detail = r.json().get("detail", "") if r.status_code >= 400 else ""
            except (httpx.HTTPError, ValueError) as exc:
                status, detail = type(exc).__name__, str(exc)
            fired.append(RollbackShot(saga_id, aim, status, detail))
    return fired


def rollbacks_in_flight(journals: dict[str, list[JournalEntry]]) -> list[str]:
    """Non-forced rollback requests journaled while the pivot's attempt was open."""
    problems = []
    for saga_id, entries in journals.items():
        open_attempt = None
        for e in (x.event for x in entries):
            if e.step == PIVOT and e.phase is Phase.ACTION:
                if e.type is EventType.ATTEMPT_STARTED:
                    open_attempt = e.attempt
                elif e.type in (EventType.ATTEMPT_SUCCEEDED, EventType.ATTEMPT_FAILED):
                    open_attempt = None
            in_flight = open_attempt is not None and not e.force
            if e.type is EventType.ROLLBACK_REQUESTED and in_flight:
                problems.append(
                    f"saga {saga_id}: rollback accepted while {PIVOT} #{open_attempt} was in flight"
                )
    return problems


# -- workers: alive, with all their threads -------------------------------------------------


def threads_of(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0


def threads_besides_loops(pid: int, concurrency: int) -> int:
    """How many threads a fresh worker runs besides its `concurrency` saga loops (main,
    lease keeper, ...): its count once it has stayed the same for half a second."""
    seen: list[int] = []

    def settled() -> int | None:
        seen.append(threads_of(pid))
        recent = seen[-5:]
        steady = len(recent) == 5 and len(set(recent)) == 1 and recent[0] > concurrency
        return recent[0] - concurrency if steady else None

    # A process's start (imports, store, threads) is the step a loaded machine slows most.
    extra: int = wait_for(settled, 3 * STEP_WAIT, f"worker {pid} to start its threads", every=0.1)
    return extra


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture
def seed() -> int:
    return run_seed("SAGALAB_CHAOS_SEED", "chaos test")


@pytest.fixture
def services(seed: int) -> Iterator[RunningServices]:
    with seeded_services(seed) as running:
        yield running


@dataclass
class Stack:
    """The running stack, where its database's disk is, and how its workers are configured."""

    state: StackState
    directory: Path
    disk: Path
    disk_refused: str | None
    services_file: Path
    env: dict[str, str]


@pytest.fixture
def stack(tmp_path: Path, seed: int, services: RunningServices) -> Iterator[Stack]:
    """`sagalab stack up` with its database on a small tmpfs, workers using our services."""
    services_file = write_services_file(tmp_path / "services.yaml", services.services, BREAKERS)
    env = {**services.env, "SAGALAB_SERVICES_FILE": str(services_file)}
    directory = tmp_path / "stack"
    seen: list[StackState] = []
    with small_disk(tmp_path / "disk") as (disk, refused):
        if refused:
            print(f"the disk-full phase will be skipped: {refused}")
        try:
            up = sagalab(
                "stack", "up", "--detach", "--dir", str(directory), "--port", "0",
                "--workers", "1", "--concurrency", "2", "--no-services",
                "--db", str(disk / "sagas.db"), "--flood-rate", "5000", "--json",
                env=env, timeout=90,
            )  # fmt: skip
            assert up.returncode == 0, f"seed={seed}: stack up failed: {up.stderr}"
            seen.append(load_state(directory))
            yield Stack(seen[0], directory, disk, refused, services_file, env)
        finally:
            stop_stack(directory, seen)
            keep_database(disk, tmp_path / "kept")


def keep_database(disk: Path, kept: Path) -> None:
    """Copy the stack's database off the tmpfs before it goes, for a look after a failure."""
    kept.mkdir()
    for f in disk.glob("sagas.db*"):
        with contextlib.suppress(OSError):
            shutil.copy2(f, kept / f.name)
    print(f"the stack's database is kept in {kept}")


# -- the run --------------------------------------------------------------------------------


@dataclass
class Run:
    """The chaos run: what it did, kept for the checks at the end."""

    seed: int
    stack: Stack
    services: RunningServices
    clients: Clients
    workers: Workers
    rng: random.Random
    waves: list[list[dict[str, Any]]]
    keyed: set[int]
    planted: dict[str, tuple[str, str]] = field(default_factory=dict)
    door: list[tuple[str, Post]] = field(default_factory=list)
    gateway_kills: list[GatewayKill] = field(default_factory=list)
    shots: list[RollbackShot] = field(default_factory=list)
    fired_at: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)
    problems: dict[str, list[str]] = field(default_factory=dict)
    stack_worker_killed: int | None = None
    extra_threads: int = 0
    exited: list[WorkerProcess] = field(default_factory=list)

    @property
    def db(self) -> Path:
        return Path(self.stack.state.db)

    def problem(self, check: str, text: str) -> None:
        self.problems.setdefault(check, []).append(text)

    def submit_wave(self, n: int) -> None:
        for payload in self.waves[n]:
            i = int(payload["order_id"].split("-")[1])
            key = f"chaos-{self.seed}-{i}" if i in self.keyed else None
            self.clients.submit(Post(payload["order_id"], key), payload)

    def poison_at_the_door(self) -> None:
        """Each poison body through the edge; each must be refused (422) and make no saga."""
        state = self.stack.state
        headers = {"Authorization": f"Bearer {state.api_key}", "Content-Type": "application/json"}
        with httpx.Client(base_url=state.edge_url, headers=headers, timeout=10) as c:
            for i, (what, fragment) in enumerate(DOOR_POISON):
                post = Post(f"door-{i}", None, note=what)
                try:
                    r = c.post("/v1/sagas", content=poison_body(post.order_id, fragment))
                    post.answers.append(r.status_code)
                except httpx.HTTPError as exc:
                    post.answers.append(type(exc).__name__)
                self.door.append((what, post))

    def rollbacks(self, aim: str, shots: int) -> None:
        state = self.stack.state
        self.shots += fire_rollbacks(state, self.db, self.rng, aim, shots, self.fired_at)

    def kill_a_gateway(self, n: int, key: bool) -> None:
        """SIGKILL a gateway holding a POST; the second one only if the first came back."""
        directory = self.stack.directory
        if self.gateway_kills:
            first = self.gateway_kills[0].gateway
            if first is not None and not _wait_alive(directory, first, 15.0):
                self.problem(
                    "the stack restarts dead components",
                    f"{first} was not back within 15 s of its SIGKILL, so no second gateway "
                    "was killed mid-POST (with a client key): none would have been left",
                )
                return
        payload = {**order(n), "order_id": f"gw-{n}"}
        post = Post(payload["order_id"], f"chaos-{self.seed}-gw-{n}" if key else None)
        post.note = "gateway killed, " + ("keyed" if key else "no key")
        self.gateway_kills.append(
            kill_gateway_mid_post(self.stack.state, self.clients, post, payload)
        )

    def chaos(self, chaos: Chaos, started: float) -> None:
        """Waves of POSTs between worker kills, with every other fault at its turn."""
        self.planted = plant_poison(self.db)
        self.submit_wave(0)
        self.poison_at_the_door()
        aims = ["action", "compensation", "backoff", "any"] * (KILLS // 4 + 1)
        for n, aim in enumerate(aims[:KILLS]):
            spent = time.monotonic() - started
            assert spent < CHAOS_DEADLINE, f"chaos phase over {CHAOS_DEADLINE:g}s"
            if n == 2:
                self.rollbacks("pivot in flight", 3)
                self.rollbacks("before the pivot", 3)
            if n == 3:
                self.stack_worker_killed = kill_component(self.stack.directory, "worker-1")
            if n == KILLS // 3:  # a shipping outage: sagas that reach it roll back
                self.services.lab.add_fault(FaultSpec(service="shipping", outage_seconds=2.0))
            if n == 5:
                self.kill_a_gateway(1, key=False)
            if n == 6:
                self.rollbacks("pivot in flight", 3)
                self.rollbacks("pivot in flight (forced)", 1)
            if n == 7:
                self.kill_a_gateway(2, key=True)
            if n == 8 and self.stack.disk_refused is None:
                self.notes.append(
                    fill_and_free(
                        self.stack, self.clients, self.workers, partial(self.submit_wave, n + 1)
                    )
                )
            else:
                self.submit_wave(n + 1)
            if n == 9:
                self.rollbacks("before the pivot", 2)
            time.sleep(self.rng.uniform(0.2, 0.6))
            self.exited += chaos.replace_exited()
            chaos.kill_one(aim)
        self.clients.quiesce()
        if self.stack.disk_refused is not None:
            self.notes.append(f"disk-full phase skipped: {self.stack.disk_refused}")

    def end(self, chaos: Chaos) -> None:
        """Every saga ends; every worker is alive with all its threads; `stack status` 0."""
        try:
            drain(self.db)
        except AssertionError as exc:
            alive_pids = {w.pid for w in chaos.running if w.alive()}
            stderr = self.workers.all_stderr()
            report = stuck_report(self.db, alive_pids, len(chaos.running), stderr)
            threads = ", ".join(f"{pid}: {threads_of(pid)}" for pid in sorted(alive_pids))
            report += f"\nthreads per live worker ({3 + self.extra_threads} fresh): {threads}"
            self.problem("every saga ends", f"{exc}\n{report}")
        self.exited += [w for w in chaos.running if not w.alive()]
        for w in self.exited:  # a worker may stop when it cannot go on: with one clear line
            lines = w.stderr().strip().splitlines()
            if w.proc.returncode == 0 or "Traceback" in w.stderr():
                self.problem(
                    "a worker that stops says why (non-zero exit, one line, no traceback)",
                    f"worker {w.pid} exited {w.proc.returncode}: {lines[-1:] or 'silently'}",
                )
        for w in (w for w in chaos.running if w.alive()):
            if (n := threads_of(w.pid)) < 3 + self.extra_threads:
                self.problem(
                    "workers alive with all their threads",
                    f"worker {w.pid} has {n} threads, a fresh one {3 + self.extra_threads}",
                )
        logs = [w.stderr() for w in self.workers.started]
        logs += [f.read_text(errors="replace") for f in self.stack.directory.glob("logs/work*")]
        died = [line for text in logs for line in _uncaught(text)]
        if died:
            self.problem(
                "no exception escapes a worker thread",
                f"{len(died)} tracebacks in worker output, ending: {Counter(died).most_common(4)}",
            )
        code, rows = stack_status(self.stack.directory)
        for name, row in rows.items():
            if row["kind"] == "worker" and row["status"] == "up":
                expected = 2 + self.extra_threads  # the stack's worker runs 2 saga loops
                if (n := threads_of(row["pid"])) < expected:
                    self.problem(
                        "workers alive with all their threads",
                        f"stack {name} (pid {row['pid']}) has {n} threads, a fresh one {expected}",
                    )
        if code != 0:
            self.problem(
                "stack status exits 0",
                f"exit {code}: "
                + ", ".join(f"{n} {r['status']} (pid {r['pid']})" for n, r in rows.items())
                + f"; SIGKILLed: the stack's worker (pid {self.stack_worker_killed}), "
                f"{[g.gateway for g in self.gateway_kills]}",
            )
        for w in chaos.running:  # the survivors stop cleanly
            if w.alive():
                w.proc.send_signal(signal.SIGTERM)
        for w in chaos.running:
            with contextlib.suppress(subprocess.TimeoutExpired):
                w.proc.wait(timeout=30)


def test_chaos(tmp_path: Path, seed: int, services: RunningServices, stack: Stack) -> None:
    started = time.monotonic()
    rng = random.Random(seed)
    for spec in faults():
        services.lab.add_fault(spec)
    inputs = [client_order(n, rng) for n in range(SAGAS)]
    run = Run(
        seed=seed,
        stack=stack,
        services=services,
        clients=Clients(stack.state),
        workers=Workers(Path(stack.state.db), stack.env, tmp_path / "logs"),
        rng=rng,
        waves=[inputs[i :: KILLS + 1] for i in range(KILLS + 1)],
        keyed={n for n in range(SAGAS) if rng.random() < KEYED_SHARE},
    )
    args = ["--concurrency", "3", "--lease", str(LEASE), "--poll", "0.05"]
    args += ["--services", str(stack.services_file)]
    try:
        chaos = Chaos(run.db, run.workers, rng, args, WORKERS)
        run.extra_threads = threads_besides_loops(chaos.running[0].pid, 3)
        run.chaos(chaos, started)
        print(f"chaos phase over after {time.monotonic() - started:.1f}s; draining")
        run.end(chaos)
    except AssertionError as exc:
        pytest.fail(f"seed={seed} (rerun with SAGALAB_CHAOS_SEED={seed}): {exc}", pytrace=False)
    finally:
        run.clients.close()
        run.workers.stop_all()
    check(run, chaos, time.monotonic() - started)


def check(run: Run, chaos: Chaos, elapsed: float) -> None:
    """What a user cares about, from the database, the answers and the services' ledgers."""
    db, seed = run.db, run.seed
    rows = query(db, "SELECT id, status, input, reason FROM sagas")
    store = SQLiteStore(db)
    try:
        journals = {r[0]: store.journal(r[0]) for r in rows}
    finally:
        store.close()
    by_order: dict[str, list[tuple[str, str]]] = {}
    for r in rows:
        by_order.setdefault(json.loads(r[2])["order_id"], []).append((r[0], r[1]))

    for r in rows:
        if r[1] == "failed" and not r[3]:
            run.problem("failed sagas carry a reason", f"saga {r[0]} failed with no reason")
        if r[1] in ("completed", "rolled_back"):
            for p in journal_problems(r[0], r[1], journals[r[0]]):
                run.problem("journals read T1..Tn or T1..Tj Cj..C1", p)

    # -- at most one saga per client POST, exactly one when accepted ------------------------
    for post in run.clients.posts:
        n = len(by_order.get(post.order_id, []))
        held = f"{post.order_id} ({post.note or ('keyed' if post.key else 'no key')}; "
        held += f"answers {post.answers})"
        if n > 1:
            run.problem("one saga per client POST", f"{held}: {n} sagas {by_order[post.order_id]}")
        elif post.outcome == "accepted" and n != 1:
            run.problem("one saga per client POST", f"{held}: accepted, yet {n} sagas")
        elif post.outcome == "refused" and n:
            run.problem("one saga per client POST", f"{held}: refused, yet a saga")
        if post.key and post.outcome != "accepted":
            run.problem("keyed clients get a definite answer", held)
        if 500 in post.answers:
            run.problem("no 500 answers", held)
    for g in run.gateway_kills:
        n = len(by_order.get(g.post.order_id, []))
        if g.reached_api and n != 1:
            run.problem(
                "one saga per client POST",
                f"{g.gateway} SIGKILLed holding {g.post.order_id} ({g.post.note}; "
                f"answers {g.post.answers}): {n} sagas",
            )
        if not g.reached_api:
            run.problem("harness: gateway killed mid-POST", g.note)

    # -- poison ------------------------------------------------------------------------------
    for what, post in run.door:
        if post.answers != [422] or by_order.get(post.order_id):
            run.problem(
                "poison refused at the door (422, no saga)",
                f"{what}: answers {post.answers}, sagas {by_order.get(post.order_id, [])}",
            )
    status_of = {r[0]: (r[1], r[3]) for r in rows}
    for saga_id, (what, _) in run.planted.items():
        status, reason = status_of[saga_id]
        if status not in ("failed", "rolled_back") or not reason:
            run.problem(
                "planted poison ends failed or rolled back with a reason",
                f"{what}: saga {saga_id} {status} ({reason})",
            )

    # -- the services ------------------------------------------------------------------------
    ledger = run.services.lab.ledger()
    twice = applied_twice(ledger)
    if twice:
        run.problem("nothing applied twice", f"{len(twice)}: {twice[:10]}")
    forced = {s.saga_id for s in run.shots if s.aim.endswith("(forced)")}
    ended = {
        json.loads(r[2])["order_id"]: (r[0], r[1])
        for r in rows
        if r[1] in ("completed", "rolled_back")
    }
    forced_orders = {o for o, (sid, _) in ended.items() if sid in forced}
    for p in ledger_problems(ledger, ended, forced=forced_orders):
        run.problem("no rolled-back order with an action standing", p)
    # `sagalab verify`: nothing but the sagas left failed for an operator (not terminal).
    code, findings = verify_findings(db, run.services)
    failed = {r[0] for r in rows if r[1] == "failed"}
    unexpected = [f for f in findings if f["kind"] != "not_terminal" or f["saga_id"] not in failed]
    for f in unexpected:
        run.problem(
            "verify finds every saga done or undone", f"{f['saga_id']}: {f['kind']}: {f['detail']}"
        )
    if code != (1 if failed else 0):
        run.problem("verify finds every saga done or undone", f"exit {code}, {len(failed)} failed")

    # -- rollbacks at the pivot --------------------------------------------------------------
    for p in rollbacks_in_flight({k: v for k, v in journals.items() if k not in forced}):
        run.problem("no rollback accepted while its pivot was in flight", p)
    aimed = Counter((s.aim, s.status) for s in run.shots)
    if not aimed[("pivot in flight", 409)]:
        run.problem("harness: rollbacks", f"none refused at a pivot in flight: {dict(aimed)}")
    if not aimed[("before the pivot", 202)]:
        run.problem("harness: rollbacks", f"none accepted before a pivot: {dict(aimed)}")
    for s in run.shots:
        if s.aim.endswith("(forced)") and s.status != 202:
            run.problem("a forced rollback is accepted", f"{s.saga_id}: {s.status} {s.detail}")
        elif isinstance(s.status, str) or s.status >= 500:
            run.problem("rollback answers", f"{s.aim} {s.saga_id}: {s.status} {s.detail}")

    # -- harness: the kills landed where aimed -----------------------------------------------
    phases = Counter(k.phase for k in chaos.kills)
    if not phases["action call"] or not any(k.in_backoff for k in chaos.kills):
        run.problem("harness: kills", f"kills landed {dict(phases)}")

    posts = run.clients.posts
    reasons = Counter(reason_kind(r[3]) for r in rows if r[1] == "rolled_back")
    print(
        f"chaos run (seed {seed}): {len(rows)} sagas {dict(statuses(db))} in {elapsed:.1f}s; "
        f"{len(posts)} client POSTs {dict(Counter(p.outcome for p in posts))}; "
        f"{len(chaos.kills)} worker SIGKILLs {dict(phases)}; stack worker SIGKILLed (pid "
        f"{run.stack_worker_killed}); gateway kills "
        f"{[(g.gateway, g.post.note, g.post.answers) for g in run.gateway_kills]}; "
        f"rollbacks {dict(aimed)}; door poison {[p.answers for _, p in run.door]}; "
        f"{'; '.join(run.notes)}; ledger {len(ledger)} entries; rollbacks by cause "
        f"{dict(reasons)}; worker tracebacks: {run.workers.all_stderr().count('Traceback')}"
    )
    if run.problems:
        text = "\n".join(
            f"- {name} ({len(items)}):\n    " + "\n    ".join(i[:1500] for i in items[:8])
            for name, items in run.problems.items()
        )
        pytest.fail(
            f"chaos run failed (seed={seed}; rerun with SAGALAB_CHAOS_SEED={seed}):\n{text}",
            pytrace=False,
        )


def drain(db: Path) -> None:
    """Wait for every saga to end: up to DRAIN_DEADLINE s, or STALL s without any progress."""
    deadline = time.monotonic() + DRAIN_DEADLINE
    last: object = None
    moved = time.monotonic()
    while True:
        rows = query(db, "SELECT id, last_seq FROM sagas WHERE status NOT IN " + ENDED)
        if not rows:
            return
        now = time.monotonic()
        if rows != last:
            last, moved = rows, now
        if now > deadline or now - moved > STALL:
            why = "in time" if now > deadline else f"and none moved for {STALL:g}s"
            raise AssertionError(
                f"{len(rows)} sagas did not end (completed, rolled back or failed) {why}"
            )
        time.sleep(0.25)


def fill_and_free(
    stack: Stack, clients: Clients, workers: Workers, traffic: Callable[[], None]
) -> str:
    """Fill the database's disk, send `traffic` while it is full, free it; what was seen."""
    clients.quiesce()
    filler = fill_disk(stack.disk)
    try:
        traffic()
        seen = _wait_quietly(lambda: _disk_full_evidence(clients, workers, stack.directory), 8.0)
    finally:
        filler.unlink()
        (stack.disk / "probe").unlink(missing_ok=True)
    clients.quiesce()
    return f"disk filled, then freed: {seen or 'no error seen within 8 s'}"


def _uncaught(text: str) -> list[str]:
    """The last line (the exception) of each traceback in `text`."""
    found = []
    for block in text.split("Traceback (most recent call last):")[1:]:
        lines = [x for x in block.splitlines() if x and not x.startswith(" ")]
        found.append(lines[0][:160] if lines else "?")
    return found


def _wait_alive(directory: Path, name: str, timeout: float) -> bool:
    """Whether the stack shows `name` running again (a new pid) within `timeout` seconds."""
    return bool(
        _wait_quietly(lambda: alive(load_state(directory).component(name)), timeout, every=0.2)
    )


def _wait_quietly(condition: Callable[[], Any], timeout: float, every: float = 0.1) -> Any:
    """`wait_for` that returns None instead of failing."""
    try:
        return wait_for(condition, timeout, "", every=every)
    except AssertionError:
        return None


def _disk_full_evidence(clients: Clients, workers: Workers, directory: Path) -> str | None:
    """Something that shows the disk is full: a 503 to a client, or a line in a log."""
    for p in list(clients.posts):
        if 503 in p.answers or 507 in p.answers:
            return f"a client was answered {p.answers}"
    logs = workers.all_stderr() + "".join(
        f.read_text(errors="replace") for f in (directory / "logs").glob("*.log")
    )
    for needle in ("disk is full", "database or disk is full", "No space left"):
        if needle in logs:
            return f"logged {needle!r}"
    return None

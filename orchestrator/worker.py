"""Worker replicas: take sagas from the durable queue under a lease and run them.

A worker is one process with `concurrency` threads. Each thread has its own SQLite connection,
HTTP client and runner. One idle thread at a time claims, in one transaction, the sagas due
longest ago for all of the process's idle threads (`claim_due`, which also takes over sagas
whose lease expired: that is the background resume of crashed replicas), keeps one and hands
out the rest (orchestrator/handout.py); each thread runs its saga until it halts or must wait
for a retry, and releases it with the time it is due again. A lease keeper renews the leases
of sagas in progress or in the hand, in one statement; a worker whose lease was lost is fenced
off by the store and drops the saga. Leases still in the hand when the worker stops are
released.

A worker never dies of one saga, and never idles as "up" when it cannot work:

* anything a saga raises is caught: an attempt that raises is journaled as a failed attempt
  by the runner (the core then rolls back or parks the saga); anything else that makes a
  saga unrunnable parks it off the queue with its reason (`QueueStore.park`);
* any database error (locked, full, I/O; the breaker storage's included) makes the thread
  drop its connections, back off (doubling up to `MAX_BACKOFF`) and try again; the change
  between "unavailable" and "available again" is logged once, not every retry;
* a database file deleted or replaced under the worker (`DatabaseWatchdog`, checked before
  every write and by the main loop), a corrupt database, or a thread (or the lease keeper)
  that ends by an unexpected exception stops the whole process: `run()` raises a
  `StoreError` or `WorkerFailed` with a one-line reason, so the CLI exits non-zero and a
  supervisor restarts it.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sagalab.orchestrator.breaker_board import BreakerBoard, BreakerConfig
from sagalab.orchestrator.errors import (
    ConcurrentUpdate,
    LeaseLost,
    SagaError,
    ServiceConfigError,
    StoreError,
    StoreUnavailable,
)
from sagalab.orchestrator.executors import HttpExecutor, StepExecutor
from sagalab.orchestrator.handout import Hand
from sagalab.orchestrator.leases import DEFAULT_LEASE_SECONDS, LeaseKeeper, new_owner
from sagalab.orchestrator.metrics import SagaMetrics
from sagalab.orchestrator.redact import redacted
from sagalab.orchestrator.runner import SagaRunner
from sagalab.orchestrator.store import Lease, Store
from sagalab.orchestrator.stores import (
    driver_errors,
    open_store,
    open_waker,
    shown,
    store_failures,
)
from sagalab.orchestrator.tracing import Observers, SagaTracer
from sagalab.orchestrator.wake import Waker
from sagalab.orchestrator.watchdog import DatabaseGone, DatabaseWatchdog, WatchedStore

log = logging.getLogger("sagalab.worker")

MAX_BACKOFF = 2.0
"""Longest wait between retries while the database fails (seconds)."""

_UNUSABLE = ("malformed", "not a database")
"""sqlite messages that retrying cannot cure: the worker exits instead."""


class WorkerFailed(SagaError):
    """A worker process cannot go on (a thread died); the message is the one-line reason."""


@dataclass
class WorkerStats:
    """Counts one worker process accumulates (read by the CLI for its summary)."""

    claimed: int = 0
    finished: dict[str, int] = field(default_factory=dict)
    requeued: int = 0
    lost_leases: int = 0
    conflicts: int = 0
    errors: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, name: str, status: str | None = None) -> None:
        with self.lock:
            if status is not None:
                self.finished[status] = self.finished.get(status, 0) + 1
            else:
                setattr(self, name, getattr(self, name) + 1)


@dataclass(frozen=True)
class WorkerConfig:
    """How a worker process runs."""

    db: Path
    services: Mapping[str, str]
    concurrency: int = 4
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    poll_interval: float = 0.2
    exit_when_idle: float | None = None
    max_seconds: float | None = None
    breakers: Mapping[str, BreakerConfig] = field(default_factory=dict)
    use_breakers: bool = True
    #: What the worker counts for Prometheus (`orchestrator.metrics`); None counts nothing.
    metrics: SagaMetrics | None = None
    #: What emits the OpenTelemetry spans of its runs (`orchestrator.tracing`); None: none.
    tracer: SagaTracer | None = None


class _Tools:
    """One thread's connections and clients; dropped and reopened after a database error."""

    def __init__(self, worker: Worker) -> None:
        config = worker.config
        self.store = WatchedStore(config.db, worker.watchdog)
        self.board: BreakerBoard | None = None
        self.executor: StepExecutor | None = None
        metrics = config.metrics
        try:
            if config.use_breakers:
                self.board = BreakerBoard(
                    config.db,
                    config.breakers,
                    owner=worker.owner,
                    guard=worker.watchdog.check,
                    on_transition=metrics.breaker_transition if metrics is not None else None,
                )
            self.executor = worker._executor_factory()
        except BaseException:
            self.close()
            raise
        self.runner = SagaRunner(
            self.store,
            self.executor,
            clock=worker.clock,
            rng=random.Random(),
            on_event=worker.on_event,
            breakers=self.board,
            observer=(Observers(metrics, config.tracer) if config.tracer is not None else metrics),
        )

    def close(self) -> None:
        close = getattr(self.executor, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                close()
        for conn in (self.board, self.store):
            if conn is not None:
                with contextlib.suppress(*driver_errors()):
                    conn.close()


class Worker:
    """One worker process's threads. `run()` blocks until `stop` is set or a limit is hit.

    `run()` raises a `StoreError` (the database file vanished or is unusable) or
    `WorkerFailed` (a thread died) when the process cannot go on.
    """

    def __init__(
        self,
        config: WorkerConfig,
        *,
        executor_factory: Callable[[], StepExecutor] | None = None,
        clock: Callable[[], float] = time.time,
        on_event: Callable[[str, object], None] | None = None,
    ) -> None:
        self.config = config
        self.owner = new_owner("worker")
        self.stats = WorkerStats()
        self.stop = threading.Event()
        self.clock = clock
        self.on_event = on_event
        self._executor_factory = executor_factory or (lambda: HttpExecutor(config.services))
        self._last_work = time.monotonic()
        self._hand = Hand(config.concurrency)
        self._fatal: SagaError | None = None
        self._db_failing = False
        self._state_lock = threading.Lock()
        self._waker: Waker | None = None

    def run(self) -> WorkerStats:
        """Run the worker threads until stopped, idle for `exit_when_idle`, or `max_seconds`."""
        if not self._opened_once():  # create/migrate once, before threads race
            return self.stats
        self.watchdog = DatabaseWatchdog(self.config.db)
        # Idle threads wait on wake-ups, with the poll interval as timeout: polling stays the
        # truth, a lost wake-up costs at most one interval (orchestrator/wake.py).
        self._waker = open_waker(self.config.db)
        try:
            return self._run()
        finally:
            if self._waker is not None:
                self._waker.close()

    def _run(self) -> WorkerStats:
        started = time.monotonic()
        keeper = LeaseKeeper(
            self.config.db, lease_seconds=self.config.lease_seconds, guard=self.watchdog.check
        )
        with keeper:
            threads = [
                threading.Thread(target=self._thread, args=(keeper,), name=f"worker-{i}")
                for i in range(self.config.concurrency)
            ]
            for t in threads:
                t.start()
            if self._waker is not None:
                # A wake-up releases an idle thread here, or goes on to another process.
                self._waker.attach(self._hand.pulse)
            while not self.stop.wait(0.1):
                now = time.monotonic()
                if self.config.max_seconds is not None and now - started > self.config.max_seconds:
                    self.stop.set()
                idle_for = self.config.exit_when_idle
                idle = self._hand.idle()
                if idle_for is not None and idle and now - self._last_work > idle_for:
                    if self._queue_empty():
                        self.stop.set()
                    else:  # a saga waits for its retry time or another worker's lease
                        self._last_work = now
                try:
                    self.watchdog.check()  # also between claims, while threads wait on calls
                except DatabaseGone as exc:
                    self._fail(exc)
                if keeper.failure is not None:
                    self._fail(WorkerFailed(keeper.failure))
                dead = [t.name for t in threads if not t.is_alive()]
                if dead and not self.stop.is_set():  # cannot happen unless _thread is wrong
                    self._fail(WorkerFailed(f"worker thread(s) {', '.join(dead)} ended"))
            for t in threads:
                t.join()
            self._give_back(self._hand.drain(), keeper)
        if self._fatal is not None:
            raise self._fatal
        return self.stats

    def _give_back(self, leases: list[Lease], keeper: LeaseKeeper) -> None:
        """Release the leases left in the hand at stop (due now: another worker takes them).
        If the database cannot be written, their leases run out instead."""
        if not leases:
            return
        for lease in leases:
            keeper.drop(lease.saga_id)
        try:
            store = WatchedStore(self.config.db, self.watchdog)
        except store_failures():
            return
        try:
            for lease in leases:
                with contextlib.suppress(*store_failures()):
                    store.release(lease, run_after=self.clock())
        finally:
            with contextlib.suppress(*store_failures()):
                store.close()

    def _queue_empty(self) -> bool:
        """True when no unfinished saga is queued, due later, or held by any worker.

        A database that cannot answer counts as not empty: staying up is the safe side, and
        `--max-seconds` still bounds the run.
        """
        try:
            store = open_store(self.config.db, readonly=True)
        except store_failures():
            return False
        try:
            stats = store.queue_stats(self.clock())
        except store_failures():
            return False
        finally:
            with contextlib.suppress(*store_failures()):
                store.close()
        return stats["depth"] + stats["leased"] == 0

    def _opened_once(self) -> bool:
        """Open (create, migrate) the database once; False if stopped before it could be.

        A server that cannot be reached now (StoreUnavailable: refused, restarting) is waited
        for with the same backoff as any database trouble: `sagalab worker` already refused
        a wrong URL at start, and a replica started during a server restart rides it out.
        Any other StoreError (not a saga database, wrong credentials) is raised.
        """
        failures = 0
        while True:
            try:
                open_store(self.config.db).close()
                break
            except StoreUnavailable as exc:
                self._database_trouble(exc)
                failures += 1
                delay = min(MAX_BACKOFF, self.config.poll_interval * 2 ** min(failures, 10))
                if self.stop.wait(delay):
                    return False
        if failures:
            self._database_back()
        return True

    def _fail(self, error: SagaError) -> None:
        """Stop the process with `error` as its reason (the first reason wins)."""
        with self._state_lock:
            if self._fatal is None:
                self._fatal = error
                # `run()` raises it once the threads have stopped: the caller says it, once
                # (`sagalab worker` prints one "error:" line).
                log.debug("worker %s stopping: %s", self.owner, error)
        self.stop.set()

    def _thread(self, keeper: LeaseKeeper) -> None:
        name = threading.current_thread().name
        try:
            self._loop(keeper)
        except BaseException as exc:  # a bug: say so and stop, never idle as "up"
            log.critical("worker thread %s died", name, exc_info=True)
            self._fail(WorkerFailed(f"worker thread {name} died: {type(exc).__name__}: {exc}"))

    def _loop(self, keeper: LeaseKeeper) -> None:
        tools: _Tools | None = None
        failures = 0
        try:
            while not self.stop.is_set():
                try:
                    if tools is None:
                        tools = _Tools(self)
                    worked = self._one(tools, keeper)
                except DatabaseGone as exc:
                    self._fail(exc)
                    return
                except store_failures() as exc:
                    if any(word in str(exc) for word in _UNUSABLE):
                        self._fail(
                            StoreError(f"database {shown(self.config.db)} is unusable: {exc}")
                        )
                        return
                    self._database_trouble(exc)
                    if tools is not None:  # a failed COMMIT can leave a connection unusable
                        tools.close()
                        tools = None
                    failures += 1
                    delay = min(MAX_BACKOFF, self.config.poll_interval * 2 ** min(failures, 10))
                    self.stop.wait(delay)
                    continue
                if failures and worked:  # back only once a saga went through (not an idle poll)
                    failures = 0
                    self._database_back()
                if not worked:
                    # A handed lease, a wake-up, or the poll interval: polling stays the truth.
                    self._hand.wait(self.config.poll_interval, self.stop)
        finally:
            if tools is not None:
                tools.close()

    def _database_trouble(self, exc: BaseException) -> None:
        self.stats.add("errors")
        with self._state_lock:
            if self._db_failing:
                return
            self._db_failing = True
        log.warning(
            "database %s unavailable: %s; backing off (retrying up to every %gs)",
            shown(self.config.db),
            redacted(str(exc)),
            MAX_BACKOFF,
        )

    def _database_back(self) -> None:
        with self._state_lock:
            if not self._db_failing:
                return
            self._db_failing = False
        log.warning("database %s available again", shown(self.config.db))

    def _next_lease(self, store: Store, keeper: LeaseKeeper) -> Lease | None:
        """A lease handed to this thread, or claimed by it for itself and the idle others.

        One thread claims at a time, at most as many sagas as there are threads neither busy
        nor owed one: a claimed saga is a lease to renew, and none waits long in the hand.
        """
        hand = self._hand
        lease = hand.take()
        if lease is not None:
            return lease
        with hand.claiming:
            lease = hand.take()  # handed out while this thread waited to claim
            if lease is not None or self.stop.is_set():
                return lease
            leases = store.claim_due(
                self.owner,
                now=self.clock(),
                lease_seconds=self.config.lease_seconds,
                limit=max(1, hand.room()),
            )
            if not leases:
                return None
            for claimed in leases:
                keeper.hold(claimed)
                self.stats.add("claimed")
            hand.started()
            hand.put(leases[1:])
        return leases[0]

    def _one(self, tools: _Tools, keeper: LeaseKeeper) -> bool:
        store = tools.store
        lease = self._next_lease(store, keeper)
        if lease is None:
            return False
        self._hand.got_work()
        self._last_work = time.monotonic()
        run_after: float | None = None
        parked: str | None = None
        tracer = self.config.tracer
        traced = "error"
        if tracer is not None:
            tracer.claimed(lease.saga_id, lease.epoch)
        try:
            result = tools.runner.run(lease.saga_id, lease=lease, wait_for_retries=False)
            if result.wait_until is not None:
                run_after = result.wait_until
                self.stats.add("requeued")
                traced = "waiting"
            else:
                self.stats.add("finished", result.status.value)
                traced = result.status.value
        except LeaseLost:
            traced = "lease_lost"
            self.stats.add("lost_leases")
            if self.config.metrics is not None:
                self.config.metrics.lease_lost()
            return True  # another worker owns it now; do not touch it
        except ConcurrentUpdate:
            self.stats.add("conflicts")  # an operator wrote to it: take it again from the top
            run_after = self.clock()
        except store_failures():
            # The database, not this saga: give it back if the database lets us (else its
            # lease runs out), and let the thread back off.
            with contextlib.suppress(SagaError, *driver_errors()):
                store.release(lease, run_after=self.clock())
            raise
        except ServiceConfigError as exc:  # this worker's configuration: try again later
            log.error("saga %s: %s", lease.saga_id, exc)
            self.stats.add("errors")
            run_after = self.clock() + self.config.lease_seconds
        except Exception as exc:  # this saga cannot be run by this code: park it, go on
            parked = (
                f"parked by worker {self.owner}: {type(exc).__name__}: {exc}; "
                f"`sagalab orchestrate resume {lease.saga_id}` tries again"
            )
            log.error("saga %s: %s", lease.saga_id, parked)
            self.stats.add("errors")
        finally:
            if tracer is not None:
                tracer.ended(lease.saga_id, traced)
            keeper.drop(lease.saga_id)
            self._hand.finished()
            self._last_work = time.monotonic()
        if parked is not None:
            store.park(lease, reason=parked)
        else:
            store.release(lease, run_after=run_after)
        return True

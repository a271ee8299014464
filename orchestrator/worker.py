"""Worker replicas: take sagas from the durable queue under a lease and run them.

A worker is one process with `concurrency` threads. Each thread has its own SQLite connection,
HTTP client and runner, claims the saga due longest ago (`claim_next`, which also takes over
sagas whose lease expired: that is the background resume of crashed replicas), runs it until
it halts or must wait for a retry, and releases it with the time it is due again. A lease
keeper renews the leases of sagas in progress; a worker whose lease was lost is fenced off
by the store and drops the saga.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.breakers import BreakerBoard, BreakerConfig
from orchestrator.errors import ConcurrentUpdate, LeaseLost, SagaError, StoreError
from orchestrator.executors import HttpExecutor, StepExecutor
from orchestrator.leases import DEFAULT_LEASE_SECONDS, LeaseKeeper, new_owner
from orchestrator.runner import SagaRunner
from orchestrator.sqlite_store import SQLiteStore

log = logging.getLogger("sagalab.worker")


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


class Worker:
    """One worker process's threads. `run()` blocks until `stop` is set or a limit is hit."""

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
        self._busy = 0
        self._busy_lock = threading.Lock()

    def run(self) -> WorkerStats:
        """Run the worker threads until stopped, idle for `exit_when_idle`, or `max_seconds`."""
        SQLiteStore(self.config.db).close()  # create/migrate once, before threads race
        started = time.monotonic()
        with LeaseKeeper(self.config.db, lease_seconds=self.config.lease_seconds) as keeper:
            threads = [
                threading.Thread(target=self._loop, args=(keeper,), name=f"worker-{i}")
                for i in range(self.config.concurrency)
            ]
            for t in threads:
                t.start()
            while not self.stop.wait(0.1):
                now = time.monotonic()
                if self.config.max_seconds is not None and now - started > self.config.max_seconds:
                    self.stop.set()
                idle_for = self.config.exit_when_idle
                with self._busy_lock:
                    idle = self._busy == 0
                if idle_for is not None and idle and now - self._last_work > idle_for:
                    self.stop.set()
            for t in threads:
                t.join()
        return self.stats

    def _loop(self, keeper: LeaseKeeper) -> None:
        store = SQLiteStore(self.config.db)
        executor = self._executor_factory()
        board = (
            BreakerBoard(self.config.db, self.config.breakers, owner=self.owner)
            if self.config.use_breakers
            else None
        )
        runner = SagaRunner(
            store,
            executor,
            clock=self.clock,
            rng=random.Random(),
            on_event=self.on_event,  # type: ignore[arg-type]
            breakers=board,
        )
        try:
            while not self.stop.is_set():
                try:
                    worked = self._one(store, runner, keeper)
                except StoreError as exc:  # e.g. the disk is full: back off, keep the saga
                    log.warning("store error: %s", exc)
                    self.stats.add("errors")
                    worked = False
                if not worked:
                    self.stop.wait(self.config.poll_interval)
        finally:
            close = getattr(executor, "close", None)
            if close is not None:
                close()
            if board is not None:
                board.close()
            store.close()

    def _one(self, store: SQLiteStore, runner: SagaRunner, keeper: LeaseKeeper) -> bool:
        lease = store.claim_next(
            self.owner, now=self.clock(), lease_seconds=self.config.lease_seconds
        )
        if lease is None:
            return False
        with self._busy_lock:
            self._busy += 1
        self._last_work = time.monotonic()
        self.stats.add("claimed")
        keeper.hold(lease)
        run_after: float | None = None
        try:
            result = runner.run(lease.saga_id, lease=lease, wait_for_retries=False)
            if result.wait_until is not None:
                run_after = result.wait_until
                self.stats.add("requeued")
            else:
                self.stats.add("finished", result.status.value)
        except LeaseLost:
            self.stats.add("lost_leases")
            return True  # another worker owns it now; do not touch it
        except ConcurrentUpdate:
            self.stats.add("conflicts")  # an operator wrote to it: take it again from the top
            run_after = self.clock()
        except SagaError as exc:
            log.error("saga %s: %s", lease.saga_id, exc)
            self.stats.add("errors")
            run_after = self.clock() + self.config.lease_seconds
        finally:
            keeper.drop(lease.saga_id)
            with self._busy_lock:
                self._busy -= 1
            self._last_work = time.monotonic()
        store.release(lease, run_after=run_after)
        return True

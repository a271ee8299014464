"""Prometheus metrics of the processes that run sagas (workers and their supervisor).

Three parts, each fed where the runtime already interprets something:

* `SagaMetrics` counts what a worker does. It is the runner's `RunObserver` (told of each
  run's record and journal when the run starts, and of every durable commit), the breaker
  board's `on_transition`, and the worker's lease-lost handler. Everything it counts is in
  the journal too, so a scrape can be checked against `sagalab orchestrate status`.
* `StoreGauges` reads what the database knows (queue depth and oldest age, each breaker's
  shared state) every `interval` seconds in its own thread; a scrape reads the last snapshot
  and never waits on the database.
* `serve` starts prometheus_client's HTTP server on 127.0.0.1 for a registry.

Several replicas (`sagalab worker --replicas N`) use prometheus_client's multiprocess mode:
the supervisor makes a fresh directory (`multiprocess_dir`), gives it to its children in
`PROMETHEUS_MULTIPROC_DIR` (read by prometheus_client when a child imports it), and serves
their summed counters and histograms (`multiprocess_registry`) on one port with its own
`StoreGauges`; it deletes the directory when it stops. Children record counters and
histograms only (no gauge), so a replica that dies keeps its counts in the sum and leaves no
stale gauge behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from sagalab.orchestrator.breaker_board import breaker_rows
from sagalab.orchestrator.journal import JournalEntry
from sagalab.orchestrator.saga import INTERRUPTED, EventType, SagaState, SagaStatus
from sagalab.orchestrator.store import SagaRecord
from sagalab.orchestrator.stores import open_store, store_failures

if TYPE_CHECKING:
    from sagalab.orchestrator.supervisor import Supervisor

__all__ = [
    "MULTIPROC_ENV",
    "SAGA_BUCKETS",
    "SagaMetrics",
    "StoreGauges",
    "SupervisorGauges",
    "multiprocess_dir",
    "multiprocess_registry",
    "serve",
]

log = logging.getLogger("sagalab.metrics")

#: The variable prometheus_client reads at import to write values to files (multiprocess mode).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: Seconds buckets for attempts (1 ms to 30 s: a step's timeout is at most that order).
ATTEMPT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
#: Seconds buckets for whole sagas and queue waits (retries and breaker waits make minutes).
SAGA_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)

_HALTED = {
    EventType.SAGA_COMPLETED: SagaStatus.COMPLETED,
    EventType.SAGA_ROLLED_BACK: SagaStatus.ROLLED_BACK,
}
_OUTCOMES = (EventType.ATTEMPT_SUCCEEDED, EventType.ATTEMPT_FAILED)


def _result(entry: JournalEntry) -> str:
    """An attempt's result label: succeeded, failed, or interrupted (its holder went away)."""
    event = entry.event
    if event.type is EventType.ATTEMPT_SUCCEEDED:
        return "succeeded"
    return "interrupted" if event.failure == INTERRUPTED else "failed"


class SagaMetrics:
    """A worker process's counters and histograms (thread-safe: prometheus_client locks).

    `registry` is private to this object unless given, so that several workers in one
    process (tests) never collide; in multiprocess mode the values go to files whatever the
    registry, and the supervisor reads them.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.clock = clock
        r = self.registry
        step = ["service", "step", "phase"]
        self.finished = Counter(
            "sagalab_sagas_finished",
            "Sagas that halted, by flow and status.",
            ["flow", "status"],
            registry=r,
        )
        self.saga_seconds = Histogram(
            "sagalab_saga_duration_seconds",
            "Seconds from a saga's creation to its halt, by flow and status.",
            ["flow", "status"],
            registry=r,
            buckets=SAGA_BUCKETS,
        )
        self.attempts = Counter(
            "sagalab_step_attempts",
            "Step attempts by service, step, phase and result.",
            [*step, "result"],
            registry=r,
        )
        self.attempt_seconds = Histogram(
            "sagalab_step_attempt_duration_seconds",
            "Seconds one step attempt took (attempts with a measured duration: not the "
            "interrupted ones).",
            [*step, "result"],
            registry=r,
            buckets=ATTEMPT_BUCKETS,
        )
        self.retries = Counter(
            "sagalab_retries_scheduled",
            "Retries scheduled, by service, step and phase.",
            step,
            registry=r,
        )
        self.schedule_to_claim = Histogram(
            "sagalab_schedule_to_claim_seconds",
            "Seconds from when a saga was due (its creation, or its retry's time) to its "
            "claim by a worker.",
            ["flow"],
            registry=r,
            buckets=SAGA_BUCKETS,
        )
        self.leases_lost = Counter(
            "sagalab_leases_lost",
            "Leases this worker held that expired and were taken by another worker.",
            registry=r,
        )
        self.taken_over = Counter(
            "sagalab_leases_taken_over",
            "Sagas claimed from a holder whose lease expired mid-attempt (the open attempt "
            "closed as interrupted).",
            registry=r,
        )
        self.transitions = Counter(
            "sagalab_breaker_transitions",
            "Circuit breaker transitions this process made.",
            ["service", "from", "to"],
            registry=r,
        )

    # -- the runner's RunObserver -------------------------------------------------------
    def started(self, record: SagaRecord, entries: Sequence[JournalEntry]) -> None:
        """A run of `record` starts (just claimed); never raises into the runner."""
        try:
            self._started(record, entries)
        except Exception:  # a metrics bug must not stop a saga: say it, count nothing
            log.exception("metrics: cannot count the start of saga %s", record.id)

    def committed(
        self, record: SagaRecord, state: SagaState, entries: Sequence[JournalEntry]
    ) -> None:
        """`entries` of `record` are durable; `state` is the saga after them. Never raises."""
        try:
            self._committed(record, state, entries)
        except Exception:  # a metrics bug must not stop a saga: say it, count nothing
            log.exception("metrics: cannot count a commit of saga %s", record.id)

    def _started(self, record: SagaRecord, entries: Sequence[JournalEntry]) -> None:
        """How long the saga waited for a worker since it was due.

        Due is what the journal states: a saga created and queued (due at its creation) or
        one waiting on a scheduled retry (due at `not_before`). Other claims (an operator's
        requeue, a breaker wait, which journal no time) are not measured.
        """
        if not entries:
            return
        last = entries[-1].event
        if last.type is EventType.SAGA_CREATED:
            due = last.at
        elif last.type is EventType.RETRY_SCHEDULED and last.not_before is not None:
            due = last.not_before
        else:
            return
        waited = max(0.0, self.clock() - due)
        self.schedule_to_claim.labels(record.flow.name).observe(waited)

    def _committed(
        self, record: SagaRecord, state: SagaState, entries: Sequence[JournalEntry]
    ) -> None:
        flow = record.flow
        for entry in entries:
            event = entry.event
            kind = event.type
            if kind in _OUTCOMES and event.step is not None and event.phase is not None:
                labels = (_service(flow.step(event.step).service), event.step, event.phase.value)
                result = _result(entry)
                self.attempts.labels(*labels, result).inc()
                if entry.duration_ms is not None:
                    self.attempt_seconds.labels(*labels, result).observe(entry.duration_ms / 1000)
                if result == "interrupted":
                    self.taken_over.inc()
            elif kind is EventType.RETRY_SCHEDULED and event.step and event.phase is not None:
                service = _service(flow.step(event.step).service)
                self.retries.labels(service, event.step, event.phase.value).inc()
            elif kind in _HALTED:
                self._halted(record, _HALTED[kind], event.at)
            elif kind is EventType.STEP_FAILED and state.status is SagaStatus.FAILED:
                self._halted(record, SagaStatus.FAILED, event.at)

    def _halted(self, record: SagaRecord, status: SagaStatus, at: float) -> None:
        self.finished.labels(record.flow.name, status.value).inc()
        elapsed = max(0.0, at - record.created_at)
        self.saga_seconds.labels(record.flow.name, status.value).observe(elapsed)

    # -- the worker's and the breaker board's ------------------------------------------
    def lease_lost(self) -> None:
        """This worker's lease on a saga expired and another worker holds it now."""
        self.leases_lost.inc()

    def breaker_transition(self, service: str, now: float, old: str, new: str) -> None:
        """A `BreakerBoard` `on_transition`: this process moved `service`'s breaker."""
        self.transitions.labels(service, old, new).inc()


def _service(service: str | None) -> str:
    return service or "-"  # a Python step calls no service


class StoreGauges(Collector):
    """Queue and breaker gauges from the database, refreshed every `interval` seconds.

    A database that cannot answer keeps the last snapshot (and logs once); the gauges are
    then as old as `sagalab_store_gauges_age_seconds` says.
    """

    def __init__(
        self, db: str | Path, *, interval: float = 1.0, clock: Callable[[], float] = time.time
    ) -> None:
        self.db = db
        self.interval = interval
        self.clock = clock
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._queue: dict[str, float] = {}
        self._breakers: list[dict[str, Any]] = []
        self._read_at: float | None = None
        self._failing = False
        self._thread = threading.Thread(target=self._loop, name="store-gauges", daemon=True)

    def start(self) -> StoreGauges:
        """Read once now (a first scrape has numbers), then every `interval` in a thread."""
        self.refresh()
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop the refreshing thread."""
        self.stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self.stop.wait(self.interval):
            self.refresh()

    def refresh(self) -> None:
        """Read queue stats and breaker rows once (keeping the last on a database error)."""
        try:
            store = open_store(self.db, readonly=True)
            try:
                queue = store.queue_stats(self.clock())
            finally:
                with contextlib.suppress(*store_failures()):
                    store.close()
            breakers = breaker_rows(self.db)
        except Exception as exc:  # any database trouble: keep the last numbers, say it once
            if not self._failing:
                log.warning("metrics: cannot read the queue from the database: %s", exc)
            self._failing = True
            return
        self._failing = False
        with self._lock:
            self._queue = queue
            self._breakers = breakers
            self._read_at = time.monotonic()

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            queue, breakers, read_at = dict(self._queue), list(self._breakers), self._read_at
        if read_at is None:
            return []
        found: list[Metric] = [
            GaugeMetricFamily(
                "sagalab_queue_depth",
                "Queued sagas due now that no worker holds.",
                value=queue.get("depth", 0.0),
            ),
            GaugeMetricFamily(
                "sagalab_queue_leased",
                "Sagas under a live worker lease.",
                value=queue.get("leased", 0.0),
            ),
            GaugeMetricFamily(
                "sagalab_queue_oldest_age_seconds",
                "Seconds the oldest due saga has waited.",
                value=queue.get("oldest_age", 0.0),
            ),
            GaugeMetricFamily(
                "sagalab_store_gauges_age_seconds",
                "Seconds since these gauges were read.",
                value=time.monotonic() - read_at,
            ),
        ]
        state = GaugeMetricFamily(
            "sagalab_breaker_state",
            "1 for the state each service's shared circuit breaker is in, else 0.",
            labels=["service", "state"],
        )
        for row in breakers:
            name = str(row["name"])
            for candidate in ("closed", "open", "half-open"):
                state.add_metric([name, candidate], 1.0 if row["state"] == candidate else 0.0)
        return [*found, state]


class SupervisorGauges(Collector):
    """A supervisor's replica count and restarts, read at each scrape (no database)."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def collect(self) -> Iterable[Metric]:
        replicas = GaugeMetricFamily(
            "sagalab_worker_replicas",
            "Worker processes this supervisor runs now (retiring ones not counted).",
            value=len(self.supervisor.children),
        )
        restarts = CounterMetricFamily(
            "sagalab_worker_replica_restarts",
            "Replicas that died and were replaced.",
            value=self.supervisor.restarts,
        )
        return [replicas, restarts]


def serve(registry: CollectorRegistry, port: int) -> tuple[Any, int]:
    """prometheus_client's HTTP server for `registry` on 127.0.0.1:`port` (0 picks a free
    one), in a daemon thread; (server, the port it listens on). OSError if it cannot bind."""
    server, _thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    return server, int(server.server_port)


def multiprocess_dir() -> Path:
    """A fresh directory for the replicas' metric files (the caller deletes it)."""
    return Path(tempfile.mkdtemp(prefix="sagalab-metrics-"))


def multiprocess_registry(directory: Path) -> CollectorRegistry:
    """A registry summing the metric files every replica wrote in `directory`."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    return registry


def remove_dir(directory: Path) -> None:
    """Delete the replicas' metric files (on the supervisor's exit)."""
    shutil.rmtree(directory, ignore_errors=True)


def multiprocess_child() -> bool:
    """True in a replica whose supervisor collects its metrics (its directory is set)."""
    value = os.environ.get(MULTIPROC_ENV)
    return value is not None and value != "" and Path(value).is_dir()

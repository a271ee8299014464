"""The store port: the records a saga store returns and the protocols it answers.

Everything the runtime (runner, worker, lease keeper, supervisor), the HTTP API and the CLI
ask of storage is a protocol here: `SagaStore` (sagas and their journal), `QueueStore` (the
durable queue and its leases: claim, renew, release, park, requeue, stuck, stats),
`ScalingStore` (the supervisor's decisions), `BatchStore` (bulk operator batches and each
saga's outcome in them), all four together as `Store` (with `ping()` for readiness), and
`BreakerStore` (circuit breaker state shared by every process on one
database). `open_store` and `open_breaker_store` (orchestrator/stores.py) are the one place
that maps a URL or path to a backend: SQLite (orchestrator/sqlite_store.py and
orchestrator/sqlite_breakers.py, the only modules that import `sqlite3` or name
`SQLiteStore`) and PostgreSQL (orchestrator/postgres_store.py and
orchestrator/postgres_breakers.py, the only ones that import `psycopg`);
tests/test_store_imports.py keeps it so. Both pass tests/store_conformance/.

A store opened read-only (`open_store(..., readonly=True)`) never creates or changes a file:
every write it is asked for fails with `StoreError`.

`CopyStore` (part of `Store`) moves a whole database between backends (`sagalab db copy`,
orchestrator/dbcopy.py): every table of `COPY_COLUMNS` as rows of those neutral columns, read
from one consistent snapshot and written in one transaction.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from sagalab.orchestrator.flow import FlowDefinition
from sagalab.orchestrator.journal import JournalEntry
from sagalab.orchestrator.records import direct_init
from sagalab.orchestrator.saga import SagaState, SagaStatus
from sagalab.orchestrator.sagafilter import SagaFilter

if TYPE_CHECKING:
    from sagalab.orchestrator.policies.breaker import BreakerStorage

#: The tenant of sagas created before tenants existed, and of those the CLI creates locally.
DEFAULT_TENANT = "default"


class Access(enum.Enum):
    """What a command will do with a database, which decides what is refused."""

    READ = "read"  # an existing database, opened read-only: nothing is ever written
    WRITE = "write"  # an existing database, written
    CREATE = "create"  # written, and created (with its directory) if missing


Guard = Callable[[], None]
"""Called before every write (a process's database watchdog); raises to stop it."""


@direct_init
@dataclass(frozen=True)
class SagaRecord:
    """A saga's current row: identity, flow snapshot, input and materialised status."""

    id: str
    flow: FlowDefinition
    input: dict[str, Any]
    status: SagaStatus
    trace_id: str
    idempotency_key: str | None
    reason: str | None
    created_at: float
    updated_at: float
    last_seq: int
    tenant: str = DEFAULT_TENANT
    #: The saga this one was forked from (`operations.fork`), or None.
    forked_from: str | None = None
    #: Why the stored row could not be read as written (set by listings only, which show
    #: such a row rather than fail; everything else refuses it with `DamagedRecord`).
    damaged: str | None = None


@dataclass(frozen=True)
class Lease:
    """A worker's claim on a saga until `until`; `epoch` fences off earlier holders."""

    saga_id: str
    owner: str
    epoch: int
    until: float


@dataclass(frozen=True)
class StepRow:
    """Materialised status of one step, for listings and the status timeline."""

    name: str
    index: int
    status: str
    attempts: int
    compensation_attempts: int
    last_error: str | None


StepFields = tuple[str, str, int, int, str | None]


def step_fields(state: SagaState) -> list[StepFields]:
    """(name, status, attempts, compensation attempts, last error) per step, in flow order."""
    fields = []
    # `state.steps` holds every step of the flow, in flow order (`SagaState.__init__`).
    for p in state.steps.values():
        action, compensation = p.action, p.compensation
        failure = compensation.last_failure or action.last_failure
        fields.append(
            (
                p.name,
                p.display_status,
                action.attempts,
                compensation.attempts,
                None if failure is None else failure.error,
            )
        )
    return fields


@dataclass(frozen=True)
class SagaPage:
    """A saga as `GET /v1/sagas/{id}` shows it: its row, its step rows and its forks, read
    by `SagaStore.page` in one statement (one snapshot: the steps are the record's)."""

    record: SagaRecord
    steps: list[StepRow]
    forks: list[str]


def step_rows(state: SagaState, names: Sequence[str] | None = None) -> list[StepRow]:
    """Step rows derived from `state` (all steps, or only `names`)."""
    return [
        StepRow(name, index, status, attempts, compensation_attempts, last_error)
        for index, (name, status, attempts, compensation_attempts, last_error) in enumerate(
            step_fields(state)
        )
        if names is None or name in names
    ]


#: `json.dumps(..., sort_keys=True, default=str)` with its encoder made once, not per call.
_canonical_json = json.JSONEncoder(sort_keys=True, default=str).encode


def input_fingerprint(flow_name: str, flow_version: int, payload: dict[str, Any]) -> str:
    """What an idempotency key is bound to: flow and canonical input."""
    canonical = _canonical_json([flow_name, flow_version, payload])
    return hashlib.sha256(canonical.encode()).hexdigest()


class SagaStore(Protocol):
    """Durable saga storage. Every method is atomic; `append` is the only hot path."""

    def create_saga(
        self,
        *,
        saga_id: str,
        flow: FlowDefinition,
        payload: dict[str, Any],
        trace_id: str,
        idempotency_key: str | None,
        now: float,
        run_after: float | None = None,
        initial: Sequence[JournalEntry] = (),
        state: SagaState | None = None,
        tenant: str = DEFAULT_TENANT,
        forked_from: str | None = None,
    ) -> tuple[SagaRecord, bool]:
        """Store a new saga of `tenant` with its SAGA_CREATED event (queued if `run_after` is
        set; `initial` entries follow in the same transaction, `state` is their fold); for a
        key the same tenant used before, (that saga, False), or IdempotencyConflict if its
        input differs (keys are unique per tenant). `forked_from` links a fork to the saga it
        was forked from (stored as is, shown by `load` and listings)."""
        ...

    def load(self, saga_id: str, *, tenant: str | None = None) -> SagaRecord:
        """The saga's row (SagaNotFoundError if unknown, or if `tenant` is given and the saga
        belongs to another: another tenant's saga does not exist for the caller)."""
        ...

    def journal(self, saga_id: str) -> list[JournalEntry]:
        """Every journal entry of the saga, in order (SagaNotFoundError if unknown)."""
        ...

    def state(self, saga_id: str) -> tuple[SagaRecord, list[JournalEntry], SagaState]:
        """Record, journal and their fold, read in one consistent snapshot."""
        ...

    def append(
        self,
        saga_id: str,
        entries: Sequence[JournalEntry],
        *,
        expected_seq: int,
        state: SagaState,
        now: float,
        lease: Lease | None = None,
    ) -> int:
        """Append entries atomically after `expected_seq`; return the new last seq.

        Raises ConcurrentUpdate if another writer appended first, and LeaseLost if `lease`
        is no longer the saga's current, unexpired lease: the check and the write are one
        statement (fencing), so a writer whose lease was taken over never lands an entry.
        """
        ...

    def steps(self, saga_id: str) -> list[StepRow]:
        """Materialised step rows of the saga, in flow order ([] for an unknown id)."""
        ...

    def forks(self, saga_id: str) -> list[str]:
        """Ids of the sagas forked from `saga_id` (their `forked_from`), oldest first; [] if
        none (or the id is unknown)."""
        ...

    def page(self, saga_id: str, *, tenant: str | None = None) -> SagaPage:
        """`load`, `steps` and `forks` in one statement, the same one every time (kept
        prepared by the driver): the API's read of a saga. SagaNotFoundError as `load`."""
        ...

    def list_sagas(
        self,
        *,
        status: SagaStatus | None = None,
        flow: str | None = None,
        limit: int = 50,
        tenant: str | None = None,
    ) -> list[SagaRecord]:
        """Most recent sagas first, optionally filtered (`tenant` None: every tenant's)."""
        ...

    def find_sagas(self, criteria: SagaFilter) -> list[SagaRecord]:
        """The sagas `criteria` selects (orchestrator/sagafilter.py says what each criterion
        means), newest first (created_at, then id), at most `criteria.limit`; filtered in
        the database, never by reading journals. SagaNotFoundError if `criteria.after`
        names no saga."""
        ...

    def count_by_status(self) -> dict[str, int]:
        """How many sagas are in each status (statuses with none are absent)."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...


class QueueStore(Protocol):
    """The durable queue of sagas for workers, and the leases that fence their writers.

    A lease's `epoch` grows with every claim of the saga: an append fenced by an older epoch
    is refused (`SagaStore.append`), and so are renewals and releases of a lost lease.
    """

    def claim_next(self, owner: str, *, now: float, lease_seconds: float) -> Lease | None:
        """Lease the saga due longest ago whose lease is free or expired (None if none is).
        Atomic: two claimers never get the same saga."""
        ...

    def claim_due(self, owner: str, *, now: float, lease_seconds: float, limit: int) -> list[Lease]:
        """Lease up to `limit` sagas due longest ago whose lease is free or expired, in one
        transaction, oldest due first ([] if none is, or `limit` < 1). Atomic: two claimers
        never get the same saga; each lease has its saga's next epoch."""
        ...

    def claim(
        self,
        saga_id: str,
        owner: str,
        *,
        now: float,
        lease_seconds: float,
        take_over: Callable[[str], bool] = ...,
    ) -> Lease:
        """Lease one saga (queued at `now` if it was not); LeaseHeld while another owner's
        live lease holds it, unless `take_over(owner)` says that owner is gone."""
        ...

    def check_lease_free(
        self, saga_id: str, *, now: float, take_over: Callable[[str], bool] = ...
    ) -> None:
        """LeaseHeld if `claim` would refuse the saga now; nothing otherwise."""
        ...

    def renew(self, lease: Lease, *, now: float, lease_seconds: float) -> Lease | None:
        """The lease extended to `now + lease_seconds`; None if it was lost meanwhile."""
        ...

    def renew_many(self, leases: Sequence[Lease], *, now: float, lease_seconds: float) -> set[str]:
        """Extend every lease still held (same owner and epoch, not expired) to `now +
        lease_seconds` in one statement; return the saga ids of those that were lost."""
        ...

    def release(self, lease: Lease, *, run_after: float | None) -> bool:
        """Give the saga back, due again at `run_after` (off the queue if None); False if
        `lease` no longer holds it."""
        ...

    def park(self, lease: Lease, *, reason: str) -> bool:
        """Give the saga back off the queue with `reason` (it waits for an operator)."""
        ...

    def requeue(self, saga_id: str, run_after: float) -> None:
        """Put the saga (back) on the queue, due at `run_after`; a held lease stays."""
        ...

    def notify_queued(self) -> None:
        """Wake idle workers: a saga is due now (orchestrator/wake.py). Called by the store
        itself after a commit that queues a saga due now (create_saga with run_after,
        release, requeue); a hint only, it never raises."""
        ...

    def stuck(self, *, now: float) -> list[str]:
        """Active sagas nobody runs (lease expired, or never queued), oldest first."""
        ...

    def queue_stats(self, now: float) -> dict[str, float]:
        """`depth` (queued, unleased), `leased` (under a live lease) and `oldest_age` (s)."""
        ...


class ScalingStore(Protocol):
    """The supervisor's autoscaling decisions, for operators and tests."""

    def record_scaling(
        self, *, at: float, before: int, after: int, depth: int, oldest_age: float, reason: str
    ) -> None:
        """Journal one decision."""
        ...

    def scaling_events(self, limit: int = 100) -> list[dict[str, Any]]:
        """The most recent `limit` decisions, oldest first."""
        ...


#: What `sagalab db copy` moves, table by table, in the order it is written (a journal after
#: its saga), each as these columns: the same names on every backend. A saga's flow is its
#: `flow_hash` into `flow_snapshots`; `breakers` and `breaker_events` are the shared breaker
#: state (`BreakerStore`) kept in the same database; `batches` and `batch_sagas` the operators'
#: bulk batches (`BatchStore`), so `orchestrate batch list|show` reads the same after a copy.
COPY_COLUMNS: dict[str, tuple[str, ...]] = {
    "flow_snapshots": ("hash", "body"),
    "sagas": (
        "id", "flow_name", "flow_version", "flow_hash", "input", "input_hash",
        "idempotency_key", "status", "trace_id", "reason", "created_at", "updated_at",
        "last_seq", "steps", "run_after", "lease_owner", "lease_until", "lease_epoch",
        "tenant", "forked_from",
    ),
    "events": (
        "saga_id", "seq", "type", "step", "phase", "attempt", "at", "failure", "not_before",
        "reason", "force", "request", "response", "status_code", "duration_ms", "trace_id",
        "span_id",
    ),
    "breakers": (
        "name", "state", "fail_counter", "success_counter", "opened_time", "probe_until",
        "updated_at",
    ),
    "breaker_events": ("at", "name", "old", "new", "owner"),
    "scaling_events": ("at", "replicas_from", "replicas_to", "depth", "oldest_age", "reason"),
    "batches": ("id", "action", "filter", "options", "created_at", "finished_at"),
    "batch_sagas": ("batch_id", "position", "saga_id", "outcome", "detail", "at"),
}  # fmt: skip
COPY_TABLES: tuple[str, ...] = tuple(COPY_COLUMNS)

Rows = list[dict[str, Any]]
Batches = Iterable[tuple[str, Rows]]
"""(table, rows) pairs in `COPY_TABLES` order: what an export yields and an import takes."""


def shown_counts(counts: dict[str, int]) -> str:
    """'3 sagas, 12 events' for the tables of `counts` that have rows ('no rows' if none)."""
    return ", ".join(f"{n} {table}" for table, n in counts.items() if n) or "no rows"


@dataclass(frozen=True)
class Export:
    """A database read for copying: its row `counts` per table and the rows themselves in
    `batches`, both from one snapshot (valid while the `export` context is open)."""

    counts: dict[str, int]
    batches: Iterator[tuple[str, Rows]]


class CopyStore(Protocol):
    """A whole database, read and written table by table (`sagalab db copy`)."""

    def table_counts(self) -> dict[str, int]:
        """Rows per `COPY_TABLES` table (0 for each: an empty database)."""
        ...

    def export(self, *, batch_size: int = 500) -> AbstractContextManager[Export]:
        """Every row of every `COPY_TABLES` table as neutral `COPY_COLUMNS` rows, in a
        stable order (journals by saga and seq, histories as written), read in one
        consistent snapshot held while the context is open. Writes nothing."""
        ...

    def import_rows(self, batches: Batches, *, merge: bool = False) -> dict[str, int]:
        """Write `batches` (in `COPY_TABLES` order) in one transaction: all or nothing.
        Returns the rows inserted per table.

        Without `merge`, CopyRefused (nothing written) unless the database is empty. With
        `merge`, the rows join what is there: a flow snapshot already there (same content
        hash) and a breaker of a name already there are kept as they are (not counted); a
        saga id, or a tenant's idempotency key, already there is CopyRefused.
        """
        ...


#: What became of one saga of a bulk batch: None (not reached yet), ACTING (the action was
#: started; a run cut short there is judged again when the batch resumes), or one of the ends.
ACTING, ACTED, SKIPPED, FAILED = "acting", "acted", "skipped", "failed"
BATCH_OUTCOMES = (ACTING, ACTED, SKIPPED, FAILED)


@dataclass(frozen=True)
class BatchItem:
    """One saga of a batch, in the order it is acted on."""

    saga_id: str
    position: int
    outcome: str | None
    detail: str | None
    at: float | None


@dataclass(frozen=True)
class BatchRecord:
    """A bulk action: what, on which filter, with which options, and the sagas it matched
    when it started (frozen then: a saga that matches later is not in it)."""

    id: str
    action: str
    filter: dict[str, Any]
    options: dict[str, Any]
    created_at: float
    finished_at: float | None
    items: tuple[BatchItem, ...]

    def pending(self) -> list[BatchItem]:
        """The items not finished: never reached, or started by a run that was cut short."""
        return [i for i in self.items if i.outcome in (None, ACTING)]


class BatchStore(Protocol):
    """Bulk batches, recorded so that a killed batch resumes without acting twice."""

    def create_batch(
        self,
        *,
        batch_id: str,
        action: str,
        filter: dict[str, Any],
        options: dict[str, Any],
        saga_ids: Sequence[str],
        now: float,
    ) -> BatchRecord:
        """Store a new batch and its sagas, in order, none reached yet (one transaction)."""
        ...

    def load_batch(self, batch_id: str) -> BatchRecord:
        """The batch with every item (BatchNotFoundError if unknown)."""
        ...

    def record_batch_outcome(
        self, batch_id: str, saga_id: str, *, outcome: str, detail: str | None, now: float
    ) -> None:
        """Set what became of `saga_id` in the batch (one of BATCH_OUTCOMES)."""
        ...

    def claim_batch_item(self, batch_id: str, seen: BatchItem, *, owner: str, now: float) -> bool:
        """Mark `seen` ACTING for `owner` if it is still as `seen` (its outcome and detail);
        False if another run of the batch changed it first. One statement: of two runs of a
        batch that claim one item, one gets it."""
        ...

    def finish_batch(self, batch_id: str, *, now: float) -> None:
        """Mark the batch finished (every item has an end)."""
        ...

    def list_batches(self, *, limit: int = 20) -> list[BatchRecord]:
        """The most recent batches first, with their items."""
        ...


class Store(SagaStore, QueueStore, ScalingStore, CopyStore, BatchStore, Protocol):
    """Everything the runtime, the API and the CLI use, on one database.

    One handle per thread. `path` names where it lives (the file, for SQLite: what a
    process's database watchdog watches).
    """

    path: Path
    read_only: bool

    def ping(self) -> None:
        """Raise StoreError unless the database is there, is a saga database, and answers
        (the API's readiness check)."""
        ...


class BreakerStore(Protocol):
    """Circuit breaker state shared by every process on one database, and its history."""

    def storage(self, name: str, clock: Callable[[], float]) -> BreakerStorage:
        """The shared state of breaker `name`, as a breaker policy's storage."""
        ...

    def record_transition(
        self, name: str, now: float, new: str, *, owner: str, old: str | None = None
    ) -> str | None:
        """Log that `name` moved to `new`: the state it moved from, or None for no change.

        `old` given: the caller's compare-and-set made this very move, so it is logged as
        `old -> new` whatever the log's last entry (a racer's earlier move may reach the log
        after it; the log is read in time order). `old` None: logged unless the log already
        has it there, the log's last state as the old one (atomic across processes)."""
        ...

    def rows(self) -> list[dict[str, Any]]:
        """Every breaker's shared state (with `transitions` and `damaged`), by name."""
        ...

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """Transitions (of one breaker, or all), oldest first."""
        ...

    def reset(self, name: str, *, now: float) -> bool:
        """Close breaker `name` by hand; False if there is none of that name."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...

"""The PostgreSQL saga store: `PostgresStore` implements `Store` (orchestrator/store.py).

`orchestrator.stores.open_store` opens it for a `postgresql://` (or `postgres://`) URL; this
module and orchestrator/postgres_breakers.py are the only ones that import `psycopg`.

Theory of operation. One connection per handle (one handle per thread, as on SQLite), in
autocommit mode: most writes are one statement, hence one transaction and one round trip.
An append is a single `WITH moved AS (UPDATE sagas ... WHERE last_seq = expected AND <the
lease fence>) INSERT INTO events ... FROM moved` statement: the expected seq, the lease
epoch and the lease's expiry are checked by the same statement that writes, so a writer
whose lease was taken over never lands an entry. A claim is `UPDATE ... WHERE id = (SELECT
... FOR UPDATE SKIP LOCKED)`: claimers on many hosts never wait on each other's rows.

Time. Callers pass `now` on their own clock. Lease expiry and queue due times are judged on
the database's clock: each handle measures the offset of the database clock
(`clock_timestamp()`) from its host's when it connects and once a minute after (a host's
clock stepped by NTP is caught up with), rounded to whole seconds (clocks that
agree within half a second count as agreeing, so handles on one host share one frame), and
adds it to every `now` and `run_after` it stores or compares. A worker whose clock runs
minutes behind still sees its lease expire when the database says, not later. `Lease.until`
is returned on the caller's clock.

A lost connection (server restart, network cut) raises `StoreError` from the call that met
it, as a SQLite error does; the next call reconnects. Nothing is retried here: the worker
backs off and its lease fence keeps any late write out.

The schema version lives in `meta`; `MIGRATIONS` (under an advisory lock, so that several
processes opening a new database race safely) brings an older schema up to date.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from sagalab.orchestrator.errors import (
    BatchNotFoundError,
    ConcurrentUpdate,
    CopyRefused,
    IdempotencyConflict,
    LeaseHeld,
    LeaseLost,
    SagaNotFoundError,
    StoreError,
    StoreUnavailable,
)
from sagalab.orchestrator.flow import FlowDefinition, flow_from_dict, flow_to_dict
from sagalab.orchestrator.journal import JournalEntry, entry_to_row
from sagalab.orchestrator.redact import redacted, secrets_in
from sagalab.orchestrator.saga import Event, EventType, SagaState, SagaStatus
from sagalab.orchestrator.sagafilter import InputMatch, SagaFilter
from sagalab.orchestrator.store import (
    ACTING,
    COPY_COLUMNS,
    COPY_TABLES,
    DEFAULT_TENANT,
    Access,
    Batches,
    BatchItem,
    BatchRecord,
    Export,
    Guard,
    Lease,
    SagaPage,
    SagaRecord,
    StepRow,
    input_fingerprint,
    shown_counts,
    step_fields,
)
from sagalab.orchestrator.store_rows import (
    FilterDialect,
    batch_record,
    journal_entry,
    saga_filter_sql,
    saga_record,
    steps_from_json,
    steps_json,
)
from sagalab.orchestrator.wake import Waker, due_now

__all__ = [
    "DRIVER_ERRORS",
    "KEY_TABLES",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "PostgresStore",
    "check_postgres",
    "connect",
    "database_identity",
    "open_postgres_store",
    "redacted",
]

T = TypeVar("T")

#: What psycopg raises past a store method: callers that must survive any failure catch it.
DRIVER_ERRORS: tuple[type[Exception], ...] = (psycopg.Error,)

# v1: everything the SQLite store had by its v6, in PostgreSQL's types.
_V1 = """
CREATE TABLE flow_snapshots (
    hash TEXT PRIMARY KEY,
    body TEXT NOT NULL
);
CREATE TABLE sagas (
    id TEXT PRIMARY KEY,
    flow_name TEXT NOT NULL,
    flow_version INTEGER NOT NULL,
    flow_hash TEXT NOT NULL,
    input TEXT NOT NULL,
    input_hash TEXT NOT NULL,
    idempotency_key TEXT UNIQUE,
    status TEXT NOT NULL,
    trace_id TEXT NOT NULL,
    reason TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    last_seq INTEGER NOT NULL,
    steps TEXT NOT NULL DEFAULT '[]',
    run_after DOUBLE PRECISION,
    lease_owner TEXT,
    lease_until DOUBLE PRECISION,
    lease_epoch BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS sagas_by_created ON sagas (created_at);
CREATE INDEX IF NOT EXISTS sagas_by_status ON sagas (status, created_at);
CREATE INDEX IF NOT EXISTS sagas_queue ON sagas (run_after) WHERE run_after IS NOT NULL;
CREATE TABLE events (
    saga_id TEXT NOT NULL REFERENCES sagas (id),
    seq INTEGER NOT NULL,
    type TEXT NOT NULL,
    step TEXT,
    phase TEXT,
    attempt INTEGER NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    failure TEXT,
    not_before DOUBLE PRECISION,
    reason TEXT,
    force INTEGER NOT NULL DEFAULT 0,
    request TEXT,
    response TEXT,
    status_code INTEGER,
    duration_ms DOUBLE PRECISION,
    trace_id TEXT NOT NULL,
    span_id TEXT,
    PRIMARY KEY (saga_id, seq)
);
CREATE TABLE scaling_events (
    id BIGSERIAL PRIMARY KEY,
    at DOUBLE PRECISION NOT NULL,
    replicas_from INTEGER NOT NULL,
    replicas_to INTEGER NOT NULL,
    depth INTEGER NOT NULL,
    oldest_age DOUBLE PRECISION NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE breakers (
    name TEXT PRIMARY KEY,
    state TEXT NOT NULL DEFAULT 'closed',
    fail_counter INTEGER NOT NULL DEFAULT 0,
    success_counter INTEGER NOT NULL DEFAULT 0,
    opened_time DOUBLE PRECISION,
    probe_until DOUBLE PRECISION,
    updated_at DOUBLE PRECISION
);
CREATE TABLE breaker_events (
    id BIGSERIAL PRIMARY KEY,
    at DOUBLE PRECISION NOT NULL,
    name TEXT NOT NULL,
    old TEXT NOT NULL,
    new TEXT NOT NULL,
    owner TEXT
);
"""

# v2: every saga belongs to a tenant; idempotency keys are unique per tenant (SQLite's v7).
_V2 = f"""
ALTER TABLE sagas ADD COLUMN IF NOT EXISTS tenant TEXT NOT NULL DEFAULT '{DEFAULT_TENANT}';
ALTER TABLE sagas DROP CONSTRAINT IF EXISTS sagas_idempotency_key_key;
CREATE INDEX IF NOT EXISTS sagas_by_tenant ON sagas (tenant, created_at);
CREATE UNIQUE INDEX IF NOT EXISTS sagas_by_idempotency_key ON sagas (tenant, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
"""

# v3: a fork names the saga it was forked from (SQLite's v8).
_V3 = """
ALTER TABLE sagas ADD COLUMN IF NOT EXISTS forked_from TEXT;
CREATE INDEX IF NOT EXISTS sagas_by_forked_from ON sagas (forked_from)
    WHERE forked_from IS NOT NULL;
"""

# v4: bulk batches (SQLite's v9), and a JSON reading that gives NULL for a damaged document
# instead of failing the whole query (`find_sagas` reads inputs and step documents as jsonb).
_V4 = """
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY,
    action TEXT NOT NULL,
    filter TEXT NOT NULL,
    options TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    finished_at DOUBLE PRECISION
);
CREATE TABLE IF NOT EXISTS batch_sagas (
    batch_id TEXT NOT NULL REFERENCES batches (id),
    position INTEGER NOT NULL,
    saga_id TEXT NOT NULL,
    outcome TEXT,
    detail TEXT,
    at DOUBLE PRECISION,
    PRIMARY KEY (batch_id, position)
);
CREATE INDEX IF NOT EXISTS batch_sagas_by_saga ON batch_sagas (batch_id, saga_id);
CREATE OR REPLACE FUNCTION sagalab_jsonb(doc TEXT) RETURNS jsonb AS $$
BEGIN
    RETURN doc::jsonb;
EXCEPTION WHEN others THEN
    RETURN NULL;
END
$$ LANGUAGE plpgsql IMMUTABLE;
"""

# Where a saga stopped (`sagafilter.stopped_at`) and `--error`, as orchestrator/sqlite_store.py
# reads them from the `sagas.steps` document.
_STOPPED_AT = (
    "SELECT e ->> 'name' FROM jsonb_array_elements(CASE WHEN jsonb_typeof("
    "sagalab_jsonb(sagas.steps)) = 'array' THEN sagalab_jsonb(sagas.steps) ELSE '[]' END) "
    "WITH ORDINALITY AS t(e, i) WHERE (e ->> 'attempts')::numeric > 0 ORDER BY i DESC LIMIT 1"
)
_ERROR_MATCH = (
    "(strpos(lower(coalesce(reason, '')), lower(%s)) > 0 OR EXISTS (SELECT 1 FROM "
    "jsonb_array_elements(CASE WHEN jsonb_typeof(sagalab_jsonb(sagas.steps)) = 'array' "
    "THEN sagalab_jsonb(sagas.steps) ELSE '[]' END) AS e WHERE "
    "strpos(lower(coalesce(e ->> 'last_error', '')), lower(%s)) > 0))"
)


def _input_match(match: InputMatch) -> tuple[str, list[Any]]:
    """SQL for one `--input key=value` (any of its candidate values), and its arguments."""
    candidates = [json.dumps(v) for v in match.candidates()]
    return "(sagalab_jsonb(input) -> %s) = ANY(%s::jsonb[])", [match.key, candidates]


_FILTER_SQL = FilterDialect(
    placeholder="%s",
    true="TRUE",
    stopped_at=_STOPPED_AT,
    error_match=_ERROR_MATCH,
    statuses=lambda values: ("status = ANY(%s)", [list(values)]),
    input_match=_input_match,
)

# Every step after v1's tables runs again harmlessly (IF [NOT] EXISTS): a database whose
# columns and indexes are there but whose recorded version is older (a migration replayed
# by hand, a version row restored from a backup) is brought up to date, not refused.
MIGRATIONS: tuple[str, ...] = (_V1, _V2, _V3, _V4)
SCHEMA_VERSION = len(MIGRATIONS)
#: The API key tables (edge/postgres_keys.py), which may live beside the sagas: not this
#: store's, so a database holding only them is still an empty saga database.
KEY_TABLES = frozenset({"api_keys", "api_keys_meta"})
_MIGRATION_LOCK = 0x5A6A_1AB0  # pg_advisory_xact_lock key: one migrating process at a time
_HINT = "pass another URL with --db or SAGALAB_DB"
#: The server's answer to a connection naming a database it does not have.
_MISSING_DATABASE = re.compile(r'FATAL: +database ".*" does not exist')
_REMEASURE_SECONDS = 60.0  # how often a handle checks its host's clock against the database's
_CONNECT_TIMEOUT = 5  # seconds: an unreachable server is an error soon, not a hang
#: libpq settings that make a dead server or a cut network an error within seconds.
_LIVENESS: dict[str, int] = {
    "connect_timeout": _CONNECT_TIMEOUT,
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,  # ms: unacknowledged data for this long ends the connection
}

# The journal columns a JSON array of `entry_to_row` dicts is read as (one statement
# inserts them all).
_ENTRY_COLUMNS = (
    "seq INTEGER, type TEXT, step TEXT, phase TEXT, attempt INTEGER, at DOUBLE PRECISION, "
    "failure TEXT, not_before DOUBLE PRECISION, reason TEXT, force INTEGER, request TEXT, "
    "response TEXT, status_code INTEGER, duration_ms DOUBLE PRECISION, span_id TEXT"
)
_INSERT_ENTRIES = (
    "INSERT INTO events (saga_id, seq, type, step, phase, attempt, at, failure, not_before, "
    "reason, force, request, response, status_code, duration_ms, trace_id, span_id) "
    "SELECT {source}.id, e.seq, e.type, e.step, e.phase, e.attempt, e.at, e.failure, "
    "e.not_before, e.reason, e.force, e.request, e.response, e.status_code, e.duration_ms, "
    "{source}.trace_id, e.span_id "
    f"FROM {{source}}, jsonb_to_recordset(%(entries)s::jsonb) AS e({_ENTRY_COLUMNS}) "
    "RETURNING seq"
)


def _failure(url: str, exc: BaseException) -> str:
    # psycopg's messages can span lines (a DETAIL, a HINT): one line for the CLI. A message
    # about a malformed URL may quote a token of it, the password's included: masked.
    text = " ".join(str(exc).split()) or type(exc).__name__
    return redacted(text, url=url)


# SQLSTATE classes of a server that is there but cannot serve now: 08 connection exception,
# 53 insufficient resources (too many connections), 57 operator intervention (shutting
# down, starting up, crash recovery).
_TRANSIENT_CLASSES = ("08", "53", "57")
# psycopg gives no SQLSTATE for a failed connection attempt, only libpq's text: a server's
# refusal is a "FATAL:" line; these FATALs are the 57P03/53300 ones, which pass.
_TRANSIENT_FATALS = ("the database system is", "too many clients", "too many connections")


def _transient(exc: psycopg.OperationalError) -> bool:
    """Whether a failed connection may succeed later (StoreUnavailable): no answer at all
    (connection refused, a timeout, a host not resolved: the server is down or restarting)
    or a server starting up, shutting down or full. Not a server that answered no: wrong
    credentials, a missing database, a pg_hba.conf rule (a plain StoreError)."""
    state = exc.sqlstate
    if state is not None:
        return state.startswith(_TRANSIENT_CLASSES)
    text = str(exc)
    if "FATAL:" not in text:
        return True
    return any(phrase in text for phrase in _TRANSIENT_FATALS)


def _error_for(exc: psycopg.Error) -> type[StoreError]:
    """StoreUnavailable for a connection refused or lost (a server restarting: it may pass,
    and a worker backs off on it, also while it opens its store), else StoreError."""
    if isinstance(exc, psycopg.OperationalError) and _transient(exc):
        return StoreUnavailable
    return StoreError


def connect(url: str, *, readonly: bool = False, create: bool = False) -> psycopg.Connection:
    """An autocommit connection to `url` (StoreError, password masked, if there is none).

    With `create`, a database the server does not have yet is created (as SQLite creates a
    missing file); `readonly` connections refuse every write in the server as well.
    """
    try:
        given = psycopg.conninfo.conninfo_to_dict(url)
        # A cut network (no RST, no FIN) would hang a call for the kernel's retransmission
        # time (minutes): these bound it to seconds, unless the URL says otherwise.
        settings: dict[str, Any] = {k: v for k, v in _LIVENESS.items() if k not in given}
        if readonly:
            own = str(given.get("options") or "")
            settings["options"] = f"{own} -c default_transaction_read_only=on".strip()
        return psycopg.connect(url, autocommit=True, **settings)
    except psycopg.OperationalError as exc:
        if create and "does not exist" in str(exc) and _create_database(url):
            return connect(url, readonly=readonly)
        raise _error_for(exc)(
            f"cannot connect to PostgreSQL at {redacted(url)}: {_failure(url, exc)}; "
            f"{_next_step(exc)}"
        ) from None
    except (psycopg.Error, UnicodeError) as exc:  # a malformed URL (%80: not UTF-8), say
        detail = _failure(url, exc)
        if secrets_in(url):  # the parser's detail may quote a piece of the password
            detail = "not a valid PostgreSQL URL (percent-encode special characters in it)"
        raise StoreError(f"cannot use {redacted(url)}: {detail}; {_HINT}") from None


def _next_step(exc: psycopg.OperationalError) -> str:
    """What to do about a failed connection: a server that answered runs (a missing
    database is created, not the server started); one that did not may need starting."""
    if _MISSING_DATABASE.search(str(exc)):
        return (
            "the server runs but has no such database: create it (createdb NAME, or the "
            f"first `sagalab orchestrate run --db URL` does) or {_HINT}"
        )
    if not _transient(exc):
        return f"the server answered: check the URL's user, password and database, or {_HINT}"
    return f"start the server or {_HINT}"


def _create_database(url: str) -> bool:
    """CREATE DATABASE for the database `url` names, through the server's `postgres` one."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    name = info.get("dbname")
    if not name or name == "postgres":
        return False
    info["dbname"] = "postgres"
    try:
        with psycopg.connect(
            psycopg.conninfo.make_conninfo(**info),  # type: ignore[arg-type]
            autocommit=True,
            connect_timeout=_CONNECT_TIMEOUT,
        ) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(str(name))))
    except psycopg.errors.DuplicateDatabase:
        return True  # another process created it first
    except psycopg.Error:
        return False
    return True


def _schema_version(conn: psycopg.Connection, url: str, access: Access) -> int:
    """The schema version `conn`'s database holds (0: none yet), refusing what is not ours."""
    tables = {
        r[0]
        for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        )
    } - KEY_TABLES
    shown = redacted(url)
    if not tables:
        if access is Access.CREATE:
            return 0
        raise StoreError(f"no saga database at {shown}: nothing has run with this --db yet")
    if "meta" not in tables or "sagas" not in tables:
        names = ", ".join(sorted(tables)[:6])
        raise StoreError(
            f"{shown} holds tables of another application ({names}), not a saga database: {_HINT}"
        )
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if row is None or not str(row[0]).isdigit():
        # Every migration writes the row in the transaction that makes the tables: without
        # it the database is damaged, and replaying v1 over its tables would only fail.
        raise StoreError(
            f"{shown} holds saga tables but its schema version is missing or unreadable "
            f"(meta.schema_version: {None if row is None else row[0]!r}): restore it or {_HINT}"
        )
    version = int(row[0])
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{shown} has schema version {version}, newer than this sagalab "
            f"({SCHEMA_VERSION}): upgrade sagalab"
        )
    return version


def database_identity(url: str) -> tuple[str, ...]:
    """("postgresql", host, port, database) of `url`, libpq's defaults filled in (no
    connection is made): two URLs of one database give the same, `localhost` and
    127.0.0.1 alike."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except (psycopg.Error, UnicodeError):
        return ("postgresql", url)  # unparsable: `connect` says why when it is opened
    host = str(info.get("host") or "/var/run/postgresql")
    user = str(info.get("user") or os.environ.get("PGUSER") or "")
    return (
        "postgresql",
        "127.0.0.1" if host == "localhost" else host,
        str(info.get("port") or 5432),
        str(info.get("dbname") or user),
    )


def check_postgres(url: str, access: Access = Access.READ) -> int:
    """The schema version of the saga database at `url` (0: to be created); StoreError for
    a server that cannot be reached or a database that is not a saga database. Writes
    nothing (a missing database is not created)."""
    try:
        conn = connect(url, readonly=True)
    except StoreError as exc:
        if access is Access.CREATE and "does not exist" in str(exc):
            return 0  # a writer creates the database
        raise
    try:
        return _schema_version(conn, url, access)
    except psycopg.Error as exc:
        raise StoreError(f"cannot read {redacted(url)}: {_failure(url, exc)}") from None
    finally:
        conn.close()


def open_postgres_store(
    url: str, *, readonly: bool = False, create: bool = True, guard: Guard | None = None
) -> PostgresStore:
    """The store at `url`; an older schema is upgraded once, even for a `readonly` open."""
    if readonly:
        if check_postgres(url, Access.READ) < SCHEMA_VERSION:
            PostgresStore(url, create=False).close()
        return PostgresStore(url, read_only=True, guard=guard)
    return PostgresStore(url, create=create, guard=guard)


def measure_offset(conn: psycopg.Connection, local_clock: Callable[[], float]) -> float:
    """Database clock minus `local_clock`, rounded to whole seconds (see the module doc)."""
    before = local_clock()
    row = conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()
    after = local_clock()
    assert row is not None
    return float(round(row[0] - (before + after) / 2))


class PostgresStore:
    """`Store` on one PostgreSQL database. One connection: open one handle per thread."""

    def __init__(
        self,
        url: str,
        *,
        read_only: bool = False,
        create: bool = True,
        guard: Guard | None = None,
        local_clock: Callable[[], float] = time.time,
    ) -> None:
        """Open the store at `url`, refusing anything that is not a saga database; create
        (unless `create` is False) or migrate its schema. `local_clock` is the clock the
        callers' `now` comes from (for the database-clock offset)."""
        self.url = url
        self.path = Path(url)  # what `open_store` takes back (a Path keeps the scheme)
        self.read_only = read_only
        self.guard = guard
        self.local_clock = local_clock
        self._flows: dict[str, FlowDefinition] = {}
        self._snapshots: dict[str, str] = {}
        self._flow_hashes: dict[int, tuple[FlowDefinition, str, str]] = {}
        self._conn: psycopg.Connection | None = None
        self.offset = 0.0
        self._measured_at = 0.0
        access = Access.READ if read_only else Access.CREATE if create else Access.WRITE
        conn = self._connection(create=access is Access.CREATE)
        try:
            version = _schema_version(conn, url, access)
        except psycopg.Error as exc:
            self.close()
            raise _error_for(exc)(f"cannot read {redacted(url)}: {_failure(url, exc)}") from None
        except BaseException:
            self.close()
            raise
        if version != SCHEMA_VERSION:
            if read_only:
                self.close()
                raise StoreError(
                    f"{redacted(url)} has schema version {version}, older than this sagalab "
                    f"({SCHEMA_VERSION}); a command that writes (`sagalab worker`) upgrades it"
                )
            self.migrate()

    # -- plumbing ---------------------------------------------------------------------------

    def _connection(self, *, create: bool = False) -> psycopg.Connection:
        """The open connection, reconnecting after a lost one."""
        if self._conn is None or self._conn.closed or self._conn.broken:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            conn = connect(self.url, readonly=self.read_only, create=create)
            try:
                self._measure(conn)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        elif time.monotonic() - self._measured_at > _REMEASURE_SECONDS:
            self._measure(self._conn)
        return self._conn

    def _measure(self, conn: psycopg.Connection) -> None:
        with self._errors():
            self.offset = measure_offset(conn, self.local_clock)
        self._measured_at = time.monotonic()

    def _db_time(self, now: float) -> float:
        return now + self.offset

    @contextmanager
    def _errors(self, what: str = "database") -> Iterator[None]:
        try:
            yield
        except psycopg.Error as exc:
            error = _error_for(exc)
            raise error(f"{what} {redacted(self.url)}: {_failure(self.url, exc)}") from None

    def _check_write(self) -> None:
        if self.guard is not None:
            self.guard()
        if self.read_only:
            raise StoreError(f"cannot write to {redacted(self.url)}: opened read-only")

    def _execute(self, query: str, args: Any = None, *, write: bool = False) -> psycopg.Cursor:
        """Run one statement (one round trip), with psycopg errors as StoreError."""
        if write:
            self._check_write()
        with self._errors("cannot write to" if write else "database"):
            return self._connection().execute(query, args)

    def _rows(self, query: str, args: Any = None) -> list[dict[str, Any]]:
        with self._errors():
            cur = self._connection().cursor(row_factory=dict_row)
            return cur.execute(query, args).fetchall()

    @contextmanager
    def _transaction(self) -> Iterator[psycopg.Connection]:
        """A write transaction of several statements (rare: most writes are one)."""
        self._check_write()
        with self._errors("cannot write to"):
            conn = self._connection()
            with conn.transaction():
                yield conn

    def schema_version(self) -> int:
        """The schema version the database holds (0 for a new one)."""
        with self._errors():
            return _schema_version(self._connection(), self.url, Access.CREATE)

    def migrate(self) -> int:
        """Bring the schema to SCHEMA_VERSION; return the version it had before."""
        with self._transaction() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            before = int(row[0]) if row is not None and str(row[0]).isdigit() else 0
            if before > SCHEMA_VERSION:
                raise StoreError(
                    f"{redacted(self.url)} has schema version {before}, newer than this "
                    f"sagalab ({SCHEMA_VERSION}): upgrade sagalab"
                )
            for script in MIGRATIONS[before:]:
                conn.execute(script)  # several statements: no parameters, one round trip
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', %s) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(SCHEMA_VERSION),),
            )
        return before

    def close(self) -> None:
        """Close the connection."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def ping(self) -> None:
        """StoreError unless the database answers and holds sagas at a known schema."""
        with self._errors():
            _schema_version(self._connection(), self.url, Access.READ)
            self._connection().execute("SELECT 1 FROM sagas LIMIT 1").fetchall()

    # -- sagas ------------------------------------------------------------------------------

    def _flow(self, snapshot: str) -> FlowDefinition:
        flow = self._flows.get(snapshot)
        if flow is None:
            flow = flow_from_dict(
                json.loads(snapshot), source="(stored snapshot)", check_input_keys=False
            )
            self._flows[snapshot] = flow
        return flow

    def _snapshot_body(self, flow_hash: str) -> str:
        body = self._snapshots.get(flow_hash)
        if body is None:
            found = self._execute(
                "SELECT body FROM flow_snapshots WHERE hash = %s", (flow_hash,)
            ).fetchone()
            if found is None:
                raise StoreError(f"{redacted(self.url)}: flow snapshot {flow_hash} is missing")
            body = self._snapshots[flow_hash] = found[0]
        return body

    def _record(self, row: dict[str, Any], *, lenient: bool = False) -> SagaRecord:
        flow = self._flow(self._snapshot_body(row["flow_hash"]))
        return saga_record(row, flow, lenient=lenient)

    def _snapshot_of(self, flow: FlowDefinition) -> tuple[str, str]:
        cached = self._flow_hashes.get(id(flow))
        if cached is not None and cached[0] is flow:
            return cached[1], cached[2]
        snapshot = json.dumps(flow_to_dict(flow), sort_keys=True)
        flow_hash = hashlib.sha256(snapshot.encode()).hexdigest()[:32]
        self._flow_hashes[id(flow)] = (flow, flow_hash, snapshot)
        self._snapshots[flow_hash] = snapshot
        return flow_hash, snapshot

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
        """Store a new saga of `tenant` (queued if `run_after` is set), in one statement;
        reuse the one its key names (IdempotencyConflict if that one's input differs).
        `forked_from` links a fork to the saga it was forked from."""
        fingerprint = input_fingerprint(flow.name, flow.version, payload)
        flow_hash, snapshot = self._snapshot_of(flow)
        input_text = json.dumps(payload)
        entries = [JournalEntry(Event(EventType.SAGA_CREATED, now)), *initial]
        folded = state if state is not None else SagaState(flow)
        args = {
            "hash": flow_hash,
            "body": snapshot,
            "id": saga_id,
            "flow_name": flow.name,
            "flow_version": flow.version,
            "input": input_text,
            "input_hash": fingerprint,
            "key": idempotency_key,
            "status": folded.status.value,
            "reason": _text(folded.reason),
            "trace_id": trace_id,
            "now": now,
            "last_seq": len(entries),
            "run_after": None if run_after is None else self._db_time(run_after),
            "steps": steps_json(step_fields(folded)),
            "tenant": tenant,
            "forked_from": forked_from,
            "entries": _entries_json(saga_id, trace_id, entries, 0),
        }
        # The snapshot, the saga and its first entries in one statement (one round trip):
        # a key used before makes `created` empty, and with it the whole insert.
        inserted = self._execute(
            "WITH snapshot AS (INSERT INTO flow_snapshots (hash, body) "
            "VALUES (%(hash)s, %(body)s) ON CONFLICT DO NOTHING), "
            "created AS (INSERT INTO sagas (id, flow_name, flow_version, flow_hash, input, "
            "input_hash, idempotency_key, status, reason, trace_id, created_at, updated_at, "
            "last_seq, run_after, steps, tenant, forked_from) "
            "VALUES (%(id)s, %(flow_name)s, "
            "%(flow_version)s, %(hash)s, %(input)s, %(input_hash)s, %(key)s, %(status)s, "
            "%(reason)s, %(trace_id)s, %(now)s, %(now)s, %(last_seq)s, %(run_after)s, "
            "%(steps)s, %(tenant)s, %(forked_from)s) "
            "ON CONFLICT DO NOTHING RETURNING id, trace_id) "
            + _INSERT_ENTRIES.format(source="created"),
            args,
            write=True,
        ).fetchall()
        if not inserted:
            return self._existing(saga_id, idempotency_key, tenant, fingerprint), False
        if due_now(run_after):
            self.notify_queued()
        record = SagaRecord(
            id=saga_id,
            flow=self._flow(snapshot),
            input=json.loads(input_text),
            status=folded.status,
            trace_id=trace_id,
            idempotency_key=idempotency_key,
            reason=folded.reason,
            created_at=now,
            updated_at=now,
            last_seq=len(entries),
            tenant=tenant,
            forked_from=forked_from,
        )
        return record, True

    def _existing(self, saga_id: str, key: str | None, tenant: str, fingerprint: str) -> SagaRecord:
        """The saga a refused insert met: the one `key` names, if its input is the same."""
        found = None
        if key is not None:
            found = self._execute(
                "SELECT id, input_hash FROM sagas WHERE tenant = %s AND idempotency_key = %s",
                (tenant, key),
            ).fetchone()
        if found is None:
            raise StoreError(f"saga {saga_id} already exists in {redacted(self.url)}")
        if found[1] != fingerprint:
            raise IdempotencyConflict(key or "", found[0])
        return self.load(found[0])

    def load(self, saga_id: str, *, tenant: str | None = None) -> SagaRecord:
        """The saga's row; with `tenant`, only if the saga is that tenant's."""
        rows = self._rows("SELECT * FROM sagas WHERE id = %s", (saga_id,))
        if not rows or (tenant is not None and rows[0]["tenant"] != tenant):
            raise SagaNotFoundError(saga_id)
        return self._record(rows[0])

    def journal(self, saga_id: str, *, upto: int | None = None) -> list[JournalEntry]:
        """Every journal entry (up to seq `upto` if given), in order."""
        rows = self._rows(
            "SELECT * FROM events WHERE saga_id = %s AND seq <= %s ORDER BY seq",
            (saga_id, upto if upto is not None else 2**31 - 1),
        )
        if not rows:
            self.load(saga_id)  # raises SagaNotFoundError for an unknown id
        return [journal_entry(saga_id, r) for r in rows]

    def state(self, saga_id: str) -> tuple[SagaRecord, list[JournalEntry], SagaState]:
        """Record, journal and their fold, consistent: the journal is read up to the
        record's `last_seq` (entries and `last_seq` are committed together, and the journal
        only grows), so no transaction is needed."""
        record = self.load(saga_id)
        entries = self.journal(saga_id, upto=record.last_seq)
        state = SagaState.replay(record.flow, (e.event for e in entries))
        return record, entries, state

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
        """Append `entries` after `expected_seq` and move the saga on, in one statement;
        with a `lease`, refused (LeaseLost) unless it is still the current, unexpired one."""
        if not entries:
            return expected_seq
        seq = expected_seq + len(entries)
        args: dict[str, Any] = {
            "status": state.status.value,
            "reason": _text(state.reason),
            "now": now,
            "seq": seq,
            "steps": steps_json(step_fields(state)),
            "id": saga_id,
            "expected": expected_seq,
            "entries": _entries_json(saga_id, "", entries, expected_seq),
        }
        fence = ""
        if lease is not None:
            fence = (
                " AND lease_owner = %(owner)s AND lease_epoch = %(epoch)s "
                "AND lease_until >= %(db_now)s"
            )
            args.update(owner=lease.owner, epoch=lease.epoch, db_now=self._db_time(now))
        written = self._execute(
            "WITH moved AS (UPDATE sagas SET status = %(status)s, reason = %(reason)s, "
            "updated_at = %(now)s, last_seq = %(seq)s, steps = %(steps)s "
            f"WHERE id = %(id)s AND last_seq = %(expected)s{fence} RETURNING id, trace_id) "
            + _INSERT_ENTRIES.format(source="moved"),
            args,
            write=True,
        ).fetchall()
        if not written:
            self._refuse_append(saga_id, expected_seq, lease, now)
        return seq

    def _refuse_append(
        self, saga_id: str, expected_seq: int, lease: Lease | None, now: float
    ) -> NoReturn:
        row = self._execute(
            "SELECT last_seq, lease_owner, lease_epoch, lease_until FROM sagas WHERE id = %s",
            (saga_id,),
        ).fetchone()
        if row is None:
            raise SagaNotFoundError(saga_id)
        if lease is not None and (
            row[1] != lease.owner or row[2] != lease.epoch or (row[3] or 0) < self._db_time(now)
        ):
            raise LeaseLost(
                f"saga {saga_id}: lease {lease.owner}#{lease.epoch} is no longer current; "
                "this writer must stop"
            )
        raise ConcurrentUpdate(
            f"saga {saga_id}: journal is at {row[0]}, writer expected {expected_seq}"
        )

    def steps(self, saga_id: str) -> list[StepRow]:
        """The saga's current step rows, in flow order ([] for an unknown id)."""
        row = self._execute("SELECT steps FROM sagas WHERE id = %s", (saga_id,)).fetchone()
        return [] if row is None else steps_from_json(row[0])

    def page(self, saga_id: str, *, tenant: str | None = None) -> SagaPage:
        """The saga, its steps and its forks from one statement (one snapshot, one round
        trip; psycopg prepares it on the server after its fifth use)."""
        rows = self._rows(
            "SELECT s.*, ARRAY(SELECT f.id FROM sagas f WHERE f.forked_from = s.id "
            "ORDER BY f.created_at, f.id) AS page_forks FROM sagas s WHERE s.id = %s",
            (saga_id,),
        )
        if not rows or (tenant is not None and rows[0]["tenant"] != tenant):
            raise SagaNotFoundError(saga_id)
        row = rows[0]
        return SagaPage(self._record(row), steps_from_json(row["steps"]), list(row["page_forks"]))

    def forks(self, saga_id: str) -> list[str]:
        """Ids of the sagas forked from `saga_id`, oldest first."""
        rows = self._rows(
            "SELECT id FROM sagas WHERE forked_from = %s ORDER BY created_at, id", (saga_id,)
        )
        return [r["id"] for r in rows]

    def list_sagas(
        self,
        *,
        status: SagaStatus | None = None,
        flow: str | None = None,
        limit: int = 50,
        tenant: str | None = None,
    ) -> list[SagaRecord]:
        """Most recent first; only `tenant`'s sagas when it is given."""
        where, args = ["TRUE"], []
        for column, value in (
            ("tenant", tenant),
            ("status", None if status is None else status.value),
            ("flow_name", flow),
        ):
            if value is not None:
                where.append(f"{column} = %s")
                args.append(value)
        rows = self._rows(
            f"SELECT * FROM sagas WHERE {' AND '.join(where)} "
            "ORDER BY created_at DESC, id LIMIT %s",
            (*args, max(0, limit)),
        )
        return [self._record(r, lenient=True) for r in rows]

    def find_sagas(self, criteria: SagaFilter) -> list[SagaRecord]:
        """The sagas `criteria` selects, newest first, filtered in one query."""
        after_created_at = None
        if criteria.after is not None:
            cursor = self._execute(
                "SELECT created_at FROM sagas WHERE id = %s", (criteria.after,)
            ).fetchone()
            if cursor is None:
                raise SagaNotFoundError(criteria.after)
            after_created_at = cursor[0]
        sql, args = saga_filter_sql(criteria, _FILTER_SQL, after_created_at=after_created_at)
        return [self._record(r, lenient=True) for r in self._rows(sql, args)]

    def count_by_status(self) -> dict[str, int]:
        """How many sagas are in each status."""
        rows = self._execute("SELECT status, COUNT(*) FROM sagas GROUP BY status").fetchall()
        return {status: int(n) for status, n in rows}

    # -- bulk batches -------------------------------------------------------------------------

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
        """Store the batch and its sagas, none reached yet, in one statement."""
        self._execute(
            "WITH made AS (INSERT INTO batches (id, action, filter, options, created_at) "
            "VALUES (%(id)s, %(action)s, %(filter)s, %(options)s, %(now)s) RETURNING id) "
            "INSERT INTO batch_sagas (batch_id, position, saga_id) "
            "SELECT made.id, s.position - 1, s.saga_id FROM made, "
            "unnest(%(ids)s::text[]) WITH ORDINALITY AS s(saga_id, position)",
            {
                "id": batch_id,
                "action": action,
                "filter": json.dumps(filter),
                "options": json.dumps(options),
                "now": now,
                "ids": list(saga_ids),
            },
            write=True,
        )
        return self.load_batch(batch_id)

    def load_batch(self, batch_id: str) -> BatchRecord:
        """The batch with its items (BatchNotFoundError if unknown)."""
        rows = self._rows("SELECT * FROM batches WHERE id = %s", (batch_id,))
        if not rows:
            raise BatchNotFoundError(batch_id)
        items = self._rows(
            "SELECT * FROM batch_sagas WHERE batch_id = %s ORDER BY position", (batch_id,)
        )
        return batch_record(rows[0], items)

    def record_batch_outcome(
        self, batch_id: str, saga_id: str, *, outcome: str, detail: str | None, now: float
    ) -> None:
        """Set what became of `saga_id` in the batch."""
        self._execute(
            "UPDATE batch_sagas SET outcome = %s, detail = %s, at = %s "
            "WHERE batch_id = %s AND saga_id = %s",
            (outcome, detail, now, batch_id, saga_id),
            write=True,
        )

    def claim_batch_item(self, batch_id: str, seen: BatchItem, *, owner: str, now: float) -> bool:
        """Mark `seen` ACTING for `owner` if no other run changed it since it was read."""
        cur = self._execute(
            "UPDATE batch_sagas SET outcome = %s, detail = %s, at = %s "
            "WHERE batch_id = %s AND saga_id = %s AND outcome IS NOT DISTINCT FROM %s "
            "AND detail IS NOT DISTINCT FROM %s",
            (ACTING, owner, now, batch_id, seen.saga_id, seen.outcome, seen.detail),
            write=True,
        )
        return cur.rowcount == 1

    def finish_batch(self, batch_id: str, *, now: float) -> None:
        """Mark the batch finished."""
        self._execute(
            "UPDATE batches SET finished_at = %s WHERE id = %s", (now, batch_id), write=True
        )

    def list_batches(self, *, limit: int = 20) -> list[BatchRecord]:
        """The most recent batches first."""
        rows = self._rows(
            "SELECT id FROM batches ORDER BY created_at DESC, id LIMIT %s", (max(0, limit),)
        )
        return [self.load_batch(r["id"]) for r in rows]

    # -- the durable queue and leases ------------------------------------------------------

    def claim_next(self, owner: str, *, now: float, lease_seconds: float) -> Lease | None:
        """Lease the saga due longest ago whose lease is free or expired; None if none is."""
        leases = self.claim_due(owner, now=now, lease_seconds=lease_seconds, limit=1)
        return leases[0] if leases else None

    def claim_due(self, owner: str, *, now: float, lease_seconds: float, limit: int) -> list[Lease]:
        """Lease up to `limit` sagas due longest ago (free or expired leases, on the
        database's clock) in one statement; claimers skip each other's locked rows rather
        than wait, so two workers claiming at once take different batches."""
        if limit < 1:
            return []
        db_now = self._db_time(now)
        rows = self._execute(
            # MATERIALIZED: the locking pick runs once (a rescanned subquery could lock
            # and lease more rows than `limit`).
            "WITH due AS MATERIALIZED (SELECT id FROM sagas "
            "WHERE run_after IS NOT NULL AND run_after <= %(now)s "
            "AND (lease_until IS NULL OR lease_until < %(now)s) ORDER BY run_after "
            "LIMIT %(limit)s FOR UPDATE SKIP LOCKED) "
            "UPDATE sagas SET lease_owner = %(owner)s, lease_until = %(until)s, "
            "lease_epoch = lease_epoch + 1 FROM due WHERE sagas.id = due.id "
            "RETURNING sagas.id, sagas.lease_epoch, sagas.run_after",
            {"owner": owner, "until": db_now + lease_seconds, "now": db_now, "limit": limit},
            write=True,
        ).fetchall()
        rows.sort(key=lambda row: (row[2], row[0]))  # RETURNING's order is unspecified
        until = now + lease_seconds
        return [Lease(saga_id=row[0], owner=owner, epoch=int(row[1]), until=until) for row in rows]

    def claim(
        self,
        saga_id: str,
        owner: str,
        *,
        now: float,
        lease_seconds: float,
        take_over: Callable[[str], bool] = lambda _owner: False,
    ) -> Lease:
        """Lease one saga; LeaseHeld if a live lease is held (unless `take_over(owner)`)."""
        db_now = self._db_time(now)
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT lease_owner, lease_until, lease_epoch FROM sagas WHERE id = %s FOR UPDATE",
                (saga_id,),
            ).fetchone()
            if row is None:
                raise SagaNotFoundError(saga_id)
            held_by, held_until, epoch = row
            self._refuse_if_held(saga_id, held_by, held_until, db_now, owner, take_over)
            conn.execute(
                "UPDATE sagas SET lease_owner = %s, lease_until = %s, lease_epoch = %s, "
                "run_after = COALESCE(run_after, %s) WHERE id = %s",
                (owner, db_now + lease_seconds, epoch + 1, db_now, saga_id),
            )
        return Lease(saga_id=saga_id, owner=owner, epoch=int(epoch) + 1, until=now + lease_seconds)

    def _refuse_if_held(
        self,
        saga_id: str,
        held_by: str | None,
        held_until: float | None,
        db_now: float,
        owner: str | None,
        take_over: Callable[[str], bool],
    ) -> None:
        """LeaseHeld unless the lease is free, expired, `owner`'s own, or may be taken over."""
        if (
            held_by is not None
            and held_by != owner
            and (held_until or 0) >= db_now
            and not take_over(held_by)
        ):
            raise LeaseHeld(saga_id, held_by, (held_until or 0) - self.offset)

    def check_lease_free(
        self,
        saga_id: str,
        *,
        now: float,
        take_over: Callable[[str], bool] = lambda _owner: False,
    ) -> None:
        """LeaseHeld if a live lease holds the saga (the rule `claim` applies), else nothing."""
        row = self._execute(
            "SELECT lease_owner, lease_until FROM sagas WHERE id = %s", (saga_id,)
        ).fetchone()
        if row is None:
            raise SagaNotFoundError(saga_id)
        self._refuse_if_held(saga_id, row[0], row[1], self._db_time(now), None, take_over)

    def renew(self, lease: Lease, *, now: float, lease_seconds: float) -> Lease | None:
        """Extend a lease still held; None if it was lost (expired and taken, or released)."""
        if self.renew_many([lease], now=now, lease_seconds=lease_seconds):
            return None
        return Lease(lease.saga_id, lease.owner, lease.epoch, now + lease_seconds)

    def renew_many(self, leases: Sequence[Lease], *, now: float, lease_seconds: float) -> set[str]:
        """Extend every lease still held to `now + lease_seconds` in one statement (the
        leases passed as arrays); return the saga ids of those that were lost."""
        if not leases:
            return set()
        db_now = self._db_time(now)
        rows = self._execute(
            "UPDATE sagas SET lease_until = %(until)s FROM unnest(%(ids)s::text[], "
            "%(owners)s::text[], %(epochs)s::bigint[]) AS held(id, owner, epoch) "
            "WHERE sagas.id = held.id AND sagas.lease_owner = held.owner "
            "AND sagas.lease_epoch = held.epoch AND sagas.lease_until >= %(now)s "
            "RETURNING sagas.id",
            {
                "until": db_now + lease_seconds,
                "now": db_now,
                "ids": [lease.saga_id for lease in leases],
                "owners": [lease.owner for lease in leases],
                "epochs": [lease.epoch for lease in leases],
            },
            write=True,
        ).fetchall()
        return {lease.saga_id for lease in leases} - {row[0] for row in rows}

    def release(self, lease: Lease, *, run_after: float | None) -> bool:
        """Give the saga back: due again at `run_after`, or off the queue if None."""
        cur = self._execute(
            "UPDATE sagas SET lease_owner = NULL, lease_until = NULL, run_after = %s "
            "WHERE id = %s AND lease_owner = %s AND lease_epoch = %s",
            (
                None if run_after is None else self._db_time(run_after),
                lease.saga_id,
                lease.owner,
                lease.epoch,
            ),
            write=True,
        )
        if cur.rowcount == 1 and due_now(run_after):
            self.notify_queued()
        return cur.rowcount == 1

    def park(self, lease: Lease, *, reason: str) -> bool:
        """Give the saga back off the queue with `reason`: it waits for an operator."""
        cur = self._execute(
            "UPDATE sagas SET lease_owner = NULL, lease_until = NULL, run_after = NULL, "
            "reason = %s WHERE id = %s AND lease_owner = %s AND lease_epoch = %s",
            (_text(reason), lease.saga_id, lease.owner, lease.epoch),
            write=True,
        )
        return cur.rowcount == 1

    def requeue(self, saga_id: str, run_after: float) -> None:
        """Put a saga (back) on the queue, due at `run_after`; a held lease stays."""
        cur = self._execute(
            "UPDATE sagas SET run_after = %s WHERE id = %s",
            (self._db_time(run_after), saga_id),
            write=True,
        )
        if cur.rowcount == 0:
            raise SagaNotFoundError(saga_id)
        if due_now(run_after):
            self.notify_queued()

    def notify_queued(self) -> None:
        """Wake idle workers (LISTEN on WAKE_CHANNEL): a saga is due now. Sent after the
        write committed (autocommit), so a worker never wakes before the saga is there; a
        hint only: a failure here is logged, never raised (polling finds the saga)."""
        try:
            self._execute(f"NOTIFY {WAKE_CHANNEL}")
        except StoreError:
            log.debug("NOTIFY failed", exc_info=True)

    def stuck(self, *, now: float) -> list[str]:
        """Active sagas nobody is running: lease expired, or never queued."""
        rows = self._execute(
            "SELECT id FROM sagas WHERE status IN ('pending', 'running', 'compensating') "
            "AND (run_after IS NULL OR (lease_until IS NOT NULL AND lease_until < %s)) "
            "ORDER BY created_at",
            (self._db_time(now),),
        ).fetchall()
        return [r[0] for r in rows]

    def queue_stats(self, now: float) -> dict[str, float]:
        """Queued sagas (`depth`), those under a live lease (`leased`), oldest due age (s)."""
        db_now = self._db_time(now)
        row = self._execute(
            "SELECT COUNT(*), "
            "COUNT(*) FILTER (WHERE lease_until IS NOT NULL AND lease_until > %(now)s), "
            "MIN(run_after) FILTER (WHERE lease_until IS NULL OR lease_until <= %(now)s) "
            "FROM sagas WHERE run_after IS NOT NULL "
            "AND status IN ('pending', 'running', 'compensating')",
            {"now": db_now},
        ).fetchone()
        assert row is not None
        total, leased, oldest = row
        return {
            "depth": float(total - leased),
            "leased": float(leased),
            "oldest_age": max(0.0, db_now - oldest) if oldest is not None else 0.0,
        }

    # -- copying a whole database (`sagalab db copy`) ---------------------------------------

    def table_counts(self) -> dict[str, int]:
        """Rows per `COPY_TABLES` table."""
        with self._errors():
            conn = self._connection()
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                return _raw_counts(conn)

    @contextmanager
    def export(self, *, batch_size: int = 500) -> Iterator[Export]:
        """Every `COPY_TABLES` row, read in one REPEATABLE READ transaction held while the
        context is open (one snapshot, whatever writers do meanwhile)."""
        with self._errors():
            conn = self._connection()
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                batches = self._export_batches(conn, batch_size)
                try:
                    yield Export(_raw_counts(conn), batches)
                finally:
                    batches.close()  # its server-side cursor, before the transaction ends

    def _export_batches(
        self, conn: psycopg.Connection, batch_size: int
    ) -> Generator[tuple[str, list[dict[str, Any]]], None, None]:
        for table in COPY_TABLES:
            columns = COPY_COLUMNS[table]
            query = sql.SQL("SELECT {} FROM {} ORDER BY " + _EXPORT_ORDER[table]).format(
                sql.SQL(", ").join(sql.Identifier(c) for c in columns), sql.Identifier(table)
            )
            with self._errors(), conn.cursor(name=f"sagalab_copy_{table}") as cursor:
                cursor.execute(query)
                while rows := cursor.fetchmany(batch_size):
                    batch = [dict(zip(columns, row, strict=True)) for row in rows]
                    if table == "sagas":
                        for row in batch:
                            for column in _DB_CLOCK:
                                if row[column] is not None:
                                    row[column] -= self.offset
                    yield table, batch

    def import_rows(self, batches: Batches, *, merge: bool = False) -> dict[str, int]:
        """Write `batches` in one transaction; the rows inserted per table.

        CopyRefused (rolled back: nothing written) for a database that is not empty without
        `merge`, and with it for a saga id or a tenant's idempotency key already here.
        """
        with self._transaction() as conn:
            before = _raw_counts(conn)
            if not merge and any(before.values()):
                raise CopyRefused(f"{redacted(self.url)} is not empty ({shown_counts(before)})")
            for table, rows in batches:
                self._import_batch(conn, table, rows)
            after = _raw_counts(conn)
        return {t: after[t] - before[t] for t in COPY_TABLES}

    def _import_batch(
        self, conn: psycopg.Connection, table: str, rows: list[dict[str, Any]]
    ) -> None:
        columns = COPY_COLUMNS[table]
        if table == "sagas":
            known = conn.execute(
                "SELECT id FROM sagas WHERE id = ANY(%s) LIMIT 5", ([r["id"] for r in rows],)
            ).fetchall()
            if known:
                raise CopyRefused(
                    f"saga id(s) {', '.join(r[0] for r in known)} of the source exist at "
                    "the destination already"
                )
            rows = [
                {**row, **{c: row[c] + self.offset for c in _DB_CLOCK if row[c] is not None}}
                for row in rows
            ]
        values = [
            tuple(_text(v) if isinstance(v, str) else v for v in (row[c] for c in columns))
            for row in rows
        ]
        conflict = " ON CONFLICT DO NOTHING" if table in ("flow_snapshots", "breakers") else ""
        statement = sql.SQL("INSERT INTO {} ({}) VALUES ({})" + conflict).format(
            sql.Identifier(table),
            sql.SQL(", ").join(sql.Identifier(c) for c in columns),
            sql.SQL(", ").join(sql.Placeholder() for _ in columns),
        )
        try:
            with conn.cursor() as cursor:
                cursor.executemany(statement, values)
        except psycopg.errors.UniqueViolation as exc:
            raise CopyRefused(
                f"{table} rows of the source collide with {redacted(self.url)}'s "
                f"({_failure(self.url, exc)})"
            ) from None

    # -- the supervisor's decisions ---------------------------------------------------------

    def record_scaling(
        self, *, at: float, before: int, after: int, depth: int, oldest_age: float, reason: str
    ) -> None:
        """Journal one autoscaling decision."""
        self._execute(
            "INSERT INTO scaling_events (at, replicas_from, replicas_to, depth, oldest_age, "
            "reason) VALUES (%s, %s, %s, %s, %s, %s)",
            (at, before, after, depth, oldest_age, reason),
            write=True,
        )

    def scaling_events(self, limit: int = 100) -> list[dict[str, Any]]:
        """Most recent scaling decisions, oldest first."""
        rows = self._rows(
            "SELECT at, replicas_from, replicas_to, depth, oldest_age, reason "
            "FROM scaling_events ORDER BY at DESC, id DESC LIMIT %s",
            (max(0, limit),),
        )
        return rows[::-1]


# The order an export reads each table in (a history in the order it was written).
_EXPORT_ORDER = {
    "flow_snapshots": "hash",
    "sagas": "created_at, id",
    "events": "saga_id, seq",
    "breakers": "name",
    "breaker_events": "id",
    "scaling_events": "id",
    "batches": "created_at, id",
    "batch_sagas": "batch_id, position",
}
# Columns stored on the database's clock (see the module doc): exported on the caller's.
_DB_CLOCK = ("run_after", "lease_until")


def _raw_counts(conn: psycopg.Connection) -> dict[str, int]:
    counts = {}
    for table in COPY_TABLES:
        row = conn.execute(sql.SQL("SELECT COUNT(*) FROM {}").format(sql.Identifier(table)))
        counts[table] = int(row.fetchone()[0])  # type: ignore[index]
    return counts


def _entries_json(saga_id: str, trace_id: str, entries: Sequence[JournalEntry], after: int) -> str:
    """The entries as the JSON array `_INSERT_ENTRIES` reads (seq from `after + 1`)."""
    rows = [entry_to_row(saga_id, trace_id, entry, after + i) for i, entry in enumerate(entries, 1)]
    return json.dumps(
        [{k: _text(v) if isinstance(v, str) else v for k, v in row.items()} for row in rows]
    )


def _text(value: str | None) -> str | None:
    """`value` as PostgreSQL text can hold it: a NUL character (which a service's error
    message may carry into a reason) becomes U+FFFD rather than fail the write for ever."""
    return value.replace("\x00", "\ufffd") if value is not None and "\x00" in value else value


log = logging.getLogger(__name__)

#: The LISTEN/NOTIFY channel on which a queued saga wakes idle workers (orchestrator/wake.py).
WAKE_CHANNEL = "sagalab_queue"


def postgres_waker(url: str) -> Waker:
    """A waker LISTENing on WAKE_CHANNEL over its own connection (one per worker process).

    The connection is (re)opened lazily by the listener thread: a server that is down or
    restarting only means polling until it is back.
    """
    state: dict[str, psycopg.Connection | None] = {"conn": None}

    def receive(timeout: float) -> int:
        conn = state["conn"]
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                conn.close()
            state["conn"] = None
            conn = psycopg.connect(url, autocommit=True, connect_timeout=5)
            conn.execute(f"LISTEN {WAKE_CHANNEL}")
            state["conn"] = conn
        # NOTIFY reaches every listener: nothing to pass on (0), or nothing (-1).
        return 0 if any(True for _ in conn.notifies(timeout=timeout, stop_after=1)) else -1

    def close() -> None:
        conn = state["conn"]
        if conn is not None:
            conn.close()

    return Waker(receive, close)

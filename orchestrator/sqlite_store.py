"""The embedded SQLite saga store: `SQLiteStore` implements `Store` (orchestrator/store.py).

`orchestrator.stores.open_store` opens it for a plain path or a `sqlite:` URL; this module and
orchestrator/sqlite_breakers.py are the only ones that import `sqlite3`.

One connection per thread or process; WAL journal with synchronous=NORMAL; every write is a
single `BEGIN IMMEDIATE` transaction (a deferred transaction that reads and then writes fails
at once with "database is locked" under several writers; an immediate one waits its turn).
The schema version lives in `meta` and `MIGRATIONS` brings any older file up to date.
Reads go through sqlite-utils; the append hot path is raw SQL.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sqlite3
import stat
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from sagalab.orchestrator import sqlite_writer, wake
from sagalab.orchestrator.dbfiles import creating_database, enter_wal, file_uri, read_modes
from sagalab.orchestrator.errors import (
    BatchNotFoundError,
    ConcurrentUpdate,
    CopyRefused,
    IdempotencyConflict,
    LeaseHeld,
    LeaseLost,
    SagaNotFoundError,
    StoreError,
)
from sagalab.orchestrator.flow import FlowDefinition, flow_from_dict, flow_to_dict
from sagalab.orchestrator.journal import ENTRY_ROW_COLUMNS, JournalEntry, entry_row
from sagalab.orchestrator.saga import Event, EventType, SagaState, SagaStatus
from sagalab.orchestrator.sagafilter import InputMatch, SagaFilter
from sagalab.orchestrator.sqlite_rows import MAX_ROWS, STATEMENT_CACHE, RowInserts
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
    StepFields,
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

T = TypeVar("T")

_V1 = """
CREATE TABLE sagas (
    id TEXT PRIMARY KEY,
    flow_name TEXT NOT NULL,
    flow_version INTEGER NOT NULL,
    flow_snapshot TEXT NOT NULL,
    input TEXT NOT NULL,
    input_hash TEXT NOT NULL,
    idempotency_key TEXT UNIQUE,
    status TEXT NOT NULL,
    trace_id TEXT NOT NULL,
    reason TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    last_seq INTEGER NOT NULL
);
CREATE INDEX sagas_by_created ON sagas (created_at);
CREATE INDEX sagas_by_status ON sagas (status, created_at);
CREATE TABLE events (
    saga_id TEXT NOT NULL REFERENCES sagas (id),
    seq INTEGER NOT NULL,
    type TEXT NOT NULL,
    step TEXT,
    phase TEXT,
    attempt INTEGER NOT NULL,
    at REAL NOT NULL,
    failure TEXT,
    not_before REAL,
    reason TEXT,
    force INTEGER NOT NULL DEFAULT 0,
    request TEXT,
    response TEXT,
    status_code INTEGER,
    duration_ms REAL,
    trace_id TEXT NOT NULL,
    span_id TEXT,
    PRIMARY KEY (saga_id, seq)
) WITHOUT ROWID;
CREATE TABLE steps (
    saga_id TEXT NOT NULL REFERENCES sagas (id),
    name TEXT NOT NULL,
    idx INTEGER NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    compensation_attempts INTEGER NOT NULL,
    last_error TEXT,
    PRIMARY KEY (saga_id, name)
) WITHOUT ROWID;
"""

# v2: the durable queue and leases (worker replicas claim sagas; fencing by lease epoch).
_V2 = """
ALTER TABLE sagas ADD COLUMN run_after REAL;
ALTER TABLE sagas ADD COLUMN lease_owner TEXT;
ALTER TABLE sagas ADD COLUMN lease_until REAL;
ALTER TABLE sagas ADD COLUMN lease_epoch INTEGER NOT NULL DEFAULT 0;
CREATE INDEX sagas_queue ON sagas (run_after) WHERE run_after IS NOT NULL;
"""

# v3: the supervisor's scaling decisions, for operators and tests.
_V3 = """
CREATE TABLE scaling_events (
    at REAL NOT NULL,
    replicas_from INTEGER NOT NULL,
    replicas_to INTEGER NOT NULL,
    depth INTEGER NOT NULL,
    oldest_age REAL NOT NULL,
    reason TEXT NOT NULL
);
"""

# v4: circuit breakers shared by every worker process, and their transitions.
_V4 = """
CREATE TABLE breakers (
    name TEXT PRIMARY KEY,
    state TEXT NOT NULL DEFAULT 'closed',
    fail_counter INTEGER NOT NULL DEFAULT 0,
    success_counter INTEGER NOT NULL DEFAULT 0,
    opened_time REAL,
    probe_until REAL,
    updated_at REAL
);
CREATE TABLE breaker_events (
    at REAL NOT NULL,
    name TEXT NOT NULL,
    old TEXT NOT NULL,
    new TEXT NOT NULL,
    owner TEXT
);
"""

# v5: flow snapshots stored once per distinct definition and referenced by content hash
# (a saga's snapshot stays immutable; the per-saga copy was most of a new saga's bytes).
_V5 = """
CREATE TABLE flow_snapshots (
    hash TEXT PRIMARY KEY,
    body TEXT NOT NULL
) WITHOUT ROWID;
ALTER TABLE sagas ADD COLUMN flow_hash TEXT REFERENCES flow_snapshots (hash);
"""


def _v6_steps_in_saga_row(conn: sqlite3.Connection) -> None:
    """v6: each saga's step status moves from the `steps` table into its own row.

    `sagas.steps` is a JSON array in flow order, written by the same UPDATE that appends to
    the journal: one B-tree fewer to write per commit (about a fifth of a saga's time).
    """
    conn.execute("ALTER TABLE sagas ADD COLUMN steps TEXT NOT NULL DEFAULT '[]'")
    by_saga: dict[str, list[StepFields]] = {}
    for row in conn.execute(
        "SELECT saga_id, name, status, attempts, compensation_attempts, last_error "
        "FROM steps ORDER BY saga_id, idx"
    ):
        by_saga.setdefault(row[0], []).append(row[1:])
    conn.executemany(
        "UPDATE sagas SET steps = ? WHERE id = ?",
        [(steps_json(fields), saga_id) for saga_id, fields in by_saga.items()],
    )
    conn.execute("DROP TABLE steps")


def _v7_tenants(conn: sqlite3.Connection) -> None:
    """v7: every saga belongs to a tenant; idempotency keys are unique per tenant.

    Existing sagas go to DEFAULT_TENANT. The table-wide UNIQUE on `idempotency_key` cannot be
    dropped in place, so the table is rebuilt from its own stored definition (keeping every
    column and index it has) minus that constraint. Foreign keys stay on: they are deferred to
    the commit, by which time every journal row has its saga again.
    """
    conn.execute("PRAGMA defer_foreign_keys=ON")
    table_sql = conn.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'sagas'"
    ).fetchone()[0]
    index_sql = [
        r[0]
        for r in conn.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'sagas' "
            "AND sql IS NOT NULL"
        )
    ]
    new_sql, replaced = re.subn(
        r"idempotency_key\s+TEXT\s+UNIQUE", "idempotency_key TEXT", table_sql
    )
    if replaced != 1:
        raise StoreError("unexpected sagas table definition; cannot add tenants")
    conn.execute("CREATE TABLE sagas_v6 AS SELECT * FROM sagas")
    conn.execute("DROP TABLE sagas")
    conn.execute(new_sql)
    conn.execute("INSERT INTO sagas SELECT * FROM sagas_v6")
    conn.execute("DROP TABLE sagas_v6")
    for sql in index_sql:
        conn.execute(sql)
    conn.execute(f"ALTER TABLE sagas ADD COLUMN tenant TEXT NOT NULL DEFAULT '{DEFAULT_TENANT}'")
    conn.execute("CREATE INDEX sagas_by_tenant ON sagas (tenant, created_at)")
    conn.execute(
        "CREATE UNIQUE INDEX sagas_by_idempotency_key ON sagas (tenant, idempotency_key) "
        "WHERE idempotency_key IS NOT NULL"
    )


# v8: a fork names the saga it was forked from (`operations.fork`); both sides show the link.
_V8 = """
ALTER TABLE sagas ADD COLUMN forked_from TEXT;
CREATE INDEX sagas_by_forked_from ON sagas (forked_from) WHERE forked_from IS NOT NULL;
"""

# v9: bulk batches (`orchestrate resume|rollback|... --status ...`): the sagas a batch matched
# when it started and what became of each, so that a killed batch resumes without acting twice.
_V9 = """
CREATE TABLE batches (
    id TEXT PRIMARY KEY,
    action TEXT NOT NULL,
    filter TEXT NOT NULL,
    options TEXT NOT NULL,
    created_at REAL NOT NULL,
    finished_at REAL
);
CREATE TABLE batch_sagas (
    batch_id TEXT NOT NULL REFERENCES batches (id),
    position INTEGER NOT NULL,
    saga_id TEXT NOT NULL,
    outcome TEXT,
    detail TEXT,
    at REAL,
    PRIMARY KEY (batch_id, position)
) WITHOUT ROWID;
CREATE INDEX batch_sagas_by_saga ON batch_sagas (batch_id, saga_id);
"""


Migration = str | Callable[[sqlite3.Connection], None]
MIGRATIONS: tuple[Migration, ...] = (
    _V1,
    _V2,
    _V3,
    _V4,
    _V5,
    _v6_steps_in_saga_row,
    _v7_tenants,
    _V8,
    _V9,
)
SCHEMA_VERSION = len(MIGRATIONS)

# Where a saga stopped (`sagafilter.stopped_at`): the last step, in flow order, of the
# `sagas.steps` document whose action was attempted. A damaged document stops nowhere.
_STEPS_DOC = "CASE WHEN json_valid(sagas.steps) THEN sagas.steps ELSE '[]' END"
_STOPPED_AT = (
    f"SELECT json_extract(j.value, '$.name') FROM json_each({_STEPS_DOC}) j "
    "WHERE json_extract(j.value, '$.attempts') > 0 ORDER BY CAST(j.key AS INTEGER) DESC LIMIT 1"
)
# `--error`: a substring, any case, of the saga's reason or of a step's last error.
_ERROR_MATCH = (
    "(instr(lower(coalesce(reason, '')), lower(?)) > 0 OR EXISTS (SELECT 1 FROM "
    f"json_each({_STEPS_DOC}) j WHERE instr(lower(coalesce(json_extract(j.value, "
    "'$.last_error'), '')), lower(?)) > 0))"
)


def _input_match(match: InputMatch) -> tuple[str, list[Any]]:
    """SQL for one `--input key=value` (any of its candidate values), and its arguments."""
    path = f'$."{match.key}"'  # keys are letters, digits, '_' and '-' (parse_input_match)
    doc = "(CASE WHEN json_valid(input) THEN input ELSE '{}' END)"  # a damaged input: no match
    typed = f"json_type({doc}, ?)"
    ors: list[str] = []
    args: list[Any] = []
    for value in match.candidates():
        if value is None:
            ors.append(f"{typed} = 'null'")
            args.append(path)
        elif isinstance(value, bool):
            ors.append(f"{typed} = '{'true' if value else 'false'}'")
            args.append(path)
        elif isinstance(value, int | float):
            if isinstance(value, int) and not -(2**63) <= value < 2**63:
                # SQLite binds 64-bit integers only; it reads a longer JSON integer as a
                # double, so compare as one (past a double's range nothing stored can match).
                try:
                    value = float(value)
                except OverflowError:
                    continue
            ors.append(f"({typed} IN ('integer', 'real') AND json_extract({doc}, ?) = ?)")
            args += [path, path, value]
        elif isinstance(value, str):
            ors.append(f"({typed} = 'text' AND json_extract({doc}, ?) = ?)")
            args += [path, path, value]
        else:
            ors.append(f"({typed} IN ('object', 'array') AND json_extract({doc}, ?) = json(?))")
            args += [path, path, json.dumps(value, separators=(",", ":"))]
    return f"({' OR '.join(ors)})", args


_FILTER_SQL = FilterDialect(
    placeholder="?",
    true="1",
    stopped_at=_STOPPED_AT,
    error_match=_ERROR_MATCH,
    statuses=lambda values: (f"status IN ({', '.join('?' for _ in values)})", list(values)),
    input_match=_input_match,
)


_ACTIVE = (SagaStatus.PENDING, SagaStatus.RUNNING, SagaStatus.COMPENSATING)


#: What a driver raises that a store method may let through untranslated (damage found
#: mid-read, say): callers that must survive any database failure catch these too.
DRIVER_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error,)

__all__ = [
    "DRIVER_ERRORS",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "WAL_SIZE_LIMIT",
    "Access",
    "SQLiteStore",
    "check_database",
    "check_sqlite_file",
    "connect",
    "connect_read_only",
    "open_sqlite_store",
    "release_wal",
]


@dataclass(frozen=True)
class SQLiteFile:
    """What an existing SQLite file holds: its tables, and `meta.schema_version` if any."""

    tables: frozenset[str]
    schema_version: int | None


#: Leases renewed per statement (3 parameters each, well under SQLite's 32,766).
_RENEW_CHUNK = 500

_SQLITE_MAGIC = b"SQLite format 3\x00"
# Kernel pseudo-filesystems: reading some of their files blocks, and nothing can live there.
_PSEUDO_FILESYSTEMS = (Path("/proc"), Path("/sys"), Path("/dev"))
_HINT = "pass another path with --db or SAGALAB_DB"  # for saga databases


#: Bytes in a SQLite file's header: any database holds at least these (a page, in fact).
_SQLITE_HEADER = 100


def check_sqlite_file(
    path: str | Path,
    access: Access,
    *,
    what: str = "saga database",
    option: str = "--db or SAGALAB_DB",
) -> SQLiteFile | None:
    """Classify `path` before anything opens it for writing; StoreError names what is wrong.

    Refused: a path under /proc, /sys or /dev (but /dev/shm), a directory or other non-file,
    a file that is not SQLite, a corrupt one and, unless `access` is READ, one that cannot be
    written (or created). A missing file is refused unless `access` is CREATE; then, or for an
    empty file, the answer is None. Nothing is created or changed, whatever the answer.
    `what` and `option` name the kind of database and where its path came from in messages
    (the key store passes "key database" and "--keys-db or SAGALAB_KEYS_DB").
    """
    hint = f"pass another path with {option}"
    target = Path(path)
    try:
        resolved = target.resolve()
    except RuntimeError:  # pathlib's word for a symbolic link that leads back to itself
        raise StoreError(f"{target} is a loop of symbolic links: {hint}") from None
    for root in _PSEUDO_FILESYSTEMS:
        if resolved.is_relative_to(root) and not resolved.is_relative_to("/dev/shm"):
            raise StoreError(f"{target} is under {root}, a kernel pseudo-filesystem: {hint}")
    try:
        info = target.stat()
    except (FileNotFoundError, NotADirectoryError):
        if access is not Access.CREATE:
            raise StoreError(
                f"no {what} at {target}: nothing has run with this {option} yet"
            ) from None
        _check_creatable(target, what)
        return None
    except OSError as exc:
        raise StoreError(f"cannot open {what} {target}: {exc.strerror}; {hint}") from None
    if stat.S_ISDIR(info.st_mode):
        raise StoreError(f"{target} is a directory, not a {what}: {hint}")
    if not stat.S_ISREG(info.st_mode):
        raise StoreError(f"{target} is not a regular file, not a {what}: {hint}")
    if not os.access(target, os.R_OK):
        raise StoreError(f"cannot read {what} {target}: permission denied; {hint}")
    if access is not Access.READ and not (
        os.access(target, os.W_OK) and os.access(target.parent, os.W_OK | os.X_OK)
    ):
        # SQLite also writes `-wal` and `-shm` files next to the database.
        raise StoreError(f"{what} {target} (or its directory) is not writable: {hint}")
    if info.st_size == 0:
        return None
    if info.st_size < _SQLITE_HEADER:  # SQLite takes a one-byte file for a new database
        raise StoreError(f"{target} is not a SQLite database (not a {what}): {hint}")
    return _probe(target, what, hint)


def _check_creatable(target: Path, what: str) -> None:
    """Refuse a missing path that could not be created, from its nearest existing ancestor."""
    ancestor = target.absolute().parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise StoreError(f"cannot create {what} {target}: {ancestor} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise StoreError(f"cannot create {what} {target}: {ancestor} is not writable")


def _probe(target: Path, what: str, hint: str) -> SQLiteFile:
    """Tables and schema version, read without writing or creating anything."""
    # The modes of `read_modes`. A live WAL file (`-wal` beside it) is read with `mode=ro`.
    # Otherwise `mode=rw` (never creates): a read-only open of a WAL-mode file would leave
    # `-wal`/`-shm` files behind, which the last read-write connection removes as it closes.
    # `immutable=1` only where nothing can write (an unwritable directory): closing such a
    # connection drops the POSIX locks this process's other connections hold on the file.
    for mode in read_modes(target):
        try:
            conn = sqlite3.connect(
                file_uri(target, mode), uri=True, timeout=5.0, isolation_level=None
            )
            break
        except sqlite3.Error as exc:
            error = exc
    else:
        raise StoreError(f"cannot open {what} {target}: {error}; {hint}") from None
    try:
        tables = frozenset(
            r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        )
        version = None
        if "meta" in tables:
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = int(row[0]) if row is not None and str(row[0]).isdigit() else None
    except sqlite3.OperationalError as exc:
        raise StoreError(f"cannot read {what} {target}: {exc}; {hint}") from None
    except sqlite3.DatabaseError as exc:
        conn.close()
        if not _has_sqlite_header(target):
            raise StoreError(f"{target} is not a SQLite database (not a {what}): {hint}") from None
        raise StoreError(f"{target} is corrupt ({exc}), not a usable {what}: {hint}") from None
    finally:
        conn.close()
    return SQLiteFile(tables, version)


def _has_sqlite_header(target: Path) -> bool:
    # Only once SQLite has refused the file: closing a descriptor of our own on a database
    # drops every POSIX lock this process's SQLite connections hold on it (another process
    # may then delete the `-wal` they are writing to).
    try:
        with target.open("rb") as file:
            header = file.read(100)
    except OSError:
        return False
    return len(header) == 100 and header.startswith(_SQLITE_MAGIC)


def check_database(path: str | Path, access: Access = Access.READ) -> int:
    """The schema version of the saga database at `path` (0: missing or empty, to create).

    Every command that takes --db calls this (through `SQLiteStore`) before it writes
    anything: besides what `check_sqlite_file` refuses, a SQLite file of another application
    and a file of a newer sagalab are refused (StoreError, exit 5).

    An empty file (what `sqlite3` leaves after a failed create) is a missing database, the
    one rule for every command: those that create one (`worker`, `demo`, `orchestrate run`,
    the API at start) make it there; those that only read say there is none yet.
    """
    found = check_sqlite_file(path, access)
    if found is None or not found.tables:
        if access is Access.CREATE:
            return 0
        raise StoreError(f"no saga database at {path}: the file is empty")
    if found.schema_version is None or "sagas" not in found.tables:
        names = ", ".join(sorted(found.tables)[:6])
        raise StoreError(
            f"{path} is a SQLite database of another application (tables: {names}), "
            f"not a saga database: {_HINT}"
        )
    if found.schema_version > SCHEMA_VERSION:
        raise StoreError(
            f"{path} has schema version {found.schema_version}, newer than this sagalab "
            f"({SCHEMA_VERSION}): upgrade sagalab"
        )
    return found.schema_version


def connect_read_only(path: str | Path, *, timeout: float = 30.0) -> sqlite3.Connection:
    """A connection that never writes the database (`PRAGMA query_only`) and leaves no file.

    A WAL database needs its `-wal` and `-shm` files to be read. When they are there (a
    writer has the file open), the connection is SQLite's `mode=ro`: it creates nothing. When
    they are not, `mode=ro` would create them and, unable to remove them, leave them behind;
    so it is `mode=rw` (which never creates the database itself) with `query_only`: as the
    last connection it removes them again when it closes, and the database file's bytes and
    mtime stay as they were. A file this process cannot write falls back to `mode=ro`, and
    a database in a directory it cannot write is opened `immutable` (`read_modes`).
    """
    error: sqlite3.Error | None = None
    for mode in read_modes(path):
        try:
            conn = sqlite3.connect(
                file_uri(path, mode), uri=True, timeout=timeout, isolation_level=None
            )
            conn.execute("PRAGMA query_only=ON")
            return conn
        except sqlite3.Error as exc:
            error = exc
    raise StoreError(f"cannot open database {path} to read: {error}") from None


def connect(
    path: str | Path, *, timeout: float = 30.0, check_same_thread: bool = True
) -> sqlite3.Connection:
    """A connection in autocommit mode (we issue BEGIN IMMEDIATE ourselves), WAL, NORMAL.

    `check_same_thread=False` for a process's group writer, which one thread at a time uses
    under its own lock (orchestrator/sqlite_writer.py)."""
    target = Path(path)
    if target.is_dir():
        raise StoreError(f"cannot open database {path}: it is a directory")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # An explicit URI: the path checked is the file opened, whatever characters it has.
        conn = sqlite3.connect(
            file_uri(target, "mode=rwc"),
            uri=True,
            timeout=timeout,
            isolation_level=None,
            check_same_thread=check_same_thread,
            cached_statements=STATEMENT_CACHE,
        )
        conn.execute("PRAGMA page_size=2048")
        enter_wal(conn, sqlite3.OperationalError, timeout)
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        # Without it a WAL grown by one large write (a bulk action, a migration, a long
        # reader holding checkpoints back) keeps its size for good: each time the WAL starts
        # over, SQLite cuts it back to this.
        conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
    except (sqlite3.Error, OSError) as exc:
        raise StoreError(
            f"cannot open database {path}: {exc}; pass a writable path with --db or SAGALAB_DB"
        ) from None
    return conn


#: Bytes a WAL file is cut back to when it starts over after a checkpoint.
WAL_SIZE_LIMIT = 4 * 1024 * 1024


def release_wal(path: str | Path) -> bool:
    """Checkpoint and remove the `-wal` and `-shm` files beside the SQLite database at `path`
    if no connection has it open any more; whether they are gone.

    SQLite removes them itself when the last connection closes, but not when that one is
    read-only (the web console, which a stack stops last) or its process died without
    closing: `stack down` then left them behind. Safe with other users: the connection
    opened here only checkpoints what is committed, and SQLite removes the files on close
    only when it holds the database's exclusive lock, i.e. when nobody else has it open (a
    TRUNCATE checkpoint that meets a reader gives up at once instead of waiting). Never
    creates a database, and leaves a file that is not one alone.
    """
    target = Path(path)
    side = [Path(f"{target}-wal"), Path(f"{target}-shm")]
    if not target.is_file() or not any(f.exists() for f in side):
        return False
    try:
        conn = sqlite3.connect(file_uri(target, "mode=rw"), uri=True, timeout=0.0)
    except sqlite3.Error:
        return False
    try:
        conn.execute("PRAGMA busy_timeout=0")
        if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            return False
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.Error:
        return False
    finally:
        conn.close()
    return not any(f.exists() for f in side)


def open_sqlite_store(
    path: str | Path,
    *,
    readonly: bool = False,
    create: bool = True,
    timeout: float = 30.0,
    guard: Guard | None = None,
) -> SQLiteStore:
    """The store at `path`, after `check_database` refused anything that is not a saga
    database (StoreError) before a byte is written.

    `readonly`: a file at the current schema is opened read-only and nothing is written. A
    file of an older sagalab is upgraded once first, the one write a read makes (a sagalab
    database is never left unreadable by an upgrade); a missing file is never created.
    """
    if readonly:
        if check_database(path, Access.READ) < SCHEMA_VERSION:
            SQLiteStore(path, create=False, timeout=timeout).close()
        return SQLiteStore(path, read_only=True, timeout=timeout, guard=guard)
    return SQLiteStore(path, create=create, timeout=timeout, guard=guard)


class SQLiteStore:
    """`Store` on one SQLite file. Not shareable across threads: open one per thread.

    Reads go through the store's own connection. Writes go through the process's group
    writer for the file (orchestrator/sqlite_writer.py: the write transactions of every
    thread share commits, each still committed before its call returns) unless
    `group_commit=False` or `SAGALAB_GROUP_COMMIT=0`; then through the store's own connection.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        timeout: float = 30.0,
        read_only: bool = False,
        create: bool = True,
        guard: Guard | None = None,
        group_commit: bool | None = None,
    ) -> None:
        """Open the store at `path`, refusing anything that is not a saga database.

        `read_only` opens with `connect_read_only` (never a write, never the write lock, no
        file left behind) and needs a file at the current schema version. Otherwise the file
        is created if missing (unless `create` is False) and migrated if older: the schema is
        set up by the first writer, and opening a current file takes no write lock either.
        `guard` is called before every write transaction (a database watchdog).
        `group_commit` (default: `sqlite_writer.enabled()`, the environment's word) sends
        writes through the process's group writer.
        """
        self.path = Path(path)
        self.read_only = read_only
        self.guard = guard
        self.group_commit = sqlite_writer.enabled() if group_commit is None else group_commit
        self._timeout = timeout
        self._writer: sqlite_writer.GroupWriter | None = None
        self._writer_pid = 0
        access = Access.READ if read_only else Access.CREATE if create else Access.WRITE
        version = check_database(self.path, access)
        if read_only and version != SCHEMA_VERSION:
            raise StoreError(
                f"{path} has schema version {version}, older than this sagalab "
                f"({SCHEMA_VERSION}); a command that writes (`sagalab worker`) upgrades it"
            )
        if read_only:
            self.conn = connect_read_only(path, timeout=timeout)
        elif version == 0:  # a new file: not with the -wal/-shm a deleted one left behind
            with creating_database(self.path):
                self.conn = connect(path, timeout=timeout)
        else:
            self.conn = connect(path, timeout=timeout)
        # The file this connection opened: the group writer must write that one, even if
        # the path names another by the time of the first write (a replaced database).
        self._identity = _file_identity(self.path)
        self._flows: dict[str, FlowDefinition] = {}
        #: Whether this handle's last claim took as many sagas as it asked for: then the
        #: next goes straight to the UPDATE, else it reads first (`_any_due`).
        self._claimed_last = False
        #: (saga id, last seq, status, trace id) of the saga this store last wrote.
        self._written: tuple[str, int, str, str] | None = None
        self._cursor: sqlite3.Cursor | None = None  # `_kept_cursor`
        self._snapshots: dict[str, str] = {}
        self._stored_hashes: set[str] = set()
        self._flow_hashes: dict[int, tuple[FlowDefinition, str, str]] = {}
        if not read_only and version != SCHEMA_VERSION:
            self.migrate()

    # -- plumbing ---------------------------------------------------------------------------

    def _write(self, *, alone: bool = False) -> AbstractContextManager[sqlite3.Connection]:
        """One write transaction: the body's statements commit together or not at all.

        Through the process's group writer (a unit of its next batch: the body runs under
        a savepoint and the `with` ends after the COMMIT holding it), or with `alone` (or
        group commit off) as its own `BEGIN IMMEDIATE` transaction on the store's connection.
        """
        if self.guard is not None:
            self.guard()  # e.g. DatabaseGone: the path no longer names the file opened
        if self.read_only:
            raise StoreError(f"cannot write to {self.path}: opened read-only")
        if self.group_commit and not alone:
            writer = self._writer
            if writer is None or self._writer_pid != sqlite_writer.process_id():
                writer = self._group_writer()
            return writer.unit(self._timeout)
        return self._write_alone()

    @contextmanager
    def _write_alone(self) -> Iterator[sqlite3.Connection]:
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write to {self.path}: {exc}") from None
        try:
            yield self.conn
        except sqlite3.Error as exc:
            self._roll_back()
            raise StoreError(f"cannot write to {self.path}: {exc}") from None
        except BaseException:
            self._roll_back()
            raise
        try:
            self.conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._roll_back()  # a full disk can fail the COMMIT and leave it open
            raise StoreError(f"cannot commit to {self.path}: {exc}") from None

    def _roll_back(self) -> None:
        """End the open write transaction, if SQLite has not ended it already: it rolls
        back by itself on a full disk or an I/O error, and a ROLLBACK then would raise
        "no transaction is active" over the error that mattered."""
        if self.conn.in_transaction:
            # The connection may be gone as well: the error being raised says why.
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("ROLLBACK")

    def _group_writer(self) -> sqlite_writer.GroupWriter:
        """This process's writer for the file (taken lazily: after a fork, the child's own)."""
        if self._writer is None or self._writer_pid != sqlite_writer.process_id():
            path = self.path

            def open_writer(timeout: float) -> sqlite3.Connection:
                return connect(path, timeout=timeout, check_same_thread=False)

            self._writer = sqlite_writer.acquire_writer(self.path, self._identity, open_writer)
            self._writer_pid = sqlite_writer.process_id()
        return self._writer

    def _kept_cursor(self, conn: sqlite3.Connection) -> sqlite3.Cursor:
        """A cursor of `conn` this store keeps, for its hot statements that return no rows
        (`Connection.execute` makes and frees a cursor per call). Never for a statement
        with rows: a kept cursor holds its last statement open until its next one."""
        cursor = self._cursor
        if cursor is None or cursor.connection is not conn:
            cursor = self._cursor = conn.cursor()
        return cursor

    def write_connection(self) -> sqlite3.Connection:
        """The connection this store's writes run on: the process's group writer's (opened
        if need be) or, with group commit off, the store's own. For tracing (benchmarks
        count commits with its trace callback); never write on it directly."""
        if not self.group_commit or self.read_only:
            return self.conn
        return self._group_writer().connection(self._timeout)

    def group_stats(self) -> dict[str, int]:
        """Units and commits of this process's group writer for the file so far ({} with
        group commit off): units per commit is how much the writes were batched."""
        if not self.group_commit or self._writer is None:
            return {}
        return {"units": self._writer.units, "commits": self._writer.commits}

    def _guard(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except sqlite3.Error as exc:
            raise StoreError(f"database {self.path}: {exc}") from None

    def _dicts(self, sql: str, args: Sequence[object]) -> list[dict[str, Any]]:
        """The rows of a SELECT as dicts keyed by column name (plain sqlite3: importing
        sqlite_utils, and the numpy it pulls in, cost every command ~0.2 s of start-up)."""
        cursor = self.conn.execute(sql, args)
        columns = [column[0] for column in cursor.description]
        return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]

    def schema_version(self) -> int:
        """The schema version recorded in the file (0 for a new file)."""
        if not self.conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
        ).fetchone():
            return 0
        row = self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        return int(row[0]) if row else 0

    def migrate(self) -> int:
        """Bring the file to SCHEMA_VERSION; return the version it had before."""
        try:
            # Alone: the body reads through the store's own connection (schema_version).
            with self._write(alone=True) as conn:
                conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
                before = self.schema_version()
                if before > SCHEMA_VERSION:
                    raise StoreError(
                        f"{self.path} has schema version {before}, newer than this sagalab "
                        f"({SCHEMA_VERSION}); upgrade sagalab"
                    )
                for script in MIGRATIONS[before:]:
                    if callable(script):
                        script(conn)
                        continue
                    for statement in script.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (str(SCHEMA_VERSION),),
                )
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path} is not a usable sagalab database: {exc}") from None
        return before

    def close(self) -> None:
        """Close the connection (and, as its last user, the process's group writer)."""
        writer, self._writer = self._writer, None
        self._cursor = None
        if writer is not None and self._writer_pid == os.getpid():
            sqlite_writer.release_writer(writer)
        self.conn.close()

    def ping(self) -> None:
        """StoreError unless the path still holds a saga database that answers.

        The file is probed afresh (`check_database`): bytes written over it in place are not
        seen by a connection that has its pages cached.
        """
        check_database(self.path, Access.READ)
        self._guard(lambda: self.conn.execute("SELECT 1 FROM sagas LIMIT 1").fetchall())

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
            found = self.conn.execute(
                "SELECT body FROM flow_snapshots WHERE hash = ?", (flow_hash,)
            ).fetchone()
            if found is None:
                raise StoreError(f"{self.path}: flow snapshot {flow_hash} is missing")
            body = self._snapshots[flow_hash] = found[0]
        return body

    def _record(self, row: dict[str, Any], *, lenient: bool = False) -> SagaRecord:
        """The row as a record. A damaged input raises DamagedRecord, or with `lenient`
        (listings) reads as {} with `damaged` saying why."""
        flow_hash = row.get("flow_hash")
        snapshot = self._snapshot_body(flow_hash) if flow_hash else row["flow_snapshot"]
        return saga_record(row, self._flow(snapshot), lenient=lenient)

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
        """Store a new saga of `tenant` (queued if `run_after` is set); reuse the one a key
        names. Idempotency keys are per tenant: another tenant's key is never seen here.
        `forked_from` links a fork to the saga it was forked from.

        `initial` entries follow SAGA_CREATED in the same transaction, and `state` (the fold
        of all of them) gives the stored status.
        """
        fingerprint = input_fingerprint(flow.name, flow.version, payload)
        flow_hash, snapshot = self._snapshot_of(flow)
        input_text = json.dumps(payload)
        with self._write() as conn:
            if idempotency_key is not None:
                found = conn.execute(
                    "SELECT id, input_hash FROM sagas WHERE tenant = ? AND idempotency_key = ?",
                    (tenant, idempotency_key),
                ).fetchone()
                if found is not None:
                    if found[1] != fingerprint:
                        raise IdempotencyConflict(idempotency_key, found[0])
                    existing_id = found[0]
                else:
                    existing_id = None
            else:
                existing_id = None
            if existing_id is None:
                if flow_hash not in self._stored_hashes:
                    conn.execute(
                        "INSERT OR IGNORE INTO flow_snapshots (hash, body) VALUES (?, ?)",
                        (flow_hash, snapshot),
                    )
                entries = [JournalEntry(Event(EventType.SAGA_CREATED, now)), *initial]
                folded = state if state is not None else SagaState(flow)
                saga_sql, saga_args = _INSERT_SAGA.statement(
                    [
                        (
                            saga_id,
                            flow.name,
                            flow.version,
                            "",  # flow_snapshot: the body is in flow_snapshots (flow_hash)
                            flow_hash,
                            input_text,
                            fingerprint,
                            idempotency_key,
                            _STATUS_TEXT[folded.status],
                            folded.reason,
                            trace_id,
                            now,
                            now,
                            len(entries),
                            run_after,
                            steps_json(step_fields(folded)),
                            tenant,
                            forked_from,
                        )
                    ]
                )
                cursor = self._kept_cursor(conn)
                cursor.execute(saga_sql, saga_args)
                _insert_events(
                    cursor,
                    [entry_row(e, i) for i, e in enumerate(entries, 1)],
                    (saga_id, trace_id),
                )
        if existing_id is not None:
            return self.load(existing_id), False
        self._written = (saga_id, len(entries), _STATUS_TEXT[folded.status], trace_id)
        self._stored_hashes.add(flow_hash)
        if wake.due_now(run_after):
            self.notify_queued()
        record = SagaRecord(  # by position: keywords would be gathered into a dict first
            saga_id,  # id
            self._flow(snapshot),
            json.loads(input_text),  # input
            folded.status,
            trace_id,
            idempotency_key,
            folded.reason,
            now,  # created_at
            now,  # updated_at
            1 + len(initial),  # last_seq
            tenant,
            forked_from,
        )
        return record, True

    def _snapshot_of(self, flow: FlowDefinition) -> tuple[str, str]:
        cached = self._flow_hashes.get(id(flow))
        if cached is not None and cached[0] is flow:
            return cached[1], cached[2]
        snapshot = json.dumps(flow_to_dict(flow), sort_keys=True)
        flow_hash = hashlib.sha256(snapshot.encode()).hexdigest()[:32]
        self._flow_hashes[id(flow)] = (flow, flow_hash, snapshot)
        self._snapshots[flow_hash] = snapshot
        return flow_hash, snapshot

    def _rows(self, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        # Raw SQL on the hot path: sqlite-utils' rows_where looks up table and view names
        # (two sqlite_master queries) on every call, a fifth of the statements of a saga.
        def query() -> list[dict[str, Any]]:
            cursor = self.conn.execute(sql, params)
            columns = [d[0] for d in cursor.description]
            return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]

        return self._guard(query)

    def load(self, saga_id: str, *, tenant: str | None = None) -> SagaRecord:
        """The saga's row; with `tenant`, only if the saga is that tenant's (else not found,
        so that a caller learns nothing about other tenants' sagas)."""
        rows = self._rows("SELECT * FROM sagas WHERE id = ?", (saga_id,))
        if not rows or (tenant is not None and rows[0]["tenant"] != tenant):
            raise SagaNotFoundError(saga_id)
        return self._record(rows[0])

    def journal(self, saga_id: str) -> list[JournalEntry]:
        """Every journal entry, in order."""
        rows = self._rows("SELECT * FROM events WHERE saga_id = ? ORDER BY seq", (saga_id,))
        if not rows:
            self.load(saga_id)  # raises SagaNotFoundError for an unknown id
        return [journal_entry(saga_id, r) for r in rows]

    def state(self, saga_id: str) -> tuple[SagaRecord, list[JournalEntry], SagaState]:
        """Record, journal and the folded state, read consistently."""
        with self._read():
            record = self.load(saga_id)
            entries = self.journal(saga_id)
        state = SagaState.replay(record.flow, (e.event for e in entries))
        return record, entries, state

    @contextmanager
    def _read(self) -> Iterator[None]:
        self.conn.execute("BEGIN")
        try:
            yield
        finally:
            self.conn.execute("COMMIT")

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
        """Append `entries` after `expected_seq` in one transaction, with the new status.

        With a `lease`, the write is fenced: refused (LeaseLost) unless that lease is still the
        saga's current, unexpired one.
        """
        if not entries:
            return expected_seq
        seq = expected_seq + len(entries)
        status = _STATUS_TEXT[state.status]
        reason = state.reason
        steps = steps_json(step_fields(state))
        fence: tuple[Any, ...] = () if lease is None else (lease.owner, lease.epoch, now)
        # The status is set only when it changes: assigning it, even to the value it has,
        # rewrites the saga's entry in `sagas_by_status` (one more page in the WAL per
        # commit). When this store wrote the saga at `expected_seq` with this status, the
        # status is matched in the WHERE instead; if someone changed it since, that UPDATE
        # finds no row and the one that sets it runs, as it would have anyway. A saga's
        # trace id never changes: known from that write, the UPDATE needs no RETURNING
        # (which costs SQLite about as much as the UPDATE itself).
        written = self._written
        trace_id = written[3] if written is not None and written[0] == saga_id else None
        fenced, no_reason = lease is not None, reason is None
        with self._write() as conn:
            cursor = self._kept_cursor(conn)
            # One statement checks the expected seq (and the lease) and moves the saga on.
            moved = False
            if trace_id is not None and written == (saga_id, expected_seq, status, trace_id):
                moved = _move_on(
                    cursor,
                    _UPDATE_SAGA[fenced, no_reason, False, False],
                    _update_args(None, now, seq, steps, reason, saga_id, expected_seq, fence)
                    + (status,),
                )
            if not moved:
                args = _update_args(status, now, seq, steps, reason, saga_id, expected_seq, fence)
                if trace_id is not None:
                    moved = _move_on(cursor, _UPDATE_SAGA[fenced, no_reason, True, False], args)
                else:
                    row = conn.execute(_UPDATE_SAGA[fenced, no_reason, True, True], args).fetchone()
                    moved, trace_id = row is not None, row and row[0]
            if not moved or trace_id is None:
                self._refuse_append(conn, saga_id, expected_seq, lease, now)
            _insert_events(
                cursor,
                [entry_row(entry, expected_seq + i) for i, entry in enumerate(entries, 1)],
                (saga_id, trace_id),
            )
        self._written = (saga_id, seq, status, trace_id)
        return seq

    @staticmethod
    def _refuse_append(
        conn: sqlite3.Connection,
        saga_id: str,
        expected_seq: int,
        lease: Lease | None,
        now: float,
    ) -> NoReturn:
        row = conn.execute(
            "SELECT last_seq, lease_owner, lease_epoch, lease_until FROM sagas WHERE id = ?",
            (saga_id,),
        ).fetchone()
        if row is None:
            raise SagaNotFoundError(saga_id)
        if lease is not None and (
            row[1] != lease.owner or row[2] != lease.epoch or (row[3] or 0) < now
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
        row = self._guard(
            lambda: self.conn.execute("SELECT steps FROM sagas WHERE id = ?", (saga_id,)).fetchone()
        )
        return [] if row is None else steps_from_json(row[0])

    def page(self, saga_id: str, *, tenant: str | None = None) -> SagaPage:
        """The saga, its steps and its forks from one statement: one snapshot, and one
        statement the connection's statement cache keeps compiled."""
        rows = self._rows(_PAGE, (saga_id,))
        if not rows or (tenant is not None and rows[0]["tenant"] != tenant):
            raise SagaNotFoundError(saga_id)
        row = rows[0]
        return SagaPage(
            self._record(row), steps_from_json(row["steps"]), json.loads(row["page_forks"])
        )

    def forks(self, saga_id: str) -> list[str]:
        """Ids of the sagas forked from `saga_id`, oldest first."""
        rows = self._guard(
            lambda: self.conn.execute(
                "SELECT id FROM sagas WHERE forked_from = ? ORDER BY created_at, id", (saga_id,)
            ).fetchall()
        )
        return [r[0] for r in rows]

    def list_sagas(
        self,
        *,
        status: SagaStatus | None = None,
        flow: str | None = None,
        limit: int = 50,
        tenant: str | None = None,
    ) -> list[SagaRecord]:
        """Most recent first; only `tenant`'s sagas when it is given."""
        where, args = [], []
        if tenant is not None:
            where.append("tenant = ?")
            args.append(tenant)
        if status is not None:
            where.append("status = ?")
            args.append(status.value)
        if flow is not None:
            where.append("flow_name = ?")
            args.append(flow)
        rows = self._guard(
            lambda: self._dicts(
                "SELECT * FROM sagas"
                + (" WHERE " + " AND ".join(where) if where else "")
                + " ORDER BY created_at DESC, id LIMIT ?",
                [*args, limit],
            )
        )
        return [self._record(r, lenient=True) for r in rows]

    def find_sagas(self, criteria: SagaFilter) -> list[SagaRecord]:
        """The sagas `criteria` selects, newest first, filtered in one query."""
        after_created_at = None
        if criteria.after is not None:
            cursor = self._rows("SELECT created_at FROM sagas WHERE id = ?", (criteria.after,))
            if not cursor:
                raise SagaNotFoundError(criteria.after)
            after_created_at = cursor[0]["created_at"]
        sql, args = saga_filter_sql(criteria, _FILTER_SQL, after_created_at=after_created_at)
        return [self._record(r, lenient=True) for r in self._rows(sql, args)]

    def count_by_status(self) -> dict[str, int]:
        """How many sagas are in each status."""
        rows = self._guard(
            lambda: self.conn.execute(
                "SELECT status, COUNT(*) FROM sagas GROUP BY status"
            ).fetchall()
        )
        return {status: n for status, n in rows}

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
        """Store the batch and its sagas, none reached yet, in one transaction."""
        with self._write() as conn:
            conn.execute(
                "INSERT INTO batches (id, action, filter, options, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (batch_id, action, json.dumps(filter), json.dumps(options), now),
            )
            conn.executemany(
                "INSERT INTO batch_sagas (batch_id, position, saga_id) VALUES (?, ?, ?)",
                [(batch_id, i, saga_id) for i, saga_id in enumerate(saga_ids)],
            )
        return self.load_batch(batch_id)

    def load_batch(self, batch_id: str) -> BatchRecord:
        """The batch with its items (BatchNotFoundError if unknown)."""
        rows = self._rows("SELECT * FROM batches WHERE id = ?", (batch_id,))
        if not rows:
            raise BatchNotFoundError(batch_id)
        items = self._rows(
            "SELECT * FROM batch_sagas WHERE batch_id = ? ORDER BY position", (batch_id,)
        )
        return batch_record(rows[0], items)

    def record_batch_outcome(
        self, batch_id: str, saga_id: str, *, outcome: str, detail: str | None, now: float
    ) -> None:
        """Set what became of `saga_id` in the batch."""
        with self._write() as conn:
            conn.execute(
                "UPDATE batch_sagas SET outcome = ?, detail = ?, at = ? "
                "WHERE batch_id = ? AND saga_id = ?",
                (outcome, detail, now, batch_id, saga_id),
            )

    def claim_batch_item(self, batch_id: str, seen: BatchItem, *, owner: str, now: float) -> bool:
        """Mark `seen` ACTING for `owner` if no other run changed it since it was read."""
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE batch_sagas SET outcome = ?, detail = ?, at = ? "
                "WHERE batch_id = ? AND saga_id = ? AND outcome IS ? AND detail IS ?",
                (ACTING, owner, now, batch_id, seen.saga_id, seen.outcome, seen.detail),
            )
        return cur.rowcount == 1

    def finish_batch(self, batch_id: str, *, now: float) -> None:
        """Mark the batch finished."""
        with self._write() as conn:
            conn.execute("UPDATE batches SET finished_at = ? WHERE id = ?", (now, batch_id))

    def list_batches(self, *, limit: int = 20) -> list[BatchRecord]:
        """The most recent batches first."""
        rows = self._rows(
            "SELECT id FROM batches ORDER BY created_at DESC, id LIMIT ?", (max(0, limit),)
        )
        return [self.load_batch(r["id"]) for r in rows]

    # -- the durable queue and leases ------------------------------------------------------

    def claim_next(self, owner: str, *, now: float, lease_seconds: float) -> Lease | None:
        """Lease the saga due longest ago whose lease is free or expired; None if none is."""
        leases = self.claim_due(owner, now=now, lease_seconds=lease_seconds, limit=1)
        return leases[0] if leases else None

    def claim_due(self, owner: str, *, now: float, lease_seconds: float, limit: int) -> list[Lease]:
        """Lease up to `limit` sagas due longest ago (free or expired leases), in one
        statement under the write lock: a worker takes a batch for its idle threads with one
        transaction instead of one per saga (issue 14)."""
        if limit < 1 or not (self._claimed_last or self._any_due(now)):
            return []
        until = now + lease_seconds
        with self._write() as conn:
            rows = conn.execute(
                "UPDATE sagas SET lease_owner = :owner, lease_until = :until, "
                "lease_epoch = lease_epoch + 1 WHERE id IN (SELECT id FROM sagas "
                "WHERE run_after IS NOT NULL AND run_after <= :now "
                "AND (lease_until IS NULL OR lease_until < :now) "
                "ORDER BY run_after LIMIT :limit) "
                "RETURNING id, lease_epoch, run_after",
                {"owner": owner, "until": until, "now": now, "limit": limit},
            ).fetchall()
        # Straight to the UPDATE next time only while claims take all they ask for: one
        # that took fewer emptied the queue, and an empty claim is a write transaction
        # under the lock every other process waits for (issue 14).
        self._claimed_last = len(rows) >= limit
        rows.sort(key=lambda row: (row[2], row[0]))  # RETURNING's order is unspecified
        return [Lease(saga_id=row[0], owner=owner, epoch=row[1], until=until) for row in rows]

    def _any_due(self, now: float) -> bool:
        """Whether a saga is due and unleased: read without the write lock (WAL readers do
        not block writers), so an idle worker's poll costs no write transaction. Only a
        hint: the claim's UPDATE decides, atomically."""
        row = self._guard(
            lambda: self.conn.execute(
                "SELECT 1 FROM sagas WHERE run_after IS NOT NULL AND run_after <= ? "
                "AND (lease_until IS NULL OR lease_until < ?) LIMIT 1",
                (now, now),
            ).fetchone()
        )
        return row is not None

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
        until = now + lease_seconds
        with self._write() as conn:
            row = conn.execute(
                "SELECT lease_owner, lease_until, lease_epoch FROM sagas WHERE id = ?",
                (saga_id,),
            ).fetchone()
            if row is None:
                raise SagaNotFoundError(saga_id)
            held_by, held_until, epoch = row
            _refuse_if_held(saga_id, held_by, held_until, now=now, owner=owner, take_over=take_over)
            conn.execute(
                "UPDATE sagas SET lease_owner = ?, lease_until = ?, lease_epoch = ?, "
                "run_after = COALESCE(run_after, ?) WHERE id = ?",
                (owner, until, epoch + 1, now, saga_id),
            )
        return Lease(saga_id=saga_id, owner=owner, epoch=epoch + 1, until=until)

    def check_lease_free(
        self,
        saga_id: str,
        *,
        now: float,
        take_over: Callable[[str], bool] = lambda _owner: False,
    ) -> None:
        """LeaseHeld if a live lease holds the saga (the rule `claim` applies), else nothing.

        For shells that hand the saga to the workers rather than run it (the HTTP API's
        resume): a saga a live worker runs is refused there as `claim` refuses it here.
        """
        row = self._guard(
            lambda: self.conn.execute(
                "SELECT lease_owner, lease_until FROM sagas WHERE id = ?", (saga_id,)
            ).fetchone()
        )
        if row is None:
            raise SagaNotFoundError(saga_id)
        _refuse_if_held(saga_id, row[0], row[1], now=now, owner=None, take_over=take_over)

    def renew(self, lease: Lease, *, now: float, lease_seconds: float) -> Lease | None:
        """Extend a lease still held; None if it was lost (expired and taken, or released)."""
        if self.renew_many([lease], now=now, lease_seconds=lease_seconds):
            return None
        return Lease(lease.saga_id, lease.owner, lease.epoch, now + lease_seconds)

    def renew_many(self, leases: Sequence[Lease], *, now: float, lease_seconds: float) -> set[str]:
        """Extend every lease still held to `now + lease_seconds` in one statement (per
        `_RENEW_CHUNK` leases); return the saga ids of those that were lost."""
        lost = {lease.saga_id for lease in leases}
        for first in range(0, len(leases), _RENEW_CHUNK):
            chunk = leases[first : first + _RENEW_CHUNK]
            held = ", ".join("(?, ?, ?)" for _ in chunk)
            args: list[object] = [now + lease_seconds, now]
            for lease in chunk:
                args += (lease.saga_id, lease.owner, lease.epoch)
            with self._write() as conn:
                rows = conn.execute(
                    "UPDATE sagas SET lease_until = ? WHERE lease_until >= ? "
                    f"AND (id, lease_owner, lease_epoch) IN (VALUES {held}) RETURNING id",
                    args,
                ).fetchall()
            lost.difference_update(row[0] for row in rows)
        return lost

    def release(self, lease: Lease, *, run_after: float | None) -> bool:
        """Give the saga back: due again at `run_after`, or off the queue if None."""
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE sagas SET lease_owner = NULL, lease_until = NULL, run_after = ? "
                "WHERE id = ? AND lease_owner = ? AND lease_epoch = ?",
                (run_after, lease.saga_id, lease.owner, lease.epoch),
            )
        if cur.rowcount == 1 and wake.due_now(run_after):
            self.notify_queued()
        return cur.rowcount == 1

    def park(self, lease: Lease, *, reason: str) -> bool:
        """Give the saga back off the queue with `reason`: it waits for an operator.

        For a saga a worker cannot run at all (its stored journal or flow no longer fits this
        code); `sagalab orchestrate resume` (or `resume --stuck`) tries it again.
        """
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE sagas SET lease_owner = NULL, lease_until = NULL, run_after = NULL, "
                "reason = ? WHERE id = ? AND lease_owner = ? AND lease_epoch = ?",
                (reason, lease.saga_id, lease.owner, lease.epoch),
            )
        return cur.rowcount == 1

    def stuck(self, *, now: float) -> list[str]:
        """Active sagas nobody is running: lease expired, or never queued."""
        rows = self._guard(
            lambda: self.conn.execute(
                "SELECT id FROM sagas WHERE status IN ('pending', 'running', 'compensating') "
                "AND (run_after IS NULL OR (lease_until IS NOT NULL AND lease_until < ?)) "
                "ORDER BY created_at",
                (now,),
            ).fetchall()
        )
        return [r[0] for r in rows]

    def record_scaling(
        self, *, at: float, before: int, after: int, depth: int, oldest_age: float, reason: str
    ) -> None:
        """Journal one autoscaling decision."""
        with self._write() as conn:
            conn.execute(
                "INSERT INTO scaling_events VALUES (?, ?, ?, ?, ?, ?)",
                (at, before, after, depth, oldest_age, reason),
            )

    def scaling_events(self, limit: int = 100) -> list[dict[str, Any]]:
        """Most recent scaling decisions, oldest first."""
        # sqlite-utils here, off the start-up path: importing it (and the numpy it pulls in)
        # costs ~0.2 s, which `list` and `status` no longer pay.
        import sqlite_utils

        table = sqlite_utils.Database(self.conn)["scaling_events"]
        rows = self._guard(lambda: list(table.rows_where(order_by="at DESC", limit=limit)))
        return rows[::-1]

    # -- copying a whole database (`sagalab db copy`) ---------------------------------------

    def table_counts(self) -> dict[str, int]:
        """Rows per `COPY_TABLES` table, as `export` would give them."""
        with self._read():
            return self._guard(self._copy_counts)

    def _copy_counts(self) -> dict[str, int]:
        counts = self._raw_counts(self.conn)
        counts["flow_snapshots"] += len(self._legacy_snapshots())
        return counts

    @staticmethod
    def _raw_counts(conn: sqlite3.Connection) -> dict[str, int]:
        return {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in COPY_TABLES}

    def _legacy_snapshots(self) -> dict[str, str]:
        """Snapshots of sagas from before v5 (kept in their own row, no `flow_hash`), by the
        hash an export gives them, unless `flow_snapshots` has that hash already."""
        found: dict[str, str] = {}
        for (body,) in self.conn.execute(
            "SELECT DISTINCT flow_snapshot FROM sagas WHERE flow_hash IS NULL"
        ):
            flow_hash = _legacy_hash(body)
            if not self.conn.execute(
                "SELECT 1 FROM flow_snapshots WHERE hash = ?", (flow_hash,)
            ).fetchone():
                found[flow_hash] = body
        return found

    @contextmanager
    def export(self, *, batch_size: int = 500) -> Iterator[Export]:
        """Every `COPY_TABLES` row, from one read transaction held while the context is open
        (a WAL snapshot: writers go on, this reader sees none of their commits)."""
        with self._read():
            counts = self._guard(self._copy_counts)
            batches = self._export_batches(batch_size)
            try:
                yield Export(counts, batches)
            finally:
                batches.close()

    def _export_batches(
        self, batch_size: int
    ) -> Generator[tuple[str, list[dict[str, Any]]], None, None]:
        orders = {
            "flow_snapshots": "hash",
            "sagas": "created_at, id",
            "events": "saga_id, seq",
            "breakers": "name",
            "breaker_events": "rowid",
            "scaling_events": "rowid",
            "batches": "created_at, id",
            "batch_sagas": "batch_id, position",
        }
        try:
            for table in COPY_TABLES:
                columns = COPY_COLUMNS[table]
                extra = ", flow_snapshot" if table == "sagas" else ""
                cursor = self.conn.execute(
                    f"SELECT {', '.join(columns)}{extra} FROM {table} ORDER BY {orders[table]}"
                )
                while rows := cursor.fetchmany(batch_size):
                    batch = [dict(zip(columns, row, strict=False)) for row in rows]
                    if table == "sagas":
                        for row, raw in zip(batch, rows, strict=True):
                            if row["flow_hash"] is None:  # a saga from before v5
                                row["flow_hash"] = _legacy_hash(raw[-1])
                    yield table, batch
                if table == "flow_snapshots" and (legacy := self._legacy_snapshots()):
                    yield table, [{"hash": h, "body": b} for h, b in legacy.items()]
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read {self.path}: {exc}") from None

    def import_rows(self, batches: Batches, *, merge: bool = False) -> dict[str, int]:
        """Write `batches` in one `BEGIN IMMEDIATE` transaction; the rows inserted per table.

        CopyRefused (rolled back: nothing written) for a database that is not empty without
        `merge`, and with it for a saga id or a tenant's idempotency key already here.
        """
        with self._write(alone=True) as conn:  # a bulk copy: one transaction of its own
            before = self._raw_counts(conn)
            if not merge and any(before.values()):
                raise CopyRefused(f"{self.path} is not empty ({shown_counts(before)})")
            for table, rows in batches:
                columns = COPY_COLUMNS[table]
                values = [tuple(row[c] for c in columns) for row in rows]
                if table == "sagas":
                    _refuse_known_ids(conn, [row["id"] for row in rows])
                    columns = (*columns, "flow_snapshot")  # the pre-v5 column: unused since
                    values = [(*v, "") for v in values]
                verb = "INSERT OR IGNORE" if table in ("flow_snapshots", "breakers") else "INSERT"
                statement = (
                    f"{verb} INTO {table} ({', '.join(columns)}) "
                    f"VALUES ({', '.join('?' for _ in columns)})"
                )
                try:
                    conn.executemany(statement, values)
                except sqlite3.IntegrityError as exc:
                    raise CopyRefused(
                        f"{table} rows of the source collide with {self.path}'s ({exc})"
                    ) from None
            after = self._raw_counts(conn)
        return {t: after[t] - before[t] for t in COPY_TABLES}

    # -- queue helpers for the HTTP API (issue 5) -------------------------------------------

    def requeue(self, saga_id: str, run_after: float) -> None:
        """Put a saga (back) on the durable queue for workers, due at `run_after`.

        Used by the HTTP API's resume and rollback: it never runs sagas itself. A lease a
        worker holds is left alone; the worker's next append meets the new journal.
        """
        with self._write() as conn:
            cur = conn.execute("UPDATE sagas SET run_after = ? WHERE id = ?", (run_after, saga_id))
            if cur.rowcount == 0:
                raise SagaNotFoundError(saga_id)
        if wake.due_now(run_after):
            self.notify_queued()

    def notify_queued(self) -> None:
        """Wake idle workers: a saga is due now (a hint after the commit; never fails)."""
        wake.notify_dir(wake.wake_dir(self.path))

    def queue_stats(self, now: float) -> dict[str, float]:
        """Queued sagas (`depth`), those under a live lease (`leased`), oldest due age (s)."""
        row = self._guard(
            lambda: self.conn.execute(
                "SELECT COUNT(*), "
                "COALESCE(SUM(lease_until IS NOT NULL AND lease_until > :now), 0), "
                "MIN(CASE WHEN lease_until IS NULL OR lease_until <= :now THEN run_after END) "
                "FROM sagas WHERE run_after IS NOT NULL "
                "AND status IN ('pending', 'running', 'compensating')",
                {"now": now},
            ).fetchone()
        )
        total, leased, oldest = row
        return {
            "depth": float(total - leased),
            "leased": float(leased),
            "oldest_age": max(0.0, now - oldest) if oldest is not None else 0.0,
        }


def _file_identity(path: Path) -> tuple[int, int]:
    """(device, inode) of the file at `path` now ((0, 0) if it cannot be read)."""
    try:
        found = path.stat()
    except OSError:
        return (0, 0)
    return (found.st_dev, found.st_ino)


def _legacy_hash(body: str) -> str:
    """The `flow_hash` an export gives a pre-v5 saga's own snapshot text."""
    return hashlib.sha256(body.encode()).hexdigest()[:32]


def _refuse_known_ids(conn: sqlite3.Connection, ids: Sequence[str]) -> None:
    """CopyRefused if any of `ids` names a saga here already."""
    if not ids:
        return
    known = [
        r[0]
        for r in conn.execute(
            f"SELECT id FROM sagas WHERE id IN ({', '.join('?' for _ in ids)}) LIMIT 5", ids
        )
    ]
    if known:
        raise CopyRefused(
            f"saga id(s) {', '.join(known)} of the source exist at the destination already"
        )


#: `SQLiteStore.page`: the saga's row with its forks' ids (a JSON array, oldest first).
_PAGE = (
    "SELECT s.*, (SELECT json_group_array(id) FROM (SELECT id FROM sagas "
    "WHERE forked_from = s.id ORDER BY created_at, id)) AS page_forks FROM sagas AS s "
    "WHERE s.id = ?"
)

# By position (`entry_row`): binding 17 parameters by name costs a lookup each, per row;
# a None value is a NULL in the text and a commit's rows go in one INSERT (sqlite_rows).
# The saga's id and trace id are the same in every row: bound once per statement.
_INSERT_EVENTS = RowInserts("events", ENTRY_ROW_COLUMNS, shared=("saga_id", "trace_id"))
_INSERT_SAGA = RowInserts(
    "sagas",
    (
        "id",
        "flow_name",
        "flow_version",
        "flow_snapshot",
        "flow_hash",
        "input",
        "input_hash",
        "idempotency_key",
        "status",
        "reason",
        "trace_id",
        "created_at",
        "updated_at",
        "last_seq",
        "run_after",
        "steps",
        "tenant",
        "forked_from",
    ),
)


#: Each saga status's text (a dict look-up: `.value` is a Python descriptor call per use).
_STATUS_TEXT: dict[SagaStatus, str] = {s: s.value for s in SagaStatus}


def _insert_events(
    conn: sqlite3.Connection | sqlite3.Cursor,
    rows: Sequence[tuple[Any, ...]],
    saga: tuple[str, str],
) -> None:
    """Insert one saga's journal rows (`entry_row`s); `saga` is its (id, trace id)."""
    if len(rows) <= MAX_ROWS:  # a commit's few rows: one statement, no generator
        conn.execute(*_INSERT_EVENTS.statement(rows, saga))
        return
    for sql, args in _INSERT_EVENTS.statements(rows, saga):
        conn.execute(sql, args)


def _update_saga(fenced: bool, reason_is_none: bool, set_status: bool, returning: bool) -> str:
    reason = "NULL" if reason_is_none else "?"
    status = "status = ?, " if set_status else ""
    fence = " AND lease_owner = ? AND lease_epoch = ? AND lease_until >= ?" if fenced else ""
    same = "" if set_status else " AND status = ?"
    back = " RETURNING trace_id" if returning else ""
    return (
        f"UPDATE sagas SET {status}updated_at = ?, last_seq = ?, steps = ?, reason = {reason} "
        f"WHERE id = ? AND last_seq = ?{fence}{same}{back}"
    )


#: `SQLiteStore.append`'s UPDATE by (fenced, reason is None, sets the status, returns the
#: trace id).
_UPDATE_SAGA = {
    key: _update_saga(*key)
    for key in product((False, True), (False, True), (False, True), (False, True))
}


def _move_on(conn: sqlite3.Cursor, update: str, args: tuple[Any, ...]) -> bool:
    """Whether the UPDATE (one without RETURNING) found the saga's row as expected."""
    return conn.execute(update, args).rowcount == 1


def _update_args(
    status: str | None,
    now: float,
    seq: int,
    steps: str,
    reason: str | None,
    saga_id: str,
    expected_seq: int,
    fence: tuple[Any, ...],
) -> tuple[Any, ...]:
    """The parameters of an `_UPDATE_SAGA` text, in its order (a None status or reason is
    not bound: the text leaves the status out or writes NULL)."""
    args: tuple[Any, ...] = (now, seq, steps) if status is None else (status, now, seq, steps)
    if reason is not None:
        args += (reason,)
    return args + (saga_id, expected_seq) + fence


def _refuse_if_held(
    saga_id: str,
    held_by: str | None,
    held_until: float | None,
    *,
    now: float,
    owner: str | None,
    take_over: Callable[[str], bool],
) -> None:
    """LeaseHeld unless the lease is free, expired, `owner`'s own, or may be taken over."""
    if (
        held_by is not None
        and held_by != owner
        and (held_until or 0) >= now
        and not take_over(held_by)
    ):
        raise LeaseHeld(saga_id, held_by, held_until or 0)

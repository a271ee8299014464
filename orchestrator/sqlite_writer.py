"""Group commit: one SQLite writer per process and database file (`GroupWriter`).

Theory of operation
-------------------
Without it every thread of a process (the API's request threads, a worker's threads) opens its
own connection and runs `BEGIN IMMEDIATE` on it; with several at once the losers sleep in
SQLite's busy handler (1, 2, 5, 10 ... 100 ms at a time), which is where the tail of
`POST /v1/sagas` came from. With it, the threads of one process share ONE connection per
database file, and their write transactions share commits:

* A caller takes the writer's lock, opens the batch's transaction if none is open
  (`BEGIN IMMEDIATE`), and runs its unit (the body of `SQLiteStore._write()`: the statements
  of one logical transaction, fencing checks included) inside `SAVEPOINT unit`. A unit that
  raises is rolled back to its savepoint alone and its caller gets its own exception.
* The unit joins the open batch. The caller that finds nobody else on the way in (or the batch
  older than the window, or full) commits the whole batch and wakes every caller in it; the
  others wait for that COMMIT. A lone caller so commits its own unit at once: no hand-off, no
  window; under load, units that arrive while one runs share the next COMMIT.
* Durability is unchanged: a caller returns only after the COMMIT that holds its unit, so a
  SIGKILL loses only units whose callers never returned.
* A database error that takes the transaction with it (disk full, I/O error, a damaged file)
  or a failed COMMIT fails every unit of the batch with StoreError. A `BEGIN` that runs out of
  the busy timeout fails every caller that was already waiting for it (one timeout in all,
  not one each). Every wait is bounded: a caller whose batch is not committed within the
  window commits it itself, so no caller depends on another that went away.
* There is no writer thread: the committer is always one of the callers. A commit cut short
  by anything but a database error (an interrupt) fails its batch and stops the writer: its
  later callers get StoreError at once, never a hang.
* One writer per process: the registry forgets the parent's writers in a forked child
  (`os.register_at_fork`), whose stores then open their own lazily. At exit, an open batch is
  committed (its callers, frozen daemon threads, never return: a crash after the commit).

`SAGALAB_GROUP_COMMIT=0` (or `SQLiteStore(..., group_commit=False)`) turns it off: each store
writes on its own connection as before (for a before/after benchmark in one run).
"""

from __future__ import annotations

import atexit
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Literal

from sagalab.orchestrator.errors import StoreError
from sagalab.orchestrator.limits import WRITER_LOCK_SLACK

__all__ = [
    "ENV",
    "MAX_UNITS",
    "WINDOW",
    "GroupWriter",
    "acquire_writer",
    "enabled",
    "process_id",
    "release_writer",
]

#: The environment variable that turns group commit off ("0", "off", "false", "no").
ENV = "SAGALAB_GROUP_COMMIT"
#: How long a batch may wait for callers already on their way in before one commits it (s).
WINDOW = 0.002
#: A batch is committed once it holds this many units, whoever is still on the way in.
MAX_UNITS = 256
#: Extra seconds a caller waits for the writer's lock beyond the busy timeout (another
#: caller may hold it through a whole `BEGIN IMMEDIATE` wait); in orchestrator/limits.py,
#: since the gateways' and the edge's timeouts are counted from it (`edge.apps.hop_timeouts`).
LOCK_SLACK = WRITER_LOCK_SLACK

# Primary result codes after which SQLite may have rolled the transaction back, or the file
# cannot be trusted: the whole batch fails (SQLITE_NOMEM, READONLY, IOERR, CORRUPT, FULL,
# CANTOPEN, PROTOCOL, NOTADB).
_BATCH_FATAL = frozenset({7, 8, 10, 11, 13, 14, 15, 26})


def enabled() -> bool:
    """Whether stores use group commit unless told otherwise (`SAGALAB_GROUP_COMMIT`)."""
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "off", "false", "no")


class _Batch:
    """The units of one transaction; `done` once it committed or failed (`error`).

    `event` is made only when a caller has to wait for another's COMMIT (a lone caller
    commits its own unit: no event, no wake-up).
    """

    __slots__ = ("began", "done", "error", "event", "units")

    def __init__(self, began: float) -> None:
        self.began = began
        self.done = False
        self.error: str | None = None
        self.event: threading.Event | None = None
        self.units = 0

    def finish(self, error: str | None = None) -> None:
        """Committed (or failed with `error`): wake whoever waits."""
        if error is not None and self.error is None:
            self.error = error
        self.done = True
        if self.event is not None:
            self.event.set()


class _Unit:
    """`GroupWriter.unit`'s context manager (a class: a generator's costs more per write)."""

    __slots__ = ("alone", "arrived", "batch", "timeout", "writer")

    def __init__(self, writer: GroupWriter, timeout: float) -> None:
        self.writer = writer
        self.timeout = timeout

    def __enter__(self) -> sqlite3.Connection:
        writer = self.writer
        self.arrived = time.monotonic()
        with writer._count_lock:  # `_count(+1)`, inline: every write comes through here
            writer._arriving += 1
        try:
            # An untimed try first: the timed acquire parses its keyword argument on every
            # call, and a lone caller (a sequential runner) always finds the lock free.
            held = writer._lock.acquire(False) or writer._lock.acquire(
                timeout=self.timeout + LOCK_SLACK
            )
        except BaseException:
            writer._count(-1)
            raise
        if not held:
            writer._count(-1)
            raise StoreError(
                f"cannot write to {writer.path}: this process's writer stayed busy for "
                f"over {self.timeout + LOCK_SLACK:g} s"
            )
        try:
            self.batch, conn, self.alone = writer._start_unit(self.arrived, self.timeout)
        except BaseException:
            writer._leave()
            raise
        return conn

    def __exit__(self, kind: object, exc: BaseException | None, _tb: object) -> Literal[False]:
        writer, batch = self.writer, self.batch
        try:
            if exc is None:
                writer._finish_unit(batch, self.alone)
            elif isinstance(exc, sqlite3.Error):
                writer._undo_unit(batch, exc, self.alone)
                raise StoreError(f"cannot write to {writer.path}: {exc}") from None
            else:
                writer._undo_unit(batch, None, self.alone)
                return False  # the body's own exception, as it was raised
        finally:
            writer._leave(batch)
        if not batch.done or batch.error is not None:  # else committed: nothing to wait for
            writer._await(batch, self.timeout, self.alone)
        return False


class GroupWriter:
    """The one connection a process writes a database file through (see the module doc).

    `connect(timeout)` opens the connection (lazily, on the first unit). `commits` and
    `units` count what it did (benchmarks report units per commit).
    """

    def __init__(
        self,
        path: Path,
        connect: Callable[[float], sqlite3.Connection],
        *,
        window: float | None = None,
        max_units: int = MAX_UNITS,
    ) -> None:
        """A writer for `path`; nothing is opened until the first unit."""
        self.path = path
        self.window = WINDOW if window is None else window
        self.patience = max(0.05, 10 * self.window)  # before a caller not the timer commits
        self.max_units = max_units
        self.commits = 0
        self.units = 0
        self.users = 0
        self._connect = connect
        self._conn: sqlite3.Connection | None = None
        # A cursor of `_conn` kept for the statements that return no rows (BEGIN, COMMIT,
        # SAVEPOINT, RELEASE): `Connection.execute` makes and frees a cursor on every call.
        self._cursor: sqlite3.Cursor | None = None
        self._busy = -1.0
        self._lock = threading.Lock()  # held by the caller running a unit or committing
        self._count_lock = threading.Lock()
        self._arriving = 0  # callers between entering `unit` and leaving their unit
        self._batch: _Batch | None = None  # the open transaction's units
        self._begin_failure: tuple[float, str] | None = None
        self._stopped: str | None = None

    def unit(self, timeout: float) -> _Unit:
        """A context manager running its body as one unit of a batch; it returns once the
        batch holding the unit committed.

        StoreError for a database error (the unit's own, or its batch's), an exception of the
        body as it was raised (the unit rolled back alone). `timeout` is SQLite's busy
        timeout for the batch's `BEGIN IMMEDIATE`, and bounds every wait here.
        """
        return _Unit(self, timeout)

    def _leave(self, batch: _Batch | None = None) -> None:
        """A caller is done with its unit (under the lock): commit if due, let the next in.
        If `batch` is still open, its caller will wait: the event is made before the lock is
        let go, so no COMMIT can come in between unseen."""
        with self._count_lock:  # `_count(-1)`, inline: every write comes through here
            self._arriving -= 1
        try:
            self._commit_if_due()
            if batch is not None and not batch.done and batch.event is None:
                batch.event = threading.Event()
        finally:
            self._lock.release()

    def connection(self, timeout: float) -> sqlite3.Connection:
        """The writer's connection, opened if need be (for tracing; never write on it)."""
        with self._lock:
            return self._connection(timeout)

    def close(self) -> None:
        """Commit an open batch (its callers are gone or waiting) and close the connection."""
        if not self._lock.acquire(timeout=1.0):
            return  # a caller is in a unit (a frozen daemon thread at exit): leave it
        try:
            self._commit_if_due(force=True)
            if self._conn is not None:
                self._conn.close()
                self._conn = None
                self._cursor = None
        finally:
            self._lock.release()

    # -- under the lock ---------------------------------------------------------------------

    def _start_unit(
        self, arrived: float, timeout: float
    ) -> tuple[_Batch, sqlite3.Connection, bool]:
        """(batch, connection, alone): `alone` for the unit that opened the transaction,
        which needs no savepoint (it is the only unit in it: rolling back is undoing it)."""
        if self._stopped is not None:
            raise StoreError(self._stopped)
        if self._batch is None:
            failure = self._begin_failure
            if failure is not None and failure[0] >= arrived:
                raise StoreError(failure[1])  # the BEGIN this caller waited for timed out
            conn = self._conn
            if conn is None or timeout != self._busy:
                conn = self._connection(timeout)
            try:
                self._control("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                message = f"cannot write to {self.path}: {exc}"
                self._begin_failure = (time.monotonic(), message)
                raise StoreError(message) from None
            self._batch = _Batch(time.monotonic())
            return self._batch, conn, True
        joined = self._conn
        assert joined is not None  # open while a batch is
        batch = self._batch
        try:
            self._control("SAVEPOINT unit")
        except sqlite3.Error as exc:
            self._fail_batch(batch, f"cannot write to {self.path}: {exc}")
            raise StoreError(f"cannot write to {self.path}: {exc}") from None
        return batch, joined, False

    def _connection(self, timeout: float) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = self._connect(timeout)
            self._cursor = None
            self._busy = timeout
        elif timeout != self._busy:  # stores of one file may differ in their timeout
            self._conn.execute(f"PRAGMA busy_timeout = {round(timeout * 1000)}")
            self._busy = timeout
        return self._conn

    def _control(self, sql: str) -> None:
        """Run `sql`, a statement that returns no rows, on the open connection."""
        cursor, conn = self._cursor, self._conn
        if cursor is None or cursor.connection is not conn:
            assert conn is not None
            cursor = self._cursor = conn.cursor()
        cursor.execute(sql)

    def _finish_unit(self, batch: _Batch, alone: bool) -> None:
        conn = self._conn
        # SQLite rolled the transaction back under a body that caught the error itself.
        if conn is None or not conn.in_transaction:
            self._fail_batch(batch, f"cannot write to {self.path}: the transaction was lost")
            raise StoreError(f"cannot write to {self.path}: the transaction was lost")
        if not alone:
            try:
                self._control("RELEASE unit")
            except sqlite3.Error as exc:
                self._fail_batch(batch, f"cannot write to {self.path}: {exc}")
                raise StoreError(f"cannot write to {self.path}: {exc}") from None
        batch.units += 1
        self.units += 1

    def _undo_unit(self, batch: _Batch, exc: sqlite3.Error | None, alone: bool) -> None:
        """Roll the unit back alone, or the whole batch after an error that spoils it (the
        unit that opened the transaction is alone in it: the batch goes, with nobody in it)."""
        conn = self._conn
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF if exc is not None else 0
        if not alone and conn is not None and conn.in_transaction and code not in _BATCH_FATAL:
            try:
                conn.execute("ROLLBACK TO unit")
                conn.execute("RELEASE unit")
                return
            except sqlite3.Error:
                pass
        self._fail_batch(batch, f"cannot write to {self.path}: {exc or 'the transaction failed'}")

    def _commit_if_due(self, *, force: bool = False) -> None:
        batch = self._batch
        if batch is None or batch.done:
            return
        due = (
            force
            or self._arriving == 0
            or batch.units >= self.max_units
            or time.monotonic() - batch.began >= self.window
        )
        if due:
            self._commit(batch)

    def _commit(self, batch: _Batch) -> None:
        try:
            self._control("COMMIT")
        except sqlite3.Error as exc:
            self._fail_batch(batch, f"cannot commit to {self.path}: {exc}")
            return
        except BaseException as exc:  # an interrupt mid-commit: nobody may wait on this writer
            self._stop(f"{type(exc).__name__} while committing")
            self._fail_batch(batch, self._stopped or "")
            raise
        self.commits += 1
        self._batch = None
        batch.finish()

    def _fail_batch(self, batch: _Batch, message: str) -> None:
        """Every unit of `batch` fails with `message`; the transaction is rolled back."""
        conn = self._conn
        if conn is not None and conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:  # the connection is unusable: open a new one next time
                self._drop_connection()
        if self._batch is batch:
            self._batch = None
        batch.finish(message)

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        self._cursor = None
        if conn is not None:
            with suppress(sqlite3.Error):
                conn.close()

    def _stop(self, why: str) -> None:
        self._stopped = (
            f"cannot write to {self.path}: this process's writer stopped ({why}); "
            "restart the process"
        )
        self._drop_connection()

    # -- without the lock -------------------------------------------------------------------

    def _count(self, delta: int) -> None:
        with self._count_lock:
            self._arriving += delta

    def _await(self, batch: _Batch, timeout: float, timer: bool) -> None:
        """Wait for `batch`'s COMMIT. The `timer` (the caller that opened the batch) commits
        it at the end of the window; the others wait longer before they try (so that one
        thread wakes per window, not every caller), in case the timer's unit failed."""
        if not batch.done:
            assert batch.event is not None  # made under the lock by `_Unit.__exit__`
            deadline = time.monotonic() + timeout + LOCK_SLACK
            while not batch.event.wait(
                max(0.0, batch.began + self.window - time.monotonic()) if timer else self.patience
            ):
                if time.monotonic() > deadline:
                    raise StoreError(
                        f"cannot commit to {self.path}: no commit within {timeout:g} s"
                    )
                if self._lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                    try:
                        if self._batch is batch and not batch.done:
                            self._commit(batch)
                    finally:
                        self._lock.release()
        if batch.error is not None:
            raise StoreError(batch.error)


# -- one writer per process and file --------------------------------------------------------

_registry: dict[tuple[str, int, int], GroupWriter] = {}
_registry_lock = threading.Lock()
_inherited: list[object] = []  # a forked child keeps its parent's writers unclosed
_pid = os.getpid()


def process_id() -> int:
    """This process's id, kept (a forked child sets its own): `os.getpid()` is a system
    call, and a store asks on every write whether it still is the process its writer is."""
    return _pid


def acquire_writer(
    path: Path,
    identity: tuple[int, int],
    connect: Callable[[float], sqlite3.Connection],
) -> GroupWriter:
    """This process's writer for the file `path` names (`identity`: its device and inode when
    the store opened it); `release_writer` once per call, when the store closes."""
    key = (str(path.resolve()), *identity)
    with _registry_lock:
        writer = _registry.get(key)
        if writer is None:
            writer = _registry[key] = GroupWriter(path, connect)
        writer.users += 1
        return writer


def release_writer(writer: GroupWriter) -> None:
    """One store less uses `writer`; the last one closes it (its connection too)."""
    with _registry_lock:
        writer.users -= 1
        if writer.users > 0:
            return
        for key, found in list(_registry.items()):
            if found is writer:
                del _registry[key]
    writer.close()


def _forget_in_child() -> None:
    # The parent's connections must not be used (nor closed: SQLite's file locks belong to
    # the parent) in a forked child; its locks may be held by a parent thread that is gone.
    global _registry_lock, _pid
    _pid = os.getpid()
    _inherited.append(dict(_registry))
    _registry.clear()
    _registry_lock = threading.Lock()


def _flush_at_exit() -> None:
    with _registry_lock:
        writers = list(_registry.values())
    for writer in writers:
        with suppress(sqlite3.Error):
            writer.close()


os.register_at_fork(after_in_child=_forget_in_child)
atexit.register(_flush_at_exit)

"""Circuit breaker state in the SQLite saga database: `SQLiteBreakerStore` (a `BreakerStore`).

`SQLiteBreakerStorage` implements the primitives of the shared `BreakerStorage`
(orchestrator/policies/breaker.py) with single SQL statements, so what one replica learns
about a service protects all of them, and every transition is one compare-and-set row
update: the caller that half-opens the breaker is its one probe in all processes, and only
the probe's holder ends the half-open window (issue 10). The tables (`breakers`,
`breaker_events`) are created by the saga store's migrations (orchestrator/sqlite_store.py).

Every statement goes through `_execute`, which turns a raw `sqlite3` error (the disk is full,
the file is locked or corrupt) into the `StoreError` a worker backs off on, and first calls
the store's `guard` (a worker's database watchdog) so nothing is written to a replaced file.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sagalab.orchestrator.breaker_board import row_damage, sane_opened_time, stored_state
from sagalab.orchestrator.errors import StoreError
from sagalab.orchestrator.policies.breaker import CLOSED, OPEN, BreakerStorage
from sagalab.orchestrator.sqlite_store import connect, connect_read_only
from sagalab.orchestrator.store import Guard

__all__ = ["SQLiteBreakerStorage", "SQLiteBreakerStore"]


#: Breakers whose damaged row was logged already (once per process and service).


def _execute(
    conn: sqlite3.Connection, sql: str, args: Any = (), *, guard: Guard | None = None
) -> sqlite3.Cursor:
    """`conn.execute`, with sqlite3 errors as StoreError (what workers back off on)."""
    if guard is not None:
        guard()
    try:
        return conn.execute(sql, args)
    except sqlite3.Error as exc:
        raise StoreError(f"breaker storage: {exc}") from None


class SQLiteBreakerStorage(BreakerStorage):
    """Breaker state in the `breakers` table; every read and write goes to the database."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        name: str,
        clock: Callable[[], float],
        *,
        guard: Guard | None = None,
    ) -> None:
        super().__init__(name, clock)
        self.conn = conn
        self.guard = guard
        self._execute("INSERT OR IGNORE INTO breakers (name) VALUES (?)", (name,))

    def _execute(self, sql: str, args: Any = ()) -> sqlite3.Cursor:
        return _execute(self.conn, sql, args, guard=self.guard)

    def _get(self, column: str) -> Any:
        row = self._execute(
            f"SELECT {column} FROM breakers WHERE name = ?", (self.name,)
        ).fetchone()
        return row[0] if row else None

    def _set(self, assignment: str, *args: Any) -> None:
        self._execute(
            f"UPDATE breakers SET {assignment}, updated_at = ? WHERE name = ?",
            (*args, time.time(), self.name),
        )

    @property
    def state(self) -> str:
        row = self._execute(
            "SELECT state, opened_time FROM breakers WHERE name = ?", (self.name,)
        ).fetchone()
        if row is None:
            return CLOSED
        # Wall time, not self.clock: the policy sets that to the instant it was last asked.
        return stored_state(self.name, row[0], row[1], now=time.time())

    @state.setter
    def state(self, state: str) -> None:
        self._set("state = ?", state)

    def increment_counter(self) -> None:
        self._set("fail_counter = fail_counter + 1")

    def reset_counter(self) -> None:
        if self._get("fail_counter"):  # a read first: no write lock on the hot success path
            self._set("fail_counter = 0")

    def increment_success_counter(self) -> None:
        self._set("success_counter = success_counter + 1")

    def reset_success_counter(self) -> None:
        if self._get("success_counter"):
            self._set("success_counter = 0")

    @property
    def counter(self) -> int:
        return int(self._get("fail_counter") or 0)

    @property
    def success_counter(self) -> int:
        return int(self._get("success_counter") or 0)

    @property
    def opened_time(self) -> float | None:
        return sane_opened_time(self._get("opened_time"), now=time.time())

    @opened_time.setter
    def opened_time(self, value: float | None) -> None:
        self._set("opened_time = ?", value)

    # The transitions: each one UPDATE whose WHERE is the compare of the compare-and-set.

    def try_open(self, now: float) -> bool:
        cur = self._execute(
            "UPDATE breakers SET state = 'open', opened_time = ?, success_counter = 0, "
            "probe_until = NULL, updated_at = ? WHERE name = ? "
            "AND state NOT IN ('open', 'half-open')",  # closed, or a damaged state
            (now, time.time(), self.name),
        )
        if cur.rowcount == 1:
            return True
        if self.state == CLOSED:  # an open row with a damaged opened_time reads as closed
            self._set("state = 'open', opened_time = ?, success_counter = 0", now)
            return True
        return False

    def try_half_open(self, opened: float | None, now: float, until: float) -> float | None:
        cur = self._execute(
            "UPDATE breakers SET state = 'half-open', success_counter = 0, probe_until = ?, "
            "updated_at = ? WHERE name = ? AND state = 'open' AND opened_time IS ?",
            (until, time.time(), self.name, opened),
        )
        return until if cur.rowcount == 1 else None

    def try_acquire_probe(self, now: float, until: float) -> float | None:
        cur = self._execute(
            "UPDATE breakers SET probe_until = ? WHERE name = ? AND state = 'half-open' "
            "AND (probe_until IS NULL OR probe_until <= ?)",
            (until, self.name, now),
        )
        return until if cur.rowcount == 1 else None

    def end_probe(self, token: float, new: str, now: float) -> bool:
        entry = {
            OPEN: "opened_time = ?, success_counter = 0, ",
            CLOSED: "fail_counter = 0, success_counter = 0, ",
        }.get(new, "")
        args: tuple[Any, ...] = (now,) if new == OPEN else ()
        cur = self._execute(
            f"UPDATE breakers SET state = ?, {entry}probe_until = NULL, updated_at = ? "
            "WHERE name = ? AND state = 'half-open' AND probe_until = ?",
            (new, *args, time.time(), self.name, token),
        )
        return cur.rowcount == 1

    def release_probe(self) -> None:
        self._set("probe_until = NULL")


class SQLiteBreakerStore:
    """`BreakerStore` on one connection to the saga database (one per thread)."""

    def __init__(
        self, path: str | Path, *, readonly: bool = False, guard: Guard | None = None
    ) -> None:
        """Open `path` (created if missing, unless `readonly`: then it never writes)."""
        self.path = Path(path)
        self.guard = guard
        self.conn = connect_read_only(path) if readonly else connect(path)
        self.conn.row_factory = sqlite3.Row

    def _execute(self, sql: str, args: Any = ()) -> sqlite3.Cursor:
        return _execute(self.conn, sql, args, guard=self.guard)

    def storage(self, name: str, clock: Callable[[], float]) -> SQLiteBreakerStorage:
        """The shared state of breaker `name` (its row is created if missing)."""
        return SQLiteBreakerStorage(self.conn, name, clock, guard=self.guard)

    def record_transition(
        self, name: str, now: float, new: str, *, owner: str, old: str | None = None
    ) -> str | None:
        """Log `name` -> `new` (see `BreakerStore.record_transition`); the state it left."""
        run = self._execute
        if old is not None:  # a move the caller's compare-and-set made: always a real one
            run(
                "INSERT INTO breaker_events (at, name, old, new, owner) VALUES (?, ?, ?, ?, ?)",
                (now, name, old, new, owner),
            )
            return old
        run("BEGIN IMMEDIATE")  # check and insert as one, across replicas
        try:
            last = run(
                "SELECT new FROM breaker_events WHERE name = ? ORDER BY rowid DESC LIMIT 1",
                (name,),
            ).fetchone()
            previous = last[0] if last else CLOSED
            if previous != new:
                run(
                    "INSERT INTO breaker_events (at, name, old, new, owner) VALUES (?, ?, ?, ?, ?)",
                    (now, name, previous, new, owner),
                )
            run("COMMIT")
        except BaseException:
            if self.conn.in_transaction:  # a full disk fails the COMMIT and leaves it open
                with contextlib.suppress(sqlite3.Error):
                    self.conn.execute("ROLLBACK")
            raise
        return None if previous == new else str(previous)

    def rows(self) -> list[dict[str, Any]]:
        """Every breaker's shared state, with its number of transitions and any damage."""
        rows = self._execute(
            "SELECT b.*, (SELECT COUNT(*) FROM breaker_events e WHERE e.name = b.name) "
            "AS transitions FROM breakers b ORDER BY name"
        ).fetchall()
        now = time.time()
        found = [dict(r) for r in rows]
        for row in found:  # shown as damaged, never a crash (`breakers list`)
            row["damaged"] = row_damage(row["state"], row["opened_time"], now=now)
        return found

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """Breaker transitions, oldest first."""
        if name is None:
            rows = self._execute("SELECT * FROM breaker_events ORDER BY at").fetchall()
        else:
            rows = self._execute(
                "SELECT * FROM breaker_events WHERE name = ? ORDER BY at", (name,)
            ).fetchall()
        return [dict(r) for r in rows]

    def reset(self, name: str, *, now: float) -> bool:
        """Close breaker `name` by hand; False if no such breaker exists."""
        cur = self._execute(
            "UPDATE breakers SET state = 'closed', fail_counter = 0, success_counter = 0, "
            "opened_time = NULL, probe_until = NULL, updated_at = ? WHERE name = ?",
            (now, name),
        )
        if cur.rowcount:
            self._execute(
                "INSERT INTO breaker_events (at, name, old, new, owner) "
                "VALUES (?, ?, 'any', 'closed', 'operator reset')",
                (now, name),
            )
        return cur.rowcount == 1

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

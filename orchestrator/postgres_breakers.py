"""Circuit breaker state in the PostgreSQL saga database: `PostgresBreakerStore`.

The PostgreSQL twin of orchestrator/sqlite_breakers.py: `PostgresBreakerStorage` implements
the primitives of the shared `BreakerStorage` (orchestrator/policies/breaker.py) with single
statements, and every transition is one compare-and-set `UPDATE ... WHERE <still as read>`:
the row lock makes concurrent callers on every host queue up and re-check, so the caller
that half-opens the breaker is its one probe, and only the probe ends the window (issue 10).
Probe times are on the database's clock (the handle's offset, as for leases). Every psycopg
error is a `StoreError`; the store's `guard` is called before each statement. The tables come
from the saga store's migrations.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg.rows import dict_row

from sagalab.orchestrator.breaker_board import row_damage, sane_opened_time, stored_state
from sagalab.orchestrator.errors import StoreError
from sagalab.orchestrator.policies.breaker import CLOSED, OPEN, BreakerStorage
from sagalab.orchestrator.postgres_store import connect, measure_offset, redacted
from sagalab.orchestrator.store import Guard

__all__ = ["PostgresBreakerStorage", "PostgresBreakerStore"]


#: Breakers whose damaged row was logged already (once per process and service).
#: Key space of the advisory locks that make `record_transition` one step across hosts.
_TRANSITION_LOCK = 0x5A6A_B4EA


class PostgresBreakerStore:
    """`BreakerStore` on one connection to the saga database (one per thread)."""

    def __init__(self, url: str, *, readonly: bool = False, guard: Guard | None = None) -> None:
        """Connect to `url` (StoreError if the server cannot be reached)."""
        self.url = url
        self.guard = guard
        self.readonly = readonly
        self._conn: psycopg.Connection | None = None
        self.offset = 0.0
        self._connection()

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            conn = connect(self.url, readonly=self.readonly)
            try:
                self.offset = measure_offset(conn, time.time)
            except psycopg.Error as exc:
                conn.close()
                raise StoreError(f"breaker storage {redacted(self.url)}: {exc}") from None
            self._conn = conn
        return self._conn

    def execute(self, query: str, args: Any = None, *, rows: bool = False) -> Any:
        """Run one statement; its cursor (dict rows if `rows`). psycopg errors: StoreError."""
        if self.guard is not None:
            self.guard()
        try:
            conn = self._connection()
            cur = conn.cursor(row_factory=dict_row) if rows else conn.cursor()
            return cur.execute(query, args)
        except psycopg.Error as exc:
            text = " ".join(str(exc).split())
            raise StoreError(f"breaker storage: {text}") from None

    def storage(self, name: str, clock: Callable[[], float]) -> PostgresBreakerStorage:
        """The shared state of breaker `name` (its row is created if missing)."""
        return PostgresBreakerStorage(self, name, clock)

    def record_transition(
        self, name: str, now: float, new: str, *, owner: str, old: str | None = None
    ) -> str | None:
        """Log `name` -> `new` (see `BreakerStore.record_transition`); the state it left."""
        # Without `old`: one statement under a per-breaker advisory lock, so that replicas
        # reporting the same transition at once queue up and the second finds it logged.
        if self.guard is not None:
            self.guard()
        try:
            conn = self._connection()
            if old is not None:  # a move the caller's compare-and-set made: always real
                with conn.transaction():
                    conn.execute(
                        "INSERT INTO breaker_events (at, name, old, new, owner) "
                        "VALUES (%s, %s, %s, %s, %s)",
                        (now, name, old, new, owner),
                    )
                return old
            with conn.transaction():
                conn.execute(
                    "SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_TRANSITION_LOCK, name)
                )
                last = conn.execute(
                    "SELECT new FROM breaker_events WHERE name = %s ORDER BY id DESC LIMIT 1",
                    (name,),
                ).fetchone()
                previous = last[0] if last else CLOSED
                if previous != new:
                    conn.execute(
                        "INSERT INTO breaker_events (at, name, old, new, owner) "
                        "VALUES (%s, %s, %s, %s, %s)",
                        (now, name, previous, new, owner),
                    )
        except psycopg.Error as exc:
            raise StoreError(f"breaker storage: {' '.join(str(exc).split())}") from None
        return None if previous == new else str(previous)

    def rows(self) -> list[dict[str, Any]]:
        """Every breaker's shared state, with its number of transitions and any damage."""
        found = self.execute(
            "SELECT b.*, (SELECT COUNT(*) FROM breaker_events e WHERE e.name = b.name) "
            "AS transitions FROM breakers b ORDER BY name",
            rows=True,
        ).fetchall()
        now = time.time()
        for row in found:  # shown as damaged, never a crash (`breakers list`)
            row["damaged"] = row_damage(row["state"], row["opened_time"], now=now)
        return list(found)

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """Breaker transitions, oldest first."""
        columns = "SELECT at, name, old, new, owner FROM breaker_events"
        if name is None:
            return list(self.execute(f"{columns} ORDER BY at, id", rows=True).fetchall())
        return list(self.execute(f"{columns} WHERE name = %s ORDER BY at, id", (name,), rows=True))

    def reset(self, name: str, *, now: float) -> bool:
        """Close breaker `name` by hand (and log it); False if no such breaker exists."""
        cur = self.execute(
            "WITH reset AS (UPDATE breakers SET state = 'closed', fail_counter = 0, "
            "success_counter = 0, opened_time = NULL, probe_until = NULL, updated_at = %(now)s "
            "WHERE name = %(name)s RETURNING name) "
            "INSERT INTO breaker_events (at, name, old, new, owner) "
            "SELECT %(now)s, name, 'any', 'closed', 'operator reset' FROM reset",
            {"now": now, "name": name},
        )
        return bool(cur.rowcount == 1)

    def close(self) -> None:
        """Close the connection."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class PostgresBreakerStorage(BreakerStorage):
    """Breaker state in the `breakers` table; every read and write goes to the database."""

    def __init__(self, store: PostgresBreakerStore, name: str, clock: Callable[[], float]):
        super().__init__(name, clock)
        self.store = store
        self.store.execute(
            "INSERT INTO breakers (name) VALUES (%s) ON CONFLICT DO NOTHING", (name,)
        )

    def _get(self, column: str) -> Any:
        row = self.store.execute(
            f"SELECT {column} FROM breakers WHERE name = %s", (self.name,)
        ).fetchone()
        return row[0] if row else None

    def _set(self, assignment: str, *args: Any) -> None:
        self.store.execute(
            f"UPDATE breakers SET {assignment}, updated_at = %s WHERE name = %s",
            (*args, time.time(), self.name),
        )

    @property
    def state(self) -> str:
        row = self.store.execute(
            "SELECT state, opened_time FROM breakers WHERE name = %s", (self.name,)
        ).fetchone()
        if row is None:
            return CLOSED
        return stored_state(self.name, row[0], row[1], now=time.time())

    @state.setter
    def state(self, state: str) -> None:
        self._set("state = %s", state)

    def increment_counter(self) -> None:
        self._set("fail_counter = fail_counter + 1")

    def reset_counter(self) -> None:
        # No write (and no row lock) when already 0: the hot path of every success.
        self.store.execute(
            "UPDATE breakers SET fail_counter = 0, updated_at = %s "
            "WHERE name = %s AND fail_counter <> 0",
            (time.time(), self.name),
        )

    def increment_success_counter(self) -> None:
        self._set("success_counter = success_counter + 1")

    def reset_success_counter(self) -> None:
        self.store.execute(
            "UPDATE breakers SET success_counter = 0, updated_at = %s "
            "WHERE name = %s AND success_counter <> 0",
            (time.time(), self.name),
        )

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
        self._set("opened_time = %s", value)

    # The transitions: each one UPDATE whose WHERE is the compare of the compare-and-set
    # (the row lock makes concurrent callers queue up and re-check it). Probe times are on
    # the database's clock; the token handed back is the value stored.

    def try_open(self, now: float) -> bool:
        cur = self.store.execute(
            "UPDATE breakers SET state = 'open', opened_time = %s, success_counter = 0, "
            "probe_until = NULL, updated_at = %s WHERE name = %s "
            "AND state NOT IN ('open', 'half-open')",  # closed, or a damaged state
            (now, time.time(), self.name),
        )
        if cur.rowcount == 1:
            return True
        if self.state == CLOSED:  # an open row with a damaged opened_time reads as closed
            self._set("state = 'open', opened_time = %s, success_counter = 0", now)
            return True
        return False

    def try_half_open(self, opened: float | None, now: float, until: float) -> float | None:
        row = self.store.execute(
            "UPDATE breakers SET state = 'half-open', success_counter = 0, probe_until = %s, "
            "updated_at = %s WHERE name = %s AND state = 'open' "
            "AND opened_time IS NOT DISTINCT FROM %s RETURNING probe_until",
            (until + self.store.offset, time.time(), self.name, opened),
        ).fetchone()
        return None if row is None else float(row[0])

    def try_acquire_probe(self, now: float, until: float) -> float | None:
        offset = self.store.offset
        row = self.store.execute(
            "UPDATE breakers SET probe_until = %s WHERE name = %s AND state = 'half-open' "
            "AND (probe_until IS NULL OR probe_until <= %s) RETURNING probe_until",
            (until + offset, self.name, now + offset),
        ).fetchone()
        return None if row is None else float(row[0])

    def end_probe(self, token: float, new: str, now: float) -> bool:
        entry = {
            OPEN: "opened_time = %s, success_counter = 0, ",
            CLOSED: "fail_counter = 0, success_counter = 0, ",
        }.get(new, "")
        args: tuple[Any, ...] = (now,) if new == OPEN else ()
        cur = self.store.execute(
            f"UPDATE breakers SET state = %s, {entry}probe_until = NULL, updated_at = %s "
            "WHERE name = %s AND state = 'half-open' AND probe_until = %s",
            (new, *args, time.time(), self.name, token),
        )
        return bool(cur.rowcount == 1)

    def release_probe(self) -> None:
        self._set("probe_until = NULL")

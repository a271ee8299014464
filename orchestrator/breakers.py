"""Circuit breakers shared by every worker process through the SQLite database.

`SQLiteBreakerStorage` implements the primitives of the shared `ClockedStorage`
(orchestrator/policies/breaker.py) with single SQL statements, so what one replica learns
about a service protects all of them, and the half-open probe is one compare-and-set row
update: exactly one caller in all processes gets it. `BreakerBoard` hands out one `Breaker`
per service for one thread (SQLite connections are per thread).

Every statement goes through `_execute`, which turns a raw `sqlite3` error (the disk is full,
the file is locked or corrupt) into the `StoreError` a worker backs off on, and first calls
the board's `guard` (a worker's database watchdog) so nothing is written to a replaced file.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pybreaker

from orchestrator.errors import ServiceConfigError, StoreError
from orchestrator.flowfile import load_services, read_services_file
from orchestrator.policies.breaker import Breaker, ClockedStorage
from orchestrator.sqlite_store import connect, connect_read_only


@dataclass(frozen=True)
class BreakerConfig:
    """One service's breaker settings."""

    fail_max: int = 5
    reset_timeout: float = 10.0
    success_threshold: int = 1

    def __post_init__(self) -> None:
        # ValueError names the setting; a bad one would leave a breaker that never opens,
        # never closes, or refuses every call (and sagas compensating for ever).
        for name in ("fail_max", "success_threshold"):
            value = getattr(self, name)
            if not _is_int(value) or not 1 <= value <= MAX_BREAKER_COUNT:
                raise ValueError(
                    f"{name} must be a whole number from 1 to {MAX_BREAKER_COUNT}, not {value!r}"
                )
        timeout = self.reset_timeout
        if not _is_number(timeout) or not 0 < timeout <= MAX_RESET_TIMEOUT:
            raise ValueError(
                f"reset_timeout must be a number of seconds above 0 and at most "
                f"{MAX_RESET_TIMEOUT:g}, not {timeout!r}"
            )


MAX_BREAKER_COUNT = 1000
MAX_RESET_TIMEOUT = 86_400.0  # a day: longer is a service switched off, not a breaker


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    # NaN fails every comparison, so the range check refuses it (and inf is out of range).
    return isinstance(value, int | float) and not isinstance(value, bool)


log = logging.getLogger(__name__)

DEFAULT_BREAKER = BreakerConfig()
_SETTINGS = ("fail_max", "reset_timeout", "success_threshold")


def load_breaker_configs(path: str | Path | None) -> dict[str, BreakerConfig]:
    """Per-service settings from the services file's `breakers:` section (if any).

    Every setting is checked here, at load: ServiceConfigError names the service and setting.
    """
    if path is None:
        return {}
    raw = read_services_file(path)
    section = raw.get("breakers", {})
    if not isinstance(section or {}, Mapping):
        raise ServiceConfigError(
            f"services file {path}: breakers must map service names to settings"
        )
    configs = {}
    for name, values in (section or {}).items():
        where = f"services file {path}: breakers.{name}"
        if not isinstance(values or {}, Mapping):
            raise ServiceConfigError(f"{where} must be a mapping of {', '.join(_SETTINGS)}")
        unknown = sorted(str(k) for k in (values or {}) if k not in _SETTINGS)
        if unknown:
            raise ServiceConfigError(
                f"{where}: unknown setting(s) {', '.join(unknown)}; allowed: {', '.join(_SETTINGS)}"
            )
        try:
            configs[str(name)] = BreakerConfig(**dict(values or {}))
        except ValueError as exc:
            raise ServiceConfigError(f"{where}.{str(exc).split()[0]}: {exc}") from None
    if configs:
        # A breaker for a service that has no URL (in the file or SAGALAB_SERVICE_*) guards
        # nothing: most likely a misspelt name, which would leave the real service unguarded.
        known = load_services(path)
        for name in configs:
            if name not in known:
                raise ServiceConfigError(
                    f"services file {path}: breakers.{name}: no service {name!r} is configured "
                    f"(services: {', '.join(sorted(known)) or 'none'}); fix the name or add "
                    f"its URL"
                )
    return configs


Guard = Callable[[], None]
"""Called before every statement; raises (e.g. `DatabaseGone`) to stop it."""


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


_STATES = (pybreaker.STATE_CLOSED, pybreaker.STATE_OPEN, pybreaker.STATE_HALF_OPEN)
#: Breakers whose damaged row was logged already (once per process and service).
_DAMAGE_LOGGED: set[str] = set()
#: How far ahead of this clock an `opened_time` may be (another host's clock): a day.
_CLOCK_SKEW = 86_400.0


def _sane_time(value: float, now: float) -> bool:
    return math.isfinite(value) and 0 <= value <= now + _CLOCK_SKEW


def row_damage(state: object, opened_time: object, *, now: float) -> str | None:
    """Why a breaker row cannot be what sagalab wrote (None when it can)."""
    if state not in _STATES:
        return f"damaged row: unknown state {state!r}"
    if opened_time is not None and (
        not _is_number(opened_time) or not _sane_time(float(opened_time), now)  # type: ignore[arg-type]
    ):
        return f"damaged row: opened_time {opened_time!r} is not a time"
    return None


class SQLiteBreakerStorage(ClockedStorage):
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
        if row is None or row[0] is None:
            return pybreaker.STATE_CLOSED
        # Wall time, not self.clock: the policy sets that to the instant it was last asked.
        damaged = row_damage(row[0], row[1], now=time.time())
        if damaged is not None:
            # A row no code of ours wrote: never a reason to keep a service's calls out (or
            # to park every saga that calls it). Closed, as after `breakers reset`; the next
            # transition writes a sound row.
            if self.name not in _DAMAGE_LOGGED:
                _DAMAGE_LOGGED.add(self.name)
                log.warning("breaker %s: %s; treated as closed", self.name, damaged)
            return pybreaker.STATE_CLOSED
        return str(row[0])

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
        value = self._get("opened_time")
        if not _is_number(value) or not _sane_time(float(value), time.time()):
            return None
        return float(value)

    @opened_time.setter
    def opened_time(self, value: float | None) -> None:
        self._set("opened_time = ?", value)

    def try_acquire_probe(self, now: float, until: float) -> bool:
        cur = self._execute(
            "UPDATE breakers SET probe_until = ? WHERE name = ? "
            "AND (probe_until IS NULL OR probe_until <= ?)",
            (until, self.name, now),
        )
        return cur.rowcount == 1

    def release_probe(self) -> None:
        self._set("probe_until = NULL")


class BreakerBoard:
    """One breaker per service for one thread, backed by the shared database."""

    def __init__(
        self,
        db: str | Path,
        configs: Mapping[str, BreakerConfig] | None = None,
        *,
        owner: str = "",
        on_transition: Callable[[str, float, str, str], None] | None = None,
        guard: Guard | None = None,
    ) -> None:
        self.conn = connect(db)
        self.guard = guard
        self.configs = dict(configs or {})
        self.owner = owner
        self.on_transition = on_transition
        self._breakers: dict[str, Breaker] = {}

    def get(self, service: str) -> Breaker:
        """The breaker guarding `service`."""
        breaker = self._breakers.get(service)
        if breaker is None:
            config = self.configs.get(service, DEFAULT_BREAKER)
            storage = SQLiteBreakerStorage(self.conn, service, time.time, guard=self.guard)
            breaker = Breaker(
                service,
                fail_max=config.fail_max,
                reset_timeout=config.reset_timeout,
                success_threshold=config.success_threshold,
                storage=storage,
                on_transition=partial(self._journal, service),
            )
            self._breakers[service] = breaker
        return breaker

    def _journal(self, service: str, now: float, old: str, new: str) -> None:
        # Replicas can make the same transition (each sees the open breaker time out and
        # half-opens it); the shared log records only real changes.
        run = self._execute
        run("BEGIN IMMEDIATE")  # check and insert as one, across replicas
        try:
            last = run(
                "SELECT new FROM breaker_events WHERE name = ? ORDER BY rowid DESC LIMIT 1",
                (service,),
            ).fetchone()
            previous = last[0] if last else pybreaker.STATE_CLOSED
            if previous != new:
                run(
                    "INSERT INTO breaker_events (at, name, old, new, owner) VALUES (?, ?, ?, ?, ?)",
                    (now, service, previous, new, self.owner),
                )
            run("COMMIT")
        except BaseException:
            if self.conn.in_transaction:  # a full disk fails the COMMIT and leaves it open
                with contextlib.suppress(sqlite3.Error):
                    self.conn.execute("ROLLBACK")
            raise
        if previous == new:
            return
        old = previous
        if self.on_transition is not None:
            self.on_transition(service, now, old, new)

    def _execute(self, sql: str, args: Any = ()) -> sqlite3.Cursor:
        return _execute(self.conn, sql, args, guard=self.guard)

    def close(self) -> None:
        """Close the board's connection."""
        self.conn.close()


def breaker_rows(db: str | Path) -> list[dict[str, Any]]:
    """Every breaker's shared state, for `sagalab breakers list`."""
    conn = connect_read_only(db)
    try:
        conn.row_factory = sqlite3.Row
        rows = conn.execute(
            "SELECT b.*, (SELECT COUNT(*) FROM breaker_events e WHERE e.name = b.name) "
            "AS transitions FROM breakers b ORDER BY name"
        ).fetchall()
        now = time.time()
        found = [dict(r) for r in rows]
        for row in found:  # shown as damaged, never a crash (`breakers list`)
            row["damaged"] = row_damage(row["state"], row["opened_time"], now=now)
        return found
    finally:
        conn.close()


def breaker_events(db: str | Path, name: str | None = None) -> list[dict[str, Any]]:
    """Breaker transitions, oldest first."""
    conn = connect_read_only(db)
    try:
        conn.row_factory = sqlite3.Row
        if name is None:
            rows = conn.execute("SELECT * FROM breaker_events ORDER BY at").fetchall()
        else:
            rows = conn.execute(
                "SELECT * FROM breaker_events WHERE name = ? ORDER BY at", (name,)
            ).fetchall()
        return [dict(r) for r in rows]
    finally:
        conn.close()


def reset_breaker(db: str | Path, name: str) -> bool:
    """Close breaker `name` by hand; False if no such breaker exists."""
    conn = connect(db)
    try:
        cur = conn.execute(
            "UPDATE breakers SET state = 'closed', fail_counter = 0, success_counter = 0, "
            "opened_time = NULL, probe_until = NULL, updated_at = ? WHERE name = ?",
            (time.time(), name),
        )
        if cur.rowcount:
            conn.execute(
                "INSERT INTO breaker_events (at, name, old, new, owner) "
                "VALUES (?, ?, 'any', 'closed', 'operator reset')",
                (time.time(), name),
            )
        return cur.rowcount == 1
    finally:
        conn.close()

"""The key database on PostgreSQL: `PostgresKeyStore` (edge/keys.py's rules).

Where the keys live. An `api_keys` table in the database `--keys-db` names, with its own
schema version (a row in `api_keys_meta`), not a migration of the saga schema: the keys may
live beside the sagas (`--keys-db` the same URL as `--db`, what a PostgreSQL lab does: one
server, one database, one thing to back up) or in a database of their own, and the saga
store and the key store each upgrade only their own tables. The saga store counts these two
tables as not its own (orchestrator/postgres_store.py, `KEY_TABLES`): a database that holds
only keys is still an empty saga database, and a saga copy never sees the keys (`db copy
--keys-from/--keys-to` copies them, on purpose).

Refused (KeyStoreError, nothing written): a database holding tables of another application
(neither a key table nor a saga database); to a read (`keys list`, `revoke`), a database
without a key table. `readonly` connections refuse every write in the server as well.

One connection per handle, in autocommit; a lost connection is a KeyStoreError from the call
that met it (a gateway keeps serving what it had cached) and the next call reconnects.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg

from sagalab.edge.errors import KeyStoreError
from sagalab.edge.keys import KeyTable
from sagalab.orchestrator.errors import StoreError
from sagalab.orchestrator.postgres_store import KEY_TABLES, connect, redacted

__all__ = ["KEY_SCHEMA_VERSION", "PostgresKeyStore"]

_V1 = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    digest TEXT NOT NULL,
    rate DOUBLE PRECISION NOT NULL,
    burst DOUBLE PRECISION NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    revoked_at DOUBLE PRECISION,
    tenant TEXT NOT NULL DEFAULT 'default',
    admin INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS api_keys_by_name ON api_keys (name) WHERE revoked_at IS NULL;
CREATE TABLE IF NOT EXISTS api_keys_meta (key TEXT PRIMARY KEY, value TEXT);
"""
MIGRATIONS: tuple[str, ...] = (_V1,)
KEY_SCHEMA_VERSION = len(MIGRATIONS)
_LOCK = 0x5A6A_4B3E  # pg_advisory_xact_lock key: one process creating the key table at a time
_SAGA_TABLES = frozenset({"meta", "sagas"})  # a saga database: keys may live beside it
_SELECT = "SELECT id, name, rate, burst, created_at, revoked_at, tenant, admin FROM api_keys"


class PostgresKeyStore(KeyTable):
    """The `api_keys` table of one PostgreSQL database (one handle per thread)."""

    def __init__(self, url: str, *, create: bool = True, readonly: bool = False) -> None:
        self.url = url
        self.shown = redacted(url)
        self.readonly = readonly
        self.create_table = create and not readonly
        self._select = _SELECT
        self._conn: psycopg.Connection | None = None
        conn = self._connection(first=True)
        try:
            tables = self._tables(conn)
            if "api_keys" not in tables:
                self._refuse_or_create(conn, tables)
            else:
                self._check_version(conn)
        except BaseException:
            self.close()
            raise

    # -- opening ------------------------------------------------------------------------------

    def _connection(self, *, first: bool = False) -> psycopg.Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            if self._conn is not None:
                self._conn.close()
            try:
                self._conn = connect(
                    self.url, readonly=self.readonly, create=first and self.create_table
                )
            except StoreError as exc:
                self._conn = None
                raise KeyStoreError(f"key database: {exc}") from None
        return self._conn

    def _tables(self, conn: psycopg.Connection) -> set[str]:
        with self._errors("cannot read"):
            return {
                r[0]
                for r in conn.execute(
                    "SELECT table_name FROM information_schema.tables "
                    "WHERE table_schema = current_schema()"
                )
            }

    def _refuse_or_create(self, conn: psycopg.Connection, tables: set[str]) -> None:
        others = tables - KEY_TABLES
        if not self.create_table:
            raise KeyStoreError(
                f"no key table in {self.shown}: `sagalab keys create NAME --keys-db URL` "
                "makes one (or pass the lab's key database with --keys-db)"
            )
        if others and not others >= _SAGA_TABLES:
            names = ", ".join(sorted(others)[:6])
            raise KeyStoreError(
                f"{self.shown} holds tables of another application ({names}), not a key "
                "or saga database; pass the key database with --keys-db"
            )
        with self._errors("cannot write"), conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
            for script in MIGRATIONS:
                conn.execute(script)
            conn.execute(
                "INSERT INTO api_keys_meta (key, value) VALUES ('schema_version', %s) "
                "ON CONFLICT (key) DO NOTHING",
                (str(KEY_SCHEMA_VERSION),),
            )

    def _check_version(self, conn: psycopg.Connection) -> None:
        with self._errors("cannot read"):
            row = conn.execute(
                "SELECT value FROM api_keys_meta WHERE key = 'schema_version'"
            ).fetchone()
        version = int(row[0]) if row is not None and str(row[0]).isdigit() else 0
        if version != KEY_SCHEMA_VERSION:
            raise KeyStoreError(
                f"{self.shown} has key schema version {version}, not this sagalab's "
                f"({KEY_SCHEMA_VERSION}): use the sagalab that made it"
            )

    # -- the backend's part of KeyTable ---------------------------------------------------------

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except psycopg.Error as exc:
            detail = " ".join(str(exc).split()) or type(exc).__name__
            raise KeyStoreError(
                f"{what} key database {self.shown}: {redacted(detail, url=self.url)}"
            ) from None

    def close(self) -> None:
        """Close the connection."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._errors("cannot read"):
            return self._connection().execute(sql.replace("?", "%s"), tuple(args)).fetchall()

    def _write(self, sql: str, args: Sequence[Any] = ()) -> None:
        if self.readonly:
            raise KeyStoreError(f"cannot write key database {self.shown}: opened read-only")
        with self._errors("cannot write"):
            self._connection().execute(sql.replace("?", "%s"), tuple(args))

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        with self._errors("cannot write"):
            conn = self._connection()
            with conn.transaction():
                # One writer from the checks to the commit (as SQLite's BEGIN IMMEDIATE);
                # readers are not blocked (the mode conflicts only with itself and writers).
                conn.execute("LOCK TABLE api_keys IN SHARE ROW EXCLUSIVE MODE")
                yield

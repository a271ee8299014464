"""The key database as a SQLite file of its own: `SQLiteKeyStore` (edge/keys.py's rules).

Not the saga database: a saga file given as `--keys-db` is refused. `keys.db` in the stack
directory is the default a stack's gateways and `sagalab keys` share.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sagalab.edge.errors import KeyStoreError
from sagalab.edge.keys import KeyTable
from sagalab.orchestrator.dbfiles import enter_wal, file_uri, read_modes

__all__ = ["SQLiteKeyStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    digest TEXT NOT NULL,
    rate REAL NOT NULL,
    burst REAL NOT NULL,
    created_at REAL NOT NULL,
    revoked_at REAL,
    tenant TEXT NOT NULL DEFAULT 'default',
    admin INTEGER NOT NULL DEFAULT 0
)
"""
# Columns added since the first key files; ADDed to an older file when it is opened to write.
_ADDED = {
    "tenant": "tenant TEXT NOT NULL DEFAULT 'default'",
    "admin": "admin INTEGER NOT NULL DEFAULT 0",
}
_LEGACY = {"tenant": "'default' AS tenant", "admin": "0 AS admin"}


class SQLiteKeyStore(KeyTable):
    """The key table in one SQLite file (one instance per thread).

    `create=True` (what `keys create` and the gateways use) makes the file and brings its table
    up to date. Otherwise the file must already exist and nothing is written on opening;
    `readonly` (`keys list`) never writes at all (`PRAGMA query_only`), and once closed leaves
    no `-wal` or `-shm` file behind (`mode=rw`, so the last connection removes them).
    """

    def __init__(self, path: str | Path, *, create: bool = True, readonly: bool = False) -> None:
        create = create and not readonly
        self.path = Path(path)
        self.shown = str(path)
        if self.path.is_dir():
            raise KeyStoreError(f"cannot open key database {path}: it is a directory")
        if self.path.exists() and not self.path.is_file():
            raise KeyStoreError(f"{path} is not a key database (not a regular file)")
        if not create and not self.path.exists():
            raise KeyStoreError(
                f"no key database at {path}: `sagalab keys create NAME` makes one "
                "(or pass the stack's with --keys-db)"
            )
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            targets = [str(self.path)]
        elif readonly:  # the saga store's rule: where nothing can write, read it immutable
            targets = [file_uri(self.path, mode) for mode in read_modes(self.path)]
        else:  # mode=rw never creates the file
            targets = [file_uri(self.path, "mode=rw")]
        for target in targets:
            try:
                tables = self._connect(target, uri=not create, readonly=readonly)
                break
            except (sqlite3.Error, OSError) as exc:
                error = exc
        else:
            raise KeyStoreError(
                f"cannot open key database {path}: {error}; pass a key database with --keys-db"
            ) from None
        if (tables or not create) and "api_keys" not in tables:
            # An empty file is a new key database only to `create`; to a read it is not one.
            self.conn.close()
            why = "it holds other tables: a saga database?" if tables else "it has no key table"
            raise KeyStoreError(
                f"{path} is not a key database ({why}); pass the key database with --keys-db"
            )
        try:
            if create:
                enter_wal(self.conn, sqlite3.OperationalError, timeout=10.0)
                # One writer at a time: the API and every gateway open the file at once when
                # a stack starts, and an older file gains its columns exactly once.
                with self._transaction():
                    self.conn.execute(_SCHEMA)
                    columns = self._columns()
                    for name, ddl in _ADDED.items():
                        if name not in columns:
                            self.conn.execute(f"ALTER TABLE api_keys ADD COLUMN {ddl}")
            columns = self._columns()
        except sqlite3.Error as exc:
            raise KeyStoreError(f"cannot use key database {path}: {exc}") from None
        self._select = (
            "SELECT id, name, rate, burst, created_at, revoked_at, "
            + ", ".join(c if c in columns else _LEGACY[c] for c in ("tenant", "admin"))
            + " FROM api_keys"
        )

    def _columns(self) -> set[str]:
        return {r[1] for r in self.conn.execute("PRAGMA table_info(api_keys)")}

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            return self.conn.execute(sql, tuple(args)).fetchall()
        except sqlite3.Error as exc:
            raise KeyStoreError(f"cannot read key database {self.path}: {exc}") from None

    def _write(self, sql: str, args: Sequence[Any] = ()) -> None:
        try:
            self.conn.execute(sql, tuple(args))
        except sqlite3.Error as exc:
            raise KeyStoreError(f"cannot write key database {self.path}: {exc}") from None

    def _connect(self, target: str, *, uri: bool, readonly: bool) -> set[str]:
        """Open `target` as this store's connection; the tables it holds. The connection
        is closed again if that fails (an open file would keep its mount busy)."""
        # A gateway builds its store in one thread and serves from its event-loop thread;
        # it is only ever used from one thread at a time.
        self.conn = sqlite3.connect(
            target, timeout=10.0, isolation_level=None, check_same_thread=False, uri=uri
        )
        try:
            if readonly:
                self.conn.execute("PRAGMA query_only=ON")
            return {
                r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
        except sqlite3.Error:
            self.conn.close()
            raise

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        # BEGIN IMMEDIATE: one writer from the first read to the commit (FIELD-NOTES).
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise KeyStoreError(f"cannot write key database {self.path}: {exc}") from None
        try:
            yield
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

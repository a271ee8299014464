"""The `-wal` and `-shm` files a deleted or moved database leaves behind.

SQLite names a database's write-ahead log and its shared-memory index after the database's
path. Move or delete `sagas.db` while a process has it open and `sagas.db-wal` and
`sagas.db-shm` stay, still that process's. A new database created at the path would share
them: SQLite applies the old log to the new file, or takes locks in the old index that the
old process holds ("disk I/O error", "database disk image is malformed"). So a process that
creates the database first removes them: while the main file is missing or empty they
cannot belong to it (SQLite writes the file's first page as it switches it to WAL, before
any log exists). What the old process writes into its unlinked log is lost with the file
it had: the watchdog (`orchestrator.watchdog`) stops it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

__all__ = ["creating_database", "enter_wal", "file_uri", "read_modes"]

log = logging.getLogger(__name__)

SIDECARS = ("-wal", "-shm")


@contextmanager
def creating_database(path: Path) -> Iterator[None]:
    """Hold the directory's lock while a new database is made at `path`, stale files gone.

    The lock (`flock` on the directory) makes a second process that creates the same path
    at the same moment wait until the first one's file has its first page: it then finds
    a database, not a missing file, and removes nothing of the first one's.
    """
    try:
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:  # no directory yet (or unreadable): nothing stale in it; SQLite says why
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        _remove_stale(path)
        yield
    finally:
        os.close(fd)  # releases the lock


def _remove_stale(path: Path) -> None:
    try:
        if path.stat().st_size > 0:
            return
    except FileNotFoundError:
        pass
    except OSError:
        return
    for suffix in SIDECARS:
        stale = Path(f"{path}{suffix}")
        try:
            stale.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("cannot remove %s left by a deleted database: %s", stale, exc.strerror)
            continue
        log.warning("removed %s: left by a database deleted or moved from %s", stale, path)


def read_modes(path: str | Path) -> tuple[str, ...]:
    """The URI query strings to try, in order, to read the database at `path` (the rule for
    every read-only open, `_probe` and `connect_read_only`).

    - a `-wal` beside it (a writer has it open, or left it): `mode=ro`, which creates nothing;
    - a directory this process cannot write (a read-only mount, a snapshot, no permission),
      no `-wal`: `mode=ro&immutable=1`. Plain `mode=ro` would have to create the `-shm`
      file a WAL database needs and cannot ("unable to open database file"); no writer can
      be at work there (it would need that directory for its `-wal`), so nothing changes
      under the reader;
    - otherwise `mode=rw` (never creates the database), then `mode=ro` if the file itself is
      read-only: see `connect_read_only` for why not `ro` first.
    """
    target = Path(path)
    if Path(f"{target}-wal").exists():
        return ("mode=ro",)
    if not os.access(target.absolute().parent, os.W_OK | os.X_OK):
        return ("mode=ro&immutable=1",)
    return ("mode=rw", "mode=ro")


def file_uri(path: str | Path, query: str) -> str:
    """The explicit `file:` URI of `path` with `query`: nothing in the path (a `?`, a `#`,
    a `file:` prefix) is read by SQLite as anything but the file name."""
    return f"file:{quote(str(Path(path).absolute()))}?{query}"


class _Executes(Protocol):
    def execute(self, sql: str, /) -> Any: ...


def enter_wal(conn: _Executes, locked: type[Exception], timeout: float) -> None:
    """`PRAGMA journal_mode=WAL` on `conn`, waiting up to `timeout` seconds for others.

    Switching a file out of the rollback journal needs it alone, and SQLite answers "database
    is locked" at once, without its busy timeout, when another connection holds it even
    briefly: six processes opening an older file together (a stack starting) failed about
    one time in thirty. Once one of them has switched it, the PRAGMA is a no-op for the rest.
    `locked` is the driver's error class (sqlite3.OperationalError); any other error, or the
    timeout passed, is raised.
    """
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except locked as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.05)

"""Notice the database file being deleted or replaced under a running process.

SQLite keeps writing to the file it opened: after `rm sagas.db` a worker would go on
finishing sagas into an unlinked inode (their journals lost on exit) and never see the new
file the next `sagalab orchestrate run` creates. The watchdog remembers the device and inode
of the path when the process opened it; `check()` compares them with what the path names now
and, once they differ, refuses every later write with `DatabaseGone` (a `StoreError`), so the
process stops and a restart opens the file that is there now.

A server database (a `postgresql://` URL) has no file to be replaced under the process: its
watchdog never fires (the server refuses a dropped database itself).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from sagalab.orchestrator.errors import StoreError
from sagalab.orchestrator.store import Store
from sagalab.orchestrator.stores import open_store, postgres_url, sqlite_path

__all__ = ["DatabaseGone", "DatabaseWatchdog", "WatchedStore", "drop_own_sidecars"]


class DatabaseGone(StoreError):
    """The database file this process opened was deleted or replaced: it must not write."""


def drop_own_sidecars(path: Path) -> list[Path]:
    """Unlink `path`'s `-wal` and `-shm` if they are the ones this process has open.

    Those belong to the file this process opened, which the path no longer names: left
    there, SQLite would read that file's log over the new file at the path (its pages in
    place of the new ones). Files this process does not have open are left alone: they may
    be the new file's own. What this process still writes goes to the unlinked files, as its
    database is gone anyway. Linux (`/proc/self/fd`); elsewhere nothing is removed.
    """
    mine: set[tuple[int, int]] = set()
    try:
        for fd in os.listdir("/proc/self/fd"):
            try:
                st = os.stat(int(fd))
            except (OSError, ValueError):
                continue
            mine.add((st.st_dev, st.st_ino))
    except OSError:
        return []
    dropped = []
    for suffix in ("-wal", "-shm"):
        sidecar = Path(f"{path}{suffix}")
        try:
            st = os.stat(sidecar)
            if (st.st_dev, st.st_ino) in mine:
                sidecar.unlink()
                dropped.append(sidecar)
        except OSError:
            continue
    return dropped


class DatabaseWatchdog:
    """Compares the path's (device, inode) with the one seen when it was opened."""

    def __init__(self, path: str | Path, *, restart: str = "restart the worker") -> None:
        """Remember what `path` names now; `restart` ends the message: what to do next."""
        self.restart = restart
        self._gone: str | None = None
        self._lock = threading.Lock()
        self._server = postgres_url(path) is not None  # no file: nothing to watch
        if self._server:
            self.path = Path(path)
            return
        self.path = sqlite_path(path)  # the file a SQLite URL names
        self._identity = self._stat()
        if self._identity is None:
            raise StoreError(f"database {self.path} does not exist")

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return st.st_dev, st.st_ino

    @property
    def gone(self) -> str | None:
        """Why the file may no longer be written (None while it is the one opened)."""
        return self._gone

    def check(self) -> None:
        """Raise DatabaseGone if the path no longer names the file opened (sticky)."""
        if self._server:
            return
        if self._gone is None:
            try:
                now = self._stat()
            except OSError:  # e.g. the directory became unreadable: no proof either way
                return
            if now != self._identity:
                what = "deleted" if now is None else "replaced by another file"
                with self._lock:
                    if self._gone is None:
                        drop_own_sidecars(self.path)
                        self._gone = (
                            f"database file {self.path} was {what} while this process had it "
                            f"open; stopped writing to it: {self.restart}"
                        )
        if self._gone is not None:
            raise DatabaseGone(self._gone)


def WatchedStore(path: Path, watchdog: DatabaseWatchdog) -> Store:  # noqa: N802 (was a class)
    """The store at `path` whose every write first asks the watchdog (a worker's threads,
    `run --wait`): once the path names another file, writes raise DatabaseGone."""
    watchdog.check()
    # create=False as well: the file may vanish between the check and the open.
    return open_store(path, create=False, guard=watchdog.check)

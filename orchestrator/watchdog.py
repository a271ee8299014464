"""Notice the database file being deleted or replaced under a running process.

SQLite keeps writing to the file it opened: after `rm sagas.db` a worker would go on
finishing sagas into an unlinked inode (their journals lost on exit) and never see the new
file the next `sagalab orchestrate run` creates. The watchdog remembers the device and inode
of the path when the process opened it; `check()` compares them with what the path names now
and, once they differ, refuses every later write with `DatabaseGone` (a `StoreError`), so the
process stops and a restart opens the file that is there now.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from orchestrator.errors import StoreError

__all__ = ["DatabaseGone", "DatabaseWatchdog"]


class DatabaseGone(StoreError):
    """The database file this process opened was deleted or replaced: it must not write."""


class DatabaseWatchdog:
    """Compares the path's (device, inode) with the one seen when it was opened."""

    def __init__(self, path: str | Path, *, restart: str = "restart the worker") -> None:
        """Remember what `path` names now; `restart` ends the message: what to do next."""
        self.path = Path(path)
        self.restart = restart
        self._identity = self._stat()
        if self._identity is None:
            raise StoreError(f"database {self.path} does not exist")
        self._gone: str | None = None
        self._lock = threading.Lock()

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
        if self._gone is None:
            try:
                now = self._stat()
            except OSError:  # e.g. the directory became unreadable: no proof either way
                return
            if now != self._identity:
                what = "deleted" if now is None else "replaced by another file"
                with self._lock:
                    if self._gone is None:
                        self._gone = (
                            f"database file {self.path} was {what} while this process had it "
                            f"open; stopped writing to it: {self.restart}"
                        )
        if self._gone is not None:
            raise DatabaseGone(self._gone)

"""The lab's own PostgreSQL server in a directory (`sagalab db up|status|down`).

A `PgCluster` (orchestrator/pg_cluster.py) in `directory`, bound to 127.0.0.1, whose saga
database is `sagalab` on it (created by the first command that writes, as a SQLite file
is). Whether it runs is read from the server's own `data/postmaster.pid` (its pid and port)
and that pid being alive; `local.json` beside it remembers the port, so that `db up` after
`db down` gives the same URL when that port is still free.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sagalab.orchestrator.pg_cluster import _SUPERUSER, PgCluster

__all__ = ["DATABASE", "DEFAULT_DIR", "LocalServer", "local_server", "start", "stop"]

DEFAULT_DIR = Path(".sagalab-pg")
#: The database the printed URL names (created by the first command that writes to it).
DATABASE = "sagalab"
_STATE = "local.json"


@dataclass(frozen=True)
class LocalServer:
    """The lab server in `directory`: whether it runs, and its URL when it does."""

    directory: Path
    running: bool
    port: int | None
    pid: int | None

    @property
    def url(self) -> str | None:
        """The saga database's URL (None if the server never ran here)."""
        if self.port is None:
            return None
        return f"postgresql://{_SUPERUSER}@127.0.0.1:{self.port}/{DATABASE}"  # as PgCluster

    def to_dict(self) -> dict[str, Any]:
        """As JSON (`--json`)."""
        return {
            "directory": str(self.directory),
            "running": self.running,
            "url": self.url,
            "port": self.port,
            "pid": self.pid,
        }


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process (the `postgres` one, say)
        return True
    return True


def _saved_port(directory: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        port = json.loads((directory / _STATE).read_text())["port"]
        return int(port) if isinstance(port, int) else None
    return None


def local_server(directory: Path) -> LocalServer:
    """What runs in `directory` now (nothing is started or changed)."""
    directory = directory.absolute()
    pid = port = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        # postmaster.pid: line 1 the server's pid, line 4 its port.
        lines = (directory / "data" / "postmaster.pid").read_text().splitlines()
        pid, port = int(lines[0]), int(lines[3])
    if pid is not None and _alive(pid):
        return LocalServer(directory, True, port, pid)
    return LocalServer(directory, False, _saved_port(directory), None)


def _free(port: int) -> bool:
    with socket.socket() as sock:
        # As the server binds: a port whose last connections are in TIME_WAIT is free to it.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def start(directory: Path, *, port: int | None = None) -> tuple[LocalServer, bool]:
    """The server in `directory`, started (created first if new) unless it runs already;
    whether this call started it. ClusterError (no server binaries, a directory the
    `postgres` user cannot reach, a port taken) says what to do."""
    found = local_server(directory)
    if found.running:
        return found, False
    if port is None and found.port is not None and _free(found.port):
        port = found.port  # the URL printed last time still works
    cluster = PgCluster(found.directory, port=port)
    cluster.start()
    (found.directory / _STATE).write_text(json.dumps({"port": cluster.port}) + "\n")
    return local_server(found.directory), True


def stop(directory: Path) -> LocalServer | None:
    """Stop the server in `directory` (pg_ctl's fast mode: its data stays); what ran, or
    None if nothing did."""
    found = local_server(directory)
    if not found.running:
        return None
    PgCluster(found.directory, port=found.port).stop(mode="fast")
    return found

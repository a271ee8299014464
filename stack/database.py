"""The stack's own PostgreSQL (`sagalab stack up --postgres`): started first, stopped last.

The cluster is a throwaway one (orchestrator/pg_cluster.py: `initdb`, then `pg_ctl start` on
127.0.0.1 at a free port, trust authentication, so its URL carries no password) in
`DIR/postgres`; its data stays there until the directory is removed (the next `--postgres`
stack in that directory starts the same cluster again, on a new port). The saga database
`sagalab` is created on it before any component starts, so the API and the workers all open
one ready schema. It is recorded in `stack.json` as the stack's `database` (a `Component` of
kind `database`: the postmaster's pid and start time) but is not one of the supervised
components: the supervisor never restarts it (its sagas live only there; a crashed server is
a fact the operator should see, not hide), `stack kill` and `stack restart` refuse it (exit
4), and `stack status` shows it and exits 1 when it is down. The supervisor stops it after
the components (`processes.stop_database`); `stack down` stops it too when the supervisor
could not.

As root, the server runs as the `postgres` user, which must be able to enter the stack
directory's parents: `stack up` refuses a `--dir` under /root before anything starts (exit 5,
stack/checks.py).
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Callable
from pathlib import Path

from sagalab.edge.errors import StackError
from sagalab.orchestrator.errors import SagaError
from sagalab.orchestrator.pg_cluster import ClusterError, PgCluster
from sagalab.stack.processes import Component, proc_start

__all__ = ["CLUSTER_DIR", "DATABASE_NAME", "start_database"]

#: The cluster's directory inside the stack directory.
CLUSTER_DIR = "postgres"
#: The saga database on the stack's cluster.
DATABASE_NAME = "sagalab"


def _postmaster(data: Path) -> int | None:
    """The postmaster's pid, from `postmaster.pid` (None when the server is not running)."""
    try:
        return int((data / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, IndexError, ValueError):
        return None


def start_database(
    directory: Path, *, on_progress: Callable[[str], None] = lambda _: None
) -> Component:
    """Start a throwaway cluster in `directory/postgres` with the saga database on it.

    Raises StackError (nothing left running) when it cannot: no server binaries, a directory
    the server's user cannot reach, initdb or the server failing.
    """
    cluster: PgCluster | None = None
    try:
        cluster = PgCluster(directory / CLUSTER_DIR)
        cluster.start()
        pid = _postmaster(cluster.data)
        started = proc_start(pid) if pid is not None else None
        if pid is None or started is None:
            raise ClusterError(f"the server started but left no postmaster.pid in {cluster.data}")
        url = cluster.url_for(DATABASE_NAME)
        from sagalab.orchestrator.stores import open_store

        open_store(url).close()  # the database and its schema, before any component opens it
    except BaseException as exc:
        if cluster is not None:
            with contextlib.suppress(ClusterError, OSError, subprocess.SubprocessError):
                cluster.stop()
        if isinstance(exc, ClusterError | SagaError):
            raise StackError(f"--postgres: {exc}") from None
        raise
    on_progress(f"postgres ready at {url} (pid {pid})")
    return Component(
        name="postgres",
        kind="database",
        pid=pid,
        started=started,
        url=url,
        health=None,
        log=str(cluster.log),
        command=[str(cluster.bindir / "postgres"), "-D", str(cluster.data)],
        port=cluster.port,
    )

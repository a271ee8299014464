"""PostgreSQL for tests: one throwaway cluster per session, a fresh database per test, and
a streaming replica of a cluster (`start_replica`) for the read/write split.

Plain helpers (the fixtures `pg_cluster` and `pg_url` in conftest.py use them). The cluster
comes from the machine's server binaries (orchestrator/pg_cluster.py); where there are none
the fixtures fail with the reason rather than skip: in CI these tests must run (.ci/run
installs the binaries when they are missing).
"""

from __future__ import annotations

import itertools
import os
import pwd
import subprocess
from pathlib import Path

import psycopg
from psycopg import sql

from sagalab.orchestrator.pg_cluster import PgCluster

_names = itertools.count(1)


def admin(cluster: PgCluster) -> psycopg.Connection:
    """An autocommit connection to the cluster's `postgres` database."""
    return psycopg.connect(cluster.url, autocommit=True)


def new_database(cluster: PgCluster, *, template: str | None = None) -> str:
    """A new empty database (or a copy of `template`) on `cluster`; its URL."""
    name = f"t{os.getpid()}_{next(_names)}"
    statement = sql.SQL("CREATE DATABASE {} STRATEGY FILE_COPY").format(sql.Identifier(name))
    if template is not None:
        statement = sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(
            sql.Identifier(name), sql.Identifier(template)
        )
    with admin(cluster) as conn:
        conn.execute(statement)
    return cluster.url_for(name)


def drop_database(cluster: PgCluster, url: str) -> None:
    """Drop the database `url` names, whoever is still connected to it."""
    name = url.rsplit("/", 1)[1]
    with admin(cluster) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def copy_at_v1(cluster: PgCluster, url: str) -> str:
    """A copy of the saga database at `url` taken back to schema version 1 (before tenants
    and forks): what the migration test opens to see it brought up to date, all kept."""
    copy = new_database(cluster, template=url.rsplit("/", 1)[1])
    with psycopg.connect(copy, autocommit=True) as conn, conn.transaction():
        conn.execute("DROP INDEX sagas_by_forked_from")  # v3
        conn.execute("ALTER TABLE sagas DROP COLUMN forked_from")
        conn.execute("DROP INDEX sagas_by_idempotency_key")
        conn.execute("DROP INDEX sagas_by_tenant")
        conn.execute("ALTER TABLE sagas DROP COLUMN tenant")
        conn.execute(
            "ALTER TABLE sagas ADD CONSTRAINT sagas_idempotency_key_key UNIQUE (idempotency_key)"
        )
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    return copy


def start_replica(primary: PgCluster, directory: Path) -> PgCluster:
    """A hot-standby streaming replica of `primary` in `directory` (`pg_basebackup -R`),
    started on its own free port; stop it with `stop()` as any cluster.

    As root the backup runs as the `postgres` user, as every server command does
    (orchestrator/pg_cluster.py); `directory`'s parents must let that user through.
    """
    replica = PgCluster(directory)
    replica.directory.mkdir(parents=True, exist_ok=True)
    as_postgres: list[str] = []
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(replica.directory, user.pw_uid, user.pw_gid)
        as_postgres = ["runuser", "-u", "postgres", "--"]
    backup = subprocess.run(
        [
            *as_postgres, str(replica.bindir / "pg_basebackup"), "-h", "127.0.0.1",
            "-p", str(primary.port), "-U", "sagalab", "-D", str(replica.data),
            "-R", "-X", "stream", "-c", "fast", "--no-sync",
        ],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert backup.returncode == 0, backup.stderr
    replica.start()  # the backup's standby.signal makes it a standby of `primary`
    return replica


def replay(replica: PgCluster, *, paused: bool) -> None:
    """Pause (or resume) WAL replay on `replica`: what it serves stops (or goes on) moving."""
    with admin(replica) as conn:
        if paused:
            conn.execute("SELECT pg_wal_replay_pause()")
            # Pausing is requested, then takes effect: wait for it (bounded by the server).
            for _ in range(200):
                row = conn.execute("SELECT pg_get_wal_replay_pause_state()").fetchone()
                if row is not None and row[0] == "paused":
                    return
                conn.execute("SELECT pg_sleep(0.01)")
            raise AssertionError("WAL replay did not pause within 2 s")
        conn.execute("SELECT pg_wal_replay_resume()")

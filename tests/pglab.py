"""PostgreSQL for tests: one throwaway cluster per session, a fresh database per test.

Plain helpers (the fixtures `pg_cluster` and `pg_url` in conftest.py use them). The cluster
comes from the machine's server binaries (orchestrator/pg_cluster.py); where there are none
the fixtures fail with the reason rather than skip: in CI these tests must run (.ci/run
installs the binaries when they are missing).
"""

from __future__ import annotations

import itertools
import os

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

"""A connection lost while the PostgreSQL store is being opened is "unavailable", not fatal.

Found by the chaos run across hosts (test_pg_hosts_chaos.py): a worker restarted just
before `pg_ctl restart -m immediate` got past its start-up check, then lost the connection
while its store read the schema version, and exited ("cannot read ...: server closed the
connection unexpectedly") instead of backing off. Here the schema read is held on a lock
and its server process is terminated, as a crash restart terminates it.
"""

from __future__ import annotations

import threading

import psycopg
from workerlab import wait_for

from sagalab.orchestrator.errors import StoreUnavailable
from sagalab.orchestrator.stores import open_store


def test_a_connection_cut_while_the_store_opens_is_unavailable(pg_url: str) -> None:
    open_store(pg_url).close()  # the schema exists
    outcome: list[BaseException | None] = []

    def open_it() -> None:
        try:
            open_store(pg_url).close()
            outcome.append(None)
        except BaseException as exc:  # what the test checks
            outcome.append(exc)

    with psycopg.connect(pg_url) as holder:
        # The opening store's schema read waits on this lock until its connection is cut.
        holder.execute("LOCK TABLE meta IN ACCESS EXCLUSIVE MODE")
        thread = threading.Thread(target=open_it)
        thread.start()
        with psycopg.connect(pg_url, autocommit=True) as killer:

            def waiting() -> list[tuple[int]]:
                return killer.execute(
                    "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND datname = current_database()"
                ).fetchall()

            ((pid,),) = wait_for(waiting, 10, "the store's schema read to wait on the lock")
            killer.execute("SELECT pg_terminate_backend(%s)", (pid,))
        thread.join(10)
        holder.rollback()
    assert len(outcome) == 1, outcome
    # A worker backs off on StoreUnavailable; a command still refuses it as a StoreError.
    assert isinstance(outcome[0], StoreUnavailable), repr(outcome[0])

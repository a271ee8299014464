"""Each hop waits a little longer than the one behind it, so that the API's own answer when
the database's write lock is held (503 "Store unavailable", with Retry-After) reaches the
client instead of a gateway's or the edge's 504 (session 20: the gateway, the edge and the
API all gave up at 30 s, and the client saw 504)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import httpx

from sagalab.edge.apps import EdgeSettings, GatewaySettings, hop_timeouts
from sagalab.edge.keys import open_key_store
from sagalab.orchestrator.limits import API_DB_TIMEOUT as DB_TIMEOUT
from sagalab.orchestrator.sqlite_writer import LOCK_SLACK
from tests.edgelab import SAGA, serve_path


def test_each_hop_outwaits_the_one_behind_it_by_default() -> None:
    gateway, edge = hop_timeouts(DB_TIMEOUT)
    assert GatewaySettings(keys_db="k", upstreams=[]).upstream_timeout == gateway
    assert EdgeSettings(upstreams=[]).upstream_timeout == edge
    # The API answers within its busy timeout and the group writer's slack.
    assert DB_TIMEOUT + LOCK_SLACK < gateway < edge
    assert edge - DB_TIMEOUT <= 3 * LOCK_SLACK  # a little longer, not a minute more


def test_a_held_write_lock_gets_the_apis_503_through_the_edge(tmp_path: Path) -> None:
    keys_db = tmp_path / "keys.db"
    store = open_key_store(keys_db)
    _, key = store.create("test", rate=1000, burst=1000)
    store.close()
    db_timeout = 1.0  # the ladder of the defaults, shortened to keep the test short
    gateway_timeout, edge_timeout = hop_timeouts(db_timeout)
    with serve_path(
        tmp_path / "sagas.db",
        keys_db,
        api={"db_timeout": db_timeout},
        gateway={"upstream_timeout": gateway_timeout},
        edge={"upstream_timeout": edge_timeout, "health_interval": 0.1},
        gateways=1,
    ) as running:
        lock = sqlite3.connect(tmp_path / "sagas.db", isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")  # another process's long write
        try:
            headers = {"Authorization": f"Bearer {key}"}
            with httpx.Client(base_url=running.edge.url, headers=headers, timeout=30) as c:
                asked = time.monotonic()
                r = c.post("/v1/sagas", json=SAGA)
                took = time.monotonic() - asked
        finally:
            lock.execute("ROLLBACK")
            lock.close()
    assert r.status_code == 503, r.text
    assert "Retry-After" in r.headers
    assert r.headers["content-type"].startswith("application/problem+json")
    assert took < gateway_timeout  # the API's answer, not a hop's timeout

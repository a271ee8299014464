"""POST /v1/sagas writes in a bounded pool of SUBMIT_THREADS, not FastAPI's default 40.

With group commit a few writers fill every COMMIT; more threads only take turns on the GIL
with the event loop, which was the tail of POST (benchmarks/README.md, "Group commit").
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sagalab.edge.keys import open_key_store
from sagalab.edge.server import RunningServer, serve_in_thread
from sagalab.orchestrator.api import SUBMIT_THREADS, create_app
from sagalab.orchestrator.sqlite_store import SQLiteStore

CLIENTS = 3 * SUBMIT_THREADS


class Gauge:
    """How many callers are inside create_saga at once, and the most ever seen."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.most = 0

    def enter(self) -> None:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)

    def leave(self) -> None:
        with self.lock:
            self.now -= 1


@pytest.fixture
def api_key(tmp_path: Path) -> tuple[Path, str]:
    store = open_key_store(tmp_path / "keys.db")
    _, key = store.create("tests")
    store.close()
    return tmp_path / "keys.db", key


@pytest.fixture
def slow_creates(monkeypatch: pytest.MonkeyPatch) -> Gauge:
    gauge = Gauge()
    create = SQLiteStore.create_saga

    def slow(self: SQLiteStore, *args: Any, **kwargs: Any) -> Any:
        gauge.enter()
        try:
            time.sleep(0.05)  # a write waiting for the database: holds its thread
            return create(self, *args, **kwargs)
        finally:
            gauge.leave()

    monkeypatch.setattr(SQLiteStore, "create_saga", slow)
    return gauge


@pytest.fixture
def api(db: Path, api_key: tuple[Path, str], slow_creates: Gauge) -> Iterator[RunningServer]:
    with serve_in_thread(create_app(db, keys_db=api_key[0])) as running:
        yield running


def test_concurrent_submissions_write_in_at_most_submit_threads(
    api: RunningServer, api_key: tuple[Path, str], slow_creates: Gauge
) -> None:
    statuses: list[int] = []
    start = threading.Barrier(CLIENTS)

    def one(n: int) -> None:
        with httpx.Client(
            base_url=api.url, timeout=10.0, headers={"Authorization": f"Bearer {api_key[1]}"}
        ) as c:
            order = {"order_id": f"o-{n}", "customer_id": "c", "sku": "s", "quantity": 1}
            start.wait(10)
            r = c.post("/v1/sagas", json={"flow": "checkout", "input": {**order, "amount": 1}})
            statuses.append(r.status_code)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert statuses == [202] * CLIENTS
    # Concurrent (the pool is used), but never more than its size at once.
    assert 1 < slow_creates.most <= SUBMIT_THREADS

"""`worker --exit-when-idle` means no saga left to run, not "no thread busy this moment": a
saga waiting for its retry time (or held by another worker's lease) keeps the worker up."""

from __future__ import annotations

import time
from pathlib import Path

from workerlab import order, plant, query, statuses

from sagalab.fakeservices import RunningServices
from sagalab.orchestrator.worker import Worker, WorkerConfig


def services_of(lab: RunningServices) -> dict[str, str]:
    prefix = "SAGALAB_SERVICE_"
    return {k.removeprefix(prefix).lower(): v for k, v in lab.env.items() if k.startswith(prefix)}


def test_a_worker_idle_while_a_saga_waits_for_its_retry_time_stays_up_and_runs_it(
    tmp_path: Path, services: RunningServices
) -> None:
    db = tmp_path / "sagas.db"
    waiting = plant(db, order(1), delay=2.0)
    config = WorkerConfig(
        db=db,
        services=services_of(services),
        concurrency=1,
        lease_seconds=2.0,
        poll_interval=0.05,
        exit_when_idle=0.3,
        max_seconds=30,
    )
    started = time.monotonic()
    stats = Worker(config).run()
    assert statuses(db) == {"completed": 1}, (stats, query(db, "SELECT id, status FROM sagas"))
    assert query(db, "SELECT status FROM sagas WHERE id = ?", (waiting,)) == [("completed",)]
    assert time.monotonic() - started >= 2.0

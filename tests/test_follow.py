"""`orchestrate status ID --follow`: a live timeline read from the database by another process.

The follower is a real `sagalab` subprocess; this process appends to the saga's journal as a
worker would, and the follower's output is read line by line as it comes. Every wait is a
bounded poll.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from opslab import ACT, RunsHere, append_as_a_worker, reset_handlers, stored
from workerlab import REPO, Workers, order, wait_for

from sagalab.orchestrator.saga import Event, EventType
from sagalab.orchestrator.sqlite_store import SQLiteStore


class Follower:
    """`sagalab orchestrate status ID --follow ARGS` as a subprocess, its stdout collected."""

    def __init__(self, db: Path, saga_id: str, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sagalab.cli.main",
                "orchestrate",
                "status",
                saga_id,
                "--follow",
                "--interval",
                "0.05",
                "--db",
                str(db),
                *args,
            ],  # fmt: skip
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_lines(self, n: int, what: str) -> list[str]:
        wait_for(lambda: len(self.lines) >= n, 20, what)
        return self.lines

    def finish(self, timeout: float = 20) -> tuple[int, str]:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        assert self.proc.stderr is not None
        return code, self.proc.stderr.read()

    def stop(self) -> None:
        """Kill it if it still runs (by its own handle), and close its pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._reader.join(timeout=5)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


@contextmanager
def following(db: Path, saga_id: str, *args: str) -> Iterator[Follower]:
    follower = Follower(db, saga_id, *args)
    try:
        yield follower
    finally:
        follower.stop()


@pytest.fixture(autouse=True)
def handlers() -> Iterator[None]:
    reset_handlers()
    yield
    reset_handlers()


def test_follow_prints_events_as_another_process_appends_them_and_ends_with_the_saga(
    db: Path, store: SQLiteStore
) -> None:
    saga_id = stored(store)  # pending: nothing has run yet
    with following(db, saga_id, "--json") as follower:
        first = follower.wait_lines(1, "the creation event")
        assert json.loads(first[0])["type"] == "saga_created"
        # Each event this process appends shows up on its own, in order, while it follows.
        for n, event in enumerate(
            (
                Event(EventType.ATTEMPT_STARTED, 1.0, "reserve", ACT, 1),
                Event(EventType.ATTEMPT_SUCCEEDED, 1.0, "reserve", ACT, 1),
            ),
            start=2,
        ):
            append_as_a_worker(db, saga_id, event)
            lines = follower.wait_lines(n, f"event {n}")
            row = json.loads(lines[n - 1])
            assert (row["seq"], row["type"], row["step"]) == (n, event.type.value, "reserve")
            assert row["saga_id"] == saga_id
        assert follower.proc.poll() is None  # still following: the saga is not done
        RunsHere(store).run(saga_id, store.load(saga_id).flow)  # the rest, to completion
        code, err = follower.finish()
    assert code == 0, err
    rows = [json.loads(line) for line in follower.lines]  # every line is one JSON object
    assert [r["seq"] for r in rows] == list(range(1, len(store.journal(saga_id)) + 1))
    assert rows[-1]["type"] == "saga_completed"


def test_follow_text_ends_with_how_the_saga_ended(db: Path, store: SQLiteStore) -> None:
    saga_id = stored(store, failing=("charge",), queue=False)  # rolled back already
    with following(db, saga_id) as follower:
        code, err = follower.finish()
    assert code == 1, err  # rolled back
    text = "\n".join(follower.lines)
    assert text.startswith(f"following saga {saga_id}")
    assert "attempt_failed" in text and "saga_rolled_back" in text
    assert follower.lines[-1].startswith("ended rolled_back")


def test_ctrl_c_stops_following_with_130_and_no_traceback(db: Path, store: SQLiteStore) -> None:
    saga_id = stored(store)
    with following(db, saga_id) as follower:
        follower.wait_lines(2, "the header and the first event")
        follower.proc.send_signal(signal.SIGINT)
        code, err = follower.finish()
    assert code == 130
    assert "Traceback" not in err and "stopped following" in err


def test_follow_an_unknown_saga_is_3(db: Path, store: SQLiteStore) -> None:
    stored(store)  # the database exists
    with following(db, "nope") as follower:
        code, err = follower.finish()
    assert code == 3 and "nope" in err


def test_run_follow_queues_the_saga_and_shows_a_worker_running_it(
    db: Path, workers: Workers
) -> None:
    workers.start("--concurrency", "1", "--exit-when-idle", "5", "--poll", "0.05")
    wait_for(db.exists, 20, "the worker to create the database")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sagalab.cli.main",
            "orchestrate",
            "run",
            "checkout",
            "-i",
            json.dumps(order(7)),
            "--follow",
            "--json",
            "--db",
            str(db),
        ],  # fmt: skip
        cwd=REPO,
        env=workers.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert rows[0]["type"] == "saga_created" and rows[-1]["type"] == "saga_completed"
    assert [r["step"] for r in rows if r["type"] == "attempt_succeeded"] == [
        "reserve_inventory",
        "charge_payment",
        "create_shipment",
        "send_confirmation",
    ]


def sidecars(db: Path) -> list[str]:
    return sorted(p.name for p in db.parent.iterdir() if p.name.startswith(db.name + "-"))


def test_sigterm_stops_following_and_leaves_no_wal_or_shm(db: Path, store: SQLiteStore) -> None:
    saga_id = stored(store)
    store.close()  # only the follower has the file open now
    with following(db, saga_id) as follower:
        follower.wait_lines(2, "the header and the first event")
        follower.proc.send_signal(signal.SIGTERM)
        code, err = follower.finish()
    assert code == 143 and "Traceback" not in err, err
    assert sidecars(db) == []


def test_a_database_deleted_under_a_follower_ends_it_with_5(db: Path, store: SQLiteStore) -> None:
    saga_id = stored(store)
    store.close()
    with following(db, saga_id) as follower:
        follower.wait_lines(2, "the header and the first event")
        db.unlink()
        code, err = follower.finish()
    assert code == 5, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "was deleted" in lines[0], lines
    assert sidecars(db) == []

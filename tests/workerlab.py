"""Helpers for tests that run real `sagalab worker` processes against the fake services.

Not a test module (pytest does not collect it); imported by test_worker_processes.py and
test_crash.py. Every wait here is a bounded poll.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.flowfile import load_flow
from orchestrator.journal import JournalEntry
from orchestrator.runner import start_saga
from orchestrator.sqlite_store import SQLiteStore

REPO = Path(__file__).resolve().parent.parent


def wait_for(condition: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(every)


def order(n: int, *, amount: int = 100, quantity: int = 1) -> dict[str, Any]:
    """A checkout input with a unique order id."""
    return {
        "order_id": f"ord-{n:04d}",
        "customer_id": f"cust-{n}",
        "sku": "SKU-1",
        "quantity": quantity,
        "amount": amount,
    }


def enqueue(db: Path, payloads: list[dict[str, Any]]) -> list[str]:
    """Queue one checkout saga per payload (what `sagalab orchestrate run` does)."""
    flow = load_flow("checkout")
    store = SQLiteStore(db)
    try:
        return [start_saga(store, flow, p)[0].id for p in payloads]
    finally:
        store.close()


@dataclass
class WorkerProcess:
    """One `sagalab worker ...` subprocess with its output captured in files."""

    proc: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path
    started_at: float = field(default_factory=time.time)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, and reap it so it is gone (not a zombie) when this returns."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def summary(self) -> dict[str, Any]:
        """The `--json` summary it printed on exit."""
        return json.loads(self.stdout())


class Workers:
    """Starts worker processes and makes sure none outlives the test."""

    def __init__(self, db: Path, env: dict[str, str], logs: Path) -> None:
        self.db = db
        self.env = {**os.environ, **env}
        self.logs = logs
        self.logs.mkdir(parents=True, exist_ok=True)
        self.started: list[WorkerProcess] = []

    def start(self, *args: str) -> WorkerProcess:
        n = len(self.started)
        out = self.logs / f"worker-{n}.out"
        err = self.logs / f"worker-{n}.err"
        with out.open("wb") as o, err.open("wb") as e:
            proc = subprocess.Popen(
                [sys.executable, "-m", "cli.main", "worker", "--db", str(self.db), *args],
                cwd=REPO,
                env=self.env,
                stdout=o,
                stderr=e,
            )
        worker = WorkerProcess(proc, out, err)
        self.started.append(worker)
        return worker

    def all_stderr(self) -> str:
        return "\n".join(w.stderr() for w in self.started)

    def stop_all(self) -> None:
        """SIGKILL whatever is still running (each process we started, by its own handle)."""
        for w in self.started:
            if w.alive():
                w.kill()
            for child in children_of(w.pid):  # a supervisor's replicas, if it died first
                os.kill(child, signal.SIGKILL)


def children_of(pid: int) -> set[int]:
    """Live (non-zombie) child process ids of `pid`, from /proc."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if fields[0] != "Z" and int(fields[1]) == pid:
            found.add(int(entry))
    return found


def statuses(db: Path) -> dict[str, int]:
    store = SQLiteStore(db)
    try:
        return store.count_by_status()
    finally:
        store.close()


def journal(db: Path, saga_id: str) -> list[JournalEntry]:
    store = SQLiteStore(db)
    try:
        return store.journal(saga_id)
    finally:
        store.close()


def query(db: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    store = SQLiteStore(db)
    try:
        return list(store.conn.execute(sql, params))
    finally:
        store.close()


def owner_pid(owner: str | None) -> int | None:
    """The pid in a `host:pid:nonce` lease owner."""
    if not owner:
        return None
    return int(owner.split(":")[1])


def drained(db: Path, total: int) -> Callable[[], bool]:
    """A condition: all `total` sagas are completed or rolled back."""

    def check() -> bool:
        counts = statuses(db)
        return counts.get("completed", 0) + counts.get("rolled_back", 0) == total

    return check


def iter_lines(text: str) -> Iterator[str]:
    yield from (line for line in text.splitlines() if line.strip())

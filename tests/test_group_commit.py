"""Group commit (issue 14, item 2): one writer per process commits many callers' units together.

Real SQLite files, real threads, a real subprocess SIGKILLed mid-load. Batches are made
deterministic where a test needs one: a unit that blocks on an event holds the writer while
other callers arrive (`GroupWriter` counts them), so the last of them commits all at once.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sagalab.orchestrator.errors import IdempotencyConflict, StoreError
from sagalab.orchestrator.flowfile import load_flow
from sagalab.orchestrator.sqlite_store import SQLiteStore, connect
from sagalab.orchestrator.sqlite_writer import ENV, GroupWriter

REPO = Path(__file__).resolve().parent.parent
DEADLINE = 20.0  # seconds: bounded polls and joins, never a bare sleep


def wait_for(predicate: Callable[[], bool], what: str) -> None:
    """Poll `predicate` until true; fail naming `what` after DEADLINE seconds."""
    end = time.monotonic() + DEADLINE
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[GroupWriter]:
    """A writer on a fresh file with one table `t (k TEXT PRIMARY KEY)`."""
    path = tmp_path / "w.db"
    setup = connect(path)
    setup.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v BLOB)")
    setup.close()
    # A window longer than any test: a batch is committed by the last caller in, not by age.
    found = GroupWriter(
        path,
        lambda timeout: connect(path, timeout=timeout, check_same_thread=False),
        window=DEADLINE,
    )
    yield found
    found.close()


def keys(path: Path) -> set[str]:
    """The committed keys, read from a connection of its own."""
    conn = sqlite3.connect(path)
    try:
        return {row[0] for row in conn.execute("SELECT k FROM t")}
    finally:
        conn.close()


def run_threads(targets: list[Callable[[], Any]]) -> list[Any]:
    """Run each target in its own thread; each one's result or the exception it raised."""
    results: list[Any] = [None] * len(targets)

    def run(i: int) -> None:
        try:
            results[i] = targets[i]()
        except BaseException as exc:  # the test inspects it
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(targets))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE)
        assert not t.is_alive(), "a caller hung"
    return results


def insert(writer: GroupWriter, key: str, *, gate: threading.Event | None = None) -> str:
    """One unit inserting `key` (held open until `gate` is set); returns `key`."""
    with writer.unit(5.0) as conn:
        conn.execute("INSERT INTO t (k) VALUES (?)", (key,))
        if gate is not None:
            assert gate.wait(DEADLINE)
    return key


def held_batch(
    writer: GroupWriter, others: list[Callable[[], Any]]
) -> tuple[str | BaseException, list[Any]]:
    """A first unit holds the writer until every caller of `others` has arrived; then all run
    and the last one in commits the batch. (first's result, others' results)."""
    gate = threading.Event()
    first: list[Any] = []
    holder = threading.Thread(
        target=lambda: first.extend(run_threads([lambda: insert(writer, "first", gate=gate)]))
    )
    holder.start()
    wait_for(lambda: writer._arriving == 1, "the first unit to hold the writer")
    box: list[list[Any]] = []
    runner = threading.Thread(target=lambda: box.append(run_threads(others)))
    runner.start()
    wait_for(lambda: writer._arriving == 1 + len(others), "every caller to arrive")
    gate.set()
    holder.join(DEADLINE)
    runner.join(DEADLINE)
    assert not holder.is_alive() and not runner.is_alive(), "a caller hung"
    return first[0], box[0]


def test_a_batch_of_callers_commits_once_and_each_gets_its_own_result(
    writer: GroupWriter,
) -> None:
    others = [lambda i=i: insert(writer, f"k{i}") for i in range(6)]
    first, results = held_batch(writer, others)
    assert (first, results) == ("first", [f"k{i}" for i in range(6)])
    assert writer.units == 7 and writer.commits == 1  # seven callers, one COMMIT
    assert keys(writer.path) == {"first", *results}


def test_a_unit_that_raises_rolls_back_alone_and_its_caller_gets_its_exception(
    writer: GroupWriter,
) -> None:
    def failing() -> str:
        with writer.unit(5.0) as conn:
            conn.execute("INSERT INTO t (k) VALUES ('doomed')")
            raise LookupError("this unit's own failure")

    def duplicate() -> str:  # a constraint error: the store's usual StoreError, this unit only
        return insert(writer, "k0")

    others = [lambda: insert(writer, "k0"), failing, duplicate, lambda: insert(writer, "k1")]
    first, results = held_batch(writer, others)
    assert first == "first" and results[0] == "k0" and results[3] == "k1"
    assert isinstance(results[1], LookupError) and "own failure" in str(results[1])
    assert isinstance(results[2], StoreError) and "UNIQUE" in str(results[2])
    assert keys(writer.path) == {"first", "k0", "k1"}  # 'doomed' rolled back alone
    assert writer.commits == 1


def test_many_threads_through_the_store_each_get_their_own_saga(tmp_path: Path) -> None:
    path = tmp_path / "sagas.db"
    SQLiteStore(path).close()
    flow = load_flow("checkout")
    threads, each = 12, 15

    def submit(t: int) -> list[str]:
        store = SQLiteStore(path, group_commit=True)
        try:
            made = []
            for i in range(each):
                record, created = store.create_saga(
                    saga_id=f"s-{t}-{i}",
                    flow=flow,
                    payload={"n": i % 5},
                    trace_id="0" * 32,
                    idempotency_key=f"key-{t}-{i % 5}",  # repeats: the first saga comes back
                    now=1.0,
                )
                made.append(f"{record.id}:{created}")
            with pytest.raises(IdempotencyConflict):  # its own error, in its own thread
                store.create_saga(
                    saga_id="never", flow=flow, payload={"n": -1}, trace_id="0" * 32,
                    idempotency_key=f"key-{t}-0", now=1.0,
                )  # fmt: skip
            return made
        finally:
            store.close()

    results = run_threads([lambda t=t: submit(t) for t in range(threads)])
    for t, made in enumerate(results):
        assert made == [f"s-{t}-{i}:True" if i < 5 else f"s-{t}-{i % 5}:False" for i in range(each)]
    reader = SQLiteStore(path, read_only=True)
    assert reader.count_by_status() == {"pending": threads * 5}
    reader.close()


def test_database_locked_past_the_timeout_fails_every_waiting_caller(tmp_path: Path) -> None:
    path = tmp_path / "sagas.db"
    SQLiteStore(path).close()
    flow = load_flow("checkout")
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process's writer, holding the lock

    def submit(i: int) -> str:
        store = SQLiteStore(path, timeout=0.3, group_commit=True)
        try:
            return store.create_saga(
                saga_id=f"s{i}", flow=flow, payload={}, trace_id="0" * 32,
                idempotency_key=None, now=1.0,
            )[0].id  # fmt: skip
        finally:
            store.close()

    try:
        results = run_threads([lambda i=i: submit(i) for i in range(8)])
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert all(isinstance(r, StoreError) and "locked" in str(r) for r in results), results
    reader = SQLiteStore(path, read_only=True)
    assert reader.count_by_status() == {}
    reader.close()


def test_a_full_database_fails_every_unit_of_the_batch_and_the_writer_recovers(
    writer: GroupWriter,
) -> None:
    insert(writer, "before")
    assert writer._conn is not None
    pages = writer._conn.execute("PRAGMA page_count").fetchone()[0]
    writer._conn.execute(f"PRAGMA max_page_count = {pages}")  # the disk is full from now on

    def big(i: int) -> str:
        with writer.unit(5.0) as conn:
            conn.execute("INSERT INTO t (k, v) VALUES (?, zeroblob(200000))", (f"big{i}",))
        return f"big{i}"

    first, results = held_batch(writer, [lambda i=i: big(i) for i in range(4)])
    assert isinstance(first, StoreError) and "full" in str(first)
    assert all(isinstance(r, StoreError) and "full" in str(r) for r in results), results
    assert keys(writer.path) == {"before"}  # the batch failed whole: 'first' is not told done
    writer._conn.execute("PRAGMA max_page_count = 1073741823")
    assert insert(writer, "after") == "after"
    assert keys(writer.path) == {"before", "after"}


class _Interrupted(BaseException):
    """What a signal raises in the committing thread (like KeyboardInterrupt)."""


class _CommitInterrupted:
    """The writer's connection (or a cursor of it: the writer runs BEGIN and COMMIT on one
    it keeps), with an interrupt raised by its next COMMIT."""

    def __init__(self, conn: sqlite3.Connection | sqlite3.Cursor) -> None:
        self.conn = conn

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)

    def execute(self, sql: str, *args: Any) -> Any:
        if sql == "COMMIT":
            raise _Interrupted
        return self.conn.execute(sql, *args)

    def cursor(self) -> _CommitInterrupted:
        return _CommitInterrupted(self.conn.cursor())  # type: ignore[union-attr]


def test_a_writer_stopped_mid_commit_fails_its_batch_and_later_callers_at_once(
    writer: GroupWriter,
) -> None:
    insert(writer, "before")
    real = writer._conn
    assert real is not None
    writer._conn = _CommitInterrupted(real)  # type: ignore[assignment]
    first, results = held_batch(writer, [lambda: insert(writer, "k0")])
    # The committer (the last one in) saw the interrupt; the other caller its StoreError.
    assert {type(first), type(results[0])} == {_Interrupted, StoreError}
    started = time.monotonic()
    with pytest.raises(StoreError, match="writer stopped"):
        insert(writer, "later")
    assert time.monotonic() - started < 1.0  # at once: no lock wait, no busy timeout
    real.close()
    assert keys(writer.path) == {"before"}


def test_the_off_switch_writes_on_the_stores_own_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV, "0")
    store = SQLiteStore(tmp_path / "sagas.db")
    try:
        assert store.group_commit is False
        store.create_saga(
            saga_id="s", flow=load_flow("checkout"), payload={}, trace_id="0" * 32,
            idempotency_key=None, now=1.0,
        )  # fmt: skip
        assert store._writer is None and store.load("s").id == "s"
    finally:
        store.close()
    monkeypatch.setenv(ENV, "1")
    assert SQLiteStore(tmp_path / "sagas.db", group_commit=False).group_commit is False


def test_a_forked_child_writes_through_a_writer_of_its_own(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "sagas.db", group_commit=True)
    flow = load_flow("checkout")

    def create(saga_id: str) -> None:
        store.create_saga(
            saga_id=saga_id, flow=flow, payload={}, trace_id="0" * 32,
            idempotency_key=None, now=1.0,
        )  # fmt: skip

    create("parent-1")
    parents = store._writer
    pid = os.fork()
    if pid == 0:  # the child: the inherited store, a writer of its own
        code = 1
        try:
            create("child")
            code = 0 if store._writer is not parents else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    create("parent-2")
    assert store._writer is parents
    assert {r.id for r in store.list_sagas()} == {"parent-1", "child", "parent-2"}
    store.close()


_KILLED_CHILD = """
import os, sys, threading
from sagalab.orchestrator.flowfile import load_flow
from sagalab.orchestrator.sqlite_store import SQLiteStore

path, threads = sys.argv[1], int(sys.argv[2])
flow = load_flow("checkout")

def submit(t):
    store = SQLiteStore(path, group_commit=True)
    i = 0
    while True:
        saga_id = f"s-{t}-{i}"
        store.create_saga(saga_id=saga_id, flow=flow, payload={"i": i}, trace_id="0" * 32,
                          idempotency_key=None, now=1.0)
        os.write(1, f"done {saga_id}\\n".encode())  # told done: only after its COMMIT
        i += 1

for t in range(threads):
    threading.Thread(target=submit, args=(t,), daemon=True).start()
threading.Event().wait()
"""


def test_sigkill_while_batching_loses_no_write_a_caller_was_told_was_done(
    tmp_path: Path,
) -> None:
    path = tmp_path / "sagas.db"
    SQLiteStore(path).close()
    env = {**os.environ, "PYTHONPATH": str(REPO), ENV: "1"}
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_CHILD, str(path), "8"],
        stdout=subprocess.PIPE,
        env=env,
    )
    assert child.stdout is not None
    told: list[str] = []
    try:
        deadline = time.monotonic() + DEADLINE
        while len(told) < 400 and time.monotonic() < deadline:
            line = child.stdout.readline().decode()
            if not line:
                break
            told.append(line.split()[1])
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(DEADLINE)
        rest = child.stdout.read().decode().split("\n")
        child.stdout.close()
    told += [line.split()[1] for line in rest if line.startswith("done ")]
    assert len(told) >= 400, f"the child reported only {len(told)} sagas"
    reader = SQLiteStore(path, read_only=True)
    try:
        stored = {r.id for r in reader.list_sagas(limit=1_000_000)}
    finally:
        reader.close()
    assert set(told) <= stored, f"told done but lost: {sorted(set(told) - stored)[:5]}"
